"""The backend contract: the small surface every framework subpackage offers.

``densenet_multi.torch``, ``.flax``, ``.keras`` and ``.gluon`` each export the
same functions, so that the parity harness, the CLI and the notebooks treat
all four alike. Everything crossing this boundary is canonical: numpy arrays,
NCHW activations, OIHW kernels, (out, in) dense weights, torchvision names.

``build(spec, *, device=None, seed=0, dtype="float32", memory_efficient=False) -> model``
    The framework-native model (``nn.Module``, ``nnx.Module``, ``keras.Model``,
    ``HybridBlock``) for ``spec``, holding **the canonical seeded weights**
    ``params.init_params(spec, seed, dtype=dtype)`` (torchvision's scheme, drawn
    once in NumPy): the same seed gives the same weights in every backend, bit
    for bit. (Each framework's own initialisers stay available through the model
    class itself; ``build`` is the one rule the harness and the CLI rely on.)
    Parameters, running statistics and computation are in ``dtype`` ("float32"
    or "float64", checked by :func:`check_model_dtype`). Everything below works
    in the model's dtype: inputs are cast to it, outputs, gradients and exports
    come back in it. (float64 is what lets the parity harness hold gradients and
    training trajectories to 1e-10: in float32 a deep ReLU network's gradient is
    not determined to 1e-4 by its weights; see ``docs/parity.md``.)
    ``memory_efficient=True`` recomputes each dense layer's concatenation and
    first BN-ReLU-conv in the backward pass (PyTorch and Gluon also the second
    BN-ReLU, Keras the whole layer): the same
    numbers, less memory. A runtime option, not part of the spec, so one
    checkpoint loads into either.
    ``device`` is one of :func:`devices` ("cpu", "cuda", "cuda:1").
``load_canonical(model, params) -> None``
    Copy canonical parameters (every trainable parameter *and* the BN running
    statistics) into the model. Validates all keys/shapes first
    (:func:`densenet_multi.params.validate_params`); nothing is copied when
    anything is wrong.
``export_canonical(model) -> dict[str, np.ndarray]``
    The inverse: numpy arrays in canonical names and layout, in
    ``param_table`` order, in the model's dtype. For parameters of that dtype
    ``export_canonical(load_canonical(p)) == p`` bit for bit.
``run(model, x, *, train=False) -> ForwardOutput``
    Forward an NCHW numpy batch. Returns logits and every stage of
    ``spec.stage_names`` in NCHW, and in train mode (batch statistics) the
    updated running statistics under their canonical names, in PyTorch's
    convention (frameworks that update with the biased variance convert with
    :func:`densenet_multi.batchnorm.canonical_running_var`). Bad input raises
    :class:`densenet_multi.spec.InputError`. ``run`` leaves **every** model as
    it was: no parameter and no running statistic changes, in any backend; the
    returned ``running`` is what the harness compares.
``gradients(model, x, labels) -> GradOutput``
    Loss (mean softmax cross-entropy of the logits against integer labels,
    computed in train mode, i.e. with batch statistics) and its gradient with
    respect to every trainable canonical parameter and to the input, canonical
    names and layout. Labels are checked by :func:`densenet_multi.spec.check_labels`.
``train_steps(model, batches, *, lr, momentum) -> list[float]``
    One SGD-with-momentum step per ``(x, labels)`` batch (train mode, no
    weight decay, no Nesterov; PyTorch's update ``v = mu * v + g; p -= lr * v``),
    returning the loss computed in each step before its update.
``devices() -> list[str]``
    The devices this backend can run on here, in one vocabulary for all four:
    "cpu", then "cuda" (and "cuda:N" for more than one GPU).
``save_checkpoint(model, path, *, overwrite=False) -> Path``
``load_checkpoint(path, spec=None, *, device=None, dtype=None, memory_efficient=False)``
    A canonical safetensors checkpoint (:mod:`densenet_multi.checkpoint`) of the
    model, and a model built from one.
``resolve(model, part) -> native module``
    The framework layer holding one canonical module of ``params.module_table``, by
    its part path (``("stem", "conv0")``, ``("block", 0, "layer", 2, "conv1")``,
    ``("transition", 1, "norm")``, ``("norm5",)``, ``("classifier",)``).

Dropout cannot agree across frameworks: parity runs use ``drop_rate = 0``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from .outputs import ForwardOutput, GradOutput

__all__ = [
    "BACKENDS",
    "DTYPES",
    "check_model_dtype",
    "ForwardOutput",
    "GradOutput",
    "SGD_DEFAULTS",
    "load_backend",
]

#: backend name -> (subpackage, framework, tox env)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("densenet_multi.torch", "PyTorch", "torch"),
    "flax": ("densenet_multi.flax", "Flax NNX (JAX + optax)", "jax"),
    "keras": ("densenet_multi.keras", "Keras 3 (TensorFlow)", "tensorflow"),
    "gluon": ("densenet_multi.gluon", "MXNet Gluon", "mxnet"),
}

#: The optimizer every backend uses for the training-trajectory check. The check
#: tests the update rule (momentum convention, gradient scaling), which any
#: learning rate exposes; a small one keeps the float32 trajectory well
#: conditioned. Measured with the NumPy reference, 3 steps on one repeated batch,
#: float32 vs float64, worst final weight relative to its tensor's magnitude:
#: densenet40_k12@32, batch 2: 3.4e-4 at lr 0.05, 1.7e-4 at lr 0.01; batch 8 at
#: lr 0.01: 2.2e-5. d2l@96, batch 4, lr 0.01: 1.4e-7.
#: Both are powers of two (2**-7 and 1 - 2**-3): exact in float32, because MXNet
#: passes optimizer hyperparameters to its update operators as C floats; with
#: lr 0.01 / momentum 0.9 (rounded by 2e-8 and 3e-8 there) a float64 Gluon
#: trajectory ends 2e-9 (relative) from the float64 reference after 2 steps,
#: with these 1e-15, like the other backends.
SGD_DEFAULTS = {"lr": 2.0**-7, "momentum": 0.875}

#: The dtypes a model can be built in (``build(..., dtype=)``).
DTYPES = ("float32", "float64")


def check_model_dtype(dtype: object) -> str:
    """The canonical name ("float32" / "float64") of a model dtype given as a string,
    numpy dtype or numpy type; a clear ValueError for anything else."""
    try:
        # np.dtype(None) is float64: None is refused, not read as a dtype
        name = None if dtype is None else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"model dtype must be one of {DTYPES}, got {dtype!r}")
    return name


CONTRACT = ("build", "load_canonical", "export_canonical", "run", "gradients", "train_steps",
            "devices", "save_checkpoint", "load_checkpoint", "resolve")


def load_backend(name: str) -> ModuleType:
    """Import a backend subpackage by its short name, checking it offers the contract."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends are {sorted(BACKENDS)}")
    mod = importlib.import_module(BACKENDS[name][0])
    missing = [f for f in CONTRACT if not callable(getattr(mod, f, None))]
    if missing:
        raise ImportError(f"backend {name!r} ({mod.__name__}) lacks {missing}")
    return mod
