"""The backend contract (:mod:`densenet_multi.backend`) for Flax NNX.

Everything crossing this boundary is canonical: NCHW numpy batches in, NCHW
numpy stages out, torchvision names and PyTorch layouts for parameters and
gradients. Inside, the model is NHWC, and every forward, gradient and training
step is ``jit``-compiled; compiled functions are reused for models of the same
structure and input shape. Input validation and JAX's 64-bit mode live here,
not in the model.

``run`` and ``gradients`` are pure functions of the model's state
(``nnx.split``, a jitted function of the split state, results read from its
copy): the model's parameters, running statistics, RNG counters and train/eval
mode are left as they were. ``train_steps`` trains in place (and puts the mode
back).

Devices: "cpu", "cuda" and "cuda:N" (JAX's "gpu" platform); models live on
JAX's default device unless ``build(..., device=...)`` says otherwise, and
inputs follow the model. The contract functions compute with float32
matmul/conv precision "highest", so that a GPU does not silently use TF32.

Dtypes: ``build(spec, dtype="float64")`` makes a float64 model (parameters,
running statistics and computation). Every function here runs a float64 model
under ``jax.enable_x64(True)`` (:mod:`densenet_multi.flax._x64`), so it works
in any process and leaves JAX's global config alone. Inputs are cast to the
model's dtype; stages, running statistics, gradients and exports come back in it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .. import checkpoint
from ..backend import check_model_dtype
from ..batchnorm import canonical_running_var, sample_counts
from ..layouts import nchw_to_nhwc, nhwc_to_nchw
from ..outputs import ForwardOutput, GradOutput
from ..params import init_params
from ..spec import DenseNetSpec, InputError, check_input_dtype, check_input_shape, check_labels
from ._tracing import quick_tracer_probes
from ._x64 import in_model_dtype, needs_x64, x64_scope
from .convert import export_canonical, load_canonical, model_device, variables
from .densenet import DenseNet

__all__ = ["build", "run", "gradients", "train_steps", "devices", "save_checkpoint",
           "load_checkpoint", "resolve_device", "cross_entropy", "sgd", "make_optimizer",
           "model_dtype"]

_PRECISION = "highest"


# ---------------------------------------------------------------------- devices
def _gpus() -> list[jax.Device]:
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend (JAX_PLATFORMS=cpu, or a CPU-only jaxlib)
        return []


def devices() -> list[str]:
    """The devices this backend can run on here: "cpu", then "cuda" (and "cuda:N" for
    every further GPU JAX sees)."""
    n = len(_gpus())
    return ["cpu"] + (["cuda"] if n else []) + [f"cuda:{i}" for i in range(1, n)]


def resolve_device(device: str | jax.Device | None) -> jax.Device:
    """The ``jax.Device`` for "cpu", "cuda" or "cuda:N" (JAX's "gpu" platform), for a
    ``jax.Device`` (returned as is) or for None (JAX's default device)."""
    if device is None:
        return jax.devices()[0]
    if isinstance(device, jax.Device):
        return device
    name, _, index = str(device).partition(":")
    if name not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' "
                         f"(available here: {devices()})")
    found = jax.devices("cpu") if name == "cpu" else _gpus()
    i = int(index or 0)
    if i >= len(found):
        raise ValueError(f"device {device!r} is not available here; available: {devices()}")
    return found[i]


# ---------------------------------------------------------------------- build
@functools.lru_cache(maxsize=16)
def _abstract_model(spec: DenseNetSpec, dtype: str,
                    memory_efficient: bool) -> tuple[nnx.GraphDef, nnx.State]:
    """The module structure with shape-only values, cached: tracing the constructor
    costs seconds for the big nets (one RNG-stream update per layer). Call under the
    dtype's x64 scope."""
    dt = np.dtype(dtype)
    return nnx.split(nnx.eval_shape(lambda: DenseNet(
        spec, memory_efficient=memory_efficient, dtype=dt, param_dtype=dt,
        rngs=nnx.Rngs(params=0, dropout=0))))


def _new_model(spec: DenseNetSpec, params: dict[str, np.ndarray], *, device: Any, seed: int,
               dtype: str, memory_efficient: bool) -> DenseNet:
    """A model holding ``params``, built abstractly (``nnx.eval_shape``) and then filled:
    eager NNX initialisers compile one XLA kernel per parameter shape, which costs
    ~30 s for DenseNet-BC-100 on two CPU cores, for values that are replaced anyway."""
    dev = resolve_device(device)
    with x64_scope(needs_x64(dtype)), quick_tracer_probes():
        graphdef, abstract_state = _abstract_model(spec, dtype, memory_efficient)
        # copy=True: fresh Variables, never shared with the cached state or another model
        model = nnx.merge(graphdef, abstract_state, copy=True)
        # The abstract tree has placeholders for the RNG streams too: every dropout
        # layer gets its own key (folded from the seed) and a zero counter.
        base = jax.random.key(seed)
        rng_vars = (v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.RngState))
        with jax.default_device(dev):
            for i, var in enumerate(rng_vars):
                value = (jax.random.fold_in(base, i) if isinstance(var, nnx.RngKey)
                         else jnp.zeros((), jnp.uint32))
                var.set_value(jax.device_put(value, dev))
        load_canonical(model, params, device=dev)
    model.eval()
    return model


