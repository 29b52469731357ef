"""The backend contract (:mod:`densenet_multi.backend`) for MXNet Gluon.

Everything crossing this boundary is canonical numpy (NCHW, OIHW, torchvision
names), in the network's dtype (float32, or float64 after ``build(dtype=
"float64")``, i.e. Gluon's ``net.cast("float64")``). Two MXNet 1.9 facts shape this module:

* **MXNet's BatchNorm operator updates its running statistics in the backward
  pass**, not the forward, and with the *biased* batch variance. (Our
  :class:`~densenet_multi.gluon.densenet.BatchNorm` computes precise two-pass
  statistics imperatively and updates in the forward pass, by the same rule;
  hybridized, it is the operator.) :func:`run` with ``train=True`` therefore
  runs one backward pass (w.r.t. the input only, with a zero head gradient, so
  no parameter gradient buffer is touched), which covers both, and then
  converts the update to the canonical (PyTorch) convention with
  :func:`_pytorch_running_var`: ``run`` returns exactly the
  statistics PyTorch's train-mode forward would leave, and puts the model's
  back as they were (``run`` and ``gradients`` never change the model, as in
  the PyTorch backend). :func:`train_steps` writes the converted statistics
  into the model after each step, so training follows PyTorch's trajectory.
* ``Trainer.step(batch_size)`` rescales gradients by ``1/batch_size``; we
  differentiate the *mean* loss and call ``step(1)``. MXNet's SGD momentum
  update ``m = mu*m - lr*g; w += m`` equals PyTorch's ``v = mu*v + g; w -= lr*v``
  (``m = -lr*v``) at a constant learning rate.

No function here changes MXNet's global state: each runs with MXNet's numpy
modes off (:func:`~densenet_multi.gluon.densenet.legacy_mode`) and restores the
caller's; the autograd recording/training flags are scoped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from .. import checkpoint
from ..backend import GradOutput, check_model_dtype
from ..params import module_table
from ..reference import ForwardOutput
from ..spec import DenseNetSpec, InputError, check_input_dtype, check_input_shape
from .convert import export_canonical, gluon_param, load_canonical, resolve
from .densenet import DenseNet, in_legacy_mode

__all__ = ["build", "run", "gradients", "train_steps", "devices", "context_of", "dtype_of",
           "save_checkpoint", "load_checkpoint"]


class _SeededInit(mx.init.Initializer):
    """He-normal (fan-in, gain sqrt(2)) weights from a *private* numpy generator.

    Seeding MXNet's global RNG (``mx.random.seed``) would reset the user's
    random stream; this initializer leaves it alone. Biases start at zero; BN
    parameters use their own ``ones``/``zeros`` initializers.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def _init_weight(self, name: str, arr: nd.NDArray) -> None:
        fan_in = int(np.prod(arr.shape[1:]))
        arr[:] = self._rng.normal(0.0, np.sqrt(2.0 / fan_in), arr.shape).astype(np.float32)


def _context(device: str | None) -> mx.Context:
    if device in (None, "cpu"):
        return mx.cpu()
    if device in ("gpu", "cuda") or (isinstance(device, str) and device.startswith(("gpu", "cuda"))):
        if mx.context.num_gpus() == 0:
            raise ValueError(f"device {device!r} requested but MXNet sees no GPU; use 'cpu'")
        idx = device.split(":")[1] if ":" in device else "0"
        return mx.gpu(int(idx))
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'gpu[:i]'")


def context_of(net: DenseNet) -> mx.Context:
    """The context (device) the network's parameters live on."""
    return net.stem.conv0.weight.list_ctx()[0]


def devices() -> list[str]:
    """Devices this backend can run on here: ``["cpu"]``, plus ``"gpu"`` when MXNet sees one."""
    return ["cpu"] + (["gpu"] if mx.context.num_gpus() > 0 else [])


def dtype_of(net: DenseNet) -> np.dtype:
    """The dtype the network's parameters (and so its computation) are in."""
    return np.dtype(net.stem.conv0.weight.dtype)


@in_legacy_mode
def build(spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
          dtype: str = "float32", hybridize: bool = False) -> DenseNet:
    """An initialised :class:`DenseNet` for ``spec`` on ``device`` ("cpu" or "gpu"), its
    parameters in ``dtype`` ("float32" or "float64", Gluon's ``Block.cast``).

    Parameters exist right away (every layer knows its ``in_channels``);
    weights are He-normal from ``seed`` without touching MXNet's global RNG.
    ``hybridize=True`` compiles it to a cached graph (the same numbers in eval
    mode; in train mode see :class:`~densenet_multi.gluon.densenet.BatchNorm`).
    """
    dtype = check_model_dtype(dtype)
    net = DenseNet(spec)
    net.initialize(_SeededInit(seed), ctx=_context(device))
    if dtype != "float32":
        net.cast(dtype)
    if hybridize:
        net.hybridize()
    return net


