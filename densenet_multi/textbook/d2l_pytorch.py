"""The d2l chapter's PyTorch tab (seed 000), rebuilt the way the tab builds it.

The tab writes every layer lazily (``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``,
``nn.LazyLinear``: the input width is found at the first call), as small
``nn.Sequential`` helpers and a ``DenseBlock`` module that concatenates each conv
block's output onto its input. The network is one ``nn.Sequential``: the stem ``b1``
(7x7/2 conv padded by 3, BatchNorm, ReLU, 3x3/2 max-pool padded by 1), then
``dense_blk1``, ``tran_blk1``, ... with the width arithmetic in the constructor
(``num_channels += num_convs * growth_rate``, then ``num_channels //= 2`` for the
transition), and a ``last`` head (BatchNorm, ReLU, global average pool, flatten,
dense). Every BatchNorm takes PyTorch's defaults (epsilon 1e-5, momentum 0.1) and
every convolution its default bias.

What is left out of the tab: ``d2l.Classifier`` (its training loop; its ``forward``
is ``self.net(X)``, kept here), ``save_hyperparameters`` and ``lr`` (kept as an
unused argument), and ``self.net.apply(d2l.init_cnn)`` (Xavier-uniform kernels): the
harness loads the canonical weights over whatever initialisation a network starts
with.

The tab's network is the project's canonical d2l network: ``backend`` is the whole
chain, nothing to fix (measured by the harness, see docs/textbook.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..spec import DenseNetSpec, get_spec
from ._common import expect_spec
from ._torch import TorchSource

__all__ = ["CHAIN", "DenseBlock", "DenseNet", "backend", "conv_block", "transition_block"]

SOURCE = "the d2l PyTorch tab (000)"


# ---------------------------------------------------------------------- the tab's code
def conv_block(num_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs: int, num_channels: int) -> None:
        super().__init__()
        layer = []
        for _ in range(num_convs):
            layer.append(conv_block(num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)  # each block's output joins its input
        return X


def transition_block(num_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """The tab's ``DenseNet(d2l.Classifier)``: ``b1`` and the constructor as written."""

    def __init__(self, num_channels: int = 64, growth_rate: int = 32,
                 arch: Sequence[int] = (4, 4, 4, 4), lr: float = 0.1,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.lr = lr  # the tab's training hyperparameter (unused here)
        self.net = nn.Sequential(self.b1())
        for i, num_convs in enumerate(arch):
            self.net.add_module(f"dense_blk{i + 1}", DenseBlock(num_convs, growth_rate))
            num_channels += num_convs * growth_rate  # the block's output width
            if i != len(arch) - 1:  # a transition halves the width between blocks
                num_channels //= 2
                self.net.add_module(f"tran_blk{i + 1}", transition_block(num_channels))
        self.net.add_module("last", nn.Sequential(
            nn.LazyBatchNorm2d(), nn.ReLU(),
            nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
            nn.LazyLinear(num_classes)))

    def b1(self) -> nn.Sequential:
        return nn.Sequential(
            nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
            nn.LazyBatchNorm2d(), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)


# ---------------------------------------------------------------------- the adapter
def tab_spec(spec: DenseNetSpec) -> DenseNetSpec:
    """The network the tab builds for ``spec``'s growth rate, blocks, classes and input
    channels (``DenseNet(growth_rate=, arch=, num_classes=)``; the input width is lazy):
    the d2l preset with those fields. Everything else (64-channel stem, no bottleneck,
    halving transitions, conv biases, PyTorch's BatchNorm defaults) is fixed by the tab."""
    return get_spec("d2l", growth_rate=spec.growth_rate, block_config=spec.block_config,
                    num_classes=spec.num_classes, in_channels=spec.in_channels)


def _accepts(spec: DenseNetSpec) -> None:
    expect_spec(SOURCE, spec, tab_spec(spec))


def _make(spec: DenseNetSpec) -> DenseNet:
    return DenseNet(growth_rate=spec.growth_rate, arch=spec.block_config,
                    num_classes=spec.num_classes)


def _stages(model: DenseNet) -> list[tuple[Any, str | None]]:
    """``self.net``'s children in order: b1 is the stem, dense_blkN / tran_blkN the
    blocks and transitions; in ``last``, the ReLU's output is the features, the
    flattened pool the pooled vector, the dense layer's output the logits."""
    steps: list[tuple[Any, str | None]] = []
    for name, child in model.net.named_children():
        if name == "0":
            steps.append((child, "stem"))
        elif name.startswith("dense_blk"):
            steps.append((child, f"block{name[len('dense_blk'):]}"))
        elif name.startswith("tran_blk"):
            steps.append((child, f"transition{name[len('tran_blk'):]}"))
        elif name == "last":
            tags = (None, "features", None, "pooled", "logits")
            steps += list(zip(child, tags, strict=True))
        else:  # pragma: no cover - the constructor adds no other child
            raise AssertionError(name)
    return steps


#: (object name, the one change it adds to the link before it), in chain order
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "the tab as written (lazy layers, PyTorch's BatchNorm defaults, conv biases)"),
)

#: The tab as written.
backend = TorchSource("d2l_pytorch.backend", make=_make, stages=_stages, accepts=_accepts)
