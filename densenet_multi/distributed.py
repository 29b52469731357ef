"""``--devices N`` of the training entry points: epochs of data-parallel SGD on a backend's
own engine (``densenet_multi.<backend>.distributed.data_parallel_steps``), synchronised
BatchNorm, then the test accuracy through the backend contract.

One loop for the four backends (each ``train.py`` calls it with its name). Each epoch
is one call of ``data_parallel_steps`` over the epoch's shuffled global batches (the
last, incomplete batch is dropped, and the batch size must split evenly across the
replicas), so the optimizer's momentum starts afresh every epoch, unlike the
single-device loops; the learning rate is constant. See docs/guide/data-parallel.md.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .backend import BACKENDS, load_backend
from .data import Dataset, EpochResult
from .reference_dp import split_batch
from .spec import DenseNetSpec, check_input_dtype, check_input_shape, check_labels

__all__ = ["check_batches", "epoch_batches", "fit_data_parallel"]


def check_batches(spec: DenseNetSpec, batches: Sequence[tuple[Any, Any]], devices: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every ``(x, labels)`` global batch of a data-parallel run checked before any
    replica starts (a clear error here, not in a replica): the input's dtype and NCHW
    shape, the labels, and a split into ``devices`` equal shards. Returns them as numpy."""
    if devices < 2:
        raise ValueError(f"data parallelism needs at least 2 devices, got devices={devices}")
    out = []
    for x, labels in batches:
        x = np.asarray(x)
        check_input_dtype(x.dtype)
        check_input_shape(spec, x.shape, "NCHW")
        y = check_labels(labels, len(x), spec.num_classes)
        split_batch(x, y, devices)
        out.append((x, y))
    return out


def epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int, replicas: int,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch's shuffled global batches of ``batch_size``, each divisible into
    ``replicas`` equal shards (the last, incomplete batch dropped)."""
    if batch_size % replicas:
        raise ValueError(f"--batch-size {batch_size} does not split across {replicas} devices; "
                         f"use a multiple of {replicas}")
    order = rng.permutation(len(x))
    batches = [(x[order[i:i + batch_size]], y[order[i:i + batch_size]])
               for i in range(0, len(x) - batch_size + 1, batch_size)]
    for bx, by in batches:
        split_batch(bx, by, replicas)
    if not batches:
        raise ValueError(f"{len(x)} training images make no batch of {batch_size}")
    return batches


def _accuracy(be: Any, model: Any, x: np.ndarray, y: np.ndarray, chunk: int = 256) -> float:
    right = sum(int((be.run(model, x[i:i + chunk]).logits.argmax(1) == y[i:i + chunk]).sum())
                for i in range(0, len(x), chunk))
    return right / len(x)


def fit_data_parallel(backend: str, model: Any, data: Dataset, *, epochs: int, batch_size: int,
                      lr: float, momentum: float, devices: int, seed: int = 0,
                      log: Callable[[str], Any] | None = print) -> list[EpochResult]:
    """Train ``model`` (a ``backend`` model, updated in place) for ``epochs`` epochs of
    data-parallel SGD over ``devices`` replicas with synchronised BatchNorm."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")
    be = load_backend(backend)
    dist = importlib.import_module(f"{BACKENDS[backend][0]}.distributed")
    rng = np.random.Generator(np.random.PCG64(seed))
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        params = be.export_canonical(model)
        dtype = str(next(iter(params.values())).dtype)
        batches = epoch_batches(data.x_train, data.y_train, batch_size, devices, rng)
        losses, trainable, running = dist.data_parallel_steps(
            model.spec, params, batches, devices=devices, sync_bn=True, lr=lr,
            momentum=momentum, dtype=dtype)
        be.load_canonical(model, {**trainable, **running})
        r = EpochResult(epoch, float(np.mean(losses)),
                        _accuracy(be, model, data.x_train, data.y_train),
                        _accuracy(be, model, data.x_test, data.y_test), time.perf_counter() - t0)
        history.append(r)
        if log is not None:
            log(r.describe(epochs) + f"  [{devices} devices]")
    return history
