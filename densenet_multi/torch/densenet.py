"""DenseNet (Huang et al., CVPR 2017) as PyTorch modules, built from a :class:`DenseNetSpec`.

The parts follow the paper, in this order: :class:`ConvBlock` (BN-ReLU-conv,
the pre-activation unit everything is made of), :class:`DenseLayer` (H_l:
optional 1x1 bottleneck, 3x3 conv, dropout; returns its ``growth_rate`` new
maps), :class:`DenseBlock` (every layer sees the concatenation of all earlier
maps), :class:`Transition` (BN-ReLU-1x1 conv with compression, 2x2 average
pool) and :class:`DenseNet` (stem, blocks, transitions, final BN-ReLU, global
average pooling, classifier), then :func:`from_spec` and
:func:`densenet121` ... :func:`densenet201`.

Attribute names are chosen so that ``state_dict()`` keys *are* the canonical
names (torchvision's: ``features.conv0``, ``features.denseblock1.denselayer1.norm1``,
``features.transition1.conv``, ``features.norm5``, ``classifier``), so a
torchvision DenseNet state_dict loads with ``strict=True``. Every width comes
from the spec (``channel_plan``, ``block_plan``) and every kernel, stride and
padding from its :class:`~densenet_multi.spec.ConvGeometry`.

The forward pass is plain eager PyTorch with no data-dependent Python branch
on the default path, so ``torch.compile(model, fullgraph=True)`` captures it in
one graph. Inputs are not validated here: ``runtime.run`` checks numpy batches
at the backend boundary, and a module call gets PyTorch's own errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from ..spec import ConvGeometry, DenseNetSpec, get_spec

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "from_spec",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
]


# --8<-- [start:helpers]
# --8<-- [start:norm_conv]
def _norm(spec: DenseNetSpec, num_features: int) -> nn.BatchNorm2d:
    # The spec's momentum is already PyTorch's (the weight of the new batch
    # statistic), so it goes in unchanged; eps is always the spec's, never a default.
    return nn.BatchNorm2d(num_features, eps=spec.bn_eps, momentum=spec.bn_momentum)


def _conv(spec: DenseNetSpec, in_channels: int, out_channels: int,
          geometry: ConvGeometry) -> nn.Conv2d:
    # Explicit symmetric padding from the spec: "same" is not the canonical
    # network at stride 2 (other frameworks pad such a layer asymmetrically).
    return nn.Conv2d(in_channels, out_channels, geometry.kernel, stride=geometry.stride,
                     padding=geometry.padding, bias=spec.conv_bias)
# --8<-- [end:norm_conv]


@contextlib.contextmanager
def _running_stats_kept(*norms: nn.BatchNorm2d) -> Iterator[None]:
    """Put the ``norms``' running statistics back as they were before the block."""
    buffers = [b for norm in norms for b in norm.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved, strict=True):
                b.copy_(s)


def _init_torchvision(module: nn.Module) -> None:
    # torchvision's DenseNet initialisation: Kaiming-normal convs (fan-in, ReLU
    # gain), zero classifier bias; BN (1, 0) and the classifier weight keep
    # PyTorch's defaults. build() replaces all of it with the canonical seeded weights.
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)
# --8<-- [end:helpers]


