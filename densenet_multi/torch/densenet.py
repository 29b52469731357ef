"""DenseNet (Huang et al., CVPR 2017) as PyTorch modules, built from a :class:`DenseNetSpec`.

The parts follow the paper, in this order: :class:`ConvBlock` (BN-ReLU-Conv,
the pre-activation unit everything is made of), :class:`DenseLayer` (H_l:
optional 1x1 bottleneck, 3x3 conv, dropout), :class:`DenseBlock` (every layer
sees the concatenation of all earlier feature maps), :class:`Transition`
(BN-ReLU-1x1 conv with compression, 2x2 average pool) and :class:`DenseNet`
(stem, blocks, transitions, final BN-ReLU, global average pooling,
classifier), then the constructors :func:`densenet121` ... :func:`densenet201`
and :func:`from_spec`.

Attribute names are chosen so that ``state_dict()`` keys *are* the canonical
names (torchvision's: ``features.conv0``, ``features.denseblock1.denselayer1.norm1``,
``features.transition1.conv``, ``features.norm5``, ``classifier``), so a
torchvision DenseNet state_dict loads with ``strict=True``. Every width comes
from ``spec.channel_plan`` and every kernel/stride/padding from the spec's
:class:`~densenet_multi.spec.ConvGeometry`; nothing is recomputed here.

The forward pass is plain eager PyTorch with no data-dependent Python control
flow on the default path, so ``torch.compile(model, fullgraph=True)`` traces it
in one graph; ``memory_efficient=True`` uses ``torch.utils.checkpoint``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from ..spec import BlockPlan, ConvGeometry, DenseNetSpec, check_input_dtype, check_input_shape, get_spec

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "from_spec",
]

#: dtypes the module accepts (run() on numpy batches accepts float32/float64 only)
_FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _norm(num_features: int, spec: DenseNetSpec) -> nn.BatchNorm2d:
    # The spec's momentum is already PyTorch's (weight of the new batch
    # statistic), so it is passed unchanged; eps is the spec's (1e-5 unless a
    # zoo needs another), never a framework default.
    return nn.BatchNorm2d(num_features, eps=spec.bn_eps, momentum=spec.bn_momentum)


def _conv(in_channels: int, out_channels: int, geometry: ConvGeometry, spec: DenseNetSpec) -> nn.Conv2d:
    # Explicit symmetric padding from the spec (PyTorch pads symmetrically;
    # "same" would not be the canonical network at stride 2).
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=geometry.kernel,
        stride=geometry.stride,
        padding=geometry.padding,
        bias=spec.conv_bias,
    )


class ConvBlock(nn.Module):
    """BN -> ReLU -> conv: the pre-activation unit every DenseNet part is made of.

    Children are named ``norm``, ``relu``, ``conv`` (torchvision's names in a
    transition). A :class:`DenseLayer` holds the same three layers directly
    under its canonical names (``norm1``/``conv1``, ...) instead of nesting
    ConvBlocks, because a nested module would add a level to every
    ``state_dict`` key and break checkpoint compatibility; see
    :meth:`layers`.
    """

    def __init__(self, in_channels: int, out_channels: int, geometry: ConvGeometry,
                 spec: DenseNetSpec) -> None:
        super().__init__()
        self.norm, self.relu, self.conv = self.layers(in_channels, out_channels, geometry, spec)

    @staticmethod
    def layers(in_channels: int, out_channels: int, geometry: ConvGeometry,
               spec: DenseNetSpec) -> tuple[nn.BatchNorm2d, nn.ReLU, nn.Conv2d]:
        """The BN, ReLU and conv layers of one conv block, configured from the spec."""
        # Out-of-place ReLU: torchvision's inplace=True saves one activation per
        # layer, but the block's memory is dominated by the concatenations (see
        # memory_efficient), and in-place ops on tensors that hooks or a
        # checkpoint recomputation may still hold are a source of silent errors.
        return _norm(in_channels, spec), nn.ReLU(inplace=False), _conv(
            in_channels, out_channels, geometry, spec
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.relu(self.norm(x)))


class DenseLayer(nn.Module):
    """H_l: [BN-ReLU-1x1 conv (bottleneck, DenseNet-B)] -> BN-ReLU-3x3 conv -> dropout.

    Takes the list of all earlier feature maps of its block and returns
    ``growth_rate`` new ones. With a bottleneck the layers are ``norm1, conv1,
    norm2, conv2`` (torchvision); without one (d2l, DenseNet-40) one conv block
    ``norm, conv`` (the canonical extension, named like a transition).

    With ``memory_efficient`` the concatenation and the *first* conv block are
    recomputed in the backward pass instead of stored.
    """

    def __init__(self, in_channels: int, spec: DenseNetSpec, block_plan: BlockPlan) -> None:
        super().__init__()
        k = spec.growth_rate
        self.has_bottleneck = block_plan.bottleneck_channels is not None
        if self.has_bottleneck:
            bc = block_plan.bottleneck_channels
            self.norm1, self.relu1, self.conv1 = ConvBlock.layers(in_channels, bc,
                                                                  spec.bottleneck_conv, spec)
            self.norm2, self.relu2, self.conv2 = ConvBlock.layers(bc, k, spec.growth_conv, spec)
        else:
            self.norm, self.relu, self.conv = ConvBlock.layers(in_channels, k,
                                                               spec.growth_conv, spec)
        self.drop_rate = float(spec.drop_rate)
        self.memory_efficient = spec.memory_efficient

    def first_unit(self, *features: Tensor) -> Tensor:
        """Concatenation -> BN -> ReLU -> first conv (the bottleneck 1x1, or the plain 3x3)."""
        x = torch.cat(features, dim=1)
        if self.has_bottleneck:
            return self.conv1(self.relu1(self.norm1(x)))
        return self.conv(self.relu(self.norm(x)))

    @contextlib.contextmanager
    def _running_stats_kept(self) -> Iterator[None]:
        """Leave the first BN's running statistics as they were before a recomputation."""
        bn = self.norm1 if self.has_bottleneck else self.norm
        saved = [b.clone() for b in bn.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, s in zip(bn.buffers(), saved, strict=True):
                    b.copy_(s)

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.memory_efficient and any(f.requires_grad for f in features):
            # Only concat + BN-ReLU-first conv is rematerialised: the
            # concatenated input of layer l has (k0 + l*k) channels, so storing
            # it for every layer costs memory *quadratic* in the block depth,
            # while the 3x3 part (bottleneck width in, k out) grows only
            # linearly. Recomputing it in the backward pass trades time for
            # that memory (gpleiss/efficient_densenet_pytorch). Only when an
            # input needs a gradient: in inference there is nothing to save.
            # use_reentrant=False is the supported mode (and the one that
            # accepts context_fn): the recomputation runs the first BN in train
            # mode again, which would update its running statistics a second
            # time, so the recompute context restores them.
            y = cp.checkpoint(
                self.first_unit,
                *features,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), self._running_stats_kept()),
            )
        else:
            y = self.first_unit(*features)
        if self.has_bottleneck:
            y = self.conv2(self.relu2(self.norm2(y)))
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        return y


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; each sees the channel-wise concatenation of the
    block input and every earlier layer's output. Returns that concatenation.

    A ModuleDict with keys ``denselayer1, ...`` like torchvision, so the keys
    stay ``denseblockB.denselayerL.<part>``.
    """

    def __init__(self, spec: DenseNetSpec, block_plan: BlockPlan) -> None:
        super().__init__()
        for i, cin in enumerate(block_plan.layer_in_channels, start=1):
            self.add_module(f"denselayer{i}", DenseLayer(cin, spec, block_plan))

    @property
    def layers(self) -> list[DenseLayer]:
        """The dense layers in order (0-based, as in the canonical ``part`` paths)."""
        return list(self.values())

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(ConvBlock):
    """BN -> ReLU -> 1x1 conv (compression theta) -> 2x2/2 average pool, between blocks."""

    def __init__(self, in_channels: int, out_channels: int, spec: DenseNetSpec) -> None:
        super().__init__(in_channels, out_channels, spec.transition_conv, spec)
        tp = spec.transition_pool
        self.pool = nn.AvgPool2d(kernel_size=tp.kernel, stride=tp.stride, padding=tp.padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(super().forward(x))


class DenseNet(nn.Module):
    """The network: stem, dense blocks with transitions, final BN-ReLU, global average
    pooling and a linear classifier, all read from ``spec``.

    ``features`` is an ``nn.Sequential`` (``conv0, norm0, relu0, pool0,
    denseblock1, transition1, ..., norm5``; the CIFAR stem is ``conv0`` only),
    ``classifier`` an ``nn.Linear``, exactly torchvision's layout. The final
    ReLU is applied after ``features`` (as torchvision's ``forward`` does);
    :meth:`forward_features` includes it, so the ``features`` stage is the
    tensor after BN-ReLU, before pooling.

    Inputs are NCHW; ``model.to(memory_format=torch.channels_last)`` works as
    usual. Pooling is global (any input at least ``spec.min_input_size()``).
    """

    def __init__(self, spec: DenseNetSpec) -> None:
        super().__init__()
        self.spec = spec
        plan = spec.channel_plan
        features = nn.Sequential()
        stage_ends: list[str] = []  # the child of `features` that ends each stage
        features.add_module("conv0", _conv(spec.in_channels, plan.stem_channels, spec.stem_conv,
                                           spec))
        if spec.stem_pool is not None:
            sp = spec.stem_pool
            features.add_module("norm0", _norm(plan.stem_channels, spec))
            features.add_module("relu0", nn.ReLU(inplace=True))
            # PyTorch pads a max-pool with -inf, so padding never wins (the
            # input follows a ReLU here, so zero padding would also be exact).
            features.add_module("pool0", nn.MaxPool2d(sp.kernel, sp.stride, sp.padding))
            stage_ends.append("pool0")
        else:
            stage_ends.append("conv0")  # CIFAR stem: one 3x3 conv, no BN/ReLU/pool
        for bp in plan.blocks:
            features.add_module(f"denseblock{bp.index}", DenseBlock(spec, bp))
            stage_ends.append(f"denseblock{bp.index}")
            if bp.index < spec.num_blocks:
                tp = plan.transitions[bp.index - 1]
                features.add_module(f"transition{tp.index}",
                                    Transition(tp.in_channels, tp.out_channels, spec))
                stage_ends.append(f"transition{tp.index}")
        features.add_module("norm5", _norm(plan.final_channels, spec))
        self.features = features
        self.classifier = nn.Linear(plan.final_channels, spec.num_classes)
        # child name -> stage name (stem, block1, transition1, ..., blockN; the last
        # three stages, features/pooled/logits, come after `features`)
        self._stage_of: dict[str, str] = dict(zip(stage_ends, spec.stage_names[:-3],
                                                  strict=True))
        self.reset_parameters()

    # ------------------------------------------------------------------ structure
    @property
    def dense_blocks(self) -> list[DenseBlock]:
        return [m for m in self.features.children() if isinstance(m, DenseBlock)]

    @property
    def transitions(self) -> list[Transition]:
        return [m for m in self.features.children() if isinstance(m, Transition)]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """torchvision's initialisation: Kaiming-normal convs (fan-in, ReLU gain), BN 1/0,
        Linear's default U(+-1/sqrt(in)) weight and a zero bias; conv biases (d2l) keep
        PyTorch's default U(+-1/sqrt(fan_in))."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    bound = 1.0 / (m.weight[0].numel() ** 0.5)
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / (m.in_features ** 0.5)
                nn.init.uniform_(m.weight, -bound, bound, generator=generator)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ forward
    def check_input(self, x: Tensor) -> None:
        """Raise :class:`~densenet_multi.spec.InputError` unless ``x`` is an NCHW float
        batch this network accepts (the message names expected and given shape)."""
        check_input_dtype(str(x.dtype).removeprefix("torch."), _FLOAT_DTYPES)
        check_input_shape(self.spec, tuple(x.shape), "NCHW")

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, blocks, transitions and the final BN-ReLU: (N, C, h, w)."""
        if not torch.compiler.is_compiling():  # shapes are static when compiled
            self.check_input(x)
        # torchvision applies the final ReLU outside `features`; it belongs to the
        # features stage here, so forward_head sees post-activation maps.
        return F.relu(self.features(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling (any spatial size, never a fixed 7x7) and the classifier."""
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage output of ``spec.stage_names``: stem, block1, transition1, ...,
        blockN, features (after the final BN-ReLU), pooled, logits."""
        self.check_input(x)
        stages: dict[str, Tensor] = {}
        for name, module in self.features.named_children():
            x = module(x)
            if name in self._stage_of:
                stages[self._stage_of[name]] = x
        x = F.relu(x)
        stages["features"] = x
        stages["pooled"] = self.forward_head(x, pre_logits=True)
        stages["logits"] = self.classifier(stages["pooled"])
        return stages

    def extra_repr(self) -> str:
        return self.spec.describe()


# ---------------------------------------------------------------------- constructors
def from_spec(spec: DenseNetSpec | str, **changes: Any) -> DenseNet:
    """A :class:`DenseNet` for a spec or a preset name (fields may be changed)."""
    if isinstance(spec, str):
        spec = get_spec(spec, **changes)
    elif changes:
        spec = spec.replace(**changes)
    return DenseNet(spec)


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
