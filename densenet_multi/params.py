"""Canonical parameters: names, shapes and kinds, and a seeded initializer.

Canonical names are torchvision's ``state_dict`` keys (without
``num_batches_tracked``), so a torchvision checkpoint *is* a canonical
checkpoint for the presets torchvision has. Two documented extensions cover
what torchvision never built:

* a dense layer **without bottleneck** (DenseNet without "B", the d2l chapter's
  net) has one BN-ReLU-3x3 conv block, named like a transition's:
  ``features.denseblock1.denselayer1.norm`` / ``...denselayer1.conv``.
  ``norm1/conv1/norm2/conv2`` therefore always mean a bottleneck layer.
* the **CIFAR stem** is a single ``features.conv0`` (no ``norm0`` / ``pool0``).
* with ``conv_bias=True`` every convolution also has ``<conv>.bias``.

The final BatchNorm is ``features.norm5`` whatever the number of blocks (as in
torchvision, where the name is fixed). These names never change once shipped:
``tests/spec/golden_densenet121_keys.txt`` holds torchvision's list.

Canonical layout is PyTorch's: conv kernels (out, in, kh, kw), dense weights
(out, in), activations NCHW.

Every parameter belongs to a :class:`ModuleRef`: one conv, BN or linear layer,
with a structural ``part`` path that backends resolve against their own module
tree. A backend's converter walks :func:`module_table` and never builds a name
with string arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .spec import DenseNetSpec

__all__ = [
    "KINDS",
    "ModuleRef",
    "ParamInfo",
    "ParameterError",
    "init_params",
    "module_table",
    "param_table",
    "running_stat_names",
    "validate_params",
]

#: kind -> (trainable, description)
KINDS: dict[str, tuple[bool, str]] = {
    "conv_weight": (True, "convolution kernel (out, in, kh, kw)"),
    "conv_bias": (True, "convolution bias (out,)"),
    "bn_weight": (True, "BatchNorm scale gamma (C,)"),
    "bn_bias": (True, "BatchNorm shift beta (C,)"),
    "bn_running_mean": (False, "BatchNorm running mean (C,)"),
    "bn_running_var": (False, "BatchNorm running variance (C,)"),
    "linear_weight": (True, "classifier weight (out, in)"),
    "linear_bias": (True, "classifier bias (out,)"),
}


class ParameterError(ValueError):
    """A canonical parameter dict that does not match its spec."""


@dataclass(frozen=True)
class ParamInfo:
    name: str  # canonical (torchvision) name
    shape: tuple[int, ...]
    kind: str  # a key of KINDS
    attr: str  # the attribute within its module: weight, bias, running_mean, running_var

    @property
    def trainable(self) -> bool:
        return KINDS[self.kind][0]


@dataclass(frozen=True)
class ModuleRef:
    """One layer that owns parameters.

    ``part`` is a structural path a backend resolves in its own module tree:

    * ``("stem", "conv0")``, ``("stem", "norm0")``
    * ``("block", b, "layer", l, name)`` with ``b``, ``l`` 0-based and ``name``
      one of ``norm1, conv1, norm2, conv2`` (bottleneck) or ``norm, conv`` (plain)
    * ``("transition", t, "norm")``, ``("transition", t, "conv")`` (0-based ``t``)
    * ``("norm5",)``, ``("classifier",)``
    """

    prefix: str
    kind: str  # "conv", "bn" or "linear"
    part: tuple[Any, ...]
    params: tuple[ParamInfo, ...]
    #: for convs: kernel size, stride and padding are in the spec's ConvGeometry
    geometry: Any = None


def _conv(prefix: str, part, cout: int, cin: int, k: int, bias: bool, geometry) -> ModuleRef:
    ps = [ParamInfo(f"{prefix}.weight", (cout, cin, k, k), "conv_weight", "weight")]
    if bias:
        ps.append(ParamInfo(f"{prefix}.bias", (cout,), "conv_bias", "bias"))
    return ModuleRef(prefix, "conv", part, tuple(ps), geometry)


def _bn(prefix: str, part, c: int) -> ModuleRef:
    return ModuleRef(
        prefix,
        "bn",
        part,
        (
            ParamInfo(f"{prefix}.weight", (c,), "bn_weight", "weight"),
            ParamInfo(f"{prefix}.bias", (c,), "bn_bias", "bias"),
            ParamInfo(f"{prefix}.running_mean", (c,), "bn_running_mean", "running_mean"),
            ParamInfo(f"{prefix}.running_var", (c,), "bn_running_var", "running_var"),
        ),
    )


def module_table(spec: DenseNetSpec) -> list[ModuleRef]:
    """Every parameterised layer of ``spec``, in torchvision's ``state_dict`` order."""
    plan = spec.channel_plan
    bias = spec.conv_bias
    k = spec.growth_rate
    mods: list[ModuleRef] = []
    sc = spec.stem_conv
    mods.append(
        _conv("features.conv0", ("stem", "conv0"), plan.stem_channels, spec.in_channels,
              sc.kernel, bias, sc)
    )
    if spec.stem_has_norm:
        mods.append(_bn("features.norm0", ("stem", "norm0"), plan.stem_channels))
    for bp in plan.blocks:
        b = bp.index - 1
        for l, cin in enumerate(bp.layer_in_channels):
            pre = f"features.denseblock{bp.index}.denselayer{l + 1}"
            part = ("block", b, "layer", l)
            if bp.bottleneck_channels is not None:
                bc = bp.bottleneck_channels
                mods.append(_bn(f"{pre}.norm1", (*part, "norm1"), cin))
                mods.append(_conv(f"{pre}.conv1", (*part, "conv1"), bc, cin, 1, bias,
                                  spec.bottleneck_conv))
                mods.append(_bn(f"{pre}.norm2", (*part, "norm2"), bc))
                mods.append(_conv(f"{pre}.conv2", (*part, "conv2"), k, bc, 3, bias,
                                  spec.growth_conv))
            else:
                mods.append(_bn(f"{pre}.norm", (*part, "norm"), cin))
                mods.append(_conv(f"{pre}.conv", (*part, "conv"), k, cin, 3, bias,
                                  spec.growth_conv))
        if bp.index < spec.num_blocks:
            tp = plan.transitions[b]
            pre = f"features.transition{tp.index}"
            mods.append(_bn(f"{pre}.norm", ("transition", b, "norm"), tp.in_channels))
            mods.append(_conv(f"{pre}.conv", ("transition", b, "conv"), tp.out_channels,
                              tp.in_channels, 1, bias, spec.transition_conv))
    mods.append(_bn("features.norm5", ("norm5",), plan.final_channels))
    mods.append(
        ModuleRef(
            "classifier",
            "linear",
            ("classifier",),
            (
                ParamInfo("classifier.weight", (spec.num_classes, plan.final_channels),
                          "linear_weight", "weight"),
                ParamInfo("classifier.bias", (spec.num_classes,), "linear_bias", "bias"),
            ),
        )
    )
    return mods