# --8<-- [start:conv_block]
class ConvBlock(nn.Module):
    """BN -> ReLU -> conv: the pre-activation unit every DenseNet part is made of."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int,
                 geometry: ConvGeometry) -> None:
        super().__init__()
        self.norm = _norm(spec, in_channels)
        self.conv = _conv(spec, in_channels, out_channels, geometry)

    def forward(self, x: Tensor) -> Tensor:
        # F.relu, not an nn.ReLU child: no parameters to name. In place, as torchvision's
        # relu1/relu2: the BN output is a fresh tensor its backward does not read, and an
        # out-of-place ReLU's new tensor cost 40 ms of a DenseNet-121 channels_last forward
        # against 11.5 ms (torch.profiler, 224x224 batch 8, 2 cores).
        return self.conv(F.relu(self.norm(x), inplace=True))
# --8<-- [end:conv_block]


# --8<-- [start:dense_layer]
class DenseLayer(nn.Module):
    """H_l: [BN-ReLU-1x1 conv (bottleneck, DenseNet-B)] -> BN-ReLU-3x3 conv -> dropout.

    Called on the block input and every earlier layer's output (a list, or one
    tensor), it returns only the ``growth_rate`` new maps.

    With ``memory_efficient`` the concatenation and the *first* BN-ReLU-conv (with a
    bottleneck: and the second BN-ReLU) are recomputed in the backward pass instead of stored.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, *,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        k, width = spec.growth_rate, spec.bottleneck_channels
        # Flat children, not nested ConvBlocks: these ARE the canonical names
        # (torchvision's norm1/conv1/norm2/conv2; norm/conv for a plain layer), and
        # a nested module would add a level to every state_dict key.
        self.has_bottleneck = width is not None
        if width is not None:
            self.norm1 = _norm(spec, in_channels)
            self.conv1 = _conv(spec, in_channels, width, spec.bottleneck_conv)
            self.norm2 = _norm(spec, width)
            self.conv2 = _conv(spec, width, k, spec.growth_conv)
        else:
            self.norm = _norm(spec, in_channels)
            self.conv = _conv(spec, in_channels, k, spec.growth_conv)
        self.drop_rate = float(spec.drop_rate)
        self.memory_efficient = memory_efficient

    def _first_unit(self, *features: Tensor) -> Tensor:
        """Concatenation -> BN -> ReLU -> first conv (the 1x1 bottleneck, or the plain 3x3)."""
        x = torch.cat(features, dim=1)
        if self.has_bottleneck:
            return self.conv1(F.relu(self.norm1(x), inplace=True))
        return self.conv(F.relu(self.norm(x), inplace=True))

    def _recomputed(self, *features: Tensor) -> Tensor:
        """The part ``memory_efficient`` recomputes: the first unit and, with a bottleneck,
        the second BN-ReLU, up to the 3x3 conv's input (the one tensor stored for it)."""
        y = self._first_unit(*features)
        return F.relu(self.norm2(y), inplace=True) if self.has_bottleneck else y

    def forward(self, features: Tensor | Sequence[Tensor]) -> Tensor:
        # A list, so that the concatenation happens inside the checkpointed part.
        features = [features] if isinstance(features, Tensor) else list(features)
        if self.memory_efficient and any(f.requires_grad for f in features):
            # Recomputed in the backward pass instead of stored: the concatenation (layer
            # l's input has k0 + l*k channels, so storing it, and its BN-ReLU, for every
            # layer costs memory quadratic in the block depth; gpleiss/efficient_densenet_pytorch)
            # and, with a bottleneck, everything up to the 3x3 conv's input, so that per
            # layer only that input (4k channels) and the k new maps are kept: the
            # bottleneck output and its BN-ReLU are not stored twice. The elementwise
            # BN-ReLU costs little to redo. Only when an input needs a gradient: inference
            # has nothing to save. The recomputation runs the BNs in train mode a second
            # time, which would update their running statistics twice, so the recompute
            # context (context_fn, which needs use_reentrant=False) puts them back.
            norms = (self.norm1, self.norm2) if self.has_bottleneck else (self.norm,)
            y = cp.checkpoint(self._recomputed, *features, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(),
                                                  _running_stats_kept(*norms)))
        else:
            y = self._recomputed(*features)
        if self.has_bottleneck:
            y = self.conv2(y)
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        return y
# --8<-- [end:dense_layer]


# --8<-- [start:dense_block]
class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers on ``in_channels`` inputs (widths from
    ``spec.block_plan``); each sees the channel-wise concatenation of the block
    input and every earlier layer's new maps. Returns that concatenation:
    ``in_channels + num_layers * growth_rate`` channels.

    A ModuleDict ``denselayer1, ...``, like torchvision's, so the keys stay
    ``denseblockB.denselayerL.<part>``.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, num_layers: int, *,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        plan = spec.block_plan(in_channels, num_layers)
        for i, width in enumerate(plan.layer_in_channels, start=1):
            self.add_module(f"denselayer{i}",
                            DenseLayer(spec, width, memory_efficient=memory_efficient))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)
# --8<-- [end:dense_block]


