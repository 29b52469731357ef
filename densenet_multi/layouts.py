"""Every layout transpose between the canonical (PyTorch) layout and the others.

Canonical: activations NCHW, conv kernels OIHW (out, in, kh, kw), dense
weights (out, in). Channels-last frameworks (Flax, Keras) use activations NHWC,
conv kernels HWIO (kh, kw, in, out) and dense kernels (in, out). MXNet Gluon is
NCHW / OIHW / (out, in) like PyTorch, so its converter needs none of these.

Backends call these functions, never ``np.transpose`` with their own axes, so
that one place decides what each layout means. The functions work on any
array with ``.transpose`` / ``.T`` semantics of numpy and return
C-contiguous numpy arrays when given numpy arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NCHW_TO_NHWC",
    "NHWC_TO_NCHW",
    "OIHW_TO_HWIO",
    "HWIO_TO_OIHW",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "oihw_to_hwio",
    "hwio_to_oihw",
    "linear_to_in_out",
    "linear_to_out_in",
    "param_to_channels_last",
    "param_from_channels_last",
]

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
OIHW_TO_HWIO = (2, 3, 1, 0)
HWIO_TO_OIHW = (3, 2, 0, 1)


def _check(a: np.ndarray, ndim: int, what: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{what}: expected a {ndim}-d array, got shape {tuple(a.shape)}")


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """Activations (N, C, H, W) -> (N, H, W, C)."""
    _check(x, 4, "nchw_to_nhwc")
    return np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """Activations (N, H, W, C) -> (N, C, H, W)."""
    _check(x, 4, "nhwc_to_nchw")
    return np.ascontiguousarray(np.transpose(x, NHWC_TO_NCHW))


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """Conv kernel (out, in, kh, kw) -> (kh, kw, in, out)."""
    _check(w, 4, "oihw_to_hwio")
    return np.ascontiguousarray(np.transpose(w, OIHW_TO_HWIO))


def hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    """Conv kernel (kh, kw, in, out) -> (out, in, kh, kw)."""
    _check(w, 4, "hwio_to_oihw")
    return np.ascontiguousarray(np.transpose(w, HWIO_TO_OIHW))


def linear_to_in_out(w: np.ndarray) -> np.ndarray:
    """Dense weight (out, in) -> kernel (in, out)."""
    _check(w, 2, "linear_to_in_out")
    return np.ascontiguousarray(w.T)


def linear_to_out_in(w: np.ndarray) -> np.ndarray:
    """Dense kernel (in, out) -> weight (out, in)."""
    _check(w, 2, "linear_to_out_in")
    return np.ascontiguousarray(w.T)


def param_to_channels_last(kind: str, a: np.ndarray) -> np.ndarray:
    """A canonical parameter of ``kind`` (see :data:`densenet_multi.params.KINDS`)
    in the channels-last frameworks' layout. 1-d parameters are unchanged."""
    if kind == "conv_weight":
        return oihw_to_hwio(a)
    if kind == "linear_weight":
        return linear_to_in_out(a)
    return np.ascontiguousarray(a)


def param_from_channels_last(kind: str, a: np.ndarray) -> np.ndarray:
    """Inverse of :func:`param_to_channels_last`."""
    if kind == "conv_weight":
        return hwio_to_oihw(a)
    if kind == "linear_weight":
        return linear_to_out_in(a)
    return np.ascontiguousarray(a)
