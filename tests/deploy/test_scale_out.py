"""Scale-out for real, on loopback: two server replicas behind a real nginx configured from docker/nginx.conf, a
bounded load through nginx, and one replica stopped in the middle of it (SIGTERM: it drains; SIGKILL: it vanishes).
Every request must still get 200 and the right image — nginx retries what the stopped replica did not answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from deploy_support import ROOT, dockerfile_instructions, nginx_template, pyproject, render_nginx

pytestmark = pytest.mark.slow

N_REQUESTS = 120
CONCURRENCY = 8
STOP_AFTER = 40  # responses received before one replica is stopped
LOAD_DEADLINE_S = 90.0
START_DEADLINE_S = 90.0
DRAIN_TIMEOUT_S = 10.0  # ROICONV_DRAIN_TIMEOUT_S of the replicas; a stopped replica must be gone well within it

# Four different requests, so that a response given to the wrong request is caught, not only a missing one.
VARIANTS = [
    {"filter": {"name": "gaussian", "ksize": 5}, "roi": {"boxes": [[8, 6, 40, 30]]}},
    {"filter": {"name": "gaussian", "ksize": 3}, "roi": {"boxes": [[4, 4, 20, 20]]}},
    {"filter": {"name": "gaussian", "ksize": 7}, "roi": {"boxes": [[20, 10, 44, 34]]}},
    {"filter": {"name": "gaussian", "ksize": 5}, "roi": {"boxes": [[10, 12, 30, 20], [30, 2, 46, 16]]}},
]


# ---- nginx -------------------------------------------------------------------------------------------------------


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    for candidate in (found, "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _install_nginx() -> str:
    """apt-get install nginx-light (the Debian package .ci/run installs), updating the package lists if needed."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return "cannot install: no apt-get or not root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "nginx-light"]
    log = []
    for cmd in (install, ["apt-get", "update", "-qq"], install):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            log.append(f"{' '.join(cmd)}: timed out")
            continue
        log.append(f"{' '.join(cmd)}: rc={done.returncode} {done.stderr.strip()[-300:]}")
        if cmd is install and done.returncode == 0 and _find_nginx():
            break
    return "\n".join(log)


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    path = _find_nginx()
    log = ""
    if path is None:
        log = _install_nginx()
        path = _find_nginx()
    if path is None:
        message = f"nginx is needed for the scale-out test and could not be installed:\n{log}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _nginx_conf(nginx_bin: str, tmp: Path, listen_port: int, upstreams: list[str]) -> Path:
    """The repository's template rendered for loopback, with nginx's scratch paths moved into ``tmp``."""
    from service.server.settings import Settings

    conf = render_nginx(
        nginx_template(),
        {
            "NGINX_LISTEN": f"127.0.0.1:{listen_port}",
            "NGINX_MAX_BODY_SIZE": str(Settings.model_fields["max_body_bytes"].default),
        },
        upstreams,
    )
    built = subprocess.run([nginx_bin, "-V"], capture_output=True, text=True, timeout=10).stderr
    scratch = []
    for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in built:
            (tmp / module).mkdir()
            scratch.append(f"    {module}_temp_path {tmp / module};")
    assert conf.count("\nhttp {\n") == 1, "the template must have one top-level http block"
    conf = conf.replace("\nhttp {\n", "\nhttp {\n" + "\n".join(scratch) + "\n", 1)
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


# ---- processes ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    port: int

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def _spawn(name: str, argv: list[str], tmp: Path, port: int, env: dict | None = None) -> Proc:
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(name, popen, log, port)


def _replica_argv(port: int) -> list[str]:
    """The image's command (ENTRYPOINT console script + arguments), with a loopback host and a free port."""
    final = [i for i in dockerfile_instructions() if i.keyword == "ENTRYPOINT"][-1].exec_form()
    module, _, func = pyproject()["project"]["scripts"][final[0]].partition(":")
    launcher = f"import sys; from {module} import {func}; sys.exit({func}(sys.argv[1:]))"
    return [sys.executable, "-c", launcher, *final[1:], "--host", "127.0.0.1", "--port", str(port)]