def param_table(spec: DenseNetSpec) -> list[ParamInfo]:
    """Every canonical parameter and buffer of ``spec``, in ``state_dict`` order."""
    return [p for m in module_table(spec) for p in m.params]


def running_stat_names(spec: DenseNetSpec) -> list[str]:
    """Names of the BN running statistics (what a train-mode forward updates)."""
    return [p.name for p in param_table(spec) if not p.trainable]


def trainable_names(spec: DenseNetSpec) -> list[str]:
    return [p.name for p in param_table(spec) if p.trainable]


def validate_params(
    spec: DenseNetSpec,
    params: Mapping[str, Any],
    dtype: str | None = "float32",
    *,
    what: str = "parameters",
) -> None:
    """Raise one :class:`ParameterError` listing every missing, unexpected,
    misshapen or wrongly typed entry of a canonical parameter dict.

    ``dtype=None`` accepts float32 and float64 as long as all entries agree.
    """
    table = {p.name: p for p in param_table(spec)}
    problems: list[str] = []
    missing = [n for n in table if n not in params]
    unexpected = [n for n in params if n not in table]
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_abbrev(unexpected)}")
    dtypes = set()
    for name, info in table.items():
        if name not in params:
            continue
        arr = params[name]
        shape = tuple(getattr(arr, "shape", ()))
        if shape != info.shape:
            problems.append(f"{name}: expected shape {info.shape}, got {shape}")
        dt = str(getattr(arr, "dtype", type(arr).__name__))
        dtypes.add(dt)
        if dtype is not None and dt != dtype:
            problems.append(f"{name}: expected dtype {dtype}, got {dt}")
        elif dtype is None and dt not in ("float32", "float64"):
            problems.append(f"{name}: expected dtype float32 or float64, got {dt}")
    if dtype is None and len(dtypes & {"float32", "float64"}) > 1:
        problems.append(f"mixed dtypes {sorted(dtypes)}: all entries must share one")
    if problems:
        raise ParameterError(
            f"{what} do not match the spec ({spec.describe()}):\n  - " + "\n  - ".join(problems)
        )


def _abbrev(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def init_params(
    spec: DenseNetSpec,
    seed: int = 0,
    *,
    nontrivial_bn: bool = False,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """Seeded canonical parameters, torchvision's initialisation scheme.

    * conv kernels: Kaiming normal, fan-in, gain sqrt(2): N(0, 2 / fan_in);
    * conv biases (``conv_bias=True``): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default;
    * BN: weight 1, bias 0, running mean 0, running variance 1;
    * classifier: weight U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's Linear default), bias 0.

    With ``nontrivial_bn=True`` the BN weight, bias and running statistics are
    drawn instead (weight U(0.5, 1.5), bias N(0, 0.2), mean N(0, 0.2), variance
    U(0.5, 2.0)) and the classifier bias N(0, 0.1), so that an eval-mode forward
    exercises every one of them: a backend that ignored the running statistics
    or swapped mean and variance would fail a parity test.

    The same seed gives the same arrays under numpy 1.23 and 2.x.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, np.ndarray] = {}
    for m in module_table(spec):
        for p in m.params:
            if p.kind == "conv_weight":
                fan_in = math.prod(p.shape[1:])
                a = rng.standard_normal(p.shape) * math.sqrt(2.0 / fan_in)
            elif p.kind == "conv_bias":
                fan_in = math.prod(m.params[0].shape[1:])
                bound = 1.0 / math.sqrt(fan_in)
                a = rng.uniform(-bound, bound, p.shape)
            elif p.kind == "linear_weight":
                bound = 1.0 / math.sqrt(p.shape[1])
                a = rng.uniform(-bound, bound, p.shape)
            elif p.kind == "linear_bias":
                a = rng.normal(0.0, 0.1, p.shape) if nontrivial_bn else np.zeros(p.shape)
            elif not nontrivial_bn:
                fill = 1.0 if p.kind in ("bn_weight", "bn_running_var") else 0.0
                a = np.full(p.shape, fill)
            elif p.kind == "bn_weight":
                a = rng.uniform(0.5, 1.5, p.shape)
            elif p.kind in ("bn_bias", "bn_running_mean"):
                a = rng.normal(0.0, 0.2, p.shape)
            elif p.kind == "bn_running_var":
                a = rng.uniform(0.5, 2.0, p.shape)
            else:  # pragma: no cover - KINDS is closed
                raise AssertionError(p.kind)
            out[p.name] = np.ascontiguousarray(a, dtype=dtype)
    return out