# --8<-- [start:transition]
class Transition(ConvBlock):
    """BN -> ReLU -> 1x1 conv (compression to ``out_channels``) -> 2x2/2 average pool."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int) -> None:
        super().__init__(spec, in_channels, out_channels, spec.transition_conv)
        tp = spec.transition_pool
        self.pool = nn.AvgPool2d(tp.kernel, stride=tp.stride, padding=tp.padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(super().forward(x))
# --8<-- [end:transition]


# --8<-- [start:network]
class DenseNet(nn.Module):
    """The network: stem, dense blocks with transitions, final BN-ReLU, global average
    pooling and a linear classifier, all read from ``spec``.

    ``features`` is an ``nn.Sequential`` (``conv0, norm0, relu0, pool0,
    denseblock1, transition1, ..., norm5``; the CIFAR stem is ``conv0`` alone) and
    ``classifier`` an ``nn.Linear``: torchvision's layout. Inputs are NCHW
    (``model.to(memory_format=torch.channels_last)`` works as usual); pooling is
    global, so any input from ``spec.min_input_size()`` up works.
    """

    def __init__(self, spec: DenseNetSpec, *, memory_efficient: bool = False) -> None:
        super().__init__()
        self.spec = spec
        plan = spec.channel_plan
        # --8<-- [start:stem]
        self.features = nn.Sequential()
        self.features.add_module("conv0", _conv(spec, spec.in_channels, plan.stem_channels,
                                                spec.stem_conv))
        if (sp := spec.stem_pool) is not None:  # the CIFAR stem is one conv, no BN/ReLU/pool
            self.features.add_module("norm0", _norm(spec, plan.stem_channels))
            # A module, not F.relu: nn.Sequential applies only its children (torchvision's relu0).
            self.features.add_module("relu0", nn.ReLU())
            # PyTorch pads a max-pool with -inf, so padding never wins.
            self.features.add_module("pool0", nn.MaxPool2d(sp.kernel, sp.stride, sp.padding))
        # --8<-- [end:stem]
        for bp in plan.blocks:
            self.features.add_module(f"denseblock{bp.index}", DenseBlock(
                spec, bp.in_channels, bp.num_layers, memory_efficient=memory_efficient))
            if bp.index < spec.num_blocks:
                tp = plan.transitions[bp.index - 1]
                self.features.add_module(f"transition{tp.index}",
                                         Transition(spec, tp.in_channels, tp.out_channels))
        # --8<-- [start:head]
        self.features.add_module("norm5", _norm(spec, plan.final_channels))
        self.classifier = nn.Linear(plan.final_channels, spec.num_classes)
        self.apply(_init_torchvision)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, blocks, transitions and the final BN-ReLU: (N, C, h, w)."""
        # torchvision applies the final ReLU after `features`, in forward; here it
        # belongs to the features stage, so forward_head sees post-activation maps.
        return F.relu(self.features(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling (any spatial size, never a fixed 7x7) and the classifier."""
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)
    # --8<-- [end:head]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage of ``spec.stage_names``: stem, block1, transition1, ..., blockN,
        features (after the final BN-ReLU), pooled, logits."""
        stage_parts = self.spec.stage_parts
        stages: dict[str, Tensor] = {}
        for name, part in self.features.named_children():
            x = part(x)
            if name in stage_parts:
                stages[stage_parts[name]] = x
        stages["features"] = x = F.relu(x)
        stages["pooled"] = x = self.forward_head(x, pre_logits=True)
        stages["logits"] = self.classifier(x)
        return stages
# --8<-- [end:network]


# ---------------------------------------------------------------------- constructors
def from_spec(spec: DenseNetSpec | str, *, memory_efficient: bool = False,
              **changes: Any) -> DenseNet:
    """A :class:`DenseNet` for a spec or a preset name, with spec fields changed."""
    if isinstance(spec, str):
        spec = get_spec(spec, **changes)
    elif changes:
        spec = spec.replace(**changes)
    return DenseNet(spec, memory_efficient=memory_efficient)


def densenet121(**changes: Any) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16): 7,978,856 parameters with 1000 classes."""
    return from_spec("densenet121", **changes)


def densenet161(**changes: Any) -> DenseNet:
    """DenseNet-161 (k=48, blocks 6-12-36-24, 96 initial features)."""
    return from_spec("densenet161", **changes)


def densenet169(**changes: Any) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32)."""
    return from_spec("densenet169", **changes)


def densenet201(**changes: Any) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32)."""
    return from_spec("densenet201", **changes)
