"""The upload-slot probe: ``sockets`` connections that send their headers and then one body byte every
``interval`` seconds (reconnecting whenever the server closes them), while other requests are sent one after the
other. Loopback only; bounded in sockets and seconds."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

__all__ = ["TrickleResult", "trickle"]


@dataclass
class TrickleResult:
    """Statuses and latencies of the requests sent during the trickle, and how often the tricklers reconnected."""

    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    reconnects: int = 0


async def _trickler(port: int, head: bytes, body: bytes, interval: float, until: float, result: TrickleResult):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(interval)
            continue
        try:
            writer.write(head + body[:10])
            for i in range(10, len(body)):
                await writer.drain()
                if time.monotonic() >= until or reader.at_eof():
                    break
                try:
                    if await asyncio.wait_for(reader.read(65536), interval) == b"":
                        break  # closed by the server (408, or 429 once its body was dropped)
                except asyncio.TimeoutError:
                    writer.write(body[i : i + 1])
        except OSError:
            pass
        finally:
            writer.close()
            result.reconnects += 1


async def trickle(
    url: str, body: bytes, ctype: str, *, sockets: int, requests: int, seconds: float, interval: float = 0.5
) -> TrickleResult:
    """Run ``sockets`` tricklers for ``seconds`` and send ``requests`` ordinary requests meanwhile (after a second,
    once the tricklers hold their slots); returns what the ordinary requests got."""
    port = int(url.rsplit(":", 1)[1])
    head = (
        f"POST /convolve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    result = TrickleResult()
    until = time.monotonic() + seconds
    tasks = [asyncio.create_task(_trickler(port, head, body, interval, until, result)) for _ in range(sockets)]
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(requests):
            if time.monotonic() >= until:
                break
            t = time.perf_counter()
            try:
                r = await client.post(url + "/convolve", content=body, headers={"content-type": ctype})
                result.statuses[r.status_code] += 1
            except httpx.HTTPError as exc:
                result.statuses[type(exc).__name__] += 1
            result.latencies.append(time.perf_counter() - t)
            await asyncio.sleep(max(0.0, (seconds - 1.5) / requests - (time.perf_counter() - t)))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result
