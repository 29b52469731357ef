"""Pitfall variants of the Flax NNX backend (:mod:`densenet_multi.flax`).

Imported only in the jax environment's worker. The harness's worker sets
``JAX_PLATFORMS=cpu`` only for the backend named "flax"; a variant has its own
name, so the default its tox env would set is set here, before JAX is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ._base import InitialWidthSpec, Variant  # noqa: E402

__all__ = ["initial_width", "kernel_reshape", "dense_untransposed", "momentum_default",
           "fast_variance"]


def _norm_patch(**changes: Any) -> Any:
    """A patch of the model's BatchNorm factory: the layer it makes, with ``changes``."""
    def patch() -> None:
        from densenet_multi.flax import densenet

        make = densenet._norm

        def _norm(*args: Any, **kwargs: Any) -> Any:
            norm = make(*args, **kwargs)
            for name, value in changes.items():
                setattr(norm, name, value)
            return norm

        densenet._norm = _norm
    return patch


def _patch_kernel_reshape() -> None:
    """OIHW kernels *reshaped* to HWIO (``w.reshape(kh, kw, i, o)``, which keeps the
    memory order) instead of transposed, and reshaped back on export: shapes fit, the
    round trip is exact, the convolution is another one."""
    from densenet_multi import layouts
    from densenet_multi.flax import convert

    def to_channels_last(kind: str, a: np.ndarray) -> np.ndarray:
        if kind == "conv_weight":
            o, i, kh, kw = a.shape
            return np.ascontiguousarray(np.asarray(a).reshape(kh, kw, i, o))
        return layouts.param_to_channels_last(kind, a)

    def from_channels_last(kind: str, a: np.ndarray) -> np.ndarray:
        if kind == "conv_weight":
            kh, kw, i, o = a.shape
            return np.ascontiguousarray(np.asarray(a).reshape(o, i, kh, kw))
        return layouts.param_from_channels_last(kind, a)

    convert.param_to_channels_last = to_channels_last
    convert.param_from_channels_last = from_channels_last


def _patch_dense_untransposed() -> None:
    """The classifier's canonical (out, in) weight put into ``nnx.Linear``'s (in, out)
    kernel as it is, both ways: the transposition is missing (the conv kernels are still
    transposed OIHW <-> HWIO)."""
    from densenet_multi import layouts
    from densenet_multi.flax import convert

    def to_channels_last(kind: str, a: np.ndarray) -> np.ndarray:
        if kind == "linear_weight":
            return np.ascontiguousarray(a)
        return layouts.param_to_channels_last(kind, a)

    def from_channels_last(kind: str, a: np.ndarray) -> np.ndarray:
        if kind == "linear_weight":
            return np.ascontiguousarray(a)
        return layouts.param_from_channels_last(kind, a)

    convert.param_to_channels_last = to_channels_last
    convert.param_from_channels_last = from_channels_last


#: the JAX tab's transition widths: from the initial width, not the running one
initial_width = Variant("flax", "initial_width", model_spec=InitialWidthSpec.of)
kernel_reshape = Variant("flax", "kernel_reshape", patch=_patch_kernel_reshape)
#: nnx.BatchNorm's (and linen's) default momentum, 0.99 (the spec's is Flax's 0.9)
momentum_default = Variant("flax", "momentum_default", patch=_norm_patch(momentum=0.99))
#: nnx.BatchNorm's default use_fast_variance=True: E[x^2] - E[x]^2
fast_variance = Variant("flax", "fast_variance", patch=_norm_patch(use_fast_variance=True))
dense_untransposed = Variant("flax", "dense_untransposed", patch=_patch_dense_untransposed)