def build(spec: DenseNetSpec, *, device: str | jax.Device | None = None, seed: int = 0,
          dtype: str = "float32", memory_efficient: bool = False) -> DenseNet:
    """A :class:`DenseNet` for ``spec`` on ``device`` holding the canonical seeded weights
    :func:`densenet_multi.params.init_params` ``(spec, seed, dtype=dtype)``: the same
    weights as every other backend's ``build`` for the same seed, bit for bit. Its
    parameters, running statistics and computation are in ``dtype`` ("float32" or
    "float64"). ``memory_efficient`` recomputes each dense layer's concatenation and
    first BN-ReLU-conv in the backward pass (see ``DenseLayer``). Dropout draws from a
    ``dropout`` RNG stream seeded with ``seed``. Returned in eval mode.

    NNX's own initialisers stay available through the class:
    ``DenseNet(spec, rngs=nnx.Rngs(0))``.
    """
    dtype = check_model_dtype(dtype)
    return _new_model(spec, init_params(spec, seed, dtype=dtype), device=device, seed=seed,
                      dtype=dtype, memory_efficient=memory_efficient)


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(model: DenseNet, path: str | os.PathLike, *,
                    overwrite: bool = False) -> Path:
    """Write ``model`` as a canonical safetensors checkpoint (its spec in the metadata),
    atomically, in the model's dtype."""
    return checkpoint.save(path, export_canonical(model), model.spec, overwrite=overwrite,
                           dtype=None)


def load_checkpoint(path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                    device: str | jax.Device | None = None, dtype: str | None = None,
                    memory_efficient: bool = False) -> DenseNet:
    """A model built from a canonical checkpoint (its stored spec, or ``spec``, which
    must agree with it), in ``dtype`` (default: the file's), every parameter and
    running statistic loaded. A plain model's checkpoint loads into a memory-efficient
    one and back: ``memory_efficient`` is not part of the spec."""
    params, spec = checkpoint.load(path, spec, dtype=None)
    dtype = check_model_dtype(next(iter(params.values())).dtype if dtype is None else dtype)
    return _new_model(spec, params, device=device, seed=0, dtype=dtype,
                      memory_efficient=memory_efficient)


# ---------------------------------------------------------------------- helpers
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The contract's loss: mean softmax cross-entropy against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def model_dtype(model: DenseNet) -> np.dtype:
    """The dtype the contract functions compute in for ``model``: its computation
    dtype, else (None: Flax infers it) its parameters', at least float32."""
    dtype = next((d for d in (model.dtype, model.param_dtype) if d is not None), jnp.float32)
    return np.dtype(jnp.promote_types(dtype, jnp.float32))


