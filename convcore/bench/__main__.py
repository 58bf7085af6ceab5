"""``python -m convcore.bench [conv|ops|network|fused|incremental|peers|rects] [options]``: "conv" by default."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "conv": ("convcore.bench.conv", "roi_conv2d vs dense F.conv2d (the default)"),
    "ops": ("convcore.bench.ops", "the generalized window ops vs the recipes they replace"),
    "network": ("convcore.bench.network", "whole-network ROI execution"),
    "fused": ("convcore.bench.fused", "the fused GPU kernel"),
    "incremental": ("convcore.bench.incremental", "re-running a network only where its input changed"),
    "peers": ("convcore.bench.peers", "AdderNet, Kervolution, kornia-style morphology: the unfold layers vs convcore"),
    "rects": ("convcore.bench.rects", "a few boxes in a 4K image: a RectRoi vs a dense mask vs F.conv2d"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(__doc__.strip(), "\n")
        for name, (_, what) in SUBCOMMANDS.items():
            print(f"  {name:8s} {what}")
        print("\n`python -m convcore.bench SUBCOMMAND --help` lists a subcommand's options.")
        return 0
    name = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "conv"
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise
        print(f"python -m convcore.bench {name}: {module_name} is not part of this installation", file=sys.stderr)
        return 2
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
