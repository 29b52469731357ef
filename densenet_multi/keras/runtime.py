"""The backend contract (:mod:`densenet_multi.backend`) for the Keras 3 model.

Everything crossing this boundary is canonical: NCHW numpy batches in, NCHW
stage outputs and canonical parameter names out. The model itself is
backend-agnostic Keras; the only backend-specific code of this subpackage is
here, in :func:`_loss_and_grads` and :func:`devices`: ``tf.GradientTape`` under
``KERAS_BACKEND=tensorflow``, ``jax.value_and_grad`` over ``stateless_call``
under ``KERAS_BACKEND=jax``.

Every function works in the model's dtype (``build(spec, dtype="float64")``
gives a model whose Keras dtype policy is float64): inputs are cast to it, and
stages, running statistics and gradients come back in it; losses are Python
floats. This boundary also validates every input (``spec.InputError``) and
refuses a float64 model where Keras would compute it in float32
(:func:`check_float64_support`); the model file does neither.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import checkpoint, layouts
from ..backend import check_model_dtype
from ..batchnorm import canonical_running_var, sample_counts
from ..outputs import ForwardOutput, GradOutput
from ..params import init_params, module_table, running_stat_names
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape, check_labels
from .convert import (
    canonical_dtype,
    canonical_variables,
    ensure_built,
    export_canonical,
    load_canonical,
    to_numpy,
)
from .densenet import DenseNet, from_spec

__all__ = ["build", "run", "gradients", "train_steps", "devices", "save_checkpoint",
           "load_checkpoint", "check_float64_support", "loss_fn"]


def check_float64_support() -> None:
    """Raise RuntimeError, saying why and what to do, where this Keras backend would not
    compute a float64 model in float64; return quietly where it would (TensorFlow).

    Two things stand in the way under ``KERAS_BACKEND=jax``, both silent:

    * without its 64-bit mode (``JAX_ENABLE_X64=1``) JAX truncates every float64
      array it creates to float32, with a warning: the variables would claim
      float64 and hold float32;
    * even with it, Keras's type promotion under JAX maps float64 to float32
      (``keras.backend.result_type("float64", "float32") == "float32"``, "to be
      aligned with JAX's default behavior"; Keras 3.15), and
      ``BatchNormalization`` and ``ops.mean`` (global average pooling, the loss)
      compute in ``result_type(x.dtype, "float32")``: measured on a small
      DenseNet-BC, the stages are then up to 7e-7 and the gradients 3e-6 away
      from the float64 reference, instead of 1e-15.

    The second is checked through ``keras.backend.result_type`` itself, so a Keras
    that promotes float64 to float64 under JAX passes.
    """
    reasons = []
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            reasons.append("JAX's 64-bit mode is off (jax_enable_x64 is False), so JAX would "
                           "create every float64 array as float32: set JAX_ENABLE_X64=1 in the "
                           "environment (or jax.config.update('jax_enable_x64', True))")
    if keras.backend.result_type("float64", "float32") != "float64":
        reasons.append(
            f"Keras {keras.__version__} promotes float64 to float32 under "
            f"KERAS_BACKEND={keras.backend.backend()} (keras.backend.result_type('float64', "
            "'float32') is float32), so BatchNormalization and ops.mean would compute in "
            "float32 even with 64-bit mode on")
    if reasons:
        raise RuntimeError(
            f"a float64 DenseNet would silently compute in float32 under "
            f"KERAS_BACKEND={keras.backend.backend()}: " + "; and ".join(reasons)
            + ". Use KERAS_BACKEND=tensorflow for float64 models.")


def _keras_device(device: str) -> str:
    """The contract's device names ("cpu", "cuda", "cuda:1") in Keras's ("gpu:1")."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return f"{'gpu' if kind == 'cuda' else 'cpu'}:{index or 0}"


def build(spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
          dtype: str = "float32", memory_efficient: bool = False) -> DenseNet:
    """A built :class:`DenseNet` for ``spec`` holding the canonical seeded weights
    ``params.init_params(spec, seed, dtype=dtype)``: the same weights as every other
    backend for the same seed, bit for bit.

    ``dtype`` ("float32" or "float64", checked by
    :func:`densenet_multi.backend.check_model_dtype`) is the model's Keras dtype
    policy: its variables (BN moving statistics included) and its computation; the
    global policy is never changed. Where Keras's backend would compute a float64
    model in float32 (``KERAS_BACKEND=jax``), float64 raises RuntimeError saying so
    (:func:`check_float64_support`). ``memory_efficient`` recomputes each dense
    layer (its concatenation and every BN-ReLU-conv) in the backward pass.
    """
    name = check_model_dtype(dtype)
    return _model(spec, init_params(spec, seed, dtype=name), name, device, memory_efficient)


def save_checkpoint(model: DenseNet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` as a canonical safetensors checkpoint (spec in the metadata), atomically."""
    return checkpoint.save(path, export_canonical(model), model.spec, overwrite=overwrite,
                           dtype=None)


def load_checkpoint(path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                    device: str | None = None, dtype: str | None = None,
                    memory_efficient: bool = False) -> DenseNet:
    """A model built from a canonical checkpoint (its stored spec, or ``spec``, which must
    agree with it), in the file's dtype unless ``dtype`` says otherwise, with every
    parameter and running statistic loaded."""
    params, spec = checkpoint.load(path, spec, dtype=None)
    name = check_model_dtype(dtype or next(iter(params.values())).dtype)
    return _model(spec, params, name, device, memory_efficient)


def _model(spec: DenseNetSpec, params: Mapping[str, np.ndarray], dtype: str,
           device: str | None, memory_efficient: bool) -> DenseNet:
    """A model of ``spec`` in ``dtype`` on ``device``, holding ``params`` (cast to ``dtype``)."""
    if dtype == "float64":
        check_float64_support()
    with contextlib.nullcontext() if device is None else keras.device(_keras_device(device)):
        model = from_spec(spec, memory_efficient=memory_efficient, dtype=dtype)
        load_canonical(model, params)  # creates the variables first (convert.ensure_built)
    return model


def _dtype(model: DenseNet) -> np.dtype:
    """The model's dtype as a numpy dtype: what inputs are cast to and outputs come back in
    (a float64 model, however it was made, is refused where it would compute in float32)."""
    dtype = canonical_dtype(model.compute_dtype)
    if dtype == np.float64:
        check_float64_support()
    return dtype


def _nhwc_batch(model: DenseNet, x: Any) -> np.ndarray:
    """Validate a canonical NCHW batch and return it as NHWC in the model's dtype."""
    dtype = _dtype(model)  # a refused float64 model is refused before it creates variables
    ensure_built(model)
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(model.spec, x.shape, "NCHW")
    return layouts.nchw_to_nhwc(x.astype(dtype, copy=False))


def _numpy(value: Any, dtype: np.dtype) -> np.ndarray:
    return to_numpy(value).astype(dtype, copy=False)


def _canonical_stages(spec: DenseNetSpec, stages: Mapping[str, Any], dtype: np.dtype
                      ) -> dict[str, np.ndarray]:
    """NHWC stage tensors -> NCHW numpy in ``dtype``, in ``spec.stage_names`` order
    (jax.jit returns dicts with sorted keys)."""
    out = {}
    for name in spec.stage_names:
        a = _numpy(stages[name], dtype)
        out[name] = layouts.nhwc_to_nchw(a) if a.ndim == 4 else a
    return out


def loss_fn(labels: Any, logits: Any) -> Any:
    """The contract's loss: mean softmax cross-entropy of logits against integer labels."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


# ---------------------------------------------------------------------- running statistics
def _running_to_canonical(spec: DenseNetSpec, old: Mapping[str, np.ndarray],
                          new: Mapping[str, np.ndarray], x_shape: tuple[int, ...]
                          ) -> dict[str, np.ndarray]:
    n, h, w = x_shape[0], x_shape[1], x_shape[2]  # NHWC
    counts = sample_counts(spec, n, h, w)
    out = {}
    for ref in module_table(spec):
        for p in ref.params:
            if p.kind == "bn_running_mean":
                out[p.name] = np.asarray(new[p.name])  # same rule in both
            elif p.kind == "bn_running_var":
                out[p.name] = canonical_running_var(old[p.name], new[p.name],
                                                    counts[ref.prefix], spec.bn_momentum)
    return out


def _read(variables: Mapping[str, keras.Variable], names: Iterable[str]) -> dict[str, np.ndarray]:
    return {k: to_numpy(variables[k]) for k in names}


def _values(variables: Iterable[keras.Variable]) -> list[Any]:
    return [v.value for v in variables]


def _assign(variables: Iterable[keras.Variable], values: Iterable[Any]) -> None:
    for v, a in zip(variables, values, strict=True):
        v.assign(a)


# ---------------------------------------------------------------------- pure functions
def _stateless_stages(model: DenseNet, trainable: list[Any], non_trainable: list[Any], x: Any,
                      training: bool) -> tuple[dict[str, Any], list[Any]]:
    """``model.forward_stages`` as a pure function of the variable values (Keras's
    ``stateless_call``, for the stage dict): returns the stages and the
    non-trainable values after the pass (the updated running statistics in train mode)."""
    mapping = [*zip(model.trainable_variables, trainable, strict=True),
               *zip(model.non_trainable_variables, non_trainable, strict=True)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        stages = model.forward_stages(x, training=training)
    return stages, [scope.get_current_value(v) for v in model.non_trainable_variables]


def _stateless_loss(model: DenseNet, trainable: list[Any], non_trainable: list[Any], x: Any,
                    labels: Any) -> tuple[Any, list[Any]]:
    logits, new_non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
    return loss_fn(labels, logits), new_non_trainable


# Under JAX, eager execution compiles every op for every new shape (and a DenseNet
# has a new width at every layer), so the pure functions are jit-compiled once
# per model instead; jax.jit re-traces by itself for a new input shape.
_JAX_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _jax_functions(model: DenseNet) -> dict[str, Callable[..., Any]]:
    import jax

    fns = _JAX_CACHE.get(model)
    if fns is None:
        def grad_fn(trainable, non_trainable, x, labels):
            (loss, new_nt), (g, dx) = jax.value_and_grad(
                lambda t, xx: _stateless_loss(model, t, non_trainable, xx, labels),
                argnums=(0, 1), has_aux=True)(trainable, x)
            return loss, g, dx, new_nt

        fns = {
            "eval": jax.jit(lambda t, nt, x: _stateless_stages(model, t, nt, x, False)),
            "train": jax.jit(lambda t, nt, x: _stateless_stages(model, t, nt, x, True)),
            "grad": jax.jit(grad_fn),
        }
        _JAX_CACHE[model] = fns
    return fns


# ---------------------------------------------------------------------- run
def run(model: DenseNet, x: Any, *, train: bool = False) -> ForwardOutput:
    """Forward an NCHW numpy batch; logits and every stage in NCHW.

    ``train=True`` normalises with batch statistics and returns the updated BN
    running statistics in the canonical (PyTorch) convention: Keras updates the
    running variance with the biased batch variance, converted by
    :func:`densenet_multi.batchnorm.canonical_running_var`. The Keras-native values are in
    ``extras["keras_running"]``. The model itself is not changed (the pass is
    stateless), so ``run`` is a pure query. The input is cast to the model's
    dtype; every output is in it.
    """
    xn = _nhwc_batch(model, x)
    trainable, non_trainable = _values(model.trainable_variables), \
        _values(model.non_trainable_variables)
    if keras.backend.backend() == "jax":
        stages, new_nt = _jax_functions(model)["train" if train else "eval"](
            trainable, non_trainable, xn)
    else:
        stages, new_nt = _stateless_stages(model, trainable, non_trainable, xn, train)
    dtype = _dtype(model)
    stages = _canonical_stages(model.spec, stages, dtype)
    if not train:
        return ForwardOutput(logits=stages["logits"], stages=stages)
    spec = model.spec
    names = running_stat_names(spec)
    variables = canonical_variables(model)
    position = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    old = _read(variables, names)
    native = {k: _numpy(new_nt[position[id(variables[k])]], dtype) for k in names}
    running = _running_to_canonical(spec, old, native, xn.shape)
    return ForwardOutput(logits=stages["logits"], stages=stages, running=running,
                         extras={"keras_running": native})


# ---------------------------------------------------------------------- gradients
def _loss_and_grads(model: DenseNet, x: np.ndarray, labels: np.ndarray
                    ) -> tuple[float, list[Any], Any, list[Any]]:
    """Train-mode loss, gradients of ``model.trainable_variables`` and of ``x``, and the
    non-trainable values after the pass. The model itself is left unchanged.

    The backend-specific part of this subpackage: ``tf.GradientTape`` under
    TensorFlow (on the model's variables: ``tf.recompute_grad``, behind
    ``keras.remat``, finds the variables a rematerialised function reads, but
    not tensors captured from a stateless scope), ``jax.value_and_grad`` of
    ``stateless_call`` under JAX.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        before = _values(model.non_trainable_variables)
        before = [tf.identity(v) for v in before]  # snapshot, not a live read
        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = loss_fn(labels, model(xt, training=True))
        *grads, dx = tape.gradient(loss, [*model.trainable_variables, xt])
        after = [tf.identity(v) for v in _values(model.non_trainable_variables)]
        _assign(model.non_trainable_variables, before)
        return float(loss), grads, dx, after
    if backend == "jax":
        loss, grads, dx, after = _jax_functions(model)["grad"](
            _values(model.trainable_variables), _values(model.non_trainable_variables), x, labels)
        return float(loss), list(grads), dx, list(after)
    raise NotImplementedError(
        f"densenet_multi.keras computes gradients under the tensorflow and jax backends, "
        f"not {backend!r} (set KERAS_BACKEND)")


def gradients(model: DenseNet, x: Any, labels: Any) -> GradOutput:
    """Loss and its gradient for every trainable canonical parameter and the input.

    Train mode (batch statistics), in the model's dtype: the input is cast to it and
    every gradient comes back in it; the loss is a Python float. The model's running
    statistics are left unchanged.
    """
    xn = _nhwc_batch(model, x)
    y = check_labels(labels, xn.shape[0], model.spec.num_classes)
    loss, grads, dx, _ = _loss_and_grads(model, xn, y)
    by_id = {id(v): g for v, g in zip(model.trainable_variables, grads, strict=True)}
    kinds = {p.name: p.kind for ref in module_table(model.spec) for p in ref.params}
    dtype = _dtype(model)
    params = {}
    for name, var in canonical_variables(model).items():
        if var.trainable:
            g = _numpy(by_id[id(var)], dtype)
            params[name] = layouts.param_from_channels_last(kinds[name], g)
    dx = layouts.nhwc_to_nchw(_numpy(dx, dtype))
    return GradOutput(loss=loss, params=params, input=dx)


# ---------------------------------------------------------------------- training steps
def train_steps(model: DenseNet, batches: Iterable[tuple[Any, Any]], *, lr: float,
                momentum: float) -> list[float]:
    """One SGD-with-momentum step per ``(x, labels)`` batch; the loss of each step before it.

    ``keras.optimizers.SGD`` updates ``v = mu * v - lr * g; p += v``; with
    ``v = -lr * v_torch`` that is PyTorch's ``v = mu * v + g; p -= lr * v`` for a
    constant learning rate. The BN running statistics follow the canonical
    (PyTorch) update, so that ``export_canonical`` after K steps equals what the
    other backends hold. Everything is computed in the model's dtype.

    ``lr`` and ``momentum`` reach Keras as numpy float64 scalars, the learning
    rate through a callable: a float learning rate would be kept in a
    ``floatx()`` (float32) variable, and ``ops.cast`` of a Python float goes
    through float32 under TensorFlow, so a float64 model would step with ``lr``
    and ``momentum`` rounded to float32 (0.05 -> 0.0500000007), a relative error
    of 1.5e-8 in every update. A float64 scalar is cast exactly to float64, and
    rounded once to float32 for a float32 model, which steps as before.
    """
    lr64, mu64 = np.float64(lr), np.float64(momentum)
    optimizer = keras.optimizers.SGD(learning_rate=lambda: lr64, momentum=mu64)
    _dtype(model)  # refuses a float64 model where it would compute in float32
    ensure_built(model)
    optimizer.build(model.trainable_variables)
    step = _jax_train_step(model, optimizer) if keras.backend.backend() == "jax" else None
    spec = model.spec
    variables = canonical_variables(model)
    names = running_stat_names(spec)
    losses = []
    for x, labels in batches:
        xn = _nhwc_batch(model, x)
        y = check_labels(labels, xn.shape[0], model.spec.num_classes)
        old = _read(variables, names)
        if step is not None:
            loss, trainable, non_trainable, opt_state = step(
                _values(model.trainable_variables), _values(model.non_trainable_variables),
                _values(optimizer.variables), xn, y)
            _assign(model.trainable_variables, trainable)
            _assign(optimizer.variables, opt_state)
        else:
            loss, grads, _, non_trainable = _loss_and_grads(model, xn, y)
            optimizer.apply(grads, model.trainable_variables)
        _assign(model.non_trainable_variables, non_trainable)
        # Keras's running-variance update (biased batch variance) -> the canonical one.
        running = _running_to_canonical(spec, old, _read(variables, names), xn.shape)
        for name, value in running.items():
            variables[name].assign(value)
        losses.append(float(loss))
    return losses


def _jax_train_step(model: DenseNet, optimizer: keras.optimizers.Optimizer) -> Callable[..., Any]:
    """One jit-compiled SGD step under JAX: Keras's stateless_call + stateless_apply idiom."""
    import jax

    def step(trainable, non_trainable, opt_state, x, labels):
        (loss, new_nt), grads = jax.value_and_grad(
            lambda t: _stateless_loss(model, t, non_trainable, x, labels), has_aux=True)(trainable)
        new_trainable, new_opt_state = optimizer.stateless_apply(opt_state, grads, trainable)
        return loss, new_trainable, new_nt, new_opt_state

    return jax.jit(step)


def devices() -> list[str]:
    """The devices Keras's backend can run on here: "cpu", then "cuda" (and "cuda:N" for
    more than one GPU), in the contract's vocabulary (Keras and TensorFlow say "gpu")."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    elif backend == "jax":
        import jax

        gpus = sum(d.platform == "gpu" for d in jax.devices())
    else:
        gpus = 0
    return ["cpu", *(["cuda"] if gpus else []), *(f"cuda:{i}" for i in range(1, gpus))]
