"""POST /convolve with the image file as the body (``application/octet-stream``) and the spec JSON in ``X-Spec``:
the same answer as multipart, byte for byte, and the same errors naming the field; the client sends it and falls
back to multipart against a server that reads only multipart."""

from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import pytest
from service_support import encode, post, rand_image, run, running

from service.client import AsyncClient

SPEC = {"filter": {"name": "gaussian", "ksize": 9}, "roi": {"boxes": [[10, 5, 50, 40]]}}


def raw(client, image: bytes, spec, **headers):
    text = spec if isinstance(spec, str) else json.dumps(spec)
    return client.post(
        "/convolve", content=image, headers={"Content-Type": "application/octet-stream", "X-Spec": text, **headers}
    )


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_a_raw_body_answers_as_multipart_does(ext):
    image = encode(rand_image(48, 64), ext)

    async def go():
        async with running() as (_, client):
            return await raw(client, image, SPEC), await post(client, image, SPEC)

    got, want = run(go())
    assert got.status_code == want.status_code == 200, got.text
    assert got.content == want.content and got.headers["content-type"] == want.headers["content-type"]
    decoded = cv2.imdecode(np.frombuffer(got.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (48, 64, 3)


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        (b"", {}, 422, "image"),
        (b"x", {"X-Spec": "not json"}, 422, "spec"),
        (None, {"X-Spec": json.dumps({**SPEC, "filter": {"name": "gaussian", "ksize": 4}})}, 422, "spec.filter.ksize"),
        (None, {"X-Spec": json.dumps({**SPEC, "pad": "x" * 1100})}, 413, "spec"),
    ],
)
def test_raw_body_errors_name_the_field(body, headers, status, field):
    image = encode(rand_image(48, 64), ".png") if body is None else body

    async def go():
        async with running(max_spec_bytes=1024) as (_, client):
            return await raw(client, image, SPEC, **headers)

    response = run(go())
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


def test_a_raw_body_without_its_spec_header_is_refused_naming_the_spec():
    async def go():
        async with running() as (_, client):
            return await client.post(
                "/convolve", content=b"\x89PNG", headers={"Content-Type": "application/octet-stream"}
            )

    response = run(go())
    assert response.status_code == 422 and response.json()["field"] == "spec"


class _Recording(httpx.AsyncBaseTransport):
    """The app through ASGITransport, recording each request's content type; ``refuse_raw`` answers a raw body as
    a multipart-only server does."""

    def __init__(self, app, refuse_raw: bool) -> None:
        self.inner, self.refuse_raw, self.seen = httpx.ASGITransport(app=app), refuse_raw, []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctype = request.headers.get("content-type", "").split(";")[0]
        self.seen.append(ctype)
        if self.refuse_raw and ctype == "application/octet-stream":
            body = {"error": "invalid_request", "field": "body", "reason": "multipart only", "errors": []}
            return httpx.Response(422, json=body)
        return await self.inner.handle_async_request(request)


def test_the_client_sends_raw_bodies_and_falls_back_to_multipart():
    image = encode(rand_image(48, 64), ".png")

    async def go(refuse_raw: bool):
        async with running() as (app, client):
            want = await post(client, image, SPEC)
            transport = _Recording(app, refuse_raw)
            async with AsyncClient("http://test", transport=transport) as ours:
                body, _ = await ours.convolve_file(image, SPEC)
            return body, want.content, transport.seen

    body, want, seen = run(go(False))
    assert seen == ["application/octet-stream"] and body == want
    body, want, seen = run(go(True))
    assert seen == ["application/octet-stream", "multipart/form-data"] and body == want


def test_a_raw_body_over_the_body_limit_is_refused_naming_the_body():
    image = encode(rand_image(300, 400), ".png")  # about 360 KB

    async def go():
        async with running(max_body_bytes=64 * 1024) as (_, client):
            return await raw(client, image, SPEC)

    response = run(go())
    assert response.status_code == 413 and response.json()["field"] == "body"

    async def chunks():  # no Content-Length: the limit is found while the body streams in
        for i in range(0, len(image), 16384):
            yield image[i : i + 16384]

    async def streamed():
        async with running(max_body_bytes=64 * 1024) as (_, client):
            headers = {"Content-Type": "application/octet-stream", "X-Spec": json.dumps(SPEC)}
            return await client.post("/convolve", content=chunks(), headers=headers)

    response = run(streamed())
    assert response.status_code == 413 and response.json()["field"] == "body"
