"""``model:<name>``: TorchScript CNNs from MODELS_DIR, run over the ROI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from service_support import create_app, decode, encode, post, rand_image, run, running, settings

from service.server.settings import SettingsError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        torch.manual_seed(0)
        torch.nn.init.uniform_(self.conv.weight, 0, 0.1)
        torch.nn.init.constant_(self.conv.bias, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


@pytest.fixture
def models_dir(tmp_path):
    torch.jit.script(Tiny()).save(str(tmp_path / "tiny.pt"))
    return tmp_path


def test_model_runs_inside_the_roi(models_dir):
    img = rand_image(30, 40)

    async def main():
        async with running(models_dir=models_dir) as (_, client):
            catalog = (await client.get("/filters")).json()
            r = await post(client, encode(img), {"filter": {"name": "model:tiny"}, "roi": {"boxes": [[5, 5, 25, 20]]}})
            return catalog, r

    catalog, r = run(main())
    assert "model:tiny" in catalog
    assert r.status_code == 200, r.text
    out = decode(r.content)
    module = torch.jit.load(str(models_dir / "tiny.pt"))
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = np.clip(np.rint(module(x)[0].permute(1, 2, 0).numpy() * 255), 0, 255)
    inside = np.zeros((30, 40), bool)
    inside[5:20, 5:25] = True
    assert np.abs(out[inside].astype(float) - ref[inside]).max() <= 1
    assert np.array_equal(out[~inside], img[~inside])


def test_model_with_the_wrong_output_shape_fails_that_request_only(tmp_path):
    class Shrink(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 1:, 1:]

    torch.jit.script(Shrink()).save(str(tmp_path / "shrink.pt"))

    async def main():
        async with running(models_dir=tmp_path) as (_, client):
            bad = await post(client, encode(rand_image(20, 20)), {"filter": {"name": "model:shrink"}})
            good = await post(client, encode(rand_image(20, 20)), {"filter": {"name": "box"}})
            return bad, good

    bad, good = run(main())
    assert bad.status_code == 500 and "must return" in bad.json()["reason"]
    assert good.status_code == 200


def test_unloadable_model_file_stops_startup(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a torchscript archive")
    app = create_app(settings(models_dir=tmp_path))

    async def main():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="broken.pt is not a loadable TorchScript model"):
        run(main())


def test_models_dir_must_exist():
    with pytest.raises((SettingsError, ValueError)):
        create_app(settings(models_dir="/no/such/folder"))