def _input(model: DenseNet, x: Any) -> jax.Array:
    """Validate a canonical NCHW numpy batch and place it, NHWC in the model's dtype, on
    the model's device (call under the model's x64 scope)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise InputError(f"expected a numpy array of shape (N, {model.spec.in_channels}, H, W), "
                         f"got {type(x).__name__}")
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(model.spec, x.shape, "NCHW")
    # float64 input to a float32 model is cast to float32, float32 input to a float64 one up
    return jax.device_put(nchw_to_nhwc(x.astype(model_dtype(model), copy=False)),
                          model_device(model))


def _labels(model: DenseNet, labels: Any, n: int) -> jax.Array:
    y = check_labels(labels, n, model.spec.num_classes)
    return jax.device_put(y.astype(np.int32), model_device(model))


def _canonical(a: jax.Array) -> np.ndarray:
    a = np.asarray(a)
    return nhwc_to_nchw(a) if a.ndim == 4 else np.array(a)


def _set_mode(model: DenseNet, train: bool) -> None:
    if train:
        model.train()  # batch statistics, dropout
    else:
        model.eval()


# ---------------------------------------------------------------------- run
@functools.partial(jax.jit, static_argnums=(0, 4))
def _forward_stages(graphdef: nnx.GraphDef, stats: nnx.State, rest: nnx.State, x: jax.Array,
                    train: bool) -> tuple[dict[str, jax.Array], nnx.State]:
    model = nnx.merge(graphdef, stats, rest)  # a copy: the caller's model is left alone
    _set_mode(model, train)
    return model.forward_stages(x), nnx.state(model, nnx.BatchStat)


def _running(model: DenseNet, updated: DenseNet,
             nhwc: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The running statistics of ``updated`` (``model`` after a train-mode pass on an
    ``nhwc`` batch) in the canonical convention, and Flax's own.

    Flax, like Keras and Gluon, mixes the *biased* batch variance into the running
    variance; the canonical (PyTorch) update uses the unbiased one. The means agree."""
    counts = sample_counts(model.spec, nhwc[0], nhwc[1], nhwc[2])
    old = {info.name: var.get_value() for _, info, var in variables(model) if not info.trainable}
    running, native = {}, {}
    for ref, info, var in variables(updated):
        if info.trainable:
            continue
        native[info.name] = value = np.array(var.get_value())
        if info.attr == "running_var":
            value = canonical_running_var(np.asarray(old[info.name]), value, counts[ref.prefix],
                                          model.spec.bn_momentum)
        running[info.name] = value
    return running, native


@in_model_dtype
def run(model: DenseNet, x: Any, *, train: bool = False) -> ForwardOutput:
    """Forward a canonical NCHW numpy batch; every stage comes back NCHW.

    ``train=True`` normalises with batch statistics (and applies dropout) and returns
    the running statistics that pass leaves, in the canonical (PyTorch) convention:
    converted from Flax's biased update by
    :func:`densenet_multi.batchnorm.canonical_running_var`; ``extras["flax_running"]``
    holds Flax's own values. Either way the model is left exactly as it was: the pass
    runs on a split copy of its state. Input is cast to the model's dtype; everything
    returned is in it.
    """
    xj = _input(model, x)
    graphdef, stats, rest = nnx.split(model, nnx.BatchStat, ...)
    with jax.default_matmul_precision(_PRECISION):
        native, new_stats = _forward_stages(graphdef, stats, rest, xj, train)
    # jit returns dicts with sorted keys: put the stages back in network order.
    stages = {k: _canonical(native[k]) for k in model.spec.stage_names}
    out = ForwardOutput(logits=stages["logits"], stages=stages)
    if train:
        updated = nnx.merge(graphdef, new_stats, rest)
        out.running, out.extras["flax_running"] = _running(model, updated, xj.shape)
    return out


# ---------------------------------------------------------------------- gradients
@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, labels: jax.Array
                    ) -> tuple[jax.Array, nnx.State, jax.Array, nnx.State]:
    """Loss, its gradients w.r.t. the parameters and the input, and the model's other
    state after the pass (running statistics, RNG counters), for a model split in train
    mode (:func:`_split_train`). One compiled program serves :func:`gradients` and
    :func:`train_steps`: the slowest compile of a network (the backward pass), once."""
    model = nnx.merge(graphdef, state)  # a copy: the caller's model is left alone

    def loss_fn(model: DenseNet, x: jax.Array) -> jax.Array:
        return cross_entropy(model(x), labels)

    loss, (g_params, g_x) = nnx.value_and_grad(loss_fn, argnums=(0, 1))(model, x)
    return loss, g_params, g_x, nnx.state(model, nnx.Not(nnx.Param))


def _split_train(model: DenseNet) -> tuple[nnx.GraphDef, nnx.State]:
    """``nnx.split`` of the model in train mode (the mode is static structure of the graph
    definition, so both callers of :func:`_loss_and_grads` see the same one)."""
    with _training(model):
        return nnx.split(model)


@in_model_dtype
def gradients(model: DenseNet, x: Any, labels: Any) -> GradOutput:
    """Loss and its gradient w.r.t. every trainable canonical parameter and the input.

    Computed in training mode (batch statistics) on a split copy of the model's
    state: the model is left exactly as it was. A conv bias that feeds a train-mode
    BN has a mathematically zero gradient; what comes back for it is rounding noise.
    Computed in the model's dtype; the gradients come back in it.
    """
    xj = _input(model, x)
    yj = _labels(model, labels, xj.shape[0])
    graphdef, state = _split_train(model)
    with jax.default_matmul_precision(_PRECISION):
        loss, g_params, g_x, _ = _loss_and_grads(graphdef, state, xj, yj)
    # The gradients have the parameters' tree structure: put them in a model of the
    # same structure and read them out with the canonical converter.
    grad_model = nnx.merge(graphdef, g_params, nnx.state(model, nnx.Not(nnx.Param)))
    return GradOutput(
        loss=float(loss),
        params=export_canonical(grad_model, trainable_only=True),
        input=_canonical(g_x),
    )


