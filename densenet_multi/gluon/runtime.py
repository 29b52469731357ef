"""The backend contract (:mod:`densenet_multi.backend`) for MXNet Gluon.

Everything crossing this boundary is canonical numpy (NCHW, OIHW, torchvision
names), in the network's dtype (float32, or float64 after ``build(dtype=
"float64")``, i.e. Gluon's ``net.cast("float64")``). This is also where MXNet's
process-wide state is handled: every function here runs with MXNet's numpy
modes off (:func:`legacy_mode`) and restores the caller's; the autograd
recording/training flags are scoped. Two MXNet 1.9 facts shape the module:

* **MXNet's BatchNorm operator updates its running statistics in the backward
  pass**, not the forward, and with the *biased* batch variance. (The network's
  :class:`~densenet_multi.gluon.layers.TwoPassBatchNorm` computes precise
  two-pass statistics imperatively and updates in the forward pass, by the
  same rule; hybridized, it is the operator.) :func:`run` with ``train=True``
  therefore runs one backward pass where the operator runs (w.r.t. the input
  only, with a zero head gradient, so no parameter gradient buffer is touched),
  and converts the update to the canonical (PyTorch) convention with
  :func:`densenet_multi.batchnorm.canonical_running_var`: ``run`` returns
  exactly the statistics PyTorch's train-mode forward would leave, and puts
  the model's back as they were (``run`` and ``gradients`` never change the
  model). :func:`train_steps` writes the converted statistics into the model
  after each step, so training follows PyTorch's trajectory.
* ``Trainer.step(batch_size)`` rescales gradients by ``1/batch_size``; we
  differentiate the *mean* loss and call ``step(1)``. MXNet's SGD momentum
  update ``m = mu*m - lr*g; w += m`` equals PyTorch's ``v = mu*v + g; w -= lr*v``
  (``m = -lr*v``) at a constant learning rate.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from .. import checkpoint
from ..backend import check_model_dtype
from ..batchnorm import canonical_running_var, sample_counts
from ..outputs import ForwardOutput, GradOutput
from ..params import init_params, module_table
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape, check_labels
from .convert import export_canonical, gluon_param, load_canonical, resolve
from .densenet import DenseNet
from .layers import TwoPassBatchNorm

__all__ = ["legacy_mode", "in_legacy_mode", "build", "run", "gradients", "train_steps",
           "devices", "context_of", "dtype_of", "save_checkpoint", "load_checkpoint"]


# ---------------------------------------------------------------------- MXNet's modes
@contextmanager
def legacy_mode() -> Iterator[None]:
    """Run a block of code with MXNet's numpy-compatible modes *off*, restoring the
    caller's settings afterwards.

    ``npx.set_np()`` is process-wide; a user program that turned it on would
    otherwise make the network's legacy-API (``F`` = ``nd`` / ``sym``) blocks
    fail (``nd`` vs ``mx.np`` arrays). Every function of this module runs inside
    this scope; it never switches the modes for the rest of the program. Call
    ``net(x)`` yourself inside it when numpy mode is on.
    """
    # array semantics off first: MXNet refuses np_shape(False) while np_array is on
    with mx.util.np_array(False), mx.util.np_shape(False):
        yield


_F = TypeVar("_F", bound=Callable)


def in_legacy_mode(fn: _F) -> _F:
    """Decorator: call ``fn`` inside :func:`legacy_mode`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with legacy_mode():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------- devices
def devices() -> list[str]:
    """Devices this backend can run on here: "cpu", then "cuda" (and "cuda:N" for more
    than one GPU) when MXNet sees a GPU."""
    n = mx.context.num_gpus()
    return ["cpu"] + (["cuda"] if n else []) + [f"cuda:{i}" for i in range(1, n)]


def _context(device: str | None) -> mx.Context:
    """The MXNet context of a device name: MXNet calls CUDA devices "gpu"."""
    if device in (None, "cpu"):
        return mx.cpu()
    if isinstance(device, str) and device.split(":")[0] == "cuda":
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
        if int(index) >= mx.context.num_gpus():
            raise ValueError(f"device {device!r} requested but MXNet sees "
                             f"{mx.context.num_gpus() or 'no'} GPU(s); use one of {devices()}")
        return mx.gpu(int(index))
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")


def context_of(net: DenseNet) -> mx.Context:
    """The context (device) the network's parameters live on."""
    return net.features.conv0.weight.list_ctx()[0]


def dtype_of(net: DenseNet) -> np.dtype:
    """The dtype the network's parameters (and so its computation) are in."""
    return np.dtype(net.features.conv0.weight.dtype)


