"""The walk-through of the chapter's PyTorch tab (seed 001), and the DenseNet-121 it
builds on that code in its answer to exercise 4.

The walk-through follows an older edition of the tab: explicit input widths
(``conv_block(input_channels, num_channels)``, ``nn.BatchNorm2d(input_channels)``,
``nn.Conv2d(input_channels, num_channels, 3, padding=1)``), a module-level ``b1``
and the network assembled in a loop at module level, one input channel and ten
classes (Fashion-MNIST). It is rebuilt twice:

* :data:`chapter` is its section 7.7.4 ``net``, the chapter's network (on the d2l
  case);
* :data:`backend` is its exercise-4 ``net3``, "DenseNet-121" on the same code: a
  ``conv_block_121`` (BN-ReLU-1x1 conv to ``4 * input_channels`` maps, BN-ReLU-3x3
  conv), ``DenseBlock_121`` of those, blocks ``[6, 12, 23, 16]``, and between the
  blocks ``conv_block_121(num_channels, num_channels // 2)`` where the chapter has a
  transition. On the DenseNet-121 case with the blog's own input and classes (one
  channel, ten classes, 224x224).

The fix chain of ``net3`` (each link adds one change to the one before; the harness
shows what each fixes and what diverges next, docs/textbook.md):

* ``fix_transition``: the chapter's ``transition_block`` (BN-ReLU-1x1 conv-2x2
  average pool) between the blocks instead of a second ``conv_block_121`` (which has
  a 3x3 conv and no pool, so the map never shrinks);
* ``fix_blocks``: blocks ``[6, 12, 24, 16]`` (DenseNet-121's third block has 24
  layers, not 23);
* ``fix_bias``: ``bias=False`` on every conv (``nn.Conv2d``'s default adds one that
  DenseNet-121 does not have);
* ``fix_bottleneck``: the 1x1 conv outputs ``4 * growth_rate`` maps (the paper's
  bottleneck, 128), not four times the layer's input width.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from ..spec import DenseNetSpec, get_spec
from ._common import expect_spec
from ._torch import TorchSource

__all__ = ["CHAIN", "CHAPTER_CHAIN", "DENSENET121_SPEC", "backend", "chapter", "chapter_net",
           "densenet121_net", "fix_bias", "fix_blocks", "fix_bottleneck", "fix_transition"]

SOURCE = "the PyTorch-tab walk-through (001)"
#: The blog's DenseNet-121 task: one input channel, ten classes.
DENSENET121_SPEC = get_spec("densenet121", in_channels=1, num_classes=10)
#: Every change of the fix chain, in chain order.
FIXES = ("transition", "blocks", "bias", "bottleneck")


# ---------------------------------------------------------------------- the blog's code
def conv_block(input_channels: int, num_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs: int, input_channels: int, num_channels: int) -> None:
        super().__init__()
        layer = []
        for i in range(num_convs):
            layer.append(conv_block(num_channels * i + input_channels, num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)
        return X


def transition_block(input_channels: int, num_channels: int, *, bias: bool = True
                     ) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=1, bias=bias),
        nn.AvgPool2d(kernel_size=2, stride=2))


def make_b1(*, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=bias),
        nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


def chapter_net() -> nn.Sequential:
    """Section 7.7.4: the chapter's network, as the walk-through assembles it."""
    b1 = make_b1()
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    num_channels, growth_rate = 64, 32
    blks: list[nn.Module] = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    return nn.Sequential(
        b1, *blks,
        nn.BatchNorm2d(num_channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(num_channels, 10))


def conv_block_121(input_channels: int, num_channels: int, *, fixes: Collection[str] = ()
                   ) -> nn.Sequential:
    """Exercise 4's bottleneck layer. As written the 1x1 conv is ``4 * input_channels``
    wide ("按原作加个BottleNeck"); ``fix_bottleneck`` makes it ``4 * num_channels``."""
    bias = "bias" not in fixes
    inter = 4 * num_channels if "bottleneck" in fixes else 4 * input_channels
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, inter, kernel_size=1, bias=bias),
        nn.BatchNorm2d(inter), nn.ReLU(),
        nn.Conv2d(inter, num_channels, kernel_size=3, padding=1, bias=bias))


