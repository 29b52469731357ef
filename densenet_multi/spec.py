"""The one place where DenseNet's architecture arithmetic lives.

A :class:`DenseNetSpec` holds every field that changes the numbers a DenseNet
computes. Everything derived from it -- the channel plan (input width of every
dense layer, output width of every transition), the padding geometry, the
per-stage output shapes for an input size, the parameter count and the
multiply-accumulate count -- is computed here and only here. Backends read the
plan; they never recompute a width on their own.

Conventions fixed here (and translated per framework in the backends):

* ``bn_momentum`` is in PyTorch's convention: the weight of the *new* batch
  statistic in the running-average update, ``running = (1 - m) * running + m *
  batch``. Keras, Flax and Gluon call ``1 - m`` their momentum.
* ``bn_eps`` defaults to 1e-5 (PyTorch, Flax, Gluon and the paper's Torch
  code). keras.applications uses 1.001e-5 because TensorFlow's fused batch norm
  kernel silently raises any epsilon below 1.001e-5 to that floor; a spec that
  must reproduce keras.applications numbers says ``bn_eps=1.001e-5``.
* Padding is explicit and symmetric, as in PyTorch. Framework "same" padding
  pads a stride-2 layer asymmetrically (more at the bottom/right) and computes
  a different network.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SPEC_FORMAT_VERSION",
    "BlockPlan",
    "ChannelPlan",
    "ConvGeometry",
    "DenseNetSpec",
    "InputError",
    "PRESETS",
    "SpecError",
    "get_spec",
    "check_input_dtype",
    "check_input_shape",
    "check_labels",
]

SPEC_FORMAT_VERSION = 1


class SpecError(ValueError):
    """An invalid spec field, or an unknown preset."""


class InputError(ValueError):
    """An input batch that does not fit the network: rank, layout, channels, size or dtype."""


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel size, stride and symmetric padding of a convolution or pooling window."""

    kernel: int
    stride: int
    padding: int

    def out_size(self, size: int) -> int:
        """Output length along one spatial axis (floor mode, as every backend uses)."""
        return (size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)): the explicit padding a channels-last backend applies."""
        return ((self.padding, self.padding), (self.padding, self.padding))


# The ImageNet stem of the paper and torchvision: 7x7/2 conv (pad 3), then a
# 3x3/2 max-pool (pad 1). The CIFAR stem is one 3x3/1 conv (pad 1), no pool.
IMAGENET_STEM_CONV = ConvGeometry(kernel=7, stride=2, padding=3)
IMAGENET_STEM_POOL = ConvGeometry(kernel=3, stride=2, padding=1)
CIFAR_STEM_CONV = ConvGeometry(kernel=3, stride=1, padding=1)
BOTTLENECK_CONV = ConvGeometry(kernel=1, stride=1, padding=0)
GROWTH_CONV = ConvGeometry(kernel=3, stride=1, padding=1)
TRANSITION_CONV = ConvGeometry(kernel=1, stride=1, padding=0)
TRANSITION_POOL = ConvGeometry(kernel=2, stride=2, padding=0)

STEMS = ("imagenet", "cifar")
ROUNDINGS = ("floor", "ceil", "round")


@dataclass(frozen=True)
class BlockPlan:
    """Widths inside one dense block."""

    index: int  # 1-based, as in the canonical names (denseblock1, ...)
    num_layers: int
    in_channels: int
    layer_in_channels: tuple[int, ...]  # input width of each dense layer
    bottleneck_channels: int | None  # bn_size * growth_rate, or None without bottleneck
    out_channels: int


@dataclass(frozen=True)
class TransitionPlan:
    index: int  # 1-based: transition1 follows denseblock1
    in_channels: int
    out_channels: int


@dataclass(frozen=True)
class ChannelPlan:
    stem_channels: int
    blocks: tuple[BlockPlan, ...]
    transitions: tuple[TransitionPlan, ...]
    final_channels: int  # width of norm5 and of the classifier input


def _err(name: str, value: Any, allowed: str) -> SpecError:
    return SpecError(f"DenseNetSpec.{name} must be {allowed}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class DenseNetSpec:
    """Everything that changes the numbers a DenseNet computes.

    Validated on construction; every error names the field, the value given and
    the allowed range. Use :meth:`replace` to derive a variant.
    """

    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    #: Bottleneck width factor (DenseNet-B): the 1x1 conv outputs
    #: ``bn_size * growth_rate`` channels. ``None`` = plain BN-ReLU-3x3 layers.
    bn_size: int | None = 4
    #: theta in (0, 1]: a transition outputs ``rounding(theta * in_channels)``.
    compression: float = 0.5
    drop_rate: float = 0.0
    num_classes: int = 1000
    in_channels: int = 3
    #: "imagenet": 7x7/2 conv + BN-ReLU + 3x3/2 max-pool; "cifar": one 3x3 conv.
    stem: str = "imagenet"
    #: The d2l chapter's convolutions carry a bias; torchvision's do not.
    conv_bias: bool = False
    bn_eps: float = 1e-5
    #: PyTorch convention: weight of the new batch statistic (see module docs).
    bn_momentum: float = 0.1
    #: How a transition's width is rounded: the paper and every zoo use floor.
    transition_rounding: str = "floor"
    #: A label only; not part of the architecture (ignored by ``==``).
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Accept lists for block_config (JSON round trips give lists).
        if isinstance(self.block_config, list):
            object.__setattr__(self, "block_config", tuple(self.block_config))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        if not _is_int(self.growth_rate) or not 1 <= self.growth_rate <= 4096:
            raise _err("growth_rate", self.growth_rate, "an integer in [1, 4096]")
        bc = self.block_config
        if (
            not isinstance(bc, tuple)
            or not 1 <= len(bc) <= 8
            or not all(_is_int(n) and 1 <= n <= 1024 for n in bc)
        ):
            raise _err(
                "block_config", bc, "a tuple of 1 to 8 integers, each in [1, 1024]"
            )
        if not _is_int(self.num_init_features) or not 1 <= self.num_init_features <= 65536:
            raise _err("num_init_features", self.num_init_features, "an integer in [1, 65536]")
        if self.bn_size is not None and (not _is_int(self.bn_size) or not 1 <= self.bn_size <= 64):
            raise _err("bn_size", self.bn_size, "None (no bottleneck) or an integer in [1, 64]")
        if not _is_real(self.compression) or not 0.0 < self.compression <= 1.0:
            raise _err("compression", self.compression, "a number in (0, 1]")
        if not _is_real(self.drop_rate) or not 0.0 <= self.drop_rate < 1.0:
            raise _err("drop_rate", self.drop_rate, "a number in [0, 1)")
        if not _is_int(self.num_classes) or not 1 <= self.num_classes <= 1_000_000:
            raise _err("num_classes", self.num_classes, "an integer in [1, 1000000]")
        if not _is_int(self.in_channels) or not 1 <= self.in_channels <= 4096:
            raise _err("in_channels", self.in_channels, "an integer in [1, 4096]")
        if self.stem not in STEMS:
            raise _err("stem", self.stem, f"one of {STEMS}")
        if not isinstance(self.conv_bias, bool):
            raise _err("conv_bias", self.conv_bias, "True or False")
        if not _is_real(self.bn_eps) or not 0.0 < self.bn_eps <= 1.0:
            raise _err("bn_eps", self.bn_eps, "a number in (0, 1]")
        if not _is_real(self.bn_momentum) or not 0.0 < self.bn_momentum <= 1.0:
            raise _err(
                "bn_momentum",
                self.bn_momentum,
                "a number in (0, 1] in PyTorch's convention (the weight of the new batch"
                " statistic; Keras/Flax/Gluon's 0.9 is 0.1 here)",
            )
        if self.transition_rounding not in ROUNDINGS:
            raise _err("transition_rounding", self.transition_rounding, f"one of {ROUNDINGS}")
        if not isinstance(self.name, str):
            raise _err("name", self.name, "a string")
        # Every transition must keep at least one channel.
        width = self.num_init_features
        for i, n in enumerate(bc[:-1], start=1):
            width += n * self.growth_rate
            if self.transition_width(width) < 1:
                raise _err(
                    "compression",
                    self.compression,
                    f"large enough that transition{i} keeps at least one of its {width} channels",
                )
            width = self.transition_width(width)

    # ------------------------------------------------------------------ variants
    def replace(self, **changes: Any) -> DenseNetSpec:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SpecError(
                f"DenseNetSpec has no field(s) {sorted(unknown)}; fields are {self.field_names()}"
            )
        return dataclasses.replace(self, **changes)

    @staticmethod
    def field_names() -> list[str]:
        return [f.name for f in dataclasses.fields(DenseNetSpec)]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["block_config"] = list(self.block_config)
        return d

    def to_json(self) -> str:
        return json.dumps({"format": SPEC_FORMAT_VERSION, **self.to_dict()}, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DenseNetSpec:
        data = dict(data)
        data.pop("format", None)
        # Written by versions that kept memory_efficient in the spec: it is a runtime
        # option of build()/the constructors now and never changed the numbers.
        data.pop("memory_efficient", None)
        unknown = set(data) - set(cls.field_names())
        if unknown:
            raise SpecError(
                f"unknown DenseNetSpec field(s) {sorted(unknown)}; fields are {cls.field_names()}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> DenseNetSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec JSON is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise SpecError(f"spec JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    def differences(self, other: DenseNetSpec) -> list[tuple[str, Any, Any]]:
        """Fields (name, self's value, other's value) that change the network."""
        out = []
        for f in dataclasses.fields(self):
            if not f.compare:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append((f.name, a, b))
        return out

    # ------------------------------------------------------------------ geometry
    @property
    def has_bottleneck(self) -> bool:
        return self.bn_size is not None

    @property
    def num_blocks(self) -> int:
        return len(self.block_config)

    @property
    def stem_conv(self) -> ConvGeometry:
        return IMAGENET_STEM_CONV if self.stem == "imagenet" else CIFAR_STEM_CONV

    @property
    def stem_pool(self) -> ConvGeometry | None:
        """The stem's max-pool, or None for the CIFAR stem (which has no BN, ReLU or pool)."""
        return IMAGENET_STEM_POOL if self.stem == "imagenet" else None

    @property
    def stem_has_norm(self) -> bool:
        return self.stem == "imagenet"

    bottleneck_conv = BOTTLENECK_CONV
    growth_conv = GROWTH_CONV
    transition_conv = TRANSITION_CONV
    transition_pool = TRANSITION_POOL

    def transition_width(self, in_channels: int) -> int:
        """Output width of a transition with ``in_channels`` inputs, by the spec's rounding."""
        x = in_channels * self.compression
        # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
        if self.transition_rounding == "floor":
            return int(math.floor(x + 1e-9))
        if self.transition_rounding == "ceil":
            return int(math.ceil(x - 1e-9))
        return int(math.floor(x + 0.5))

    @property
    def bottleneck_channels(self) -> int | None:
        """Width of a dense layer's 1x1 bottleneck (``bn_size * growth_rate``), or None."""
        return None if self.bn_size is None else self.bn_size * self.growth_rate

    def block_plan(self, in_channels: int, num_layers: int, index: int = 1) -> BlockPlan:
        """The widths inside a dense block of ``num_layers`` layers on ``in_channels``
        inputs: layer ``i`` sees ``in_channels + i * growth_rate`` channels."""
        if not _is_int(in_channels) or in_channels < 1:
            raise SpecError(f"a dense block needs in_channels >= 1, got {in_channels!r}")
        if not _is_int(num_layers) or num_layers < 1:
            raise SpecError(f"a dense block needs num_layers >= 1, got {num_layers!r}")
        k = self.growth_rate
        return BlockPlan(
            index=index,
            num_layers=num_layers,
            in_channels=in_channels,
            layer_in_channels=tuple(in_channels + i * k for i in range(num_layers)),
            bottleneck_channels=self.bottleneck_channels,
            out_channels=in_channels + num_layers * k,
        )

    @property
    def channel_plan(self) -> ChannelPlan:
        width = self.num_init_features
        blocks, transitions = [], []
        for b, n in enumerate(self.block_config, start=1):
            blocks.append(self.block_plan(width, n, index=b))
            width = blocks[-1].out_channels
            if b < self.num_blocks:
                t_out = self.transition_width(width)
                transitions.append(TransitionPlan(index=b, in_channels=width, out_channels=t_out))
                width = t_out
        return ChannelPlan(
            stem_channels=self.num_init_features,
            blocks=tuple(blocks),
            transitions=tuple(transitions),
            final_channels=width,
        )

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Stage names in order: stem, block1, transition1, ..., blockN, features, pooled, logits."""
        names = ["stem"]
        for b in range(1, self.num_blocks + 1):
            names.append(f"block{b}")
            if b < self.num_blocks:
                names.append(f"transition{b}")
        return (*names, "features", "pooled", "logits")

    @property
    def stage_parts(self) -> dict[str, str]:
        """The part of the network body that ends each stage before ``features``, in
        order: ``{"pool0": "stem", "denseblock1": "block1", "transition1":
        "transition1", ..., "denseblockN": "blockN"}`` (the CIFAR stem ends at
        ``conv0``). Every backend collects its stages by this one table."""
        parts = {("pool0" if self.stem_pool is not None else "conv0"): "stem"}
        for b in range(1, self.num_blocks + 1):
            parts[f"denseblock{b}"] = f"block{b}"
            if b < self.num_blocks:
                parts[f"transition{b}"] = f"transition{b}"
        return parts

    def _spatial(self, size: int) -> list[int]:
        """Spatial size after stem, block1, transition1, ... along one axis (may hit <= 0)."""
        s = self.stem_conv.out_size(size)
        if self.stem_pool is not None:
            s = self.stem_pool.out_size(s)
        sizes = [s]
        for b in range(1, self.num_blocks + 1):
            sizes.append(s)  # dense blocks keep the size
            if b < self.num_blocks:
                s = self.transition_pool.out_size(s)
                sizes.append(s)
        return sizes

    def min_input_size(self) -> int:
        """The smallest height (or width) for which every stage keeps at least one pixel."""
        lo = 1
        while min(self._spatial(lo)) < 1:
            lo += 1
        return lo

    def stage_shapes(self, height: int, width: int | None = None) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of every stage, canonical layout: (C, H, W) or (C,)."""
        width = height if width is None else width
        for axis, v in (("height", height), ("width", width)):
            if not _is_int(v) or v < 1:
                raise InputError(f"input {axis} must be a positive integer, got {v!r}")
        hs, ws = self._spatial(height), self._spatial(width)
        if min(hs) < 1 or min(ws) < 1:
            m = self.min_input_size()
            raise InputError(
                f"input of {height}x{width} is too small for this network "
                f"({self.name}, {self.stem} stem, {self.num_blocks} blocks): "
                f"the smallest size that works is {m}x{m}"
            )
        plan = self.channel_plan
        chans = [plan.stem_channels]
        for b in plan.blocks:
            chans.append(b.out_channels)
            if b.index < self.num_blocks:
                chans.append(plan.transitions[b.index - 1].out_channels)
        names = self.stage_names
        shapes: dict[str, tuple[int, ...]] = {}
        for name, c, h, w in zip(names, chans, hs, ws, strict=False):
            shapes[name] = (c, h, w)
        shapes["features"] = (plan.final_channels, hs[-1], ws[-1])
        shapes["pooled"] = (plan.final_channels,)
        shapes["logits"] = (self.num_classes,)
        return shapes

    # ------------------------------------------------------------------ counts
    def num_params(self, trainable_only: bool = True) -> int:
        """Parameter count; with ``trainable_only`` it matches ``sum(p.numel())`` in torchvision."""
        from .params import param_table  # params depends on spec, not the other way round

        return sum(
            math.prod(p.shape)
            for p in param_table(self)
            if p.trainable or not trainable_only
        )

    def macs(self, height: int, width: int | None = None) -> int:
        """Multiply-accumulates of one sample's forward pass: convolutions and classifier.

        BatchNorm, ReLU, pooling and concatenation are not counted (the usual
        convention of fvcore / ptflops-style counters).
        """
        width = height if width is None else width
        shapes = self.stage_shapes(height, width)
        plan = self.channel_plan
        total = 0
        # stem conv: output at stride 2 (before the pool) for imagenet
        h0, w0 = self.stem_conv.out_size(height), self.stem_conv.out_size(width)
        k = self.stem_conv.kernel
        total += h0 * w0 * self.num_init_features * self.in_channels * k * k
        for bp in plan.blocks:
            _, h, w = shapes[f"block{bp.index}"]
            for cin in bp.layer_in_channels:
                if bp.bottleneck_channels is not None:
                    total += h * w * bp.bottleneck_channels * cin
                    total += h * w * self.growth_rate * bp.bottleneck_channels * 9
                else:
                    total += h * w * self.growth_rate * cin * 9
        for tp in plan.transitions:
            _, h, w = shapes[f"block{tp.index}"]  # the 1x1 conv runs before the pool
            total += h * w * tp.out_channels * tp.in_channels
        total += plan.final_channels * self.num_classes
        return total

    def describe(self) -> str:
        bott = "no bottleneck" if self.bn_size is None else f"bottleneck {self.bn_size}k"
        return (
            f"{self.name}: {self.stem} stem, k={self.growth_rate}, blocks {self.block_config}, "
            f"{bott}, theta={self.compression}, {self.in_channels}->{self.num_classes}"
        )


