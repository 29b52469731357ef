"""ONNX export of the Flax NNX model through ``jax2onnx``.

``jax2onnx.to_onnx`` traces :meth:`DenseNet.forward_stages` (eval mode) with a
symbolic batch, height and width and converts the jaxpr. The model is NHWC; the
graph is NCHW like every exported graph: jax2onnx transposes the input and the
4-d stage outputs inside the graph (``inputs_as_nchw`` / ``outputs_as_nchw``).
Float64 models export as float64 graphs (``enable_double_precision``, traced
under JAX's x64 mode).

Two things about jax2onnx 0.17, handled here and nowhere else:

* its ``flax.linen`` pooling plugin accepts only ``"SAME"`` / ``"VALID"`` padding
  and raises on explicit pads, which the model uses (``"SAME"`` pads a stride-2
  window (0, 1), not (1, 1): another network). :func:`_explicit_pool_padding`
  turns explicit pads into a ``jnp.pad`` with the pool's own identity element
  (-inf for a max-pool, 0 for an average pool with ``count_include_pad``, which
  is what ``flax.linen.pool`` pads with) followed by a ``"VALID"`` pool: the same
  numbers, and it leaves the model alone;
* the intermediate shapes it stamps on the graph (``value_info``) are wrong for
  some transposed tensors with two symbolic axes, and onnxruntime refuses the
  graph; they are dropped (``finish(drop_value_info=True)``) and onnxruntime infers
  them again.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import jax2onnx
import onnx
from flax import nnx
from jax2onnx.plugins.flax.linen.pool import PoolPlugin

from ..export.graph import INPUT, finish
from ._x64 import x64_scope
from .densenet import DenseNet
from .runtime import model_dtype

__all__ = ["EXPORTER", "to_onnx"]

EXPORTER = "jax2onnx.to_onnx"
#: jax2onnx's default (23) is newer than some runtimes read; 21 is what onnxruntime >= 1.18 runs.
DEFAULT_OPSET = 21


@contextlib.contextmanager
def _explicit_pool_padding() -> Iterator[None]:
    """jax2onnx's ``flax.linen.pool`` patch, taught explicit pads (module docstring)."""
    make_patch = PoolPlugin.get_monkey_patch

    def get_monkey_patch(orig: Callable[..., Any]) -> Callable[..., Any]:
        patched = make_patch(orig)

        def pool(inputs, init, reduce_fn, window_shape, strides, padding):
            if isinstance(padding, str):
                return patched(inputs, init, reduce_fn, window_shape, strides, padding)
            # linen.pool's pads are for the window's axes; batch and features unpadded
            pads = [(0, 0), *(tuple(p) for p in padding), (0, 0)]
            x = jnp.pad(inputs, pads, constant_values=init)
            return patched(x, init, reduce_fn, window_shape, strides, "VALID")

        return pool

    PoolPlugin.get_monkey_patch = staticmethod(get_monkey_patch)
    try:
        yield
    finally:
        PoolPlugin.get_monkey_patch = staticmethod(make_patch)


def to_onnx(model: DenseNet, *, opset: int | None = None) -> onnx.ModelProto:
    """``model`` (eval mode, its current weights) as a finished ONNX graph.

    The model itself is not changed: the graph is traced from a copy in eval mode.
    """
    spec = model.spec
    dtype = model_dtype(model).name
    names = list(spec.stage_names)
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    copy.eval()

    def stages(x: jax.Array) -> tuple[jax.Array, ...]:
        out = copy.forward_stages(x)
        return tuple(out[k] for k in names)

    four_d = [i for i, k in enumerate(names) if k not in ("pooled", "logits")]
    with x64_scope(dtype == "float64"), _explicit_pool_padding(), warnings.catch_warnings():
        # jax2onnx 0.17 reads Flax variables with `.value`, deprecated in flax 0.12 (one
        # warning per layer): its business, not the caller's
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="jax2onnx")
        proto = jax2onnx.to_onnx(
            stages, [("batch", "height", "width", spec.in_channels)],
            opset=opset or DEFAULT_OPSET, enable_double_precision=dtype == "float64",
            inputs_as_nchw=[0], outputs_as_nchw=four_d, input_names=[INPUT],
            output_names=names, model_name=spec.name)
    versions = {"jax": jax.__version__, "flax": _version("flax"),
                "jax2onnx": _version("jax2onnx")}
    return finish(proto, spec, backend="flax", exporter=EXPORTER, versions=versions,
                  dtype=dtype, drop_value_info=True)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)
