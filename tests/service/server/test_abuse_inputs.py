"""The standing abuse suite, inputs that were 500s or silent inf/NaN, and the informational items:
each answered 4xx naming the field; the page unframable; /info and /metrics behind the API key; Host check."""

from __future__ import annotations

import numpy as np
import pytest
from crafted import float_tiff
from service_support import client_for, encode, post, rand_image, run, running, settings

from service.server.app import create_app

KERNEL_31 = np.zeros((3, 3, 31, 31)).tolist()
CASES = {
    "jpeg one pixel wider than libjpeg allows": (
        encode(rand_image(1, 65501, c=1)),
        {"filter": {"name": "box", "ksize": 1}, "format": "jpeg"},
        "spec.format",
    ),
    **{
        f"3x3x31x31 kernel on {n}x{n}, {border}": (
            encode(rand_image(n, n)),
            {"filter": {"name": "kernel", "weights": KERNEL_31}, "border": border},
            "spec.filter.weights",
        )
        for n in (1, 10)
        for border in ("reflect101", "reflect", "wrap")
    },
    "box of 3e38 without normalizing: inf": (
        float_tiff(8, 8, 3e38),
        {"filter": {"name": "box", "ksize": 3, "normalize": False}},
        "spec.filter",
    ),
    "laplacian ksize 31 scale 1e6: NaN": (
        float_tiff(40, 40, 1e30),
        {"filter": {"name": "laplacian", "ksize": 31, "scale": 1e6}},
        "spec.filter",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_former_500s_and_non_finite_results_are_422_naming_the_field(name):
    image, spec, field = CASES[name]

    async def main():
        async with running() as (_, client):
            return await post(client, image, spec)

    r = run(main())
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_the_largest_jpeg_and_finite_float_results_are_still_served():
    async def main():
        async with running() as (_, client):
            wide = await post(client, encode(rand_image(1, 65500, c=1)), {"filter": {"name": "box", "ksize": 1}})
            flat = await post(client, float_tiff(8, 8, 1e30), {"filter": {"name": "box", "ksize": 3}})
            return wide, flat

    for r in run(main()):
        assert r.status_code == 200, r.text


def test_info_and_metrics_need_the_key_when_one_is_set_and_prometheus_can_send_it_as_a_bearer():
    async def main():
        async with running(api_key="s3cret") as (_, client):
            bare = [await client.get(p) for p in ("/info", "/metrics")]
            wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
            keyed = [await client.get("/info", headers={"X-API-Key": "s3cret"})]
            keyed.append(await client.get("/metrics", headers={"Authorization": "Bearer s3cret"}))
            open_ = [await client.get(p) for p in ("/livez", "/readyz", "/filters", "/")]
            return bare, wrong, keyed, open_

    bare, wrong, keyed, open_ = run(main())
    assert [r.status_code for r in bare + [wrong]] == [401, 401, 401]
    assert [r.status_code for r in keyed + open_] == [200] * 6


def test_every_response_forbids_framing_and_sniffing():
    async def main():
        async with running() as (_, client):
            return [await client.get(p) for p in ("/", "/docs", "/livez")] + [await client.get("/nope")]

    for r in run(main()):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert r.headers["x-frame-options"] == "DENY"


def test_allowed_hosts_refuses_a_rebound_name_with_400_naming_host():
    async def main():
        app = create_app(settings(allowed_hosts="localhost, 127.0.0.1,::1"))
        async with client_for(app, wait_ready=False) as client:
            hosts = ["evil.example:8000", "localhost:8000", "127.0.0.1", "[::1]:8000"]
            return [await client.get("/livez", headers={"Host": h}) for h in hosts]

    evil, *ok = run(main())
    assert evil.status_code == 400 and evil.json()["field"] == "Host"
    assert [r.status_code for r in ok] == [200, 200, 200]
