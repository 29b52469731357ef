"""Data-parallel training with MXNet's own engine: a kvstore over several contexts.

The network's parameters live on every context (``mx.cpu(0)``, ``mx.cpu(1)``, or
GPUs); ``gluon.utils.split_and_load`` puts one contiguous shard of the global
batch on each (context 0 first); each context runs the forward pass on its
shard in a thread of its own, as GluonCV's ``DataParallelModel`` does (both
synchronised BatchNorms below hold the contexts at a barrier, so they must run
concurrently), then the backward; ``gluon.Trainer`` with a ``"device"``
kvstore sums the contexts' gradients and steps every copy the same way.
MXNet's convention is Gluon's: the losses are per example (their sum is what is
differentiated), and ``trainer.step(batch_size)`` divides the summed gradient
by the *global* batch size: the gradient of the global batch's mean loss.

BatchNorm:

- ``sync_bn=False``: each context normalises with its shard's statistics and
  updates its own copy of the running statistics (they are parameters with
  ``grad_req="null"``: the kvstore never touches them); the exported network
  reads context 0's copy, replica 0's chain (here context 0's value, converted
  (below), is written back to every context after each step).
- ``sync_bn=True``, float32: every BatchNorm layer's train-mode forward becomes
  MXNet's ``contrib.SyncBatchNorm`` operator (the operator behind
  ``gluon.contrib.nn.SyncBatchNorm``, keyed per layer, ``ndev`` contexts meeting
  at a barrier), with the layer's own parameters: the global batch's statistics.
  That operator works on CPU contexts, but in float32 only: on float64 data it
  fails inside MXNet ("TBlob.get_with_shape: data type do not match specified
  type. Expected: double v.s. given float").
- ``sync_bn=True``, float64: the all-reduce BatchNorm (:func:`allreduce_batchnorm`,
  the twin of the PyTorch backend's ``AllReduceBatchNorm2d``): each layer sums its
  shard per channel, the context threads exchange the sums through a
  :class:`ContextAllReduce` (a ``threading.Barrier`` and a recorded, hence
  differentiable, ``as_in_context`` copy of every other context's sum), then
  the sums of squared deviations from the global mean (two passes, like
  :class:`TwoPassBatchNorm`). The graph then crosses the contexts, and the
  backward is one ``autograd.backward`` over every context's losses: it carries
  the gradient of the statistics back to every shard, as SyncBatchNorm's
  backward all-reduces it. Measured (d2l at 32x32, 2 steps, global batch 8 over
  2 contexts): 7.5e-16 from single-device training in float64; in float32 it
  gives what the operator gives (4.5e-7 vs 4.8e-7 from the float64 reference)
  in about 1.5 times the operator's time, so float32 keeps the operator.

MXNet mixes the biased batch variance into the running variance (both
synchronised BatchNorms do too); after each step it is converted to the
canonical (PyTorch) rule (``runtime.train_steps`` does the same) with the count
of values each BN layer averaged over.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Mapping, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from ..backend import check_model_dtype
from ..distributed import check_batches
from ..spec import DenseNetSpec
from .convert import export_canonical, load_canonical
from .layers import TwoPassBatchNorm
from .runtime import (
    _canonical_running,
    _empty,
    _running_snapshot,
    _trainable,
    _write_running,
    in_legacy_mode,
    legacy_mode,
)

__all__ = ["contexts", "ContextAllReduce", "allreduce_batchnorm", "synchronize_batchnorm",
           "data_parallel_steps"]


def contexts(device: str, n: int) -> list[mx.Context]:
    """``n`` MXNet contexts of one kind: CPU contexts ``cpu(0..n-1)`` or GPUs."""
    kind = str(device).partition(":")[0]
    if kind == "cpu":
        return [mx.cpu(i) for i in range(n)]
    if kind == "cuda":
        if mx.context.num_gpus() < n:
            raise ValueError(f"{n} GPUs requested, MXNet sees {mx.context.num_gpus()}")
        return [mx.gpu(i) for i in range(n)]
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


class ContextAllReduce:
    """A differentiable sum all-reduce among the threads that drive ``ctxs``, one thread
    per context (:func:`_forward_backward`), for NDArrays recorded by autograd.

    Each thread publishes its value in its context's slot and waits at a
    ``threading.Barrier``; then each sums every context's value copied to its own
    context (``as_in_context``, which autograd records: its gradient is the copy
    back), in context order, so every context holds the same bits; a second barrier
    keeps a slot from being overwritten before every thread has read it. Nothing
    waits on MXNet's engine: the published arrays may still be computing, the
    engine orders the copies after them. The backward of a sum is this sum's
    transpose: each context's partial receives the sum of the gradients every
    context's statistics got, the all-reduce that SyncBatchNorm's backward does.
    """

    def __init__(self, ctxs: Sequence[mx.Context]):
        self.ctxs = list(ctxs)
        self._slots: list[object] = [None] * len(self.ctxs)
        self._barrier = threading.Barrier(len(self.ctxs))

    def _index(self, ctx: mx.Context) -> int:
        if ctx not in self.ctxs:
            raise ValueError(f"an array on {ctx}, not on one of the all-reduce's contexts "
                             f"{self.ctxs}")
        return self.ctxs.index(ctx)

    def gather(self, ctx: mx.Context, value: object) -> list[object]:
        """Every context's ``value`` (context order), once the thread of each has given its own."""
        self._slots[self._index(ctx)] = value
        self._barrier.wait()
        values = list(self._slots)
        self._barrier.wait()
        return values

    def sum(self, x: nd.NDArray) -> nd.NDArray:
        """The sum over the contexts of their ``x`` (same shape), on ``x``'s context."""
        return nd.add_n(*[v.as_in_context(x.context) for v in self.gather(x.context, x)])

    def abort(self) -> None:
        """Release the threads waiting at the barrier (with ``BrokenBarrierError``): called
        when one context's thread fails, so that the others do not wait for ever."""
        self._barrier.abort()


