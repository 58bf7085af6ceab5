"""Load test: ``python -m service.bench.load --url URL --concurrency C --requests N [--compare-batching] [--targets]``.

Sends POST /convolve requests (a 256×256 RGB PNG, a 10% box ROI, gaussian ksize 9) from C concurrent clients,
bounded by N requests and ``--max-seconds``, and prints throughput, p50/p95/p99 latency and the status counts.
Only loopback URLs are accepted. ``--compare-batching`` starts the server itself twice (a real uvicorn process,
ROICONV_MAX_BATCH=1, then the default) and prints the throughput ratio; ``--targets`` measures the service's load
targets (batching ratio, latency at concurrency 1 against the in-process time, 4x overload).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np

from .harness import serve

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SPEC = {"filter": {"name": "gaussian", "ksize": 9}, "roi": {"boxes": [[88, 88, 169, 169]]}}  # 81² / 256² = 10.0%


def make_image(size: int = 256, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 0)
    return cv2.imencode(".png", img)[1].tobytes()


def make_body(image: bytes, spec: dict) -> tuple[bytes, str]:
    """A ready multipart body, built once so the client spends little CPU per request."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{json.dumps(spec)}\r\n'.encode(),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def make_raw(image: bytes, spec: dict) -> tuple[bytes, dict[str, str]]:
    """The raw form of the same request, as :class:`service.client.Client` sends it: the image file as the body, the
    spec in ``X-Spec``; the second item is the headers (``load`` takes them in place of a content type)."""
    return image, {"content-type": "application/octet-stream", "x-spec": json.dumps(spec)}


@dataclass
class Result:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    rejected_latencies: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        values = sorted(self.latencies if values is None else values)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]

    def summary(self) -> str:
        mean_batch = statistics.fmean(self.batch_sizes) if self.batch_sizes else 0.0
        line = (
            f"requests={sum(self.statuses.values())} ok={self.ok} throughput={self.throughput:.1f} req/s "
            f"p50={self.pct(50) * 1000:.1f} ms p95={self.pct(95) * 1000:.1f} ms p99={self.pct(99) * 1000:.1f} ms "
            f"mean_batch={mean_batch:.2f} statuses={dict(sorted(self.statuses.items()))}"
        )
        if self.rejected_latencies:
            line += f" 429_p50={self.pct(50, self.rejected_latencies) * 1000:.1f} ms"
            line += f" 429_max={max(self.rejected_latencies) * 1000:.1f} ms"
        return line


async def load(
    url: str, concurrency: int, requests: int, max_seconds: float, body: bytes, ctype: str | dict[str, str]
) -> Result:
    """Run the load: ``concurrency`` clients share ``requests`` POSTs, stopping after ``max_seconds``; ``ctype`` is
    the content type, or the request's headers (:func:`make_raw`)."""
    result = Result()
    headers = ctype if isinstance(ctype, dict) else {"content-type": ctype}
    remaining = requests
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() - start < max_seconds:
            remaining -= 1
            t = time.perf_counter()
            try:
                r = await client.post("/convolve", content=body, headers=headers)
                status = str(r.status_code)
            except httpx.HTTPError as exc:
                status, r = type(exc).__name__, None
            dt = time.perf_counter() - t
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == "200":
                result.latencies.append(dt)
                result.batch_sizes.append(int(r.headers.get("x-batch-size", 0)))
            elif status == "429":
                result.rejected_latencies.append(dt)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await asyncio.gather(*[client_loop(client) for _ in range(concurrency)])
    result.seconds = time.perf_counter() - start
    return result


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in _LOOPBACK:
        raise SystemExit(f"loadtest: only loopback URLs are allowed (127.0.0.1, localhost, ::1), got {host!r}")


def _run(url: str, concurrency: int, requests: int, max_seconds: float, body: bytes, ctype: str) -> Result:
    asyncio.run(load(url, concurrency, min(concurrency * 2, requests), max_seconds, body, ctype))  # warm-up
    return asyncio.run(load(url, concurrency, requests, max_seconds, body, ctype))


def compare_batching(args, body: bytes, ctype: str) -> tuple[Result, Result]:
    results = []
    for label, env in (("unbatched (ROICONV_MAX_BATCH=1)", {"ROICONV_MAX_BATCH": "1"}), ("batched (default)", {})):
        with serve({"ROICONV_DEVICES": "cpu", **env}) as url:
            r = _run(url, args.concurrency, args.requests, args.max_seconds, body, ctype)
        print(f"{label}: {r.summary()}", flush=True)
        results.append(r)
    ratio = results[1].throughput / results[0].throughput if results[0].throughput else float("inf")
    print(f"batching throughput ratio (batched / unbatched) = {ratio:.2f}x", flush=True)
    return results[0], results[1]


