"""Canonical parameters <-> the Keras model, and keras.applications DenseNets <-> canonical.

Canonical parameters are torchvision's ``state_dict`` names in PyTorch's layout
(see :mod:`densenet_multi.params`). The Keras model is channels-last: conv
kernels HWIO, dense kernels (in, out). Every name comes from
:func:`densenet_multi.params.module_table`; its structural ``part`` is resolved
against the model in one function, :func:`resolve`, and every transpose is
done by :mod:`densenet_multi.layouts` in one place, :func:`_to_keras` /
:func:`_from_keras`.

keras.applications' DenseNet121/169/201 are functional models with fixed,
stage-aligned layer names (``conv1_conv``, ``conv2_block1_0_bn``, ``pool2_conv``,
``bn``, ``predictions``); :func:`keras_applications_layer_name` maps a ``part``
to that name, and the converters copy through the canonical dict, so ours and
theirs agree through the same validated path. Their BatchNorm epsilon is
1.001e-5: build ours from a spec with ``bn_eps=1.001e-5``
(:func:`keras_applications_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from .. import layouts
from ..params import ModuleRef, module_table, validate_params
from ..spec import DenseNetSpec, get_spec
from .densenet import DenseBlock, DenseNet, Transition

__all__ = [
    "KERAS_APPLICATIONS_EPS",
    "resolve",
    "canonical_variables",
    "load_canonical",
    "export_canonical",
    "keras_applications_spec",
    "keras_applications_layer_name",
    "keras_applications_to_canonical",
    "canonical_to_keras_applications",
]

#: keras.applications' BatchNorm epsilon: the floor of TF's (Keras 2) fused batch-norm kernel.
KERAS_APPLICATIONS_EPS = 1.001e-5


# (module kind, canonical attribute) -> the Keras variable holding it.
_KERAS_VARIABLE = {
    ("conv", "weight"): "kernel",
    ("conv", "bias"): "bias",
    ("bn", "weight"): "gamma",
    ("bn", "bias"): "beta",
    ("bn", "running_mean"): "moving_mean",
    ("bn", "running_var"): "moving_variance",
    ("linear", "weight"): "kernel",
    ("linear", "bias"): "bias",
}


def resolve(model: DenseNet, part: tuple[Any, ...]) -> keras.layers.Layer:
    """The Keras layer (Conv2D, BatchNormalization or Dense) at a ModuleRef's structural ``part``."""
    head = part[0]
    if head in ("stem", "norm5"):  # ("stem", "conv0" | "norm0"), ("norm5",)
        return model.get_layer(part[-1])
    if head == "block":  # ("block", b, "layer", l, "norm1" | "conv1" | ... | "norm" | "conv")
        _, b, _, l, name = part
        return getattr(_parts(model, DenseBlock)[b].denselayers[l], name)
    if head == "transition":  # ("transition", t, "norm" | "conv")
        return getattr(_parts(model, Transition)[part[1]], part[2])
    if head == "classifier":
        return model.classifier
    raise KeyError(f"unknown module part {part!r}")


def _parts(model: DenseNet, kind: type) -> list[keras.layers.Layer]:
    """The body's dense blocks or transitions, in order (0-based, as in the part paths)."""
    return [p for p in model.features if isinstance(p, kind)]


def _variables(layer: keras.layers.Layer, ref: ModuleRef) -> dict[str, keras.Variable]:
    return {p.name: getattr(layer, _KERAS_VARIABLE[ref.kind, p.attr]) for p in ref.params}


def to_numpy(value: Any) -> np.ndarray:
    """A numpy copy of a Keras variable or a backend tensor (``.numpy()`` where there is one:
    numpy 2's ``np.array(tf.Variable)`` warns about the ``copy`` keyword)."""
    if isinstance(value, keras.Variable):
        value = value.value  # the backend's tensor (tf.Variable, jax.Array)
    return np.array(value.numpy() if hasattr(value, "numpy") else value)


def ensure_built(model: DenseNet) -> None:
    """Create the model's variables if it has none yet, for a batch of any size: every
    part builds its children from the spec's widths (``DenseNet.build``), nothing is traced."""
    if not model.built:
        model.build((None, None, None, model.spec.in_channels))


def canonical_variables(model: DenseNet) -> dict[str, keras.Variable]:
    """Canonical name -> the ``keras.Variable`` holding it, in ``param_table`` order."""
    ensure_built(model)
    out: dict[str, keras.Variable] = {}
    for ref in module_table(model.spec):
        out.update(_variables(resolve(model, ref.part), ref))
    return out


def _kinds(spec: DenseNetSpec) -> dict[str, str]:
    return {p.name: p.kind for ref in module_table(spec) for p in ref.params}


def _to_keras(kind: str, a: np.ndarray) -> np.ndarray:
    """The one layout change on the way in: OIHW -> HWIO, (out, in) -> (in, out)."""
    return layouts.param_to_channels_last(kind, np.asarray(a))


def _from_keras(kind: str, a: np.ndarray) -> np.ndarray:
    """The one layout change on the way out: HWIO -> OIHW, (in, out) -> (out, in)."""
    return layouts.param_from_channels_last(kind, np.asarray(a))


def _assign_all(variables: Mapping[str, keras.Variable], params: Mapping[str, np.ndarray],
                kinds: Mapping[str, str]) -> None:
    # Convert and check everything first, assign afterwards: nothing is copied if
    # anything is wrong.
    values = {}
    for name, var in variables.items():
        value = _to_keras(kinds[name], params[name]).astype(var.dtype, copy=False)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{name}: the Keras variable {var.path} has shape {tuple(var.shape)}, "
                             f"the converted parameter {tuple(value.shape)}")
        values[name] = value
    for name, var in variables.items():
        var.assign(values[name])