class DenseBlock_121(nn.Module):  # noqa: N801 - the blog's name
    def __init__(self, num_convs: int, input_channels: int, num_channels: int, *,
                 fixes: Collection[str] = ()) -> None:
        super().__init__()
        layer = []
        for i in range(num_convs):
            layer.append(conv_block_121(num_channels * i + input_channels, num_channels,
                                        fixes=fixes))
        self.net = nn.Sequential(*layer)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)
        return X


def densenet121_net(fixes: Collection[str] = ()) -> nn.Sequential:
    """Exercise 4's ``net3``, with the chain's ``fixes`` (a subset of :data:`FIXES`)."""
    unknown = set(fixes) - set(FIXES)
    if unknown:
        raise ValueError(f"unknown fix(es) {sorted(unknown)}; known: {FIXES}")
    bias = "bias" not in fixes
    b1 = make_b1(bias=bias)
    num_convs_in_dense_blocks_121 = [6, 12, 24 if "blocks" in fixes else 23, 16]
    num_channels, growth_rate = 64, 32
    blks_121: list[nn.Module] = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks_121):
        blks_121.append(DenseBlock_121(num_convs, num_channels, growth_rate, fixes=fixes))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks_121) - 1:
            if "transition" in fixes:
                blks_121.append(transition_block(num_channels, num_channels // 2, bias=bias))
            else:  # as written: a bottleneck layer in the transition's place
                blks_121.append(conv_block_121(num_channels, num_channels // 2, fixes=fixes))
            num_channels = num_channels // 2
    return nn.Sequential(
        b1, *blks_121,
        nn.BatchNorm2d(num_channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(num_channels, 10))


# ---------------------------------------------------------------------- the adapter
def _stages(net: nn.Sequential) -> list[tuple[Any, str | None]]:
    """``net``'s children in order: b1 is the stem, then a block and the layer in the
    transition's place, by turns; then BN, ReLU (the features), pool, flatten (the
    pooled vector) and the dense layer (the logits)."""
    children = list(net.children())
    body, head = children[1:-5], children[-5:]
    steps: list[tuple[Any, str | None]] = [(children[0], "stem")]
    for i, child in enumerate(body):
        n = i // 2 + 1
        steps.append((child, f"block{n}" if i % 2 == 0 else f"transition{n}"))
    steps += list(zip(head, (None, "features", None, "pooled", "logits"), strict=True))
    return steps


def _exactly(spec: DenseNetSpec, expected: DenseNetSpec) -> None:
    expect_spec(SOURCE, spec, expected)


def _link(name: str, fixes: tuple[str, ...]) -> TorchSource:
    return TorchSource(f"blog_001_d2l121.{name}", make=lambda spec: densenet121_net(fixes),
                       stages=_stages, accepts=lambda spec: _exactly(spec, DENSENET121_SPEC))


#: (object name, the one change it adds to the link before it), in chain order: the
#: DenseNet-121 of exercise 4
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "exercise 4's net3 as written (conv_block_121 between the blocks, blocks "
                "[6, 12, 23, 16], a 4 * input_channels bottleneck, conv biases)"),
    ("fix_transition", "the chapter's transition_block (BN-ReLU-1x1 conv-2x2 average pool) "
                       "between the blocks instead of a conv_block_121"),
    ("fix_blocks", "blocks [6, 12, 24, 16] instead of [6, 12, 23, 16]"),
    ("fix_bias", "bias=False on every convolution"),
    ("fix_bottleneck", "the 1x1 conv outputs 4 * growth_rate maps, not 4 * input_channels"),
)
#: ... and the chapter's network of section 7.7.4
CHAPTER_CHAIN: tuple[tuple[str, str], ...] = (
    ("chapter", "section 7.7.4's net as written (the older edition of the PyTorch tab)"),
)

#: Section 7.7.4's network (the chapter's), on the d2l case.
chapter = TorchSource("blog_001_d2l121.chapter", make=lambda spec: chapter_net(),
                      stages=_stages, accepts=lambda spec: _exactly(spec, get_spec("d2l")))
#: Exercise 4's DenseNet-121 as written, and its fix chain.
backend = _link("backend", ())
fix_transition = _link("fix_transition", FIXES[:1])
fix_blocks = _link("fix_blocks", FIXES[:2])
fix_bias = _link("fix_bias", FIXES[:3])
fix_bottleneck = _link("fix_bottleneck", FIXES[:4])