def in_process_seconds(image: bytes, repeats: int = 50) -> float:
    """Median in-process decode + convolve + encode time of the load test's request (no HTTP)."""
    import torch

    from ..imaging.pipeline import encode_result, prepare, run_opencv
    from ..imaging.spec import Spec
    from ..imaging.torch_engine import run_batch
    from ..server.app import set_cpu_threads

    set_cpu_threads(["cpu"], 1)  # the server's thread setting, for a fair comparison
    spec = Spec.model_validate(SPEC)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        p = prepare(spec, image, None, 10**8)
        out = run_opencv(p) if p.engine == "opencv" else run_batch(p.op, [p.work], torch.device("cpu"))[0]
        encode_result(out, p)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compute_batch_gain(image: bytes, size: int = 16, repeats: int = 5) -> tuple[float, float]:
    """In-process compute only: seconds for ``size`` requests as one batch and as ``size`` single batches."""
    import torch

    from ..imaging.pipeline import prepare
    from ..imaging.spec import Spec
    from ..imaging.torch_engine import run_batch

    p = prepare(Spec.model_validate(SPEC), image, None, 10**8, prefer_torch=True)  # the batched engine
    works, cpu = [p.work] * size, torch.device("cpu")
    run_batch(p.op, works, cpu)
    one, single = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        run_batch(p.op, works, cpu)
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        for w in works:
            run_batch(p.op, [w], cpu)
        single.append(time.perf_counter() - t)
    return statistics.median(one), statistics.median(single)


def targets(args, body: bytes, ctype: str, image: bytes) -> None:
    unbatched, batched = compare_batching(args, body, ctype)
    ratio = batched.throughput / unbatched.throughput if unbatched.throughput else float("inf")
    print(f"target batched >= 1.5x unbatched: {ratio:.2f}x -> {'met' if ratio >= 1.5 else 'missed'}")
    failures = sum(v for k, v in batched.statuses.items() if k != "200") + sum(
        v for k, v in unbatched.statuses.items() if k != "200"
    )
    print(f"target no failures below the queue limit: {failures} failures -> {'met' if not failures else 'missed'}")
    with serve({"ROICONV_DEVICES": "cpu"}) as url:
        single = _run(url, 1, max(50, args.requests // 4), args.max_seconds, body, ctype)
    base = in_process_seconds(image)
    ratio1 = single.pct(50) / base
    print(f"concurrency 1: {single.summary()}")
    print(f"in-process decode+convolve+encode median = {base * 1000:.2f} ms; HTTP p50 / in-process = {ratio1:.2f}x")
    print(f"target p50 within 1.3x of in-process: {'met' if ratio1 <= 1.3 else 'missed'}")
    one, single = compute_batch_gain(image)
    print(
        f"compute only, 16 requests: one batch {one * 1000:.1f} ms, 16 single batches {single * 1000:.1f} ms "
        f"({single / one:.2f}x); compute is {single / 16 / base:.0%} of the in-process request time"
    )
    queue = 16
    overload = 4 * (queue + 16)  # 4x what the server holds: MAX_QUEUE waiting + MAX_BATCH computing
    with serve({"ROICONV_DEVICES": "cpu", "ROICONV_MAX_QUEUE": str(queue)}) as url:
        over = asyncio.run(load(url, overload, overload * 4, args.max_seconds, body, ctype))
    others = {k: v for k, v in over.statuses.items() if k not in ("200", "429")}
    prompt = over.pct(99, over.rejected_latencies) if over.rejected_latencies else float("nan")
    print(f"overload (concurrency {overload}, MAX_QUEUE={queue}): {over.summary()}")
    verdict = "met" if over.rejected_latencies and not others and over.ok and prompt < over.pct(50) else "missed"
    print(f"target 4x overload -> 429 promptly (p99 {prompt * 1000:.1f} ms), the rest succeed: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="server URL (loopback only), e.g. http://127.0.0.1:8000")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop issuing requests after this long")
    parser.add_argument("--compare-batching", action="store_true", help="start the server twice and compare")
    parser.add_argument(
        "--targets", action="store_true", help="measure the load targets (batching, concurrency-1 latency, overload)"
    )
    args = parser.parse_args(argv)
    if not (1 <= args.concurrency <= 1024 and 1 <= args.requests <= 100_000 and 0 < args.max_seconds <= 3600):
        parser.error("need 1 <= concurrency <= 1024, 1 <= requests <= 100000, 0 < max-seconds <= 3600")
    image = make_image()
    body, ctype = make_body(image, SPEC)
    if args.targets:
        targets(args, body, ctype, image)
        return 0
    if args.compare_batching:
        compare_batching(args, body, ctype)
        return 0
    if args.url is None:
        parser.error("--url is required unless --compare-batching or --targets is given")
    check_loopback(args.url)
    r = asyncio.run(load(args.url, args.concurrency, args.requests, args.max_seconds, body, ctype))
    print(r.summary())
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
