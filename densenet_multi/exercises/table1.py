"""Exercise 4: the paper's Table 1 variants, from the spec's presets.

DenseNet-121, -169, -201 and -264 (k = 32, 64 stem filters) and DenseNet-161
(k = 48, 96 stem filters) are presets of :mod:`densenet_multi.spec`, and every
backend builds them from those. For each: its blocks, depth, widths, output size
of every stage at 224x224, parameters and multiply-accumulates, next to
torchvision's figures for the four torchvision ships (its model builders'
parameter counts and its weights' ``_ops`` metadata, which is MACs in units of
1e9). The paper's Table 1 itself gives the layout, not the counts. Run in any env::

    python -m densenet_multi.exercises.table1 --out docs/exercises
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..spec import get_spec
from . import command_line, environment, write_json
from .resnet import densenet_depth

__all__ = ["VARIANTS", "TORCHVISION_PARAMS", "TORCHVISION_GMACS", "variant_row", "run", "main"]

VARIANTS = ("densenet121", "densenet169", "densenet201", "densenet264", "densenet161")

#: sum(p.numel()) of torchvision.models.<name>(weights=None) (torchvision 0.29);
#: tests/torch/test_exercises_zoo.py checks these against torchvision itself.
TORCHVISION_PARAMS = {"densenet121": 7_978_856, "densenet161": 28_681_000,
                      "densenet169": 14_149_480, "densenet201": 20_013_928}
#: torchvision's DenseNet<N>_Weights.IMAGENET1K_V1.meta["_ops"] (GMACs at 224x224).
TORCHVISION_GMACS = {"densenet121": 2.834, "densenet161": 7.728, "densenet169": 3.36,
                     "densenet201": 4.291}


def variant_row(name: str, size: int = 224) -> dict[str, Any]:
    """One preset's row: layout, depth, widths, stage sizes, parameters, MACs."""
    spec = get_spec(name)
    plan = spec.channel_plan
    shapes = spec.stage_shapes(size)
    return {
        "name": name,
        "depth": densenet_depth(spec),
        "growth_rate": spec.growth_rate,
        "num_init_features": spec.num_init_features,
        "blocks": list(spec.block_config),
        "block_out": [b.out_channels for b in plan.blocks],
        "transition_out": [t.out_channels for t in plan.transitions],
        "final_channels": plan.final_channels,
        "stage_sizes": {k: v[1] for k, v in shapes.items() if len(v) == 3 and k != "features"},
        "params": spec.num_params(),
        "macs": spec.macs(size),
        "torchvision_params": TORCHVISION_PARAMS.get(name),
        "torchvision_gmacs": TORCHVISION_GMACS.get(name),
    }


def run(size: int = 224) -> dict[str, Any]:
    return {"exercise": "table1", "size": size, "variants": [variant_row(n, size) for n in VARIANTS],
            "environment": environment()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.exercises.table1",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for table1.json")
    args = p.parse_args(argv)
    result = run()
    result["command"] = command_line("table1", argv)
    path = write_json(result, args.out / "table1.json")
    for r in result["variants"]:
        print(f"{r['name']:12s} depth {r['depth']:3d}  k={r['growth_rate']:2d}  "
              f"{r['params']:>11,d} params  {r['macs'] / 1e9:5.2f} GMACs")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
