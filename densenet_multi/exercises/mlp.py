"""Exercise 5: DenseNet's connectivity in an MLP, on a small regression task.

:class:`DenseMLP` is a stack of fully connected layers in which layer ``l``
sees the concatenation of the input and the outputs of layers ``1 .. l-1``
(``growth`` units each, ReLU), and the linear output layer sees the input and
every layer's output: a dense block made of ``nn.Linear``. :class:`PlainMLP`
has the same number of hidden layers, each seeing only the one before, with
the width whose parameter count is nearest the dense one's
(:func:`matching_width`).

The data is scikit-learn's bundled ``load_diabetes`` (442 patients, 10
features, a disease-progression score; no download), split 80/20 afresh for
every seed; features and target are standardised with the training split's
statistics. Both models train with the same optimiser (Adam), batch size,
number of epochs, split, batch order and seed; the test MSE is reported in the
target's own units after the last epoch, with an ordinary least-squares fit on
the same split for scale. Run in the ``torch`` env::

    python -m densenet_multi.exercises.mlp --out docs/exercises
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import command_line, environment, write_json

__all__ = ["DenseMLP", "PlainMLP", "count_params", "matching_width", "load_split", "train",
           "run", "main"]

#: The documented full run (about 1.5 minutes on one busy core).
FULL = {"depths": (2, 4, 8), "growth": 16, "seeds": tuple(range(10)), "epochs": 40,
        "batch_size": 32, "lr": 1e-3}


# --8<-- [start:dense_mlp]
class DenseMLP(nn.Module):
    """``depth`` layers of ``growth`` units; each sees the input and every earlier output."""

    def __init__(self, in_features: int, growth: int, depth: int) -> None:
        super().__init__()
        if in_features < 1 or growth < 1 or depth < 1:
            raise ValueError(f"need in_features, growth and depth >= 1, got {in_features}, "
                             f"{growth}, {depth}")
        self.layers = nn.ModuleList(nn.Linear(in_features + i * growth, growth)
                                    for i in range(depth))
        self.head = nn.Linear(in_features + depth * growth, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(F.relu(layer(torch.cat(features, dim=1))))
        return self.head(torch.cat(features, dim=1)).squeeze(1)
# --8<-- [end:dense_mlp]


class PlainMLP(nn.Module):
    """``depth`` layers of ``width`` units, each seeing only the one before."""

    def __init__(self, in_features: int, width: int, depth: int) -> None:
        super().__init__()
        if in_features < 1 or width < 1 or depth < 1:
            raise ValueError(f"need in_features, width and depth >= 1, got {in_features}, "
                             f"{width}, {depth}")
        self.layers = nn.ModuleList(nn.Linear(in_features if i == 0 else width, width)
                                    for i in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plain_params(in_features: int, width: int, depth: int) -> int:
    """Parameters of a :class:`PlainMLP`, without building it."""
    return (in_features + 1) * width + (depth - 1) * (width + 1) * width + width + 1


def matching_width(in_features: int, depth: int, target: int) -> int:
    """The plain MLP width whose parameter count is nearest ``target`` (the narrower on a tie)."""
    if target < plain_params(in_features, 1, depth):
        raise ValueError(f"a {depth}-layer plain MLP has at least "
                         f"{plain_params(in_features, 1, depth)} parameters; target {target} is less")
    width = 1
    while plain_params(in_features, width + 1, depth) <= target:
        width += 1
    below, above = plain_params(in_features, width, depth), plain_params(in_features, width + 1, depth)
    return width if target - below <= above - target else width + 1


def load_split(seed: int, test_fraction: float = 0.2) -> dict[str, Any]:
    """load_diabetes split by ``seed``, standardised with the training statistics."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, tr = order[:n_test], order[n_test:]
    mx, sx = x[tr].mean(0), x[tr].std(0)
    my, sy = y[tr].mean(), y[tr].std()
    f32 = np.float32
    return {"x_train": ((x[tr] - mx) / sx).astype(f32), "y_train": ((y[tr] - my) / sy).astype(f32),
            "x_test": ((x[test] - mx) / sx).astype(f32), "y_test": ((y[test] - my) / sy).astype(f32),
            "y_std": float(sy)}


