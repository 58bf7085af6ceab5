"""``model:<name>`` from torch.export programs (``.pt2`` + sidecar ``.json``), run through roi_network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from service_support import create_app, decode, encode, post, rand_image, run, running, settings
from torch.export import Dim

import convcore
from service.imaging.networks import ServedModel, load_models

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


class Net(torch.nn.Module):
    """conv-BN-ReLU, a strided conv, bilinear upsampling back and a residual: a receptive field of many pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.b = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c = torch.nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            self.a[1].running_mean.uniform_(-0.2, 0.2)
            self.a[1].running_var.uniform_(0.5, 1.5)
            for conv in (self.a[0], self.b, self.c):
                conv.weight.mul_(0.5)
        self.eval()

    def forward(self, x):
        y = self.b(self.a(x))
        y = torch.nn.functional.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        return x + 0.1 * self.c(y)


def _export(tmp_path, name: str = "net", sidecar: dict | None = None) -> Net:
    model = Net()
    ep = torch.export.export(model, (torch.rand(1, 3, 24, 24),), dynamic_shapes=({2: Dim.AUTO, 3: Dim.AUTO},))
    torch.export.save(ep, str(tmp_path / f"{name}.pt2"))
    if sidecar is not None:
        (tmp_path / f"{name}.json").write_text(json.dumps(sidecar))
    return model


def _dense_reference(model: Net, img: np.ndarray) -> np.ndarray:
    """The sidecar's transform written out: BGR → RGB, /255, mean/std; the model; back; RGB → BGR; rounded."""
    rgb = img[:, :, ::-1].astype(np.float32) / 255
    x = (torch.from_numpy(rgb.copy()).permute(2, 0, 1) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
        3, 1, 1
    )
    with torch.no_grad():
        y = model(x[None])[0]
    y = (y * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)) * 255
    return np.clip(np.rint(y.permute(1, 2, 0).numpy()[:, :, ::-1]), 0, 255)


def test_exported_model_equals_the_dense_model_inside_the_roi(tmp_path):
    model = _export(tmp_path, sidecar={"color": "rgb", "mean": MEAN, "std": STD, "output": "image"})
    img = rand_image(37, 45)
    spec = {"filter": {"name": "model:net"}, "roi": {"boxes": [[4, 6, 20, 19], [30, 25, 45, 37]]}}

    async def main():
        async with running(models_dir=tmp_path) as (_, client):
            catalog = (await client.get("/filters")).json()
            return catalog, await post(client, encode(img), spec)

    catalog, r = run(main())
    assert "model:net" in catalog
    assert r.status_code == 200, r.text
    out = decode(r.content)
    ref = _dense_reference(model, img)
    inside = np.zeros((37, 45), bool)
    inside[6:19, 4:20] = True
    inside[25:37, 30:45] = True  # touches the bottom and right borders
    assert np.abs(out[inside].astype(float) - ref[inside]).max() <= 1
    assert np.array_equal(out[~inside], img[~inside])


def test_loaded_program_runs_through_roi_network_in_the_sidecar_mode(tmp_path):
    _export(tmp_path, "ex")
    _export(tmp_path, "ma", {"roi_mode": "masked"})
    _export(tmp_path, "de", {"roi_mode": "dense", "color": "bgr"})
    loaded = load_models({n: tmp_path / f"{n}.pt2" for n in ("ex", "ma", "de")}, ["cpu"])["cpu"]
    assert all(isinstance(m, ServedModel) for m in loaded.values())
    assert isinstance(loaded["ex"].net, convcore.RoiNetwork) and loaded["ex"].net.mode == "exact"
    assert loaded["ma"].net.mode == "masked"
    assert loaded["de"].net is None
    # the cost follows the ROI: a small box computes a small share of the convolutions
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, 10:20, 10:20] = True
    assert loaded["ex"].net.plan(mask, (1, 3, 64, 64)).mac_fraction < 0.2


def test_invalid_sidecar_stops_startup_naming_the_field(tmp_path):
    _export(tmp_path, sidecar={"color": "rgb", "mean": [0.5, 0.5]})
    app = create_app(settings(models_dir=tmp_path))

    async def main():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match=r"net\.json is not a valid model sidecar.*mean"):
        run(main())


def test_torchscript_file_is_still_served_dense(tmp_path, caplog):
    model = Net()
    torch.jit.script(model).save(str(tmp_path / "old.pt"))
    with caplog.at_level("WARNING", logger="roiconv.models"):
        loaded = load_models({"old": tmp_path / "old.pt"}, ["cpu"])["cpu"]
    assert not isinstance(loaded["old"], ServedModel)
    assert "deprecated" in caplog.text and "old.pt2" in caplog.text
