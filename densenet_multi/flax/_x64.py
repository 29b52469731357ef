"""JAX's 64-bit mode for float64 models, scoped at the backend boundary.

JAX computes in float32 unless its x64 mode is on (float64 arrays and dtypes
requested with it off become float32, with a warning). The backend leaves JAX's
global config alone: every function that creates, traces or reads arrays of a
float64 model runs under ``jax.enable_x64(True)`` (thread-local, undone on
return) through :func:`in_model_dtype`, so float64 models work in any process,
beside float32 ones, which run exactly as they would without it. (jit caches are
keyed on the x64 mode: functions traced under it never serve a float32 call, or
the other way round.) The model file itself knows nothing of this.

The same boundary traces with :func:`._tracing.quick_tracer_probes` (JAX 0.10's
quadratic ``Tracer.sharding`` probe, which Flax's variable writes trigger).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import jax
import numpy as np
from flax.typing import Dtype

from ._tracing import quick_tracer_probes

if TYPE_CHECKING:
    from .densenet import DenseNet

__all__ = ["needs_x64", "x64_scope", "in_model_dtype"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def needs_x64(*dtypes: Dtype | None) -> bool:
    """Whether any of ``dtypes`` (None: unspecified) is float64."""
    return any(d is not None and np.dtype(d) == np.float64 for d in dtypes)


def x64_scope(enabled: bool) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(True)`` when ``enabled``, else a no-op context."""
    return jax.enable_x64(True) if enabled else contextlib.nullcontext()


def in_model_dtype(
    fn: Callable[Concatenate[DenseNet, _P], _R],
) -> Callable[Concatenate[DenseNet, _P], _R]:
    """Run ``fn(model, ...)`` with JAX's 64-bit mode on when ``model`` is float64
    (its ``dtype`` or ``param_dtype``), as it is otherwise for a float32 model, and
    with :func:`~._tracing.quick_tracer_probes` (for the first call's tracing)."""

    @functools.wraps(fn)
    def wrapper(model: DenseNet, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with x64_scope(needs_x64(model.dtype, model.param_dtype)), quick_tracer_probes():
            return fn(model, *args, **kwargs)

    return wrapper
