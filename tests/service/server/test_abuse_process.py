"""The standing abuse suite against a real uvicorn process on a loopback port: slow and lying clients, disconnects,
/metrics checked against what was sent, peak memory for large images, and SIGTERM under retrying load."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from crafted import jpeg_bomb
from service_support import encode, rand_image

from service.bench.trickle import trickle

pytestmark = pytest.mark.slow

SPEC = json.dumps({"filter": {"name": "gaussian", "ksize": 3}})
IMG = encode(rand_image(32, 32))


def _multipart(image: bytes, spec: str = SPEC) -> tuple[bytes, str]:
    b = "abuseboundary"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="i"\r\n\r\n'.encode()
        + image
        + f'\r\n--{b}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{spec}\r\n--{b}--\r\n'.encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def _raw(port: int, body: bytes, ctype: str, *, length: int | None = None) -> socket.socket:
    """A socket that has sent the request line and headers (Content-Length ``length``, default the truth)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /convolve HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    s.sendall(head.encode())
    return s


def _status_and_close(s: socket.socket) -> tuple[int, bool]:
    """The status of the answer, and whether the server then closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    s.settimeout(5)
    try:
        while s.recv(65536):
            pass
        closed = True
    except TimeoutError:
        closed = False
    s.close()
    return status, closed


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("roiconv_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0) + float(line.split()[-1])
    return out


def _post(url: str, image: bytes = IMG, spec: str = SPEC, timeout: float = 30) -> int:
    files = {"image": ("i", image)}
    return httpx.post(url + "/convolve", files=files, data={"spec": spec}, timeout=timeout).status_code


def _hwm_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_slow_lying_and_vanishing_clients_and_honest_metrics(server_process):
    server = server_process(
        {
            "ROICONV_BODY_TIMEOUT_S": "1.5",
            "ROICONV_KEEPALIVE_TIMEOUT_S": "2",
            "ROICONV_MAX_QUEUE": "4",
            "ROICONV_MAX_INFLIGHT_BYTES": str(2**30),
        }
    )
    port, url = server.port, server.url
    body, ctype = _multipart(IMG)
    sent: Counter[int] = Counter()

    # 24 slow clients: headers and a trickle of body, holding uploads but no queue place
    slow = [_raw(port, body, ctype) for _ in range(24)]
    for s in slow:
        s.sendall(body[:10])
    silent = [_raw(port, body, ctype) for _ in range(8)]  # headers only, never a body
    mute = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(8)]  # not even a head
    for s in mute:
        s.sendall(b"POST /convolve HTTP/1.1\r\nHost:")
    for _ in range(12):  # everyone else is served meanwhile (MAX_QUEUE 4: the slow ones hold no queue place)
        sent[_post(url)] += 1
    slow_results = [_status_and_close(s) for s in slow + silent]
    mute_closed = [_status_and_close(s) for s in mute]  # closed after KEEPALIVE_TIMEOUT_S, with no answer
    sent[408] += len(slow_results)

    # lying Content-Length: more declared than sent (times out), less declared than sent (the rest is garbage)
    liar = _raw(port, body, ctype, length=len(body) + 1000)
    liar.sendall(body)
    lie_long = _status_and_close(liar)
    sent[408] += 1
    short = _raw(port, body, ctype, length=len(body) // 2)
    short.sendall(body)
    lie_short, _ = _status_and_close(short)  # uvicorn's 400 for the bytes past the declared length

    # disconnects mid-upload
    for _ in range(5):
        s = _raw(port, body, ctype)
        s.sendall(body[: len(body) // 2])
        s.close()
    sent[499] += 5

    # a 3.4 KB JPEG whose header says 6000 x 6000, and a 3000 x 3000 PNG blurred whole: bounded peak memory
    before = _hwm_kib(server.proc.pid)
    bomb = _post(url, jpeg_bomb(6000, 6000))
    sent[bomb] += 1
    bomb_mib = (_hwm_kib(server.proc.pid) - before) / 1024
    big = encode(rand_image(3000, 3000, seed=5))
    sent[_post(url, big, json.dumps({"filter": {"name": "gaussian", "ksize": 31}}), timeout=120)] += 1
    grown_mib = (_hwm_kib(server.proc.pid) - before) / 1024

    expected = {str(k): float(v) for k, v in sent.items()}
    deadline = time.monotonic() + 10
    while sum(_metrics(url).values()) < sum(expected.values()) + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    counted = _metrics(url)
    # the truncated request itself: answered 422, or 499 when uvicorn closed the connection over the garbage first
    short_as = "422" if counted.get("422") else "499"
    expected[short_as] = expected.get(short_as, 0) + 1
    log = server.stop()

    assert sent[200] >= 12, sent
    assert all(status == 408 and closed for status, closed in slow_results), slow_results
    assert mute_closed == [(0, True)] * 8, mute_closed
    assert lie_long == (408, True) and 400 <= lie_short < 500
    assert counted == expected, (counted, expected)
    print(f"peak RSS grew {bomb_mib:.0f} MiB for the JPEG bomb, {grown_mib:.0f} MiB with the 3000x3000 gaussian")
    assert bomb == 413 and bomb_mib < 64
    assert grown_mib < 1024, f"peak RSS grew {grown_mib:.0f} MiB"  # dense would take ~1.4 GiB more than banded
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_sigterm_under_retrying_load_exits_once_admitted_work_is_done(server_process):
    server = server_process({"ROICONV_DRAIN_TIMEOUT_S": "30"})
    url = server.url
    stop = threading.Event()
    seen: Counter[str] = Counter()
    last_ok = [0.0]

    body, ctype = _multipart(IMG)

    def trickle():  # each body takes ~0.3 s to arrive: a refused one is still being read when the drain looks
        for i in range(0, len(body), len(body) // 6 + 1):
            time.sleep(0.05)
            yield body[i : i + len(body) // 6 + 1]

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    headers = {"content-type": ctype}
                    status = c.post(url + "/convolve", content=trickle(), headers=headers).status_code
                except httpx.HTTPError:
                    seen["error"] += 1
                    time.sleep(0.05)
                    continue
                seen[str(status)] += 1
                if status == 200:
                    last_ok[0] = time.monotonic()

    threads = [threading.Thread(target=client) for _ in range(16)]
    for th in threads:
        th.start()
    for _ in range(1200):  # the load is on: some requests served (a guard against a hang, not a timing)
        if seen["200"] >= 3:
            break
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(120)
    finally:
        exited = time.monotonic()
        stop.set()
        for th in threads:
            th.join(15)
    log = server.stop()
    assert code == 0 and seen["200"] > 0, (code, seen)
    assert "drain timeout" not in log, log[-2000:]  # it exited once admitted work was done, not at the timeout
    assert last_ok[0] <= exited


def test_trickling_sockets_lose_their_upload_slots_to_other_requests(server_process):
    # the upload trickle, scaled down: 12 sockets trickling a byte every 0.5 s against 8 upload slots (140 against 128
    # in the issue); one shared pool answered every other request 429
    server = server_process({"ROICONV_MAX_UPLOADS": "8"})
    body, ctype = _multipart(IMG)
    result = asyncio.run(trickle(server.url, body, ctype, sockets=12, requests=10, seconds=6))
    assert result.statuses[200] >= 8 and result.reconnects > 12, result