def least_squares_mse(split: dict[str, Any]) -> float:
    """Test MSE (target units) of an ordinary least-squares fit with intercept."""
    a = np.c_[split["x_train"].astype(np.float64), np.ones(len(split["x_train"]))]
    w, *_ = np.linalg.lstsq(a, split["y_train"].astype(np.float64), rcond=None)
    pred = np.c_[split["x_test"].astype(np.float64), np.ones(len(split["x_test"]))] @ w
    return float(np.mean((pred - split["y_test"]) ** 2) * split["y_std"] ** 2)


def train(model: nn.Module, split: dict[str, Any], *, epochs: int, batch_size: int, lr: float,
          seed: int) -> dict[str, list[float]]:
    """Adam on the MSE; the train and test MSE (target units) after every epoch."""
    xtr, ytr = torch.from_numpy(split["x_train"]), torch.from_numpy(split["y_train"])
    xte, yte = torch.from_numpy(split["x_test"]), torch.from_numpy(split["y_test"])
    scale = split["y_std"] ** 2
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"train_mse": [], "test_mse": []}
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=g).split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            hist["train_mse"].append(round(float(F.mse_loss(model(xtr), ytr)) * scale, 3))
            hist["test_mse"].append(round(float(F.mse_loss(model(xte), yte)) * scale, 3))
    return hist


def run(*, depths: Sequence[int], growth: int, seeds: Sequence[int], epochs: int,
        batch_size: int, lr: float, log: Any = print) -> dict[str, Any]:
    if not depths or not seeds or epochs < 1:
        raise ValueError(f"need depths, seeds and epochs >= 1, got {depths}, {seeds}, {epochs}")
    t_all = time.perf_counter()
    in_features = load_split(0)["x_train"].shape[1]
    configs = []
    for depth in depths:
        dense_n = count_params(DenseMLP(in_features, growth, depth))
        width = matching_width(in_features, depth, dense_n)
        configs.append({"depth": depth, "growth": growth, "dense_params": dense_n,
                        "plain_width": width, "plain_params": plain_params(in_features, width, depth),
                        "runs": []})
    baseline = []
    for seed in seeds:
        split = load_split(seed)
        baseline.append(round(least_squares_mse(split), 3))
        for cfg in configs:
            for kind in ("dense", "plain"):
                torch.manual_seed(seed)
                model = (DenseMLP(in_features, growth, cfg["depth"]) if kind == "dense"
                         else PlainMLP(in_features, cfg["plain_width"], cfg["depth"]))
                assert count_params(model) == cfg[f"{kind}_params"]
                hist = train(model, split, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
                cfg["runs"].append({"model": kind, "seed": seed, **hist})
        if log is not None:
            finals = ", ".join(f"depth {c['depth']}: dense {c['runs'][-2]['test_mse'][-1]:.0f} "
                               f"plain {c['runs'][-1]['test_mse'][-1]:.0f}" for c in configs)
            log(f"seed {seed}: least squares {baseline[-1]:.0f}; {finals}")
    return {
        "exercise": "mlp",
        "data": {"name": "scikit-learn load_diabetes", "samples": 442, "features": in_features,
                 "test_fraction": 0.2, "split": "a fresh 80/20 split per seed"},
        "budget": {"optimizer": "Adam", "lr": lr, "batch_size": batch_size, "epochs": epochs,
                   "seeds": list(seeds)},
        "least_squares_test_mse": baseline,
        "configs": configs,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t_all, 1),
        "environment": environment(["torch", "numpy", "sklearn"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.exercises.mlp",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for mlp.json")
    p.add_argument("--depths", type=int, nargs="+", default=list(FULL["depths"]))
    p.add_argument("--growth", type=int, default=FULL["growth"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(FULL["seeds"]))
    p.add_argument("--epochs", type=int, default=FULL["epochs"])
    p.add_argument("--batch-size", type=int, default=FULL["batch_size"])
    p.add_argument("--lr", type=float, default=FULL["lr"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(depths=args.depths, growth=args.growth, seeds=args.seeds, epochs=args.epochs,
                 batch_size=args.batch_size, lr=args.lr)
    result["command"] = command_line("mlp", argv)
    path = write_json(result, args.out / "mlp.json")
    print(f"wrote {path} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
