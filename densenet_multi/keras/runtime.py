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
floats.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import layouts
from ..backend import GradOutput, check_model_dtype
from ..params import module_table, running_stat_names
from ..reference import ForwardOutput
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape
from .convert import canonical_dtype, canonical_variables, to_numpy
from .densenet import DenseNet, check_float64_support, from_spec

__all__ = ["build", "run", "gradients", "train_steps", "devices", "to_canonical_running_var",
           "loss_fn"]


def build(spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
          dtype: str | None = None) -> DenseNet:
    """A built :class:`DenseNet` for ``spec`` with Keras's initialisation, seeded.

    ``dtype`` ("float32" or "float64", checked by
    :func:`densenet_multi.backend.check_model_dtype`) is the model's Keras dtype
    policy: its variables (BN moving statistics included) and its computation.
    None (the default) is Keras's global policy, float32 unless
    ``keras.config.set_dtype_policy`` changed it; the global policy itself is never
    changed. Where Keras's backend would compute a float64 model in float32
    (``KERAS_BACKEND=jax``: without ``JAX_ENABLE_X64=1``, and with it while Keras
    promotes float64 to float32 there), float64 raises RuntimeError saying so
    (:func:`~densenet_multi.keras.densenet.check_float64_support`). ``seed``
    seeds Keras globally (``keras.utils.set_random_seed``: Python, NumPy and the
    backend), as Keras's initialisers draw from the global seed.
    """
    name = check_model_dtype(keras.config.dtype_policy().name if dtype is None else dtype)
    if name == "float64":
        check_float64_support()  # before seeding: a refused build changes nothing
    keras.utils.set_random_seed(seed)
    if device is None:
        return from_spec(spec, seed=seed, dtype=name)
    with keras.device(device):
        return from_spec(spec, seed=seed, dtype=name)


def _dtype(model: DenseNet) -> np.dtype:
    """The model's dtype as a numpy dtype: what inputs are cast to and outputs come back in."""
    return canonical_dtype(model.compute_dtype)


def _nhwc_batch(model: DenseNet, x: Any) -> np.ndarray:
    """Validate a canonical NCHW batch and return it as NHWC in the model's dtype."""
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(model.spec, x.shape, "NCHW")
    return layouts.nchw_to_nhwc(x.astype(_dtype(model), copy=False))


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
def _bn_sample_counts(spec: DenseNetSpec, n: int, h: int, w: int) -> dict[str, int]:
    """Canonical BN prefix -> the number of values per channel it normalises (N * H * W)."""
    shapes = spec.stage_shapes(h, w)
    stem_hw = (spec.stem_conv.out_size(h), spec.stem_conv.out_size(w))  # norm0 runs before the pool
    counts = {}
    for ref in module_table(spec):
        if ref.kind != "bn":
            continue
        head = ref.part[0]
        if head == "stem":
            hw = stem_hw
        elif head in ("block", "transition"):  # a transition's BN runs on its block's output
            hw = shapes[f"block{ref.part[1] + 1}"][1:]
        else:  # norm5
            hw = shapes["features"][1:]
        counts[ref.prefix] = n * hw[0] * hw[1]
    return counts


def to_canonical_running_var(keras_var: np.ndarray, old_var: np.ndarray, count: int,
                             bn_momentum: float) -> np.ndarray:
    """Keras's updated running variance -> PyTorch's (canonical) one, for one BN layer.

    With the spec's momentum ``m`` (PyTorch's convention), Keras computes
    ``new = (1 - m) * old + m * var_b`` with the *biased* batch variance ``var_b``;
    PyTorch uses the *unbiased* one, ``var_b * count / (count - 1)``. The two
    differ by ``m * var_b / (count - 1)``, and ``m * var_b = new - (1 - m) * old``
    is recovered from the old and new running values, so
    ``canonical = new + (new - (1 - m) * old) / (count - 1)`` (in float64: the
    correction is small and is added without cancellation), returned in the
    dtype of ``keras_var``.
    """
    dtype = np.asarray(keras_var).dtype
    new = np.asarray(keras_var, np.float64)
    if count <= 1:  # a single value has zero variance either way
        return new.astype(dtype)
    m_var_b = new - (1.0 - bn_momentum) * np.asarray(old_var, np.float64)
    return (new + m_var_b / (count - 1)).astype(dtype)


def _running_to_canonical(spec: DenseNetSpec, old: Mapping[str, np.ndarray],
                          new: Mapping[str, np.ndarray], x_shape: tuple[int, ...]
                          ) -> dict[str, np.ndarray]:
    n, h, w = x_shape[0], x_shape[1], x_shape[2]  # NHWC
    counts = _bn_sample_counts(spec, n, h, w)
    out = {}
    for ref in module_table(spec):
        for p in ref.params:
            if p.kind == "bn_running_mean":
                out[p.name] = np.asarray(new[p.name])  # same rule in both
            elif p.kind == "bn_running_var":
                out[p.name] = to_canonical_running_var(new[p.name], old[p.name],
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
    :func:`to_canonical_running_var`. The Keras-native values are in
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


def _labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers, got {y.dtype} array of shape {y.shape}")
    return y.astype(np.int32)


def gradients(model: DenseNet, x: Any, labels: Any) -> GradOutput:
    """Loss and its gradient for every trainable canonical parameter and the input.

    Train mode (batch statistics), in the model's dtype: the input is cast to it and
    every gradient comes back in it; the loss is a Python float. The model's running
    statistics are left unchanged.
    """
    xn = _nhwc_batch(model, x)
    y = _labels(labels, xn.shape[0])
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
    optimizer.build(model.trainable_variables)
    step = _jax_train_step(model, optimizer) if keras.backend.backend() == "jax" else None
    spec = model.spec
    variables = canonical_variables(model)
    names = running_stat_names(spec)
    losses = []
    for x, labels in batches:
        xn = _nhwc_batch(model, x)
        y = _labels(labels, xn.shape[0])
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
    """The devices Keras's backend can run on here: "cpu", and "gpu" where there is one."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        found = {d.device_type.lower() for d in tf.config.list_physical_devices()}
    elif backend == "jax":
        import jax

        found = {d.platform.lower() for d in jax.devices()}
        found.add("cpu")
        found = {"gpu" if d == "cuda" else d for d in found}
    else:
        found = {"cpu"}
    return sorted(found, key=lambda d: (d != "cpu", d))