def _allreduce_forward(reduce: ContextAllReduce):
    def train_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        if F is not nd or kw["fix_gamma"] or kw["axis"] != 1 or x.ndim != 4:
            raise ValueError("the all-reduce BatchNorm runs imperatively (not hybridized) on "
                             "NCHW batches with a learned gamma")
        count = sum(reduce.gather(x.context, x.size // x.shape[1]))  # values per channel
        mean = reduce.sum(x.sum(axis=(0, 2, 3))) / count
        centered = F.broadcast_sub(x, mean.reshape((1, -1, 1, 1)))
        var = reduce.sum(F.square(centered).sum(axis=(0, 2, 3))) / count  # biased, two-pass
        scale = F.rsqrt(var + kw["eps"]) * gamma
        y = F.broadcast_add(F.broadcast_mul(centered, scale.reshape((1, -1, 1, 1))),
                            beta.reshape((1, -1, 1, 1)))
        with autograd.pause():  # MXNet's rule, as TwoPassBatchNorm's; converted after the step
            m = kw["momentum"]
            running_mean[:] = m * running_mean + (1 - m) * mean
            running_var[:] = m * running_var + (1 - m) * var
        return y

    return train_forward


def _sync_operator_forward(ndev: int):
    def train_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        return F.contrib.SyncBatchNorm(x, gamma, beta, running_mean, running_var,
                                       eps=kw["eps"], momentum=kw["momentum"],
                                       fix_gamma=kw["fix_gamma"], use_global_stats=False,
                                       ndev=ndev, key=self.prefix)

    return train_forward


def _patch_batchnorm(net: gluon.Block, train_forward) -> gluon.Block:
    """Make every :class:`TwoPassBatchNorm` of ``net`` compute ``train_forward`` when it
    normalises with batch statistics (train mode, not ``use_global_stats``), and its own
    forward otherwise."""
    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        if not autograd.is_training() or self._kwargs["use_global_stats"]:
            return TwoPassBatchNorm.hybrid_forward(self, F, x, gamma, beta, running_mean,
                                                   running_var)
        return train_forward(self, F, x, gamma, beta, running_mean, running_var)

    def visit(block: gluon.Block) -> None:
        if isinstance(block, TwoPassBatchNorm):
            block.hybrid_forward = types.MethodType(hybrid_forward, block)
        for child in block._children.values():
            visit(child)

    visit(net)
    return net


def synchronize_batchnorm(net: gluon.Block, ndev: int) -> gluon.Block:
    """Make every BatchNorm layer of ``net`` compute ``gluon.contrib.nn.SyncBatchNorm``'s
    operator over ``ndev`` contexts in train mode (float32 only), keeping its parameters
    (the model file builds :class:`TwoPassBatchNorm`; swapping the block would re-create
    them)."""
    return _patch_batchnorm(net, _sync_operator_forward(ndev))


def allreduce_batchnorm(net: gluon.Block, reduce: ContextAllReduce) -> gluon.Block:
    """Make every BatchNorm layer of ``net`` normalise with the global batch's statistics
    in train mode, gathered over ``reduce``'s contexts (:class:`ContextAllReduce`): the
    sum, then the sum of squared deviations from the global mean, in the network's
    dtype (float64 too). Eval mode is unchanged; the parameters are kept."""
    return _patch_batchnorm(net, _allreduce_forward(reduce))


def _forward_backward(net: gluon.Block, loss_fn: gluon.loss.Loss, xs: Sequence[nd.NDArray],
                      ys: Sequence[nd.NDArray], reduce: ContextAllReduce | None = None
                      ) -> list[nd.NDArray]:
    """Forward and backward on every context, returning each context's per-example losses.

    The forwards run in a thread per context (GluonCV's ``DataParallelModel`` way):
    both synchronised BatchNorms hold each context at a barrier until all have
    reached it, and pushed from one thread the contexts would wait for ever
    (measured: a sequential loop over the contexts hangs in the first forward).
    The backward:

    - with the all-reduce BatchNorm (``reduce``), one ``autograd.backward`` over
      every context's losses once all forwards are done: the graph crosses the
      contexts (each context's statistics depend on every shard), so each loss
      reaches every context's parameters, and one backward per loss would
      overwrite (``grad_req="write"``) the gradients the other's left;
    - otherwise in each context's thread: the SyncBatchNorm operator's backward
      meets at its barrier too (measured: one ``autograd.backward`` over both
      contexts' losses hangs in it).
    """
    losses: list[nd.NDArray | None] = [None] * len(xs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with legacy_mode(), autograd.record(train_mode=True):  # both are per thread
                losses[i] = loss_fn(net(xs[i]), ys[i])
            if reduce is None:
                losses[i].backward()
                losses[i].wait_to_read()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            if reduce is not None:
                reduce.abort()  # the other threads must not wait for this one for ever

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if reduce is not None:
        autograd.backward(losses, train_mode=True)
    return losses


@in_legacy_mode
def data_parallel_steps(spec: DenseNetSpec, params: Mapping[str, np.ndarray],
                        batches: Sequence[tuple[np.ndarray, np.ndarray]], *, devices: int = 2,
                        sync_bn: bool, lr: float, momentum: float, dtype: str = "float32",
                        device: str = "cpu"
                        ) -> tuple[list[float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """K SGD-with-momentum steps (``gluon.Trainer('sgd')`` with a ``device`` kvstore;
    PyTorch's update for a constant learning rate) over ``devices`` contexts, one per
    ``(x, labels)`` global batch, from the canonical ``params``. Returns (the loss of
    each step, the global batch's mean before the update; context 0's final trainable
    parameters; its running statistics), canonical names and layout. ``sync_bn=True``
    is MXNet's SyncBatchNorm operator in float32, the all-reduce BatchNorm in float64
    (see the module notes)."""
    dtype = check_model_dtype(dtype)
    checked = check_batches(spec, batches, devices)
    ctxs = contexts(device, devices)
    net = _empty(spec, None, dtype, False, False)
    load_canonical(net, params)
    net.collect_params().reset_ctx(ctxs)  # a copy of every parameter on every context
    reduce = None
    if sync_bn and dtype == "float32":
        synchronize_batchnorm(net, devices)  # MXNet's operator (float32 only)
    elif sync_bn:
        reduce = ContextAllReduce(ctxs)
        allreduce_batchnorm(net, reduce)
    trainer = gluon.Trainer([p for _, p in _trainable(net)], "sgd",
                            {"learning_rate": lr, "momentum": momentum, "wd": 0.0},
                            kvstore="device")
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # per example
    losses = []
    for x, y in checked:
        xs = gluon.utils.split_and_load(nd.array(x, dtype=dtype), ctxs)
        ys = gluon.utils.split_and_load(nd.array(y, dtype=dtype), ctxs)
        before = _running_snapshot(net)  # context 0's
        per_example = _forward_backward(net, loss_fn, xs, ys, reduce)
        # context 0's running statistics, converted, written to every context
        shape = x.shape if sync_bn else xs[0].shape
        _write_running(net, _canonical_running(net, before, shape))
        trainer.step(len(x))  # the kvstore sums the gradients; 1 / global batch
        losses.append(float(sum(l.sum().asscalar() for l in per_example)) / len(x))
    exported = export_canonical(net)
    running = {k: v for k, v in exported.items() if k.endswith(("running_mean", "running_var"))}
    trainable = {k: v for k, v in exported.items() if k not in running}
    return losses, trainable, running