# ---------------------------------------------------------------------- building
def _empty(spec: DenseNetSpec, device: str | None, dtype: object, memory_efficient: bool,
           hybridize: bool) -> DenseNet:
    """A network for ``spec`` on ``device`` in ``dtype``, its values still to be loaded."""
    dtype = check_model_dtype(dtype)
    net = DenseNet(spec, memory_efficient=memory_efficient)
    # Allocates every parameter (all shapes are known). The values are placeholders
    # the caller overwrites, and Zero draws from no random stream (MXNet's global
    # one belongs to the user).
    net.initialize(mx.init.Zero(), ctx=_context(device))
    if dtype != "float32":
        net.cast(dtype)
    if hybridize:
        net.hybridize()
    return net


@in_legacy_mode
def build(spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
          dtype: str = "float32", memory_efficient: bool = False,
          hybridize: bool = False) -> DenseNet:
    """A :class:`DenseNet` for ``spec`` holding the canonical seeded weights
    ``init_params(spec, seed, dtype=dtype)`` (bit for bit the arrays every backend
    gets), its parameters in ``dtype`` ("float32" or "float64", Gluon's
    ``Block.cast``) on ``device`` ("cpu", "cuda", "cuda:N").

    ``memory_efficient=True`` recomputes each dense layer's concatenation and first
    BN-ReLU-conv (and second BN-ReLU) in the backward pass
    (:class:`~densenet_multi.gluon.densenet.DenseLayer`): the same numbers (the
    gradients to rounding), less stored memory; the layers then run imperatively,
    their recomputed parts compiled by ``hybridize``. ``hybridize=True``
    compiles the network to a cached graph (the same numbers in eval mode; in
    train mode see :class:`~densenet_multi.gluon.layers.TwoPassBatchNorm`).
    """
    dtype = check_model_dtype(dtype)
    net = _empty(spec, device, dtype, memory_efficient, hybridize)
    load_canonical(net, init_params(spec, seed, dtype=dtype))
    return net


# ---------------------------------------------------------------------- helpers
def _as_batch(net: DenseNet, x: Any) -> nd.NDArray:
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(net.spec, x.shape, "NCHW")
    return nd.array(x, ctx=context_of(net), dtype=dtype_of(net))


def _as_labels(net: DenseNet, labels: Any, n: int) -> nd.NDArray:
    y = check_labels(labels, n, net.spec.num_classes)
    return nd.array(y, ctx=context_of(net), dtype=dtype_of(net))


def _running_pairs(net: DenseNet) -> list[tuple[str, str, str, gluon.Parameter]]:
    """(BN prefix, canonical name, 'running_mean'|'running_var', Gluon parameter) for
    every BN running statistic."""
    out = []
    for ref in module_table(net.spec):
        if ref.kind != "bn":
            continue
        layer = resolve(net, ref.part)
        for info in ref.params:
            if not info.trainable:
                out.append((ref.prefix, info.name, info.attr, gluon_param(layer, ref, info.attr)))
    return out


def _running_snapshot(net: DenseNet) -> dict[str, np.ndarray]:
    return {name: p.data().asnumpy() for _, name, _, p in _running_pairs(net)}


