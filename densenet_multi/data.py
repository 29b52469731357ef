"""Data for the training entry points: offline digits, and a Fashion-MNIST IDX reader.

* :func:`load_digits_dataset` -- scikit-learn's bundled 8x8 digits (1,797
  images, no download), upsampled to ``size x size`` with bilinear
  interpolation, standardised, split into train/test with a fixed seed. Every
  backend trains on exactly these arrays.
* :func:`read_idx` / :func:`load_fashion_mnist` -- the IDX format of
  (Fashion-)MNIST, plain or gzipped, for files a user has on disk.

Arrays are NCHW float32 images and int64 labels.
"""

from __future__ import annotations

import argparse
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Dataset", "load_digits_dataset", "read_idx", "load_fashion_mnist", "resize_bilinear",
           "iterate_minibatches", "add_training_arguments", "dataset_from_args", "EpochResult",
           "epoch_progress"]


@dataclass
class EpochResult:
    """One epoch of a training entry point, as the torch and flax loops report it."""

    epoch: int
    loss: float  # mean training loss over the epoch
    train_acc: float  # accuracy on the training batches as they were trained on
    test_acc: float
    seconds: float

    def describe(self, epochs: int) -> str:
        return (f"epoch {self.epoch:3d}/{epochs}  loss {self.loss:.4f}  train acc "
                f"{self.train_acc:.4f}  test acc {self.test_acc:.4f}  ({self.seconds:.1f} s)")


def epoch_progress(*, enabled: bool = True, transient: bool = True, console: Any = None) -> Any:
    """The rich progress bar the training loops show: one task per epoch, with its
    ``epoch`` and running ``loss`` fields (``progress.add_task("train", total=steps,
    epoch=..., loss=0.0)``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                    disable=not enabled, transient=transient, console=console)


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def subset(self, n_train: int, n_test: int | None = None) -> Dataset:
        n_test = n_train if n_test is None else n_test
        return Dataset(self.x_train[:n_train], self.y_train[:n_train],
                       self.x_test[:n_test], self.y_test[:n_test], self.num_classes)


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Resize an (N, C, H, W) batch to (N, C, size, size), bilinear, align_corners=False."""
    n, c, h, w = x.shape

    def coords(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(size) + 0.5) * (src / size) - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo)

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    top = x[:, :, y0, :] * (1 - fy)[None, None, :, None] + x[:, :, y1, :] * fy[None, None, :, None]
    out = top[:, :, :, x0] * (1 - fx) + top[:, :, :, x1] * fx
    return out.astype(x.dtype)


def load_digits_dataset(size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, 1 channel, upsampled to ``size``, standardised, split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the backend extras install it
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'densenet-multi[data]'"
        ) from e
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    x = resize_bilinear(x, size)
    y = d.target.astype(np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = ((x - mean) / std).astype(np.float32)
    return Dataset(x[train], y[train], x[test], y[test], num_classes=10)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the (Fashion-)MNIST format), optionally gzipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file: expected magic bytes 00 00, got {data[:2]!r}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(
            f"{path}: header says shape {tuple(dims)} ({expected} bytes), file has {len(body)} "
            "bytes (truncated?)"
        )
    return np.frombuffer(body, dtype=dtype).reshape(tuple(dims)).astype(dtype.newbyteorder("="))


def load_fashion_mnist(root: str | os.PathLike, size: int = 28) -> Dataset:
    """Fashion-MNIST from the four IDX files in ``root`` (as distributed, ``.gz`` or not),
    scaled to [0, 1], resized to ``size`` (d2l uses 96), standardised with the training mean/std."""
    root = Path(root)
    names = {
        "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, stem in names.items():
        for cand in (root / stem, root / f"{stem}.gz"):
            if cand.exists():
                arrays[key] = read_idx(cand)
                break
        else:
            raise FileNotFoundError(f"{root} has no {stem} or {stem}.gz")
    out = {}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"].astype(np.float32)[:, None] / 255.0
        if x.shape[-1] != size:
            x = resize_bilinear(x, size)
        out[f"x_{split}"] = x
        out[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int64)
    mean, std = out["x_train"].mean(), out["x_train"].std()
    for split in ("train", "test"):
        out[f"x_{split}"] = ((out[f"x_{split}"] - mean) / std).astype(np.float32)
    return Dataset(num_classes=10, **out)


def iterate_minibatches(n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0):
    """Index arrays of the minibatches of one epoch (for frameworks without a DataLoader)."""
    idx = np.arange(n)
    if shuffle:
        idx = np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)
    for i in range(0, n, batch_size):
        yield idx[i:i + batch_size]


def add_training_arguments(parser: argparse.ArgumentParser, *, epochs: int = 10,
                           batch_size: int = 64, lr: float = 0.1) -> argparse.ArgumentParser:
    """The options every backend's ``densenet-multi train`` entry point shares, so the four
    command lines read alike; each backend adds its own (device, progress, saving)."""
    from .spec import PRESETS

    p = parser
    p.add_argument("--preset", default="d2l", choices=sorted(PRESETS),
                   help="network preset (its input channels and classes follow the data)")
    p.add_argument("--epochs", type=_positive, default=epochs)
    p.add_argument("--batch-size", type=_positive, default=batch_size)
    p.add_argument("--lr", type=float, default=lr, help="learning rate of SGD with momentum")
    p.add_argument("--data", choices=("digits", "fashion-mnist"), default="digits",
                   help="scikit-learn's bundled digits (offline), or Fashion-MNIST IDX files")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX files (.gz or not)")
    p.add_argument("--size", type=_positive, default=None,
                   help="input size (default 32; the d2l "
                        "chapter resizes Fashion-MNIST to 96; the d2l net needs at least 29)")
    p.add_argument("--subset", type=_positive, default=None, metavar="N",
                   help="use only the first N training and N test examples (a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def dataset_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Dataset:
    """The data set :func:`add_training_arguments` describes (NCHW float32, int64 labels)."""
    if args.data == "digits":
        data = load_digits_dataset(size=args.size or 32, seed=args.seed)
    else:
        if not args.data_dir:
            parser.error("--data fashion-mnist needs --data-dir (nothing is downloaded)")
        data = load_fashion_mnist(args.data_dir, size=args.size or 32)
    return data.subset(args.subset) if args.subset else data
