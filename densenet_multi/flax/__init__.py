"""Flax NNX backend: DenseNet as ``nnx.Module``s (NHWC inside), trained with optax.

Offers the backend contract of :mod:`densenet_multi.backend`: :func:`build`,
:func:`load_canonical`, :func:`export_canonical`, :func:`run`,
:func:`gradients`, :func:`train_steps`, :func:`devices`,
:func:`save_checkpoint`, :func:`load_checkpoint` and :func:`resolve`; and the
model parts (:class:`ConvBlock`, :class:`DenseLayer`, :class:`DenseBlock`,
:class:`Transition`, :class:`DenseNet`) with the constructors :func:`from_spec`
and :func:`densenet121` ... :func:`densenet201`.

``build(spec, dtype="float64")`` gives a float64 model; the contract functions
run it under ``jax.enable_x64(True)`` themselves, so they need no JAX config.
Calling a float64 model directly (``model(x)``) needs JAX's 64-bit mode on
(``JAX_ENABLE_X64=1``, ``jax.config.update("jax_enable_x64", True)`` or
``with jax.enable_x64(True):``). See ``docs/backends/flax.md``.
"""

from .convert import export_canonical, load_canonical, resolve
from .densenet import (
    ConvBlock,
    DenseBlock,
    DenseLayer,
    DenseNet,
    Transition,
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    from_spec,
)
from .runtime import (
    build,
    devices,
    gradients,
    load_checkpoint,
    run,
    save_checkpoint,
    train_steps,
)

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "from_spec",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "build",
    "load_canonical",
    "export_canonical",
    "run",
    "gradients",
    "train_steps",
    "devices",
    "save_checkpoint",
    "load_checkpoint",
    "resolve",
]
