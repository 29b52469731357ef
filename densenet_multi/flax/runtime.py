"""The backend contract (:mod:`densenet_multi.backend`) for Flax NNX.

Everything crossing this boundary is canonical: NCHW numpy batches in, NCHW
numpy stages out, torchvision names and PyTorch layouts for parameters and
gradients. Inside, the model is NHWC and every forward, gradient and training
step is ``jit``-compiled (``nnx.jit`` / ``jax.jit``); compiled functions are
cached per model structure and mode.

Devices: models live on JAX's default device (a GPU when JAX sees one) unless
``build(..., device="cpu")`` says otherwise; inputs follow the model. The
contract functions compute with float32 matmul/conv precision "highest", so
that a GPU does not silently use TF32 (10-bit mantissa) for the parity checks.

Dtypes: ``build(spec, dtype="float64")`` makes a float64 model (parameters,
running statistics and computation). JAX computes in float32 unless its 64-bit
mode is on, so every function here runs a float64 model under
``jax.enable_x64(True)`` (:func:`~densenet_multi.flax.convert.in_model_dtype`):
they work in any process and leave JAX's global config alone; float32 models
run exactly as they would without it. Inputs are cast to the model's dtype;
stages, running statistics, gradients and exports come back in it. Calling
a float64 model yourself (``model(x)``, your own ``nnx.jit``) needs the 64-bit
mode on: ``JAX_ENABLE_X64=1``, ``jax.config.update("jax_enable_x64", True)``
or ``with jax.enable_x64(True):``; without it the model raises a RuntimeError
naming these.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..backend import GradOutput, check_model_dtype
from ..layouts import nchw_to_nhwc, nhwc_to_nchw
from ..params import init_params, module_table
from ..reference import ForwardOutput
from ..spec import DenseNetSpec, InputError, check_input_dtype, check_input_shape
from .convert import export_canonical, in_model_dtype, load_canonical, model_device
from .densenet import DenseNet, needs_x64, x64_scope

__all__ = ["build", "run", "gradients", "train_steps", "devices", "resolve_device",
           "cross_entropy", "sgd", "make_optimizer", "model_dtype", "to_canonical_running_var"]

_PRECISION = "highest"


# ---------------------------------------------------------------------- devices
def devices() -> list[str]:
    """The platforms JAX can run this backend on here: "cpu", and "gpu" when JAX sees one."""
    out = ["cpu"]
    try:
        if jax.devices("gpu"):
            out.append("gpu")
    except RuntimeError:  # no GPU backend (e.g. JAX_PLATFORMS=cpu or a CPU-only jaxlib)
        pass
    return out


def resolve_device(device: str | jax.Device | None) -> jax.Device:
    """A ``jax.Device`` for "cpu", "gpu"/"cuda" (optionally ":index"), a device, or None
    (JAX's default device)."""
    if device is None:
        return jax.devices()[0]
    if isinstance(device, jax.Device):
        return device
    name, _, index = str(device).partition(":")
    platform = {"cuda": "gpu"}.get(name.lower(), name.lower())
    try:
        found = jax.devices(platform)
    except RuntimeError:
        found = []
    if not found:
        raise ValueError(f"device {device!r} is not available here; available: {devices()}")
    i = int(index) if index else 0
    if not 0 <= i < len(found):
        raise ValueError(f"device {device!r}: JAX sees {len(found)} {platform} device(s)")
    return found[i]


# ---------------------------------------------------------------------- build
@functools.lru_cache(maxsize=16)
def _abstract_model(spec: DenseNetSpec, dtype: str) -> tuple[nnx.GraphDef, nnx.State]:
    """The module structure for ``spec`` in ``dtype`` with shape-only values. Cached per
    (spec, dtype): tracing the constructor costs seconds for the big nets (one
    RNG-stream update per layer). A float64 call must come under x64 (``build``)."""
    dt = np.dtype(dtype)
    return nnx.split(nnx.eval_shape(
        lambda: DenseNet(spec, dtype=dt, param_dtype=dt, rngs=nnx.Rngs(params=0, dropout=0))))


def build(spec: DenseNetSpec, *, device: str | jax.Device | None = None, seed: int = 0,
          dtype: str = "float32") -> DenseNet:
    """A :class:`DenseNet` for ``spec`` on ``device``, initialised from ``seed``, its
    parameters, running statistics and computation in ``dtype`` ("float32" or
    "float64"; anything else is a ValueError).

    The weights are torchvision's initialisation scheme drawn by the shared
    seeded initializer (:func:`densenet_multi.params.init_params`, in ``dtype``),
    so ``build(spec, seed=s)`` starts from the same weights in every backend. The
    module tree is created abstractly (``nnx.eval_shape``) and then filled:
    eager NNX initialisers compile one XLA kernel per parameter shape, which
    costs ~30 s for DenseNet-BC-100 on two CPU cores. For NNX's own
    initialisers use ``DenseNet(spec, rngs=nnx.Rngs(params=..., dropout=...))``.
    Dropout draws from an explicit ``dropout`` RNG stream seeded with ``seed``.
    A float64 model is built under ``jax.enable_x64(True)``; see the module docstring.
    """
    dtype = check_model_dtype(dtype)
    dev = resolve_device(device)
    with x64_scope(needs_x64(dtype)):
        graphdef, abstract_state = _abstract_model(spec, dtype)
        # copy=True: fresh Variables, never shared with the cached state or another build
        model = nnx.merge(graphdef, abstract_state, copy=True)
        # The abstract tree has placeholders for the RNG streams too: give every
        # dropout layer its own key (folded from the seed) and a zero counter.
        base = jax.random.key(seed)
        with jax.default_device(dev):
            for i, (_, var) in enumerate(v for v in nnx.iter_graph(model)
                                         if isinstance(v[1], nnx.RngState)):
                if isinstance(var, nnx.RngKey):
                    var.set_value(jax.device_put(jax.random.fold_in(base, i), dev))
                else:
                    var.set_value(jax.device_put(jnp.zeros((), jnp.uint32), dev))
        load_canonical(model, init_params(spec, seed, dtype=dtype), device=dev)
    model.eval()
    return model


# ---------------------------------------------------------------------- helpers
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The contract's loss: mean softmax cross-entropy against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def model_dtype(model: DenseNet) -> np.dtype:
    """The dtype the contract functions compute in for ``model``: its computation
    dtype, else (None: Flax infers it) its parameters', at least float32."""
    dtype = model.dtype if model.dtype is not None else model.param_dtype
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
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"expected {n} integer labels of shape ({n},), got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= model.spec.num_classes):
        raise InputError(f"labels must lie in [0, {model.spec.num_classes}), got "
                         f"[{y.min()}, {y.max()}]")
    return jax.device_put(y.astype(np.int32), model_device(model))


def _canonical(a: jax.Array) -> np.ndarray:
    a = np.asarray(a)
    return nhwc_to_nchw(a) if a.ndim == 4 else np.array(a)


@nnx.jit
def _forward_stages(model: DenseNet, x: jax.Array) -> dict[str, jax.Array]:
    return model.forward_stages(x)


def _bn_count(spec: DenseNetSpec, part: tuple[Any, ...], x_shape: tuple[int, ...]) -> int:
    """N*H*W: how many values per channel a BN layer averaged over in a train-mode pass."""
    n, _, h, w = x_shape
    if part[0] == "stem":  # norm0 sees the stem conv's output, before the max-pool
        return n * spec.stem_conv.out_size(h) * spec.stem_conv.out_size(w)
    shapes = spec.stage_shapes(h, w)
    # a block's layers and the transition after it run at the block's size
    stage = "features" if part[0] == "norm5" else f"block{part[1] + 1}"
    return n * shapes[stage][1] * shapes[stage][2]


def to_canonical_running_var(old: np.ndarray, new: np.ndarray, momentum: float,
                             count: int) -> np.ndarray:
    """Flax's running-variance update -> the canonical (PyTorch) one.

    Flax (``momentum`` = weight of the old value, 0.9) updates with the
    *biased* batch variance ``v``: ``new = mu * old + (1 - mu) * v``. PyTorch
    uses the unbiased ``v * n / (n - 1)``. Recover ``(1 - mu) * v = new - mu *
    old`` and rescale it (in float64: no cancellation worth noting, the
    difference is ~10% of ``new``). The result has ``new``'s dtype.
    """
    old64, new64 = old.astype(np.float64), new.astype(np.float64)
    bessel = count / max(count - 1, 1)  # the reference's guard for n = 1
    return (momentum * old64 + (new64 - momentum * old64) * bessel).astype(new.dtype)


# ---------------------------------------------------------------------- run
@in_model_dtype
def run(model: DenseNet, x: Any, *, train: bool = False) -> ForwardOutput:
    """Forward a canonical NCHW numpy batch; every stage comes back NCHW.

    ``train=True`` puts the model in training mode (``model.train()``: batch
    statistics, dropout) and updates its running statistics as any training
    forward does; the running statistics returned are in the canonical
    (PyTorch) convention -- unbiased batch variance -- converted from Flax's
    biased update by :func:`to_canonical_running_var`. ``extras["flax_running"]``
    holds Flax's own values. ``train=False`` uses ``model.eval()`` and leaves
    the model's state unchanged. The model stays in the mode last used. Input is
    cast to the model's dtype; everything returned is in it.
    """
    xj = _input(model, x)
    spec = model.spec
    if train:
        before = export_canonical(model)
        model.train()
    else:
        model.eval()
    with jax.default_matmul_precision(_PRECISION):
        native = _forward_stages(model, xj)
    # jit returns dicts with sorted keys: put the stages back in network order.
    stages = {k: _canonical(native[k]) for k in spec.stage_names}
    out = ForwardOutput(logits=stages["logits"], stages=stages)
    if train:
        after = export_canonical(model)
        momentum = 1.0 - spec.bn_momentum  # Flax's convention, as in densenet.batch_norm
        running: dict[str, np.ndarray] = {}
        flax_running: dict[str, np.ndarray] = {}
        for ref in module_table(spec):
            for info in ref.params:
                if info.trainable:
                    continue
                flax_running[info.name] = after[info.name]
                if info.attr == "running_var":
                    running[info.name] = to_canonical_running_var(
                        before[info.name], after[info.name], momentum,
                        _bn_count(spec, ref.part, np.shape(x)))
                else:  # the running mean needs no conversion
                    running[info.name] = after[info.name]
        out.running = running
        out.extras["flax_running"] = flax_running
    return out


# ---------------------------------------------------------------------- gradients
@jax.jit(static_argnums=0)
def _loss_and_grads(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array,
                    labels: jax.Array) -> tuple[jax.Array, tuple[nnx.State, jax.Array]]:
    # A pure function of the model's state: the running statistics and RNG
    # counters the train-mode forward updates are dropped with this copy.
    model = nnx.merge(graphdef, state)

    def loss_fn(model: DenseNet, x: jax.Array) -> jax.Array:
        return cross_entropy(model(x), labels)

    return nnx.value_and_grad(loss_fn, argnums=(0, 1))(model, x)


@in_model_dtype
def gradients(model: DenseNet, x: Any, labels: Any) -> GradOutput:
    """Loss and its gradient w.r.t. every trainable canonical parameter and the input.

    Computed in training mode (batch statistics), functionally: the model's
    parameters, running statistics and RNG state are left as they were (the
    model is left in training mode). A conv bias that feeds a train-mode BN has
    a mathematically zero gradient; what comes back for it is rounding noise.
    Computed in the model's dtype; the gradients come back in it.
    """
    xj = _input(model, x)
    yj = _labels(model, labels, xj.shape[0])
    model.train()
    graphdef, state = nnx.split(model)
    with jax.default_matmul_precision(_PRECISION):
        loss, (g_params, g_x) = _loss_and_grads(graphdef, state, xj, yj)
    # The gradients have the parameters' tree structure: put them in a model
    # of the same structure and read them out with the canonical converter.
    grad_model = nnx.merge(graphdef, g_params, nnx.state(model, nnx.Not(nnx.Param)))
    return GradOutput(
        loss=float(loss),
        params=export_canonical(grad_model, trainable_only=True),
        input=_canonical(g_x),
    )


# ---------------------------------------------------------------------- training
@nnx.jit
def _train_step(model: DenseNet, optimizer: nnx.Optimizer, x: jax.Array,
                labels: jax.Array) -> jax.Array:
    def loss_fn(model: DenseNet) -> jax.Array:
        return cross_entropy(model(x), labels)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


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
    optimizer = nnx.Optimizer(model, sgd(lr, momentum), wrt=nnx.Param)
    device = model_device(model)
    nnx.update(optimizer, jax.device_put(nnx.state(optimizer, nnx.OptState), device))
    return optimizer


@in_model_dtype
def train_steps(model: DenseNet, batches: Iterable[tuple[Any, Any]], *, lr: float,
                momentum: float) -> list[float]:
    """One optax SGD-with-momentum step per ``(x, labels)`` batch, in training mode and
    the model's dtype; the loss of each step (computed before its update), as Python
    floats. Updates the model in place."""
    model.train()
    optimizer = make_optimizer(model, lr, momentum)
    losses = []
    with jax.default_matmul_precision(_PRECISION):
        for x, labels in batches:
            xj = _input(model, x)
            loss = _train_step(model, optimizer, xj, _labels(model, labels, xj.shape[0]))
            losses.append(float(loss))
    return losses