def _replica_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROICONV_")}
    env.update(
        ROICONV_DEVICES="cpu",
        ROICONV_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S),
        ROICONV_LOG_LEVEL="warning",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_http(proc: Proc, path: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode} while starting:\n{proc.tail()}")
        try:
            r = httpx.get(f"http://127.0.0.1:{proc.port}{path}", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    pytest.fail(f"{proc.name} not answering 200 on {path} after {deadline_s}s (last: {last}):\n{proc.tail()}")


@pytest.fixture
def cluster(nginx_bin, tmp_path):
    """Two replicas and nginx in front of them, all on 127.0.0.1; everything is stopped afterwards."""
    procs: list[Proc] = []
    try:
        replicas = []
        for n in range(2):
            port = _free_port()
            replicas.append(_spawn(f"replica{n}", _replica_argv(port), tmp_path, port, _replica_env()))
        procs.extend(replicas)
        for replica in replicas:
            _wait_http(replica, "/readyz", START_DEADLINE_S)
        listen = _free_port()
        conf = _nginx_conf(nginx_bin, tmp_path, listen, [f"127.0.0.1:{r.port}" for r in replicas])
        globals_ = f"daemon off; pid {tmp_path / 'nginx.pid'};" + (" user root;" if os.geteuid() == 0 else "")
        argv = [nginx_bin, "-p", str(tmp_path), "-e", str(tmp_path / "nginx-error.log"), "-c", str(conf)]
        checked = subprocess.run([*argv, "-g", globals_, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, f"nginx -t rejects the rendered docker/nginx.conf:\n{checked.stderr}"
        nginx = _spawn("nginx", [*argv, "-g", globals_], tmp_path, listen)
        procs.append(nginx)
        _wait_http(nginx, "/livez", 30)
        yield replicas, nginx
    finally:
        for proc in reversed(procs):
            proc.stop(signal.SIGQUIT if proc.name == "nginx" else signal.SIGKILL)


# ---- requests ----------------------------------------------------------------------------------------------------


def _image() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)  # H=40, W=48, BGR


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _decode(body: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)


def _post(client: httpx.Client, png: bytes, spec: dict) -> httpx.Response:
    return client.post("/convolve", files={"image": ("in.png", png, "image/png")}, data={"spec": json.dumps(spec)})


def _expected_by_opencv(image: np.ndarray, spec: dict) -> np.ndarray:
    """OpenCV's Gaussian blur inside the boxes, the original outside (the service's documented contract)."""
    k = spec["filter"]["ksize"]
    blurred = cv2.GaussianBlur(image, (k, k), 0, borderType=cv2.BORDER_REFLECT_101)
    out = image.copy()
    for x0, y0, x1, y1 in spec["roi"]["boxes"]:
        out[y0:y1, x0:x1] = blurred[y0:y1, x0:x1]
    return out


def _references(replicas: list[Proc], png: bytes, image: np.ndarray) -> list[np.ndarray]:
    """Each variant asked of each replica directly before the load: the replicas agree, and agree with OpenCV."""
    refs = []
    for spec in VARIANTS:
        answers = []
        for replica in replicas:
            with httpx.Client(base_url=f"http://127.0.0.1:{replica.port}", timeout=30) as client:
                r = _post(client, png, spec)
            assert r.status_code == 200, f"{replica.name}: {r.status_code} {r.text[:300]}"
            answers.append(_decode(r.content))
        assert np.array_equal(answers[0], answers[1]), f"replicas disagree on {spec}"
        diff = np.abs(answers[0].astype(int) - _expected_by_opencv(image, spec).astype(int))
        assert diff.max() <= 1, f"{spec}: differs from OpenCV by {diff.max()}"
        assert not np.array_equal(answers[0], image), f"{spec}: the filter changed nothing"
        refs.append(answers[0])
    return refs


@dataclass
class Outcome:
    status: int | None
    body: bytes
    error: str = ""


async def _load(url: str, png: bytes, on_response) -> list[Outcome]:
    """N_REQUESTS POSTs of the variants in turn, CONCURRENCY at a time, within LOAD_DEADLINE_S."""
    outcomes: list[Outcome | None] = [None] * N_REQUESTS
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:

        async def one(i: int) -> None:
            spec = VARIANTS[i % len(VARIANTS)]
            async with gate:
                try:
                    r = await client.post(
                        "/convolve",
                        files={"image": ("in.png", png, "image/png")},
                        data={"spec": json.dumps(spec)},
                        headers={"X-Test-Request": str(i)},
                    )
                    outcomes[i] = Outcome(r.status_code, r.content, "" if r.status_code == 200 else r.text[:300])
                except httpx.HTTPError as exc:
                    outcomes[i] = Outcome(None, b"", repr(exc))
                on_response()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(N_REQUESTS))), LOAD_DEADLINE_S)
    return outcomes  # type: ignore[return-value]


_ACCESS = re.compile(r'"POST /convolve HTTP/[\d.]+" (\d+) .*upstream=\[([^\]]*)\] upstream_status=\[([^\]]*)\]')


def _access_log(nginx: Proc) -> list[tuple[int, list[str], list[str]]]:
    """(status, upstream addresses tried, their statuses) of every /convolve request nginx logged."""
    rows = []
    for line in nginx.log.read_text(errors="replace").splitlines():
        match = _ACCESS.search(line)
        if match:
            addrs = [a.strip() for a in re.split(r"[,:] (?=\d)", match.group(2))]
            statuses = [s.strip() for s in re.split(r"[,:] ", match.group(3))]
            rows.append((int(match.group(1)), addrs, statuses))
    return rows


