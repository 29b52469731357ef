"""Exercise 2: why does DenseNet need fewer parameters than ResNet? Count both.

ResNet's counts come from a small function written from the ResNet paper's
architecture table (He et al., 2016, Table 1): a 7x7/2 stem conv with 64
filters and BatchNorm, a 3x3/2 max-pool, four stages of 64, 128, 256 and 512
filters at 56, 28, 14 and 7 pixels, of *basic* blocks (two 3x3 convs;
ResNet-18/34) or *bottleneck* blocks (1x1, 3x3, 1x1 with a 4x wider output;
ResNet-50/101/152), a 1x1 projection (conv + BN) on the shortcut wherever the
width or the stride changes (the paper's option B, as torchvision builds it),
global average pooling and a 1000-way fully connected layer. Convolutions have
no bias; every BatchNorm has a scale and a shift (its running statistics are
buffers, not counted). DenseNet's counts are ``DenseNetSpec.num_params()``.

Multiply-accumulates at 224x224 follow the spec's convention (convolutions and
the classifier; BatchNorm, ReLU, pooling and additions not counted). A
bottleneck block that halves the size can put the stride on its first 1x1 conv
(the paper) or on its 3x3 conv (torchvision's "ResNet v1.5"); the parameters are
the same, the MACs are not, so both are given. Run in any env::

    python -m densenet_multi.exercises.resnet --out docs/exercises
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..params import param_table
from ..spec import get_spec
from . import command_line, environment, write_json

__all__ = ["RESNETS", "DENSENETS", "TORCHVISION_RESNET_PARAMS", "PAPER_RESNET_GFLOPS",
           "ResNetConfig", "resnet_params", "resnet_macs", "resnet_largest_3x3",
           "densenet_depth", "densenet_largest_3x3", "run", "main"]


@dataclass(frozen=True)
class ResNetConfig:
    """One column of the ResNet paper's Table 1: block type and blocks per stage."""

    name: str
    bottleneck: bool
    blocks: tuple[int, int, int, int]

    @property
    def depth(self) -> int:
        """Weighted layers on the main path: stem conv, every block's convs, the fc layer."""
        return 1 + sum(self.blocks) * (3 if self.bottleneck else 2) + 1


RESNETS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig("resnet18", False, (2, 2, 2, 2)),
    "resnet34": ResNetConfig("resnet34", False, (3, 4, 6, 3)),
    "resnet50": ResNetConfig("resnet50", True, (3, 4, 6, 3)),
    "resnet101": ResNetConfig("resnet101", True, (3, 4, 23, 3)),
    "resnet152": ResNetConfig("resnet152", True, (3, 8, 36, 3)),
}
DENSENETS = ("densenet121", "densenet161", "densenet169", "densenet201", "densenet264")

#: sum(p.numel() for p in torchvision.models.<name>(weights=None).parameters())
#: (torchvision 0.29); tests/torch/test_exercises_zoo.py checks these against torchvision.
TORCHVISION_RESNET_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}
#: The ResNet paper's Table 1, "FLOPs" row (multiply-adds), in units of 1e9.
PAPER_RESNET_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6,
                       "resnet152": 11.3}

_WIDTHS = (64, 128, 256, 512)
_STEM = 64


def _config(net: str | ResNetConfig) -> ResNetConfig:
    if isinstance(net, ResNetConfig):
        return net
    try:
        return RESNETS[net]
    except KeyError:
        raise ValueError(f"unknown ResNet {net!r}; known: {sorted(RESNETS)}") from None


def _convs(net: str | ResNetConfig, num_classes: int, in_channels: int,
           stride_on: str) -> list[tuple[int, int, int, int]]:
    """Every convolution as (in, out, kernel, output size at 224), then the fc as kernel 0.

    ``stride_on`` is "3x3" (torchvision) or "1x1" (the paper): where a bottleneck
    block that halves the size puts its stride.
    """
    if stride_on not in ("3x3", "1x1"):
        raise ValueError(f"stride_on must be '3x3' or '1x1', got {stride_on!r}")
    cfg = _config(net)
    expansion = 4 if cfg.bottleneck else 1
    out: list[tuple[int, int, int, int]] = [(in_channels, _STEM, 7, 112)]
    width, size = _STEM, 56  # after the 3x3/2 max-pool
    for stage, (planes, n) in enumerate(zip(_WIDTHS, cfg.blocks, strict=True)):
        for b in range(n):
            stride = 2 if (stage > 0 and b == 0) else 1
            out_size = size // stride
            block_out = planes * expansion
            if cfg.bottleneck:
                first_size = out_size if stride_on == "1x1" else size
                out += [(width, planes, 1, first_size), (planes, planes, 3, out_size),
                        (planes, block_out, 1, out_size)]
            else:
                out += [(width, planes, 3, out_size), (planes, planes, 3, out_size)]
            if stride != 1 or width != block_out:  # projection shortcut (option B)
                out.append((width, block_out, 1, out_size))
            width, size = block_out, out_size
    out.append((width, num_classes, 0, 1))
    return out


