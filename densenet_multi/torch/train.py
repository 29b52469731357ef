"""Train a DenseNet the PyTorch way: TensorDataset + DataLoader, SGD with momentum,
cross-entropy, a rich progress bar, train and test accuracy after every epoch.

By default it trains the d2l chapter's network on scikit-learn's digits
upsampled to 32x32 (no download); ``--data fashion-mnist --data-dir DIR``
reads the four Fashion-MNIST IDX files a user has on disk instead::

    densenet-multi train --backend torch --epochs 10
    python -m densenet_multi.torch.train --data fashion-mnist --data-dir ~/fmnist --size 96

The network's input channels and classes follow the data (a preset's 3-channel
ImageNet head is replaced by a 1-channel, 10-class one).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..data import Dataset, EpochResult, add_training_arguments, dataset_from_args, epoch_progress
from ..distributed import fit_data_parallel
from ..spec import get_spec
from .densenet import DenseNet
from .runtime import build, save_checkpoint

__all__ = ["EpochResult", "make_loaders", "train_one_epoch", "evaluate", "fit", "main"]


def make_loaders(data: Dataset, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Shuffled (seeded) training loader and an ordered test loader over numpy arrays."""
    train = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    test = TensorDataset(torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    g = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=g),
            DataLoader(test, batch_size=max(batch_size, 256), shuffle=False))


def train_one_epoch(model: DenseNet, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, progress=None, task=None) -> tuple[float, float]:
    """One pass over ``loader`` in train mode; returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if progress is not None:
            progress.update(task, advance=1, loss=total_loss / seen)
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate(model: DenseNet, loader: DataLoader, device: torch.device) -> float:
    """Accuracy in eval mode (running BatchNorm statistics)."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        seen += len(y)
    return correct / seen


def fit(model: DenseNet, data: Dataset, *, epochs: int, batch_size: int = 64, lr: float = 0.1,
        momentum: float = 0.9, schedule: str = "cosine", seed: int = 0,
        device: str | torch.device = "cpu", show_progress: bool = True, log=print
        ) -> list[EpochResult]:
    """Train ``model`` on ``data`` with SGD + momentum; report and return every epoch.

    ``schedule="cosine"`` anneals the learning rate to 0 over the epochs
    (``CosineAnnealingLR``, stepped per epoch), so the last epochs settle instead
    of bouncing at the full rate; ``"constant"`` keeps ``lr`` (the d2l chapter).
    """
    device = torch.device(device)
    model.to(device)
    train_loader, test_loader = make_loaders(data, batch_size, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
                 if schedule == "cosine" else None)
    history: list[EpochResult] = []
    with epoch_progress(enabled=show_progress) as progress:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            task = progress.add_task("train", total=len(train_loader), epoch=epoch, loss=0.0)
            loss, train_acc = train_one_epoch(model, train_loader, optimizer, device,
                                              progress, task)
            if scheduler is not None:
                scheduler.step()
            test_acc = evaluate(model, test_loader, device)
            progress.remove_task(task)
            r = EpochResult(epoch, loss, train_acc, test_acc, time.perf_counter() - t0)
            history.append(r)
            if log is not None:
                log(r.describe(epochs))
    return history


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="densenet-multi train --backend torch",
                                description="Train a DenseNet with PyTorch on digits or "
                                            "Fashion-MNIST.")
    add_training_arguments(p)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule over the epochs (default cosine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel replicas: DDP over N processes (gloo on CPU), "
                        "synchronised BatchNorm, constant lr (docs/guide/data-parallel.md)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) (1 is fastest on a busy shared CPU)")
    p.add_argument("--save", metavar="CKPT", help="write a canonical .safetensors checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = dataset_from_args(args, parser)
    spec = get_spec(args.preset, in_channels=int(data.x_train.shape[1]),
                    num_classes=data.num_classes)
    model = build(spec, device=args.device, seed=args.seed)
    print(f"{spec.describe()} | {len(data.x_train)} train / {len(data.x_test)} test images of "
          f"{data.x_train.shape[2]}x{data.x_train.shape[3]} | device {args.device}")
    t0 = time.perf_counter()
    if args.devices > 1:
        history = fit_data_parallel("torch", model, data, epochs=args.epochs,
                                    batch_size=args.batch_size, lr=args.lr,
                                    momentum=args.momentum, devices=args.devices, seed=args.seed)
    else:
        history = fit(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      momentum=args.momentum, schedule=args.schedule, seed=args.seed,
                      device=args.device, show_progress=not args.no_progress)
    final = history[-1]
    print(f"final test accuracy {final.test_acc:.4f} after {args.epochs} epochs "
          f"in {time.perf_counter() - t0:.1f} s")
    if args.save:
        path = save_checkpoint(model.cpu(), args.save, overwrite=args.overwrite)
        print(f"saved {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
