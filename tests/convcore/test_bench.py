"""The benchmarks run (tiny sizes, no timing assertions): masks, the conv and ops tables, the busy mode."""

from __future__ import annotations

import time

import pytest
import torch

from convcore.bench.__main__ import main as bench_main
from convcore.bench.conv import format_report, run_roi
from convcore.bench.measure import box_mask, busy_cpu, measure, pixel_mask


@pytest.mark.parametrize("coverage", [0.01, 0.1, 0.3, 0.6])
def test_bench_masks_have_the_requested_coverage(coverage):
    assert box_mask(1024, coverage, torch.device("cpu")).float().mean().item() == pytest.approx(coverage, rel=0.02)
    assert pixel_mask(1024, coverage, torch.device("cpu")).float().mean().item() == pytest.approx(coverage, rel=0.05)


def test_bench_runs_and_reports_every_case():
    report = run_roi(torch.device("cpu"), size=64, channels=4, rounds=1)
    cases = {r["case"] for r in report["rows"]}
    assert cases == {"box 1%", "box 10%", "box 30%", "box 60%", "box 100%", "pixels 1%"}
    methods = {r["method"] for r in report["rows"] if r["case"] == "box 10%"}
    assert {"dense", "unfold recipe", "windows out=", "tiles", "auto out="} <= methods
    assert all(r["ms"] > 0 and r["speedup_vs_dense"] > 0 for r in report["rows"])
    text = format_report(report, [])
    assert "| box 60% | auto out= |" in text


def test_box_mask_with_one_box_is_centred():
    m = box_mask(10, 0.36, torch.device("cpu"), boxes=1)
    assert int(m.sum()) == 36 and bool(m[2:8, 2:8].all())


def test_measure_returns_medians_for_one_or_many():
    calls = []
    assert measure(lambda: calls.append(time.sleep(0.02)), rounds=3) >= 0.02  # seconds of one call (sleep's floor)
    assert len(calls) == 4  # one warm-up, then one call per round
    assert set(measure({"a": lambda: None, "b": lambda: None}, rounds=2)) == {"a", "b"}


def test_busy_cpu_starts_and_stops_its_spinners():
    with busy_cpu(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


def test_conv_busy_mode_smoke(capsys):
    assert bench_main(["conv", "--size", "32", "--channels", "2", "--rounds", "1", "--no-large", "--busy", "1"]) == 0
    out = capsys.readouterr().out
    assert "quiet vs busy (1 spinning process)" in out
    assert "| box 1% | auto out= |" in out.split("quiet vs busy")[1]


def test_ops_busy_mode_smoke(capsys):
    args = ["ops", "--size", "16", "--rounds", "1", "--only", "offset", "--busy", "1"]
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    assert "| offset_conv2d | × recipe |" in out


@pytest.mark.parametrize("name", ["network", "fused"])
def test_missing_subcommands_say_so(name, capsys, monkeypatch):
    import convcore.bench.__main__ as entry

    monkeypatch.setitem(entry.SUBCOMMANDS, name, ("convcore.no_such_module.bench", "missing"))
    assert bench_main([name]) == 2
    assert "is not part of this installation" in capsys.readouterr().err


def test_rects_bench_prints_every_row(capsys):
    assert bench_main(["rects", "--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("| F.conv2d (whole image) |", "| roi_conv2d, mask (built) |", "| roi_conv2d, RectRoi | "):
        assert row in out
