"""Tracing without JAX's quadratic ``Tracer.sharding`` probe, scoped at the backend boundary.

Flax NNX's ``Variable.set_value`` asks ``getattr(value, "sharding", None)`` of every
value written into a variable by index (``var[...] = value``), and under a trace
that value is a Tracer. In JAX 0.10, ``Tracer.sharding`` raises AttributeError, as
it should for ``getattr`` to work, but first builds an error message whose
"origin" part (``_origin_msg``) walks every equation traced so far: each probe
costs time in proportion to the program so far, and tracing becomes quadratic
(jax-ml/jax#40041, which removes that part of the message).

In this network the probes are the train-mode BatchNorms' running-statistic
updates (``self.mean[...] = ...``, 2 per BN: 242 in DenseNet-121) and the RNG
counters advanced while the model is built abstractly (one per layer). Measured
on one core, DenseNet-121 float32 4x224x224, with the probe / without:
``build`` 4.3 / 1.8 s, tracing the train-mode forward 3.7 / 0.7 s and the
gradient 7.1 / 3.0 s (the eval-mode forward, which writes nothing, 0.65 s both).

:func:`quick_tracer_probes` makes ``Tracer.sharding`` raise the same
AttributeError with the short message for the duration of a block, and puts
JAX's property back after it (nested and concurrent blocks share one swap). It
does nothing where JAX's property no longer builds the origin message.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

try:
    from jax._src import core
except ImportError:  # pragma: no cover - a JAX that moved its internals: nothing to swap
    core = None

__all__ = ["quick_tracer_probes", "probe_is_quadratic"]

_ORIGINAL = None if core is None else core.Tracer.__dict__.get("sharding")
_lock = threading.Lock()
_depth = 0


def probe_is_quadratic() -> bool:
    """Whether this JAX's ``Tracer.sharding`` builds the whole-trace origin message."""
    getter = getattr(_ORIGINAL, "fget", None)
    return getter is not None and "_origin_msg" in getter.__code__.co_names


def _sharding(self: core.Tracer) -> None:
    # JAX's message, less the origin part: the attribute is still "not available".
    raise AttributeError(f"The 'sharding' attribute is not available on {self._error_repr()}.")


_QUICK = property(_sharding)


@contextlib.contextmanager
def quick_tracer_probes() -> Iterator[None]:
    """``Tracer.sharding`` without the origin message inside the block (see the module)."""
    global _depth
    if not probe_is_quadratic():
        yield
        return
    with _lock:
        if _depth == 0:
            core.Tracer.sharding = _QUICK
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                core.Tracer.sharding = _ORIGINAL
