"""The backend contract (:mod:`densenet_multi.backend`) for the Keras 3 model.

Everything crossing this boundary is canonical: NCHW numpy batches in, NCHW
stage outputs and canonical parameter names out. The model itself is
backend-agnostic Keras; the only backend-specific code of this subpackage is
here, in :func:`_loss_and_grads` and :func:`devices`: ``tf.GradientTape`` under
``KERAS_BACKEND=tensorflow``, ``jax.value_and_grad`` over ``stateless_call``
under ``KERAS_BACKEND=jax``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import layouts
from ..backend import GradOutput
from ..params import module_table, running_stat_names
from ..reference import ForwardOutput
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape
from .convert import canonical_variables
from .densenet import DenseNet, from_spec

__all__ = ["build", "run", "gradients", "train_steps", "devices", "to_canonical_running_var",
           "loss_fn"]


def build(spec: DenseNetSpec, *, device: str | None = None, seed: int = 0) -> DenseNet:
    """A built :class:`DenseNet` for ``spec`` with Keras's initialisation, seeded.

    ``seed`` seeds Keras globally (``keras.utils.set_random_seed``: Python, NumPy
    and the backend), as Keras's initialisers draw from the global seed.
    """
    keras.utils.set_random_seed(seed)
    if device is None:
        return from_spec(spec, seed=seed)
    with keras.device(device):
        return from_spec(spec, seed=seed)


def _nhwc_batch(model: DenseNet, x: Any) -> np.ndarray:
    """Validate a canonical NCHW batch and return it as float32 NHWC."""
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(model.spec, x.shape, "NCHW")
    return layouts.nchw_to_nhwc(x.astype(np.float32, copy=False))


def _canonical_stages(stages: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in stages.items():
        a = np.asarray(ops.convert_to_numpy(value), dtype=np.float32)
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
    correction is small and is added without cancellation).
    """
    new = np.asarray(keras_var, np.float64)
    if count <= 1:  # a single value has zero variance either way
        return new.astype(np.float32)
    m_var_b = new - (1.0 - bn_momentum) * np.asarray(old_var, np.float64)
    return (new + m_var_b / (count - 1)).astype(np.float32)


def _running_to_canonical(spec: DenseNetSpec, old: Mapping[str, np.ndarray],
                          new: Mapping[str, np.ndarray], x_shape: tuple[int, ...]
                          ) -> dict[str, np.ndarray]:
    n, h, w = x_shape[0], x_shape[1], x_shape[2]  # NHWC
    counts = _bn_sample_counts(spec, n, h, w)
    out = {}
    for ref in module_table(spec):
        for p in ref.params:
            if p.kind == "bn_running_mean":
                out[p.name] = np.asarray(new[p.name], np.float32)  # same rule in both
            elif p.kind == "bn_running_var":
                out[p.name] = to_canonical_running_var(new[p.name], old[p.name],
                                                       counts[ref.prefix], spec.bn_momentum)
    return out


def _read(variables: Mapping[str, keras.Variable], names: Iterable[str]) -> dict[str, np.ndarray]:
    return {k: np.array(ops.convert_to_numpy(variables[k])) for k in names}


def _snapshot(model: DenseNet) -> list[np.ndarray]:
    return [np.array(ops.convert_to_numpy(v)) for v in model.non_trainable_variables]


def _restore(model: DenseNet, values: list[np.ndarray]) -> None:
    for v, a in zip(model.non_trainable_variables, values):
        v.assign(a)


