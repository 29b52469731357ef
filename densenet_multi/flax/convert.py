"""Canonical parameters <-> the Flax NNX module tree.

Canonical parameters are torchvision-named numpy arrays in PyTorch's layout
(OIHW kernels, (out, in) dense weights); see :mod:`densenet_multi.params`.
The Flax model keeps HWIO kernels and (in, out) dense kernels. Three small
pieces do the whole job:

* :func:`resolve` maps a :class:`~densenet_multi.params.ModuleRef` ``part``
  (``("block", 0, "layer", 3, "conv2")``) to the NNX layer. The module tree
  carries the canonical names (``features.denseblock1.denselayer4.conv2``), so
  it walks the canonical prefix the parameter table gives for the part;
* :data:`ATTRIBUTES` maps a canonical attribute (``weight``, ``running_var``,
  ...) to the NNX variable name (``kernel``, ``var``, ...);
* the layout change goes through :func:`densenet_multi.layouts.param_to_channels_last`
  and :func:`~densenet_multi.layouts.param_from_channels_last` and nowhere else.

Dtypes: a canonical array is cast to the dtype of the variable it goes into
(the model's ``param_dtype``; running statistics at least float32), and comes
back out in that dtype, so a float64 model round-trips float64 parameters bit
for bit. For a float64 model both functions run under ``jax.enable_x64(True)``
(:func:`~densenet_multi.flax._x64.in_model_dtype`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..layouts import param_from_channels_last, param_to_channels_last
from ..params import ModuleRef, ParameterError, ParamInfo, module_table, validate_params
from ..spec import DenseNetSpec
from ._x64 import in_model_dtype
from .densenet import DenseNet

__all__ = ["ATTRIBUTES", "resolve", "variables", "load_canonical", "export_canonical",
           "model_device"]

#: (ModuleRef.kind, canonical attribute) -> NNX variable attribute of that layer.
ATTRIBUTES: dict[tuple[str, str], str] = {
    ("conv", "weight"): "kernel",
    ("conv", "bias"): "bias",
    ("bn", "weight"): "scale",
    ("bn", "bias"): "bias",
    ("bn", "running_mean"): "mean",
    ("bn", "running_var"): "var",
    ("linear", "weight"): "kernel",
    ("linear", "bias"): "bias",
}


@functools.lru_cache(maxsize=32)
def _prefixes(spec: DenseNetSpec) -> dict[tuple[Any, ...], str]:
    return {ref.part: ref.prefix for ref in module_table(spec)}


def resolve(model: DenseNet, part: tuple[Any, ...]) -> nnx.Module:
    """The NNX layer (``nnx.Conv``, ``nnx.BatchNorm`` or ``nnx.Linear``) at a
    :class:`~densenet_multi.params.ModuleRef` ``part`` path: ``("stem", "conv0" |
    "norm0")``, ``("block", b, "layer", l, name)``, ``("transition", t, "norm" |
    "conv")``, ``("norm5",)``, ``("classifier",)`` (0-based indices)."""
    try:
        prefix = _prefixes(model.spec)[tuple(part)]
    except KeyError:
        raise KeyError(f"unknown canonical part path {part!r}") from None
    node: Any = model
    for name in prefix.split("."):  # features -> denseblock1 -> denselayer4 -> conv2
        node = getattr(node, name)
    return node


def variables(model: DenseNet) -> Iterator[tuple[ModuleRef, ParamInfo, nnx.Variable]]:
    """Every canonical parameter of ``model`` with its NNX variable, in ``param_table`` order."""
    for ref in module_table(model.spec):
        layer = resolve(model, ref.part)
        for info in ref.params:
            yield ref, info, getattr(layer, ATTRIBUTES[(ref.kind, info.attr)])


def model_device(model: DenseNet) -> jax.Device | None:
    """The device holding the model's parameters (None for an abstract model)."""
    value = model.classifier.kernel.get_value()
    return next(iter(value.devices())) if isinstance(value, jax.Array) else None


@in_model_dtype
def load_canonical(
    model: DenseNet, params: Mapping[str, Any], *, device: jax.Device | None = None
) -> None:
    """Copy canonical parameters and BN running statistics into ``model``.

    Validates every key, shape and dtype first (float32 or float64, all
    alike) and converts every array before assigning anything, so that nothing
    is copied when anything is wrong. Each array is cast to the dtype of the
    variable it replaces (the model's dtype): a variable never changes dtype.
    Arrays go to ``device`` (default: where the model's parameters already are).
    """
    validate_params(model.spec, params, dtype=None, what="canonical parameters")
    device = device or model_device(model)
    staged: list[tuple[nnx.Variable, np.ndarray]] = []
    problems = []
    for _, info, var in variables(model):
        dtype = var.get_value().dtype  # the model's: a variable never changes dtype
        a = param_to_channels_last(info.kind, np.asarray(params[info.name], dtype=dtype))
        if tuple(var.shape) != a.shape:  # our tree disagrees with the spec: a bug, not user error
            problems.append(f"{info.name}: model expects {tuple(var.shape)}, got {a.shape}")
        staged.append((var, a))
    if problems:
        raise ParameterError("the Flax model does not match its spec:\n  - " + "\n  - ".join(problems))
    for var, a in staged:
        var.set_value(jax.device_put(a, device))


@in_model_dtype
def export_canonical(model: DenseNet, *, trainable_only: bool = False) -> dict[str, np.ndarray]:
    """The model's parameters (and, unless ``trainable_only``, BN running statistics)
    as numpy arrays in the model's dtype (float32 or float64; a narrower one comes
    back as float32), in canonical names and layout, in ``param_table`` order."""
    out: dict[str, np.ndarray] = {}
    for _, info, var in variables(model):
        if trainable_only and not info.trainable:
            continue
        value = var.get_value()
        # a copy the caller owns, in the variable's own dtype: bit-exact
        a = np.array(value, dtype=jnp.promote_types(value.dtype, jnp.float32))
        out[info.name] = param_from_channels_last(info.kind, a)
    return out