def resnet_params(net: str | ResNetConfig, num_classes: int = 1000, in_channels: int = 3) -> int:
    """Trainable parameters: conv weights (no bias), BN scale and shift, fc weight and bias."""
    total = 0
    for cin, cout, k, _ in _convs(net, num_classes, in_channels, "3x3"):
        if k == 0:
            total += cin * cout + cout  # the fc layer
        else:
            total += cin * cout * k * k + 2 * cout  # conv + its BatchNorm
    return total


def resnet_macs(net: str | ResNetConfig, num_classes: int = 1000, in_channels: int = 3, *,
                stride_on: str = "3x3") -> int:
    """Multiply-accumulates of one 224x224 sample: convolutions and the fc layer."""
    return sum(cin * cout * max(k, 1) ** 2 * s * s
               for cin, cout, k, s in _convs(net, num_classes, in_channels, stride_on))


def resnet_largest_3x3(net: str | ResNetConfig) -> int:
    """Weights in the largest 3x3 convolution kernel."""
    return max(cin * cout * 9 for cin, cout, k, _ in _convs(net, 1000, 3, "3x3") if k == 3)


def densenet_depth(spec: Any) -> int:
    """Weighted layers on DenseNet's main path: stem conv, each dense layer's convs (2 with
    a bottleneck), each transition's conv, the classifier."""
    per_layer = 2 if spec.has_bottleneck else 1
    return 1 + sum(spec.block_config) * per_layer + (spec.num_blocks - 1) + 1


def densenet_largest_3x3(spec: Any) -> int:
    """Weights in the largest 3x3 convolution kernel (every dense layer's is the same size)."""
    return max(math.prod(p.shape) for p in param_table(spec)
               if p.trainable and len(p.shape) == 4 and tuple(p.shape[2:]) == (3, 3))


def run() -> dict[str, Any]:
    """Both families' counts, and each DenseNet's nearest-depth ResNet."""
    resnets = [{
        "name": cfg.name, "depth": cfg.depth, "block": "bottleneck" if cfg.bottleneck else "basic",
        "blocks": list(cfg.blocks), "params": resnet_params(cfg),
        "macs_224": resnet_macs(cfg), "macs_224_paper": resnet_macs(cfg, stride_on="1x1"),
        "largest_3x3": resnet_largest_3x3(cfg),
    } for cfg in RESNETS.values()]
    densenets = []
    for name in DENSENETS:
        spec = get_spec(name)
        densenets.append({
            "name": name, "depth": densenet_depth(spec), "growth_rate": spec.growth_rate,
            "blocks": list(spec.block_config), "params": spec.num_params(),
            "macs_224": spec.macs(224), "largest_3x3": densenet_largest_3x3(spec),
        })
    pairs = []
    for d in densenets:
        r = min(resnets, key=lambda r: (abs(r["depth"] - d["depth"]), -r["depth"]))
        pairs.append({"densenet": d["name"], "resnet": r["name"],
                      "param_ratio": round(r["params"] / d["params"], 3),
                      "mac_ratio": round(r["macs_224"] / d["macs_224"], 3)})
    return {"exercise": "resnet", "resnets": resnets, "densenets": densenets, "pairs": pairs,
            "environment": environment()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.exercises.resnet",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for resnet.json")
    args = p.parse_args(argv)
    result = run()
    result["command"] = command_line("resnet", argv)
    path = write_json(result, args.out / "resnet.json")
    for r in result["resnets"] + result["densenets"]:
        print(f"{r['name']:12s} depth {r['depth']:3d}  {r['params']:>11,d} params  "
              f"{r['macs_224'] / 1e9:5.2f} GMACs")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
