"""Data-parallel training with TensorFlow's own engine: ``tf.distribute.MirroredStrategy``.

The model and its optimizer are built under ``strategy.scope()``, so every
variable is a ``MirroredVariable`` with one copy per replica; each step runs
``strategy.run`` over the replicas, each on its shard of the global batch
(contiguous, replica 0 first, placed by
``experimental_distribute_values_from_function``). TensorFlow's convention for
the gradient all-reduce is a *sum*: the Keras optimizer, applied in replica
context, sums the replicas' gradients, so each replica's loss is scaled by the
global batch (``tf.nn.compute_average_loss(per_example, global_batch_size=N)``,
not its shard's mean): the summed gradient is the gradient of the global batch's
mean loss. (A shard's plain mean would step with N/shard = R times the
gradient: the convention this module's tests check.)

On CPU the replicas are logical devices of the one CPU:
:func:`logical_cpus` splits it with ``tf.config.set_logical_device_configuration``,
which must run before TensorFlow initialises its runtime.

BatchNorm:

- ``sync_bn=True``: every ``keras.layers.BatchNormalization`` of the model is
  switched to ``synchronized=True`` (the model file builds them unsynchronised;
  the attribute is read on every call), and Keras's TensorFlow backend all-reduces
  each replica's sum, sum of squares and count: the global batch's statistics
  (one pass, E[x^2] - E[x]^2; in float64 that costs nothing measurable here).
- ``sync_bn=False``: each replica normalises with its shard's statistics and
  assigns its own copy of the moving statistics (the BN variables are mirrored
  with aggregation NONE: left alone, the copies diverge), and reading the
  variable outside the replicas gives replica 0's copy. Here replica 0's value,
  converted (below), is written back to every copy after each step.

Keras mixes the biased batch variance into the moving variance; after each step
it is converted to the canonical (PyTorch) rule with the count of values each
BN layer averaged over (the global batch's when synchronised, a shard's
otherwise), as ``runtime.train_steps`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from .. import layouts
from ..backend import check_model_dtype
from ..distributed import check_batches
from ..params import running_stat_names
from ..reference_dp import split_batch
from ..spec import DenseNetSpec
from .convert import canonical_variables, export_canonical
from .runtime import _model, _read, _running_to_canonical

__all__ = ["logical_cpus", "mirrored_strategy", "set_batchnorm_synchronized", "data_parallel_steps"]


def logical_cpus(n: int) -> list[str]:
    """The names of ``n`` logical CPU devices, splitting the first physical CPU into ``n``
    if TensorFlow has not started its runtime yet."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < n:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        except RuntimeError:
            pass  # already initialised: what it has is checked below
    found = tf.config.list_logical_devices("CPU")
    if len(found) < n:
        raise RuntimeError(
            f"{n} logical CPU devices requested, TensorFlow has {len(found)} and has already "
            "started its runtime; call densenet_multi.keras.distributed.logical_cpus("
            f"{n}) before any other TensorFlow work in this process")
    return [d.name for d in found[:n]]


def _devices(device: str, n: int) -> list[str]:
    kind = str(device).partition(":")[0]
    if kind == "cpu":
        return logical_cpus(n)
    if kind == "cuda":
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) < n:
            raise ValueError(f"{n} GPUs requested, TensorFlow sees {len(gpus)}")
        return [d.name for d in gpus[:n]]
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


@functools.cache
def mirrored_strategy(devices: tuple[str, ...]) -> tf.distribute.MirroredStrategy:
    """One ``MirroredStrategy`` per device set and process: a second strategy over the
    same devices reuses collective instance keys the first has used, and TensorFlow 2.21
    aborts its all-reduces ("Shape mismatch in the collective instance")."""
    return tf.distribute.MirroredStrategy(list(devices))


def set_batchnorm_synchronized(model: keras.Model, synchronized: bool) -> keras.Model:
    """Switch every ``BatchNormalization`` layer of ``model`` to synchronised (or not)
    statistics across the replicas of the strategy it runs under."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
    return model


def data_parallel_steps(spec: DenseNetSpec, params: Mapping[str, np.ndarray],
                        batches: Sequence[tuple[np.ndarray, np.ndarray]], *, devices: int = 2,
                        sync_bn: bool, lr: float, momentum: float, dtype: str = "float32",
                        device: str = "cpu"
                        ) -> tuple[list[float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """K ``MirroredStrategy`` SGD-with-momentum steps (``keras.optimizers.SGD``, which is
    PyTorch's update for a constant learning rate) over ``devices`` replicas, one per
    ``(x, labels)`` global batch, from the canonical ``params``. Returns (the loss of
    each step, the global batch's before the update; replica 0's final trainable
    parameters; its running statistics), canonical names and layout."""
    dtype = check_model_dtype(dtype)
    checked = [[(layouts.nchw_to_nhwc(xs.astype(dtype)), ys) for xs, ys in split_batch(x, y, devices)]
               for x, y in check_batches(spec, batches, devices)]
    strategy = mirrored_strategy(tuple(_devices(device, devices)))
    with strategy.scope():
        model = set_batchnorm_synchronized(_model(spec, params, dtype, None, False), sync_bn)
        # float64 scalars through a callable: exact in a float64 model (runtime.train_steps)
        lr64, mu64 = np.float64(lr), np.float64(momentum)
        optimizer = keras.optimizers.SGD(learning_rate=lambda: lr64, momentum=mu64)
        optimizer.build(model.trainable_variables)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits,
                                                                       from_logits=True)
            global_batch = tf.cast(tf.shape(x)[0] * devices, per_example.dtype)
            loss = tf.reduce_sum(per_example) / global_batch  # compute_average_loss, any dtype
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)  # sums the replicas' gradients
        return loss

    @tf.function
    def step(x, y):
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    variables = canonical_variables(model)
    names = running_stat_names(spec)
    losses = []
    for shards in checked:
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx, s=shards: tf.constant(s[ctx.replica_id_in_sync_group][0]))
        ys = strategy.experimental_distribute_values_from_function(
            lambda ctx, s=shards: tf.constant(s[ctx.replica_id_in_sync_group][1]))
        old = _read(variables, names)
        losses.append(float(step(xs, ys)))
        n = sum(len(s[1]) for s in shards) if sync_bn else len(shards[0][1])
        running = _running_to_canonical(spec, old, _read(variables, names),
                                        (n, *shards[0][0].shape[1:]))
        for name, value in running.items():
            variables[name].assign(value)  # every replica's copy: replica 0's chain goes on
    exported = export_canonical(model)
    running = {k: exported[k] for k in names}
    trainable = {k: v for k, v in exported.items() if k not in running}
    return losses, trainable, running