def canonical_dtype(dtype: Any) -> np.dtype:
    """The canonical checkpoint dtype of a variable dtype: float64 stays float64,
    anything else (float32, a float16/bfloat16 model's) is exported as float32."""
    return np.dtype(np.float64 if keras.backend.standardize_dtype(dtype) == "float64"
                    else np.float32)


def _read_all(variables: Mapping[str, keras.Variable], kinds: Mapping[str, str]
              ) -> dict[str, np.ndarray]:
    # A numpy copy of each variable in its own dtype (float64 for a float64 model):
    # bit-exact, no rounding through float32.
    return {name: _from_keras(kinds[name], to_numpy(var)).astype(canonical_dtype(var.dtype),
                                                                  copy=False)
            for name, var in variables.items()}


def load_canonical(model: DenseNet, params: Mapping[str, np.ndarray]) -> None:
    """Copy canonical parameters (weights and BN running statistics) into ``model``.

    Every key, shape and dtype is validated first
    (:func:`densenet_multi.params.validate_params`, float32 or float64); nothing is
    copied when anything is wrong. Values are cast to the model's dtype (float32
    parameters into a float64 model exactly, float64 into a float32 one rounded).
    """
    validate_params(model.spec, params, dtype=None)
    _assign_all(canonical_variables(model), params, _kinds(model.spec))


def export_canonical(model: DenseNet) -> dict[str, np.ndarray]:
    """The model's parameters and running statistics as canonical numpy arrays, in
    ``param_table`` order and in the model's dtype (float64 for a float64 model, float32
    for a float32 one): ``export_canonical`` after ``load_canonical(params)`` returns
    ``params`` bit for bit when they are of the model's dtype."""
    return _read_all(canonical_variables(model), _kinds(model.spec))


# ---------------------------------------------------------------------- keras.applications
_APPLICATIONS_DENSE_UNITS = {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn", "conv2": "2_conv"}
_APPLICATIONS_TRANSITION_UNITS = {"norm": "bn", "conv": "conv"}
_APPLICATIONS_STEM = {"conv0": "conv1_conv", "norm0": "conv1_bn"}


def keras_applications_spec(name: str = "densenet121", **changes: Any) -> DenseNetSpec:
    """A preset with keras.applications' BatchNorm epsilon (1.001e-5)."""
    return get_spec(name, **{"bn_eps": KERAS_APPLICATIONS_EPS, **changes})


def keras_applications_layer_name(part: tuple[Any, ...]) -> str:
    """The fixed name keras.applications.DenseNet gives the layer at a structural ``part``.

    Their dense blocks are ``conv2``..``conv5`` (stage-aligned with ResNet's),
    their transitions ``pool2``..``pool4``, both 0-based here, hence the offset of 2.
    """
    head = part[0]
    if head == "stem":
        return _APPLICATIONS_STEM[part[1]]
    if head == "block":
        _, b, _, l, unit = part
        if unit not in _APPLICATIONS_DENSE_UNITS:
            raise ValueError("keras.applications' DenseNets have bottleneck layers only; "
                             f"the spec has plain layers ({unit!r})")
        return f"conv{b + 2}_block{l + 1}_{_APPLICATIONS_DENSE_UNITS[unit]}"
    if head == "transition":
        return f"pool{part[1] + 2}_{_APPLICATIONS_TRANSITION_UNITS[part[2]]}"
    if head == "norm5":
        return "bn"
    if head == "classifier":
        return "predictions"
    raise KeyError(f"unknown module part {part!r}")


def _check_applications_spec(spec: DenseNetSpec) -> None:
    problems = []
    if spec.stem != "imagenet":
        problems.append(f"stem={spec.stem!r} (theirs is 'imagenet')")
    if not spec.has_bottleneck:
        problems.append("bn_size=None (theirs has bottleneck layers)")
    if spec.conv_bias:
        problems.append("conv_bias=True (their convolutions have none)")
    if problems:
        raise ValueError("this spec cannot describe a keras.applications DenseNet: "
                         + "; ".join(problems))


def _applications_variables(app: keras.Model, spec: DenseNetSpec) -> dict[str, keras.Variable]:
    _check_applications_spec(spec)
    out: dict[str, keras.Variable] = {}
    for ref in module_table(spec):
        try:
            layer = app.get_layer(keras_applications_layer_name(ref.part))
        except ValueError as e:
            raise ValueError(f"{app.name} has no layer for {ref.prefix}: {e}") from None
        out.update(_variables(layer, ref))
    return out


def keras_applications_to_canonical(app: keras.Model, spec: DenseNetSpec) -> dict[str, np.ndarray]:
    """Canonical parameters of a ``keras.applications.DenseNet121/169/201`` (include_top=True).

    ``spec`` must describe it (e.g. ``keras_applications_spec("densenet121")``); the
    result is validated against it.
    """
    params = _read_all(_applications_variables(app, spec), _kinds(spec))
    validate_params(spec, params, dtype=None, what=f"the weights of {app.name}")
    return params


def canonical_to_keras_applications(params: Mapping[str, np.ndarray], app: keras.Model,
                                    spec: DenseNetSpec) -> None:
    """Copy canonical parameters into a keras.applications DenseNet (validated first)."""
    validate_params(spec, params, dtype=None)
    _assign_all(_applications_variables(app, spec), params, _kinds(spec))