# ---------------------------------------------------------------------- run
def run(model: DenseNet, x: Any, *, train: bool = False) -> ForwardOutput:
    """Forward an NCHW numpy batch; logits and every stage in NCHW.

    ``train=True`` normalises with batch statistics and returns the updated BN
    running statistics in the canonical (PyTorch) convention: Keras updates the
    running variance with the biased batch variance, converted by
    :func:`to_canonical_running_var`. The Keras-native values are in
    ``extras["keras_running"]``. The model's own state is left unchanged (the
    running statistics are restored after the pass), so ``run`` is a pure query.
    """
    xn = _nhwc_batch(model, x)
    if not train:
        stages = _canonical_stages(model.forward_stages(xn, training=False))
        return ForwardOutput(logits=stages["logits"], stages=stages)
    spec = model.spec
    variables = canonical_variables(model)
    names = running_stat_names(spec)
    snapshot = _snapshot(model)
    old = _read(variables, names)
    try:
        stages = _canonical_stages(model.forward_stages(xn, training=True))
        native = _read(variables, names)
    finally:
        _restore(model, snapshot)
    running = _running_to_canonical(spec, old, native, xn.shape)
    return ForwardOutput(logits=stages["logits"], stages=stages, running=running,
                         extras={"keras_running": native})


# ---------------------------------------------------------------------- gradients
def _loss_and_grads(model: DenseNet, x: np.ndarray, labels: np.ndarray, *, keep_state: bool
                    ) -> tuple[float, list[Any], Any]:
    """(loss, gradients of model.trainable_variables, gradient of x) in train mode.

    ``keep_state``: keep the BN running statistics the pass updated (a training
    step) or leave the model as it was (a query).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        snapshot = None if keep_state else _snapshot(model)
        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = loss_fn(labels, model(xt, training=True))
        *grads, dx = tape.gradient(loss, [*model.trainable_variables, xt])
        if snapshot is not None:
            _restore(model, snapshot)
        return float(loss), grads, dx
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def objective(trainable, x):
            logits, new_non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                             training=True)
            return loss_fn(labels, logits), new_non_trainable

        (loss, new_non_trainable), (grads, dx) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(trainable, x)
        if keep_state:
            for v, value in zip(model.non_trainable_variables, new_non_trainable):
                v.assign(value)
        return float(loss), list(grads), dx
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

    Train mode (batch statistics); the model's running statistics are left unchanged.
    """
    xn = _nhwc_batch(model, x)
    y = _labels(labels, xn.shape[0])
    loss, grads, dx = _loss_and_grads(model, xn, y, keep_state=False)
    by_id = {id(v): g for v, g in zip(model.trainable_variables, grads)}
    kinds = {p.name: p.kind for ref in module_table(model.spec) for p in ref.params}
    params = {}
    for name, var in canonical_variables(model).items():
        if var.trainable:
            g = np.asarray(ops.convert_to_numpy(by_id[id(var)]), np.float32)
            params[name] = layouts.param_from_channels_last(kinds[name], g)
    dx = layouts.nhwc_to_nchw(np.asarray(ops.convert_to_numpy(dx), np.float32))
    return GradOutput(loss=loss, params=params, input=dx)


# ---------------------------------------------------------------------- training steps
def train_steps(model: DenseNet, batches: Iterable[tuple[Any, Any]], *, lr: float,
                momentum: float) -> list[float]:
    """One SGD-with-momentum step per ``(x, labels)`` batch; the loss of each step before it.

    ``keras.optimizers.SGD`` updates ``v = mu * v - lr * g; p += v``; with
    ``v = -lr * v_torch`` that is PyTorch's ``v = mu * v + g; p -= lr * v`` for a
    constant learning rate. The BN running statistics follow the canonical
    (PyTorch) update, so that ``export_canonical`` after K steps equals what the
    other backends hold.
    """
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    optimizer.build(model.trainable_variables)
    spec = model.spec
    variables = canonical_variables(model)
    names = running_stat_names(spec)
    losses = []
    for x, labels in batches:
        xn = _nhwc_batch(model, x)
        y = _labels(labels, xn.shape[0])
        old = _read(variables, names)
        loss, grads, _ = _loss_and_grads(model, xn, y, keep_state=True)
        optimizer.apply(grads, model.trainable_variables)
        running = _running_to_canonical(spec, old, _read(variables, names), xn.shape)
        for name, value in running.items():
            variables[name].assign(value)
        losses.append(loss)
    return losses


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