def _canonical_running(net: DenseNet, before: dict[str, np.ndarray],
                       batch_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """After a backward pass, every BN running statistic by canonical name in PyTorch's
    convention: the means agree already, the variances (MXNet mixes in the biased
    batch variance) are converted."""
    n, _, h, w = batch_shape
    counts = sample_counts(net.spec, n, h, w)
    out = {}
    for prefix, name, attr, p in _running_pairs(net):
        value = p.data().asnumpy()
        if attr == "running_var":
            value = canonical_running_var(before[name], value, counts[prefix],
                                          net.spec.bn_momentum)
        out[name] = value
    return out


def _write_running(net: DenseNet, values: dict[str, np.ndarray]) -> None:
    for _, name, _, p in _running_pairs(net):
        p.set_data(nd.array(values[name], ctx=p.list_ctx()[0], dtype=p.dtype))


def _trainable(net: DenseNet) -> list[tuple[str, gluon.Parameter]]:
    out = []
    for ref in module_table(net.spec):
        layer = resolve(net, ref.part)
        for info in ref.params:
            if info.trainable:
                out.append((info.name, gluon_param(layer, ref, info.attr)))
    return out


def _backward_done(net: DenseNet) -> None:
    """Wait until a backward pass has written everything, before the running statistics
    are read or written: a memory-efficient network's recomputations run on MXNet's
    custom-operator thread and, hybridized, update their BN statistics there, after
    ``backward()`` has returned (see :class:`~densenet_multi.gluon.layers.Recomputed`)."""
    if net.memory_efficient:
        nd.waitall()


def _statistics_in_backward(net: DenseNet) -> bool:
    """Whether a train-mode forward of ``net`` leaves its running statistics to the
    backward pass: MXNet's BatchNorm operator updates them there, and it runs wherever a
    part is hybridized (a cached graph), in a memory-efficient network's
    recomputations and in any BN that is not a
    :class:`~densenet_multi.gluon.layers.TwoPassBatchNorm` on its two-pass path
    (:meth:`~densenet_multi.gluon.layers.TwoPassBatchNorm.updates_in_forward`).
    Otherwise :func:`run` skips the backward pass (most of a train-mode ``run``'s
    time: MXNet differentiates the two-pass formula with slow broadcast reductions)."""
    operator: list[bool] = []
    net.apply(lambda block: operator.append(
        bool(getattr(block, "_active", False))
        or (isinstance(block, nn.BatchNorm)
            and not (isinstance(block, TwoPassBatchNorm) and block.updates_in_forward()))))
    return net.memory_efficient or any(operator)


def _mean_cross_entropy(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    return gluon.loss.SoftmaxCrossEntropyLoss()(logits, labels).mean()


# ---------------------------------------------------------------------- the contract
@in_legacy_mode
def run(net: DenseNet, x: Any, *, train: bool = False) -> ForwardOutput:
    """Forward an NCHW numpy batch; logits and every stage (``spec.stage_names``), NCHW numpy.

    Eval mode uses the running statistics. Train mode (autograd's train mode) normalises
    with batch statistics. MXNet 1.9's BatchNorm operator updates the
    running statistics only in the backward pass, so where it runs (a hybridized or
    memory-efficient network: :func:`_statistics_in_backward`) one backward pass is
    run (gradient w.r.t. the input only, zero head gradient: no parameter or gradient
    buffer changes); imperatively,
    :class:`~densenet_multi.gluon.layers.TwoPassBatchNorm` updates them in the
    forward pass. Either update uses the biased variance: the running variances are
    then converted to PyTorch's unbiased update: ``running`` holds the canonical
    statistics a PyTorch train-mode forward would leave, ``extras["mxnet_running"]``
    MXNet's own. The model's running statistics are then put back: ``run``
    never changes the model. Bad input raises :class:`~densenet_multi.spec.InputError`.
    """
    xd = _as_batch(net, x)
    if not train:
        with autograd.predict_mode():  # BN uses running statistics, dropout is off
            stages = net.forward_stages(xd)
        out = {k: v.asnumpy() for k, v in stages.items()}
        return ForwardOutput(logits=out["logits"], stages=out)
    before = _running_snapshot(net)
    try:
        if _statistics_in_backward(net):
            xd.attach_grad()
            with autograd.record(train_mode=True):
                stages = net.forward_stages(xd)
            logits = stages["logits"]
            autograd.grad(logits, [xd], head_grads=nd.zeros_like(logits), train_mode=True)
            _backward_done(net)
        else:  # TwoPassBatchNorm updates them in the forward pass: nothing to record
            with autograd.train_mode():
                stages = net.forward_stages(xd)
        native = _running_snapshot(net)
        running = _canonical_running(net, before, xd.shape)
    finally:
        _write_running(net, before)
    out = {k: v.asnumpy() for k, v in stages.items()}
    return ForwardOutput(logits=out["logits"], stages=out, running=running,
                         extras={"mxnet_running": native})


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
        _backward_done(net)
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
        _backward_done(net)
        _write_running(net, _canonical_running(net, before, xd.shape))
        trainer.step(1)  # the loss is already a mean: no 1/batch_size rescaling
        losses.append(float(loss.asscalar()))
    return losses


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(net: DenseNet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``net`` as a canonical safetensors checkpoint (spec in the metadata),
    atomically, in the network's dtype (float32, or float64 for a float64 network)."""
    return checkpoint.save(path, export_canonical(net), net.spec, overwrite=overwrite,
                           dtype=None)


@in_legacy_mode
def load_checkpoint(path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                    device: str | None = None, dtype: str | None = None,
                    memory_efficient: bool = False, hybridize: bool = False) -> DenseNet:
    """A network built from a canonical checkpoint (its stored spec, or ``spec``, which
    must agree with it), in the file's dtype unless ``dtype`` is given, with every
    parameter and running statistic loaded. A checkpoint loads into either mode."""
    params, spec = checkpoint.load(path, spec, dtype=None)
    file_dtype = next(iter(params.values())).dtype
    net = _empty(spec, device, file_dtype if dtype is None else dtype, memory_efficient,
                 hybridize)
    load_canonical(net, params)
    return net
