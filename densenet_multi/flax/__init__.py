"""Flax NNX backend: DenseNet as ``nnx.Module``s (NHWC inside), trained with optax.

Offers the backend contract of :mod:`densenet_multi.backend`: :func:`build`,
:func:`load_canonical`, :func:`export_canonical`, :func:`run`,
:func:`gradients`, :func:`train_steps`, :func:`devices`; and the model parts
(:class:`ConvBlock`, :class:`DenseLayer`, :class:`DenseBlock`,
:class:`Transition`, :class:`DenseNet`) with the constructors
:func:`densenet121` ... :func:`densenet201` and :func:`from_spec`.

``build(spec, dtype="float64")`` gives a float64 model; the contract functions
run it under ``jax.enable_x64(True)`` themselves, so they need no JAX config.
Calling a float64 model directly (``model(x)``) needs JAX's 64-bit mode on
(``JAX_ENABLE_X64=1`` or ``jax.config.update("jax_enable_x64", True)``); the
model raises a RuntimeError saying so otherwise. See ``docs/backends/flax.md``.
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
from .runtime import build, devices, gradients, run, train_steps

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "from_spec",
    "build",
    "load_canonical",
    "export_canonical",
    "resolve",
    "run",
    "gradients",
    "train_steps",
    "devices",
]
