"""Data-parallel SGD in the NumPy reference: what K steps over R replicas should give.

A data-parallel step splits the global batch of N examples into R equal shards,
one per replica; every replica runs the network on its shard, the gradients are
averaged across replicas (a *mean* all-reduce of each replica's mean loss's
gradient, which for equal shards is the gradient of the global mean loss), and
every replica applies the same SGD update. What differs between frameworks and
settings is BatchNorm:

- **synchronised** BatchNorm normalises with the statistics of the whole global
  batch, gathered across replicas: the step is exactly the single-device step
  on the global batch (:func:`densenet_multi.reference_grad.train_steps`);
- **per-replica** BatchNorm normalises each shard with its own statistics, so
  the gradient is the mean of R single-device gradients on N/R examples each,
  a different network function; and each replica updates its own copy of the
  running statistics from its shard. Which copy a framework ends with is its
  own rule (``running=``): ``"replica0"`` (PyTorch DDP broadcasts rank 0's
  buffers before every forward; Keras' mirrored BN variables keep one copy per
  replica and read replica 0's; Gluon keeps one copy per context and exports
  the first), or ``"mean"`` (the Flax examples' ``pmean`` of the batch
  statistics after each step).

The running statistics are in the canonical (PyTorch) convention, the unbiased
variance of the shard the statistic was taken over. ``reduce="sum"`` gives the
prediction of a sum all-reduce without rescaling the loss (R times the
gradient), a convention no backend should follow: the tests use it to show the
comparison tells the two apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import reference_grad

__all__ = ["RUNNING_RULES", "REDUCTIONS", "split_batch", "data_parallel_steps"]

RUNNING_RULES = ("replica0", "mean")
REDUCTIONS = ("mean", "sum")


def split_batch(x: np.ndarray, labels: np.ndarray, replicas: int
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The R equal, contiguous shards of a global batch, replica 0 first (the order every
    framework's splitter uses: ``DistributedSampler``-free slicing, ``split_and_load``,
    a sharded leading axis)."""
    n = len(x)
    if replicas < 1 or n % replicas:
        raise ValueError(f"a global batch of {n} examples does not split into {replicas} "
                         "equal shards; give a batch divisible by the number of replicas")
    if n // replicas < 2:
        raise ValueError(f"each of {replicas} replicas would get {n // replicas} example(s); "
                         "train-mode BatchNorm needs at least 2 per replica")
    k = n // replicas
    return [(x[r * k:(r + 1) * k], labels[r * k:(r + 1) * k]) for r in range(replicas)]


def data_parallel_steps(
    spec,
    params: Mapping[str, np.ndarray],
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    replicas: int,
    sync_bn: bool,
    lr: float,
    momentum: float,
    running: str = "replica0",
    reduce: str = "mean",
    dtype: str = "float64",
) -> tuple[list[float], dict[str, np.ndarray]]:
    """K data-parallel SGD-with-momentum steps (PyTorch's update) over ``replicas``
    replicas; returns the loss of each step (the mean of the replicas' losses, before the
    update) and the final canonical parameters with the running statistics."""
    if running not in RUNNING_RULES:
        raise ValueError(f"running must be one of {RUNNING_RULES}, got {running!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    for x, y in batches:
        split_batch(x, y, replicas)  # validate every batch before any work
    if sync_bn and reduce == "mean":
        # the global batch's statistics on every replica: the single-device step
        return reference_grad.train_steps(spec, params, batches, lr=lr, momentum=momentum,
                                          dtype=dtype)
    dt = np.dtype(dtype)
    cur = {k: np.asarray(v, dtype=dt) for k, v in params.items()}
    velocity: dict[str, np.ndarray] = {}
    losses = []
    for x, y in batches:
        if sync_bn:  # reduce == "sum": R times the global batch's gradient
            r = reference_grad.gradients(spec, cur, x, y, train=True, dtype=str(dt))
            grads = {k: g * replicas for k, g in r.params.items()}
            loss, stats = r.loss, r.output.running
        else:
            shards = [reference_grad.gradients(spec, cur, xs, ys, train=True, dtype=str(dt))
                      for xs, ys in split_batch(x, y, replicas)]
            scale = 1.0 / replicas if reduce == "mean" else 1.0
            grads = {k: sum(s.params[k] for s in shards) * scale for k in shards[0].params}
            loss = float(np.mean([s.loss for s in shards]))
            if running == "replica0":
                stats = shards[0].output.running
            else:
                stats = {k: sum(s.output.running[k] for s in shards) / replicas
                         for k in shards[0].output.running}
        losses.append(loss)
        reference_grad.sgd_momentum_update(cur, grads, velocity, lr, momentum)
        cur.update(stats)
    return losses, cur