def check_input_shape(spec: DenseNetSpec, shape: tuple[int, ...], layout: str = "NCHW") -> None:
    """Raise :class:`InputError` unless ``shape`` is a batch this network accepts.

    ``layout`` is what the caller expects ("NCHW" canonical, "NHWC" channels-last).
    The message names the expected and the given shape, and says when the
    array looks like the other layout.
    """
    shape = tuple(int(s) for s in shape)
    c = spec.in_channels
    want = f"(N, {c}, H, W)" if layout == "NCHW" else f"(N, H, W, {c})"
    if len(shape) != 4:
        raise InputError(
            f"expected a 4-d {layout} batch of shape {want}, got a {len(shape)}-d array of "
            f"shape {shape}"
        )
    ch_axis, other = (1, 3) if layout == "NCHW" else (3, 1)
    if shape[ch_axis] != c:
        other_layout = "NHWC" if layout == "NCHW" else "NCHW"
        hint = ""
        if shape[other] == c:
            hint = f"; it looks like an {other_layout} array: transpose it to {layout}"
        raise InputError(
            f"expected a {layout} batch of shape {want} ({c} input channel"
            f"{'s' if c != 1 else ''}), got shape {shape}{hint}"
        )
    if shape[0] < 1:
        raise InputError(f"expected a non-empty batch of shape {want}, got shape {shape}")
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    try:
        spec.stage_shapes(h, w)
    except InputError as e:  # add the batch's shape to the smallest size that works
        raise InputError(f"{layout} batch of shape {shape}: {e}") from None