# ---------------------------------------------------------------------- helpers
def _as_batch(net: DenseNet, x: Any) -> nd.NDArray:
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(net.spec, x.shape, "NCHW")
    return nd.array(x, ctx=context_of(net), dtype=dtype_of(net))


def _as_labels(net: DenseNet, labels: Any, n: int) -> nd.NDArray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"expected {n} integer labels of shape ({n},), got dtype {y.dtype} "
                         f"and shape {y.shape}")
    if n and (y.min() < 0 or y.max() >= net.spec.num_classes):
        raise InputError(f"labels must lie in [0, {net.spec.num_classes}), got "
                         f"[{y.min()}, {y.max()}]")
    return nd.array(y, ctx=context_of(net), dtype=dtype_of(net))


def _running_pairs(net: DenseNet) -> list[tuple[str, str, gluon.Parameter]]:
    """(canonical name, 'mean'|'var', Gluon parameter) for every BN running statistic."""
    out = []
    for ref in module_table(net.spec):
        if ref.kind != "bn":
            continue
        layer = resolve(net, ref.part)
        for info in ref.params:
            if not info.trainable:
                out.append((info.name, info.attr, gluon_param(layer, ref, info.attr)))
    return out


def _running_snapshot(net: DenseNet) -> dict[str, np.ndarray]:
    return {name: p.data().asnumpy().copy() for name, _, p in _running_pairs(net)}


def _bn_counts(net: DenseNet, n: int, h: int, w: int) -> dict[str, int]:
    """Values per channel each BN normalises over (N * H * W of its input), by canonical
    running-variance name, from the spec's geometry."""
    spec = net.spec
    shapes = spec.stage_shapes(h, w)
    stem = spec.stem_conv
    counts = {}
    for ref in module_table(spec):
        if ref.kind != "bn":
            continue
        head = ref.part[0]
        if head == "stem":  # norm0 sees the stem conv's output, before the max-pool
            hw = stem.out_size(h) * stem.out_size(w)
        else:
            # a block's BNs, and the following transition's BN (before its pool), see the
            # block's output size; norm5 the last block's (= the features stage)
            stage = "features" if head == "norm5" else f"block{ref.part[1] + 1}"
            _, sh, sw = shapes[stage]
            hw = sh * sw
        for info in ref.params:
            if info.attr == "running_var":
                counts[info.name] = n * hw
    return counts


def _pytorch_running_var(old: np.ndarray, new: np.ndarray, momentum: float,
                         count: int) -> np.ndarray:
    """Convert MXNet's running-variance update to PyTorch's (the canonical one).

    MXNet: ``new = (1-m)*old + m*biased``; PyTorch: ``(1-m)*old + m*biased*c/(c-1)``
    with ``c`` values per channel and ``m`` the spec's (PyTorch) momentum. Since
    ``m*biased = new - (1-m)*old``, PyTorch's value is
    ``new + (new - (1-m)*old) / (c-1)`` (computed in float64; ``c = 1`` is left
    unscaled, as the reference does).
    """
    old64, new64 = old.astype(np.float64), new.astype(np.float64)
    return new64 + (new64 - (1.0 - momentum) * old64) / max(count - 1, 1)


def _canonical_running(net: DenseNet, before: dict[str, np.ndarray],
                       counts: dict[str, int]) -> dict[str, np.ndarray]:
    """After a backward pass, every BN running statistic by canonical name in PyTorch's
    convention: the means agree already, the variances are converted."""
    out = {}
    for name, attr, p in _running_pairs(net):
        value = p.data().asnumpy()
        if attr == "running_var":
            value = _pytorch_running_var(before[name], value, net.spec.bn_momentum,
                                         counts[name])
        out[name] = value.astype(p.dtype, copy=True)
    return out


def _write_running(net: DenseNet, values: dict[str, np.ndarray]) -> None:
    for name, _, p in _running_pairs(net):
        p.set_data(nd.array(values[name], ctx=p.list_ctx()[0], dtype=p.dtype))


