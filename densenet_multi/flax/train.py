"""Train a DenseNet the JAX way: a jitted train step (``nnx.jit``), an optax
optimizer held by ``nnx.Optimizer``, a rich progress bar, and test accuracy
after every epoch.

By default it trains the d2l chapter's network on scikit-learn's digits
upsampled to 32x32 (no download); ``--data fashion-mnist --data-dir DIR``
reads the four Fashion-MNIST IDX files a user has on disk instead::

    densenet-multi train --backend flax --epochs 10
    python -m densenet_multi.flax.train --data fashion-mnist --data-dir ~/fmnist --size 96

The network's input channels and classes follow the data. Batches have one
fixed shape, so each step function compiles once: the training loop drops
the last incomplete batch of each (reshuffled) epoch, and evaluation pads the
last batch and ignores the padding.

:func:`fit`, :func:`train_one_epoch` and :func:`evaluate` also train a float64
model (``build(spec, dtype="float64")``): they run it under
``jax.enable_x64(True)`` as the contract functions do. The jitted
:func:`train_step` / :func:`eval_step` called directly on a float64 model need
JAX's 64-bit mode on (``JAX_ENABLE_X64=1``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..data import (
    Dataset,
    EpochResult,
    add_training_arguments,
    dataset_from_args,
    epoch_progress,
    iterate_minibatches,
)
from ..distributed import fit_data_parallel
from ..layouts import nchw_to_nhwc
from ..spec import get_spec
from ._x64 import in_model_dtype
from .densenet import DenseNet
from .runtime import build, cross_entropy, make_optimizer, resolve_device, save_checkpoint

__all__ = ["EpochResult", "train_step", "eval_step", "train_one_epoch", "evaluate", "fit", "main"]


@nnx.jit
def train_step(model: DenseNet, optimizer: nnx.Optimizer, x: jax.Array,
               y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One SGD step in training mode; returns (loss, number of correct predictions)."""

    def loss_fn(model: DenseNet) -> tuple[jax.Array, jax.Array]:
        logits = model(x)
        return cross_entropy(logits, y), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)  # also carries the BN running statistics forward
    return loss, jnp.sum(jnp.argmax(logits, -1) == y)


@nnx.jit
def eval_step(model: DenseNet, x: jax.Array, y: jax.Array, valid: jax.Array) -> jax.Array:
    """Correct predictions among the ``valid`` rows of a (padded) batch, eval mode."""
    return jnp.sum((jnp.argmax(model(x), -1) == y) & valid)


def _nhwc(x: np.ndarray, device: jax.Device) -> jax.Array:
    return jax.device_put(nchw_to_nhwc(x), device)


@in_model_dtype
def train_one_epoch(model: DenseNet, optimizer: nnx.Optimizer, data: Dataset, batch_size: int,
                    *, seed: int, epoch: int, device: jax.Device, progress=None,
                    task=None) -> tuple[float, float]:
    """One reshuffled pass over the full training batches; returns (mean loss, accuracy)."""
    model.train()
    n = len(data.x_train)
    total_loss, correct, seen = 0.0, 0, 0
    for idx in iterate_minibatches(n, batch_size, shuffle=True, seed=seed, epoch=epoch):
        if len(idx) < batch_size and seen:  # keep one batch shape: one compilation
            break
        x, y = _nhwc(data.x_train[idx], device), jax.device_put(data.y_train[idx], device)
        loss, ok = train_step(model, optimizer, x, y)
        total_loss += float(loss) * len(idx)
        correct += int(ok)
        seen += len(idx)
        if progress is not None:
            progress.update(task, advance=1, loss=total_loss / seen)
    return total_loss / seen, correct / seen


@in_model_dtype
def evaluate(model: DenseNet, x_all: np.ndarray, y_all: np.ndarray, batch_size: int = 256,
             *, device: jax.Device | None = None) -> float:
    """Accuracy in eval mode (running BatchNorm statistics)."""
    model.eval()
    correct = 0
    for i in range(0, len(x_all), batch_size):
        x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]
        pad = batch_size - len(x)
        valid = np.arange(batch_size) < len(x)
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        y = np.concatenate([y, np.zeros(pad, y.dtype)]) if pad else y
        correct += int(eval_step(model, _nhwc(x, device), jax.device_put(y, device),
                                 jax.device_put(valid, device)))
    return correct / len(x_all)


@in_model_dtype
def fit(model: DenseNet, data: Dataset, *, epochs: int, batch_size: int = 64, lr: float = 0.1,
        momentum: float = 0.9, seed: int = 0, device: jax.Device | None = None,
        show_progress: bool = True, log=print) -> list[EpochResult]:
    """Train ``model`` on ``data`` with optax SGD + momentum (:func:`~.runtime.make_optimizer`); report
    and return every epoch."""
    device = device or resolve_device(None)
    batch_size = min(batch_size, len(data.x_train))
    optimizer = make_optimizer(model, lr, momentum)
    steps = len(data.x_train) // batch_size
    eval_batch = min(256, len(data.x_test))
    history: list[EpochResult] = []
    with epoch_progress(enabled=show_progress) as progress:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            task = progress.add_task("train", total=steps, epoch=epoch, loss=0.0)
            loss, train_acc = train_one_epoch(model, optimizer, data, batch_size, seed=seed,
                                              epoch=epoch, device=device, progress=progress,
                                              task=task)
            test_acc = evaluate(model, data.x_test, data.y_test, eval_batch, device=device)
            progress.remove_task(task)
            r = EpochResult(epoch, loss, train_acc, test_acc, time.perf_counter() - t0)
            history.append(r)
            if log is not None:
                log(r.describe(epochs))
    return history


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="densenet-multi train --backend flax",
                                description="Train a DenseNet with Flax NNX + optax on digits "
                                            "or Fashion-MNIST.")
    add_training_arguments(p)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: JAX's default device)")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel replicas: shard_map over N devices (host devices on "
                        "CPU), synchronised BatchNorm, constant lr (docs/guide/data-parallel.md)")
    p.add_argument("--save", metavar="CKPT", help="write a canonical .safetensors checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    data = dataset_from_args(args, parser)
    spec = get_spec(args.preset, in_channels=int(data.x_train.shape[1]),
                    num_classes=data.num_classes)
    if args.devices > 1:  # JAX's host devices: fixed when its CPU backend starts
        jax.config.update("jax_num_cpu_devices", args.devices)
    device = resolve_device(args.device)
    model = build(spec, device=device, seed=args.seed)
    print(f"{spec.describe()} | {len(data.x_train)} train / {len(data.x_test)} test images of "
          f"{data.x_train.shape[2]}x{data.x_train.shape[3]} | device {device}")
    t0 = time.perf_counter()
    if args.devices > 1:
        history = fit_data_parallel("flax", model, data, epochs=args.epochs,
                                    batch_size=args.batch_size, lr=args.lr,
                                    momentum=args.momentum, devices=args.devices, seed=args.seed)
    else:
        history = fit(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      momentum=args.momentum, seed=args.seed, device=device,
                      show_progress=not args.no_progress)
    final = history[-1]
    print(f"final test accuracy {final.test_acc:.4f} after {args.epochs} epochs "
          f"in {time.perf_counter() - t0:.1f} s")
    if args.save:
        print(f"saved {save_checkpoint(model, args.save, overwrite=args.overwrite)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
