"""Data-parallel training with MXNet's own engine: a kvstore over several contexts.

The network's parameters live on every context (``mx.cpu(0)``, ``mx.cpu(1)``, or
GPUs); ``gluon.utils.split_and_load`` puts one contiguous shard of the global
batch on each (context 0 first); each context runs forward and backward on its
shard (each in a thread of its own, as GluonCV's ``DataParallelModel`` does: the
synchronised BatchNorm operator needs the contexts to run concurrently); ``gluon.Trainer`` with a ``"device"``
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
- ``sync_bn=True``: every BatchNorm layer's train-mode forward becomes MXNet's
  ``contrib.SyncBatchNorm`` operator (the operator behind
  ``gluon.contrib.nn.SyncBatchNorm``, keyed per layer, ``ndev`` contexts meeting
  at a barrier), with the layer's own parameters: the global batch's statistics.
  That operator works on CPU contexts, but in float32 only: on float64 data it
  fails inside MXNet ("TBlob.get_with_shape: data type do not match specified
  type. Expected: double v.s. given float"), so a float64 network with
  ``sync_bn=True`` is refused here, with that reason.

MXNet mixes the biased batch variance into the running variance; after each
step it is converted to the canonical (PyTorch) rule (``runtime.train_steps``
does the same) with the count of values each BN layer averaged over.
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

__all__ = ["contexts", "synchronize_batchnorm", "data_parallel_steps"]


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


def _sync_forward(ndev: int):
    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        if not autograd.is_training() or kw["use_global_stats"]:
            return TwoPassBatchNorm.hybrid_forward(self, F, x, gamma, beta, running_mean,
                                                   running_var)
        return F.contrib.SyncBatchNorm(x, gamma, beta, running_mean, running_var,
                                       eps=kw["eps"], momentum=kw["momentum"],
                                       fix_gamma=kw["fix_gamma"], use_global_stats=False,
                                       ndev=ndev, key=self.prefix)

    return hybrid_forward


def synchronize_batchnorm(net: gluon.Block, ndev: int) -> gluon.Block:
    """Make every BatchNorm layer of ``net`` compute ``gluon.contrib.nn.SyncBatchNorm``'s
    operator over ``ndev`` contexts in train mode, keeping its parameters (the model
    file builds :class:`TwoPassBatchNorm`; swapping the block would re-create them)."""
    def visit(block: gluon.Block) -> None:
        if isinstance(block, TwoPassBatchNorm):
            block.hybrid_forward = types.MethodType(_sync_forward(ndev), block)
        for child in block._children.values():
            visit(child)

    visit(net)
    return net


def _forward_backward(net: gluon.Block, loss_fn: gluon.loss.Loss, xs: Sequence[nd.NDArray],
                      ys: Sequence[nd.NDArray]) -> list[nd.NDArray]:
    """Forward and backward on every context, each in a thread of its own (GluonCV's
    ``DataParallelModel`` way): the SyncBatchNorm operator holds each context at a
    barrier until all have reached it, and pushed from one thread the contexts reach
    their layers' barriers in different orders and wait for ever (measured: a
    sequential loop over the contexts hangs in the first forward). Returns the
    per-example losses of each context."""
    losses: list[nd.NDArray | None] = [None] * len(xs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with legacy_mode(), autograd.record(train_mode=True):  # both are per thread
                losses[i] = loss_fn(net(xs[i]), ys[i])
            losses[i].backward()
            losses[i].wait_to_read()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
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
    parameters; its running statistics), canonical names and layout."""
    dtype = check_model_dtype(dtype)
    if sync_bn and dtype != "float32":
        raise ValueError("MXNet 1.9's SyncBatchNorm operator computes in float32 only (on "
                         f"float64 data it fails inside MXNet); got dtype={dtype!r} with "
                         "sync_bn=True: use float32, or sync_bn=False")
    checked = check_batches(spec, batches, devices)
    ctxs = contexts(device, devices)
    net = _empty(spec, None, dtype, False, False)
    load_canonical(net, params)
    net.collect_params().reset_ctx(ctxs)  # a copy of every parameter on every context
    if sync_bn:
        synchronize_batchnorm(net, devices)
    trainer = gluon.Trainer([p for _, p in _trainable(net)], "sgd",
                            {"learning_rate": lr, "momentum": momentum, "wd": 0.0},
                            kvstore="device")
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # per example
    losses = []
    for x, y in checked:
        xs = gluon.utils.split_and_load(nd.array(x, dtype=dtype), ctxs)
        ys = gluon.utils.split_and_load(nd.array(y, dtype=dtype), ctxs)
        before = _running_snapshot(net)  # context 0's
        per_example = _forward_backward(net, loss_fn, xs, ys)
        # context 0's running statistics, converted, written to every context
        shape = x.shape if sync_bn else xs[0].shape
        _write_running(net, _canonical_running(net, before, shape))
        trainer.step(len(x))  # the kvstore sums the gradients; 1 / global batch
        losses.append(float(sum(l.sum().asscalar() for l in per_example)) / len(x))
    exported = export_canonical(net)
    running = {k: v for k, v in exported.items() if k.endswith(("running_mean", "running_var"))}
    trainable = {k: v for k, v in exported.items() if k not in running}
    return losses, trainable, running