def check_input_dtype(dtype: Any, allowed: tuple[str, ...] = ("float32", "float64")) -> None:
    name = str(getattr(dtype, "name", dtype))
    if name not in allowed:
        raise InputError(f"expected a floating-point batch of dtype {' or '.join(allowed)}, got {name}")


def check_labels(labels: Any, n: int, num_classes: int) -> Any:
    """Integer class labels for a batch of ``n``: returned as an int64 numpy array, or
    :class:`InputError` naming the expected and the given shape, dtype or range."""
    import numpy as np  # here, not at the top: the spec itself needs no numpy

    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"expected {n} integer labels of shape ({n},), got a {labels.dtype} "
                         f"array of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------- presets
PRESETS: dict[str, DenseNetSpec] = {
    # The d2l.ai chapter's network (its PyTorch tab): 1 input channel (Fashion-MNIST),
    # 64-channel 7x7/2 stem + 3x3/2 max-pool, four blocks of four plain BN-ReLU-3x3
    # layers with k=32, transitions that halve, 10 classes, convolutions with bias.
    "d2l": DenseNetSpec(
        growth_rate=32,
        block_config=(4, 4, 4, 4),
        num_init_features=64,
        bn_size=None,
        compression=0.5,
        num_classes=10,
        in_channels=1,
        conv_bias=True,
        name="d2l",
    ),
    "densenet121": DenseNetSpec(32, (6, 12, 24, 16), 64, name="densenet121"),
    "densenet161": DenseNetSpec(48, (6, 12, 36, 24), 96, name="densenet161"),
    "densenet169": DenseNetSpec(32, (6, 12, 32, 32), 64, name="densenet169"),
    "densenet201": DenseNetSpec(32, (6, 12, 48, 32), 64, name="densenet201"),
    "densenet264": DenseNetSpec(32, (6, 12, 64, 48), 64, name="densenet264"),
    # CIFAR nets of the paper (Table 2): L=40, k=12 without bottleneck or
    # compression; DenseNet-BC L=100, k=12. Depth L = 3 * layers * (2 if B else 1) + 4.
    "densenet40_k12": DenseNetSpec(
        growth_rate=12,
        block_config=(12, 12, 12),
        num_init_features=16,
        bn_size=None,
        compression=1.0,
        num_classes=10,
        stem="cifar",
        name="densenet40_k12",
    ),
    "densenet_bc_100_k12": DenseNetSpec(
        growth_rate=12,
        block_config=(16, 16, 16),
        num_init_features=24,
        bn_size=4,
        compression=0.5,
        num_classes=10,
        stem="cifar",
        name="densenet_bc_100_k12",
    ),
}


def get_spec(name: str, **changes: Any) -> DenseNetSpec:
    """A preset by name, optionally with fields changed: ``get_spec("densenet121", num_classes=10)``."""
    try:
        spec = PRESETS[name]
    except KeyError:
        raise SpecError(
            f"unknown DenseNet preset {name!r}; known presets are {sorted(PRESETS)}"
        ) from None
    return spec.replace(**changes) if changes else spec