# ---------------------------------------------------------------------- training
def _step_loss(model: DenseNet, x: jax.Array, labels: jax.Array) -> jax.Array:
    return cross_entropy(model(x), labels)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _fused_step(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, labels: jax.Array
                ) -> tuple[jax.Array, nnx.State]:
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(_step_loss)(model, x, labels)
    optimizer.update(model, grads)
    return loss, nnx.state((model, optimizer))


def _train_step(model: DenseNet, optimizer: nnx.Optimizer, x: jax.Array,
                labels: jax.Array) -> jax.Array:
    """One training step of ``model`` (in train mode) in place: forward, backward and the
    optax update in one XLA program, the old parameters, statistics and momentum
    buffers donated to the new ones (no second copy of the state). ``jax.jit`` of the
    split state rather than ``nnx.jit``: the same program, less Python per call."""
    graphdef, state = nnx.split((model, optimizer))
    with quick_tracer_probes():  # the first call traces
        loss, state = _fused_step(graphdef, state, x, labels)
    nnx.update((model, optimizer), state)
    return loss


@nnx.jit
def _apply_update(model: DenseNet, optimizer: nnx.Optimizer, grads: nnx.State) -> None:
    optimizer.update(model, grads)


@functools.lru_cache(maxsize=32)
def sgd(lr: float, momentum: float) -> optax.GradientTransformation:
    """PyTorch's SGD (no dampening, weight decay or Nesterov): ``v = mu*v + g; p -= lr*v``.
    optax's trace keeps ``v = g + mu*v`` and sgd scales it by ``-lr``: the same update.

    Cached: ``nnx.Optimizer`` keeps the transformation as static structure, so a
    new (unequal) optax object per call would make ``nnx.jit`` recompile the step.
    """
    return optax.sgd(learning_rate=lr, momentum=momentum)


@in_model_dtype
def make_optimizer(model: DenseNet, lr: float, momentum: float) -> nnx.Optimizer:
    """``nnx.Optimizer`` with :func:`sgd` over the model's ``nnx.Param``s, its state on
    the model's device. (optax creates the step counter uncommitted; after the first
    jitted update it is committed, and jit would compile the step a second time.)
    The momentum buffers are in the model's dtype (float64 ones are made under x64)."""
    optimizer = _new_optimizer(model, sgd(lr, momentum))
    device = model_device(model)
    nnx.update(optimizer, jax.device_put(nnx.state(optimizer, nnx.OptState), device))
    return optimizer


@functools.partial(nnx.jit, static_argnums=1)
def _new_optimizer(model: DenseNet, tx: optax.GradientTransformation) -> nnx.Optimizer:
    """``nnx.Optimizer`` made in one compiled program: eagerly, optax's ``init`` makes
    each momentum buffer with its own small XLA program, one per parameter shape (78
    of them, 3.9 s, for DenseNet-40; measured with ``jax_log_compiles``)."""
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@contextlib.contextmanager
def _training(model: DenseNet) -> Iterator[None]:
    """Train mode for a block, then the mode the model was in."""
    was_training = not model.features["norm5"].use_running_average
    model.train()
    try:
        yield
    finally:
        _set_mode(model, was_training)


@in_model_dtype
def train_steps(model: DenseNet, batches: Iterable[tuple[Any, Any]], *, lr: float,
                momentum: float) -> list[float]:
    """One optax SGD-with-momentum step per ``(x, labels)`` batch, in training mode and
    the model's dtype; the loss of each step (computed before its update), as Python
    floats. Updates the model in place: parameters, and the running statistics by
    Flax's rule (``run(train=True)`` shows them in the canonical one)."""
    optimizer = make_optimizer(model, lr, momentum)
    losses = []
    with _training(model), jax.default_matmul_precision(_PRECISION):
        for x, labels in batches:
            xj = _input(model, x)
            # gradients()'s compiled program (its input gradient unused) and a small
            # jitted update, not one fused program: the parity harness asks for both,
            # and the backward pass is most of a network's compile time.
            graphdef, state = nnx.split(model)
            loss, grads, _, rest = _loss_and_grads(graphdef, state, xj,
                                                   _labels(model, labels, xj.shape[0]))
            nnx.update(model, rest)  # running statistics and RNG counters
            _apply_update(model, optimizer, grads)
            losses.append(float(loss))
    return losses
