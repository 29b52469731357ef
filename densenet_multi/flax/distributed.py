"""Data-parallel training with JAX's own engine: a device mesh and ``jax.shard_map``.

The global batch is sharded over a one-axis mesh (``"data"``) of N devices
(contiguous shards, device 0 first); the parameters, BN statistics and optax
state are replicated. Inside ``shard_map`` each device runs the Flax NNX model
on its shard, and the loss that is differentiated is the *global* mean,
``lax.pmean`` of the shards' means: the parameters are replicated (unvarying
over the mesh axis), so JAX's autodiff sums their cotangents across devices
itself, and differentiating the pmean'd loss gives the gradient of the global
batch's mean loss, the same on every device. (Differentiating each shard's own
mean loss instead would hand back N times it: the all-reduce convention this
module's tests check.) The optax update then runs once on the replicated state.

On CPU the devices are XLA host devices: JAX must be started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (or
``jax.config.update("jax_num_cpu_devices", N)`` before its first use).

BatchNorm:

- ``sync_bn=True`` sets ``axis_name="data"`` on every ``nnx.BatchNorm``: its
  statistics are ``lax.pmean``'d over the mesh axis (two-pass, as the model's
  ``use_fast_variance=False`` asks: the global mean first, then the mean of the
  squared deviations from it), so the step is the single-device step.
- ``sync_bn=False``: each device normalises with its shard's statistics, and
  its updated running statistics differ; they are ``lax.pmean``'d after each
  step (what the Flax examples' ``sync_batch_stats`` does), so the model holds
  the mean of the replicas' running statistics.

Flax mixes the biased batch variance into the running variance; after every
step it is converted to the canonical (PyTorch) rule with the number of values
each BN layer averaged over (the global batch's with synchronised BN, a
shard's without), as ``train_steps`` elsewhere does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..backend import check_model_dtype
from ..batchnorm import canonical_running_var, sample_counts
from ..distributed import check_batches
from ..layouts import nchw_to_nhwc
from ..spec import DenseNetSpec
from ._x64 import needs_x64, x64_scope
from .convert import export_canonical, variables
from .densenet import DenseNet
from .runtime import _gpus, _new_model, cross_entropy, sgd

__all__ = ["AXIS", "mesh_devices", "set_batchnorm_axis", "data_parallel_steps"]

#: the mesh axis the batch is sharded over, and synchronised BatchNorm's axis_name
AXIS = "data"


def mesh_devices(device: str, n: int) -> list[jax.Device]:
    """``n`` devices of one kind ("cpu": XLA host devices, "cuda": GPUs) for the mesh."""
    kind = str(device).partition(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    found = jax.devices("cpu") if kind == "cpu" else _gpus()
    if len(found) < n:
        hint = (" (start JAX with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{n}, or jax.config.update('jax_num_cpu_devices', {n}) before its first use)"
                if kind == "cpu" else "")
        raise ValueError(f"{n} {kind} devices requested, JAX sees {len(found)}{hint}")
    return list(found[:n])


def set_batchnorm_axis(model: DenseNet, axis_name: str | None) -> DenseNet:
    """Synchronise (``axis_name``) or un-synchronise (None) every ``nnx.BatchNorm``."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            module.axis_name = axis_name
    return model


def _step_fn(graphdef: nnx.GraphDef, optimizer: Any, mesh: Mesh):
    """The jitted data-parallel step: (params, stats, rest, opt_state, x, y) -> (loss,
    params, stats, opt_state), x and y sharded over the mesh axis."""
    replicated, sharded = PartitionSpec(), PartitionSpec(AXIS)

    def per_device(params, stats, rest, x, y):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, stats, rest, copy=True)
            loss = lax.pmean(cross_entropy(model(x), y), AXIS)  # the global batch's mean
            return loss, nnx.state(model, nnx.BatchStat)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # identical across devices with synchronised BN; else the replicas' mean
        return loss, grads, lax.pmean(new_stats, AXIS)

    sharded_step = jax.shard_map(per_device, mesh=mesh,
                                 in_specs=(replicated, replicated, replicated, sharded, sharded),
                                 out_specs=(replicated, replicated, replicated))

    @jax.jit
    def step(params, stats, rest, opt_state, x, y):
        loss, grads, stats = sharded_step(params, stats, rest, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), stats, opt_state

    return step


def _canonicalise_running(model: DenseNet, old: Mapping[str, np.ndarray],
                          counts: Mapping[str, int]) -> None:
    """Flax's biased running-variance update -> the canonical one, in place."""
    for ref, info, var in variables(model):
        if info.attr == "running_var":
            value = var.get_value()
            fixed = canonical_running_var(old[info.name], np.asarray(value), counts[ref.prefix],
                                          model.spec.bn_momentum)
            var.set_value(jax.device_put(fixed, value.sharding))


def data_parallel_steps(spec: DenseNetSpec, params: Mapping[str, np.ndarray],
                        batches: Sequence[tuple[np.ndarray, np.ndarray]], *, devices: int = 2,
                        sync_bn: bool, lr: float, momentum: float, dtype: str = "float32",
                        device: str = "cpu"
                        ) -> tuple[list[float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """K data-parallel SGD-with-momentum steps (optax's, PyTorch's update) over a mesh of
    ``devices`` devices, one per ``(x, labels)`` global batch, from the canonical
    ``params``. Returns (the loss of each step, of the global batch before the update;
    the final trainable parameters; the running statistics), canonical names and layout."""
    dtype = check_model_dtype(dtype)
    checked = check_batches(spec, batches, devices)
    mesh = Mesh(np.array(mesh_devices(device, devices)), (AXIS,))
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh,
                                                                           PartitionSpec(AXIS))
    with x64_scope(needs_x64(dtype)):
        model = _new_model(spec, dict(params), device=mesh.devices.flat[0], seed=0, dtype=dtype,
                           memory_efficient=False)
        set_batchnorm_axis(model, AXIS if sync_bn else None)
        model.train()
        graphdef, params_state, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        optimizer = sgd(lr, momentum)
        opt_state = jax.device_put(optimizer.init(params_state), replicated)
        step = _step_fn(graphdef, optimizer, mesh)
        losses = []
        for x, y in checked:
            h, w = x.shape[2:]
            counts = sample_counts(spec, len(x) if sync_bn else len(x) // devices, h, w)
            old = {k: v for k, v in export_canonical(model).items() if k.endswith("running_var")}
            params_state, stats, rest = jax.device_put((params_state, stats, rest), replicated)
            xs = jax.device_put(nchw_to_nhwc(x.astype(dtype)), sharded)
            ys = jax.device_put(y.astype(np.int32), sharded)
            loss, params_state, stats, opt_state = step(params_state, stats, rest, opt_state,
                                                        xs, ys)
            nnx.update(model, params_state, stats)
            _canonicalise_running(model, old, counts)
            stats = nnx.state(model, nnx.BatchStat)
            losses.append(float(loss))
        exported = export_canonical(model)
    running = {k: v for k, v in exported.items() if k.endswith(("running_mean", "running_var"))}
    trainable = {k: v for k, v in exported.items() if k not in running}
    return losses, trainable, running