def _mean_cross_entropy(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    return gluon.loss.SoftmaxCrossEntropyLoss()(logits, labels).mean()


# ---------------------------------------------------------------------- the contract
@in_legacy_mode
def run(net: DenseNet, x: Any, *, train: bool = False) -> ForwardOutput:
    """Forward an NCHW numpy batch; logits and every stage (``spec.stage_names``), NCHW numpy.

    Eval mode uses the running statistics. Train mode (``autograd.record(train_mode=True)``)
    normalises with batch statistics; because MXNet 1.9 updates the running
    statistics only in the backward pass and with the biased variance, one
    backward pass is run (gradient w.r.t. the input only, zero head gradient:
    no parameter or gradient buffer changes) and the running variances are then
    converted to PyTorch's unbiased update (:func:`_pytorch_running_var`):
    ``running`` holds the canonical statistics a PyTorch train-mode forward
    would leave, ``extras["mxnet_running"]`` MXNet's own. The model's running
    statistics are then put back: ``run`` never changes the model.
    Bad input raises :class:`~densenet_multi.spec.InputError`.
    """
    xd = _as_batch(net, x)
    if not train:
        with autograd.predict_mode():  # BN uses running statistics, dropout is off
            stages = net.forward_stages(xd)
        out = {k: v.asnumpy() for k, v in stages.items()}
        return ForwardOutput(logits=out["logits"], stages=out)
    before = _running_snapshot(net)
    xd.attach_grad()
    with autograd.record(train_mode=True):
        stages = net.forward_stages(xd)
    logits = stages["logits"]
    autograd.grad(logits, [xd], head_grads=nd.zeros_like(logits), train_mode=True)
    native = _running_snapshot(net)
    running = _canonical_running(net, before, _bn_counts(net, *xd.shape[:1], *xd.shape[2:]))
    _write_running(net, before)
    out = {k: v.asnumpy() for k, v in stages.items()}
    return ForwardOutput(logits=out["logits"], stages=out, running=running,
                         extras={"mxnet_running": native})


def _trainable(net: DenseNet) -> list[tuple[str, gluon.Parameter]]:
    out = []
    for ref in module_table(net.spec):
        layer = resolve(net, ref.part)
        for info in ref.params:
            if info.trainable:
                out.append((info.name, gluon_param(layer, ref, info.attr)))
    return out


@in_legacy_mode
def gradients(net: DenseNet, x: Any, labels: Any) -> GradOutput:
    """Mean softmax cross-entropy (train mode: batch statistics) and its gradient w.r.t.
    every trainable canonical parameter and the input.

    Uses ``autograd.grad``, so the parameters' ``.grad`` buffers are not touched
    and ``grad_req`` must not be ``'null'`` (a frozen parameter raises). The BN
    running statistics, which MXNet updates in this backward pass, are restored:
    the model is left as it was.
    """
    xd = _as_batch(net, x)
    yd = _as_labels(net, labels, xd.shape[0])
    pairs = _trainable(net)
    frozen = [name for name, p in pairs if p.grad_req == "null"]
    if frozen:
        raise ValueError(f"gradients(): parameters with grad_req='null': {frozen[:4]}")
    before = _running_snapshot(net)
    xd.attach_grad()
    try:
        with autograd.record(train_mode=True):
            loss = _mean_cross_entropy(net(xd), yd)
        grads = autograd.grad(loss, [p.data() for _, p in pairs] + [xd], train_mode=True)
    finally:
        _write_running(net, before)
    return GradOutput(
        loss=float(loss.asscalar()),
        params={name: g.asnumpy() for (name, _), g in zip(pairs, grads[:-1], strict=True)},
        input=grads[-1].asnumpy(),
    )


@in_legacy_mode
def train_steps(net: DenseNet, batches: Iterable[tuple[Any, Any]], *, lr: float,
                momentum: float) -> list[float]:
    """One SGD-with-momentum step (``gluon.Trainer('sgd')``, no weight decay) per
    ``(x, labels)`` batch, in train mode; returns each step's loss before its update.

    The update equals PyTorch's ``v = mu*v + g; p -= lr*v`` (see the module notes);
    after each step the BN running variances are converted to PyTorch's convention,
    so the whole state follows the canonical trajectory.
    """
    trainer = gluon.Trainer(
        [p for _, p in _trainable(net)], "sgd",
        {"learning_rate": lr, "momentum": momentum, "wd": 0.0}, kvstore=None)
    losses = []
    for x, labels in batches:
        xd = _as_batch(net, x)
        yd = _as_labels(net, labels, xd.shape[0])
        before = _running_snapshot(net)
        with autograd.record(train_mode=True):
            loss = _mean_cross_entropy(net(xd), yd)
        loss.backward()
        _write_running(net, _canonical_running(net, before,
                                               _bn_counts(net, *xd.shape[:1], *xd.shape[2:])))
        trainer.step(1)  # the loss is already a mean: no 1/batch_size rescaling
        losses.append(float(loss.asscalar()))
    return losses


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(net: DenseNet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``net`` as a canonical safetensors checkpoint (spec in the metadata), atomically."""
    return checkpoint.save(path, export_canonical(net), net.spec, overwrite=overwrite)


@in_legacy_mode
def load_checkpoint(path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                    device: str | None = None, hybridize: bool = False) -> DenseNet:
    """A network built from a canonical checkpoint (its stored spec, or ``spec``, which
    must agree with it), with every parameter and running statistic loaded."""
    params, spec = checkpoint.load(path, spec, dtype=None)
    net = build(spec, device=device, hybridize=hybridize)
    load_canonical(net, params)
    return net