# ---- the test ----------------------------------------------------------------------------------------------------


def test_docker_healthcheck_command_passes_against_a_live_replica(cluster):
    replicas, _ = cluster
    check = next(i for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK").exec_form()
    code = check[2].replace("127.0.0.1:8000", f"127.0.0.1:{replicas[0].port}")
    assert code != check[2], "the health check URL is not http://127.0.0.1:8000/..."
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20)
    assert ok.returncode == 0, ok.stderr.decode()[-500:]
    dead_code = code.replace(str(replicas[0].port), str(_free_port()))
    dead = subprocess.run([sys.executable, "-c", dead_code], capture_output=True, timeout=20)
    assert dead.returncode != 0, "the health check must fail when nothing answers"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_a_replica_mid_load_loses_no_request(cluster, sig):
    replicas, nginx = cluster
    image = _image()
    png = _png(image)
    refs = _references(replicas, png, image)
    victim, survivor = replicas
    logged_before = len(_access_log(nginx))

    done = 0
    stopped_at = None

    def on_response() -> None:
        nonlocal done, stopped_at
        done += 1
        if done == STOP_AFTER:
            stopped_at = len(_access_log(nginx))
            victim.popen.send_signal(sig)

    t0 = time.monotonic()
    outcomes = asyncio.run(_load(f"http://127.0.0.1:{nginx.port}", png, on_response))
    elapsed = time.monotonic() - t0
    assert stopped_at is not None, "the replica was never stopped"

    # The stopped replica is gone: drained and exited by itself (SIGTERM) or killed (SIGKILL).
    try:
        rc = victim.popen.wait(DRAIN_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{victim.name} still running {DRAIN_TIMEOUT_S + 10}s after {sig.name}:\n{victim.tail()}")
    if sig == signal.SIGTERM:
        assert rc == 0, f"{victim.name} exited with {rc} after SIGTERM (a drain should exit cleanly):\n{victim.tail()}"
    else:
        assert rc == -signal.SIGKILL

    # Every request answered 200 with the right image.
    failures = [(i, o.status, o.error) for i, o in enumerate(outcomes) if o is None or o.status != 200]
    assert not failures, f"{len(failures)} of {N_REQUESTS} requests failed: {failures[:10]}"
    wrong = [i for i, o in enumerate(outcomes) if not np.array_equal(_decode(o.body), refs[i % len(VARIANTS)])]
    assert not wrong, f"{len(wrong)} responses carry the wrong image: {wrong[:10]}"

    # What nginx saw: both replicas served, the stop hit live traffic, and nginx retried what it could not get.
    time.sleep(0.3)  # the access log line is written after the response
    rows = _access_log(nginx)[logged_before:]
    assert len(rows) == N_REQUESTS and all(status == 200 for status, _, _ in rows), rows[-10:]
    victim_addr, survivor_addr = f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"
    served = {
        addr: sum(1 for _, addrs, sts in rows if addrs[-1] == addr and sts[-1] == "200")
        for addr in (victim_addr, survivor_addr)
    }
    retried = [(addrs, sts) for _, addrs, sts in rows if len(sts) > 1]
    assert served[victim_addr] > 0 and served[survivor_addr] > 0, f"both replicas should have served: {served}"
    assert retried, "no request was retried: the stopped replica never saw traffic after the stop"
    assert all(addrs[-1] == survivor_addr for addrs, _ in retried), f"retries must end on the survivor: {retried}"
    first_try = sorted({sts[0] for _, sts in retried})
    print(
        f"\n{sig.name}: {N_REQUESTS} requests in {elapsed:.1f}s, all 200 and correct; served {served}; "
        f"{len(retried)} retried by nginx (first attempt statuses {first_try}); stop after {STOP_AFTER} responses"
    )


def test_a_raw_body_with_its_spec_header_passes_through_nginx(cluster):
    """The client's raw upload (the file as the body, the spec in X-Spec) reaches a replica through the load
    balancer whole: the answer equals the multipart one and OpenCV's."""
    _, nginx = cluster
    image, spec = _image(), VARIANTS[0]
    png = _png(image)
    with httpx.Client(base_url=f"http://127.0.0.1:{nginx.port}", timeout=30) as client:
        headers = {"Content-Type": "application/octet-stream", "X-Spec": json.dumps(spec)}
        raw = client.post("/convolve", content=png, headers=headers)
        multipart = _post(client, png, spec)
    assert raw.status_code == multipart.status_code == 200, raw.text[:300]
    assert raw.content == multipart.content
    diff = np.abs(_decode(raw.content).astype(int) - _expected_by_opencv(image, spec).astype(int))
    assert diff.max() <= 1
