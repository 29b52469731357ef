"""Exercise 1: average or max pooling in the transitions? Train both and compare.

The d2l network (``get_spec("d2l")``) is built with the project's PyTorch
backend; the max-pooling variant is the same model with every transition's
``nn.AvgPool2d`` swapped for an ``nn.MaxPool2d`` of the same window, stride and
padding (``spec.transition_pool``). The spec is not changed: the pool has no
parameters, so both variants start from the same seeded weights and see the
same batches in the same order. Each seed trains both with
``densenet_multi.torch.train.fit`` (SGD with momentum, cosine schedule) on
scikit-learn's digits and records every epoch's loss, training accuracy and
test accuracy. Run in the ``torch`` env::

    python -m densenet_multi.exercises.pooling --out docs/exercises
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import load_digits_dataset
from ..spec import get_spec
from ..torch.densenet import DenseNet, Transition
from ..torch.runtime import build
from ..torch.train import fit
from . import command_line, environment, write_json

__all__ = ["VARIANTS", "build_variant", "pooling_layers", "run", "main"]

VARIANTS = ("avg", "max")
#: The documented full run (about 3 minutes on one busy CPU core).
FULL = {"epochs": 5, "seeds": (0, 1), "size": 32, "batch_size": 64, "lr": 0.1}


def pooling_layers(model: DenseNet) -> dict[str, nn.Module]:
    """Every transition's pooling layer, by the transition's module name."""
    return {name: m.pool for name, m in model.named_modules() if isinstance(m, Transition)}


# --8<-- [start:build_variant]
def build_variant(spec: Any, variant: str, *, seed: int = 0) -> DenseNet:
    """The backend's model for ``spec`` with the canonical weights of ``seed``; for
    ``variant="max"`` each transition pools with a max instead of an average, over the
    same window (``spec.transition_pool``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    model = build(spec, seed=seed)
    if variant == "max":
        tp = spec.transition_pool
        for m in model.modules():
            if isinstance(m, Transition):
                m.pool = nn.MaxPool2d(tp.kernel, stride=tp.stride, padding=tp.padding)
    return model
# --8<-- [end:build_variant]


def run(*, epochs: int, seeds: Sequence[int], size: int = 32, batch_size: int = 64,
        lr: float = 0.1, subset: int | None = None, log: Any = print) -> dict[str, Any]:
    """Train both variants for every seed; the result as the JSON the guide reads."""
    if epochs < 1 or not seeds:
        raise ValueError(f"need at least one epoch and one seed, got epochs={epochs}, seeds={seeds}")
    data = load_digits_dataset(size=size, seed=0)
    if subset:
        data = data.subset(subset)
    spec = get_spec("d2l", in_channels=1, num_classes=data.num_classes)
    runs = []
    t_all = time.perf_counter()
    for seed in seeds:
        for variant in VARIANTS:
            torch.manual_seed(seed)
            model = build_variant(spec, variant, seed=seed)
            t0 = time.perf_counter()
            history = fit(model, data, epochs=epochs, batch_size=batch_size, lr=lr,
                          schedule="cosine", seed=seed, show_progress=False, log=None)
            seconds = time.perf_counter() - t0
            runs.append({
                "variant": variant, "seed": seed, "seconds": round(seconds, 2),
                "epoch": [h.epoch for h in history],
                "loss": [round(h.loss, 6) for h in history],
                "train_acc": [round(h.train_acc, 6) for h in history],
                "test_acc": [round(h.test_acc, 6) for h in history],
            })
            if log is not None:
                log(f"seed {seed} {variant}: final loss {history[-1].loss:.4f} test acc "
                    f"{history[-1].test_acc:.4f} ({seconds:.1f} s)")
    return {
        "exercise": "pooling",
        "network": spec.describe(),
        "data": {"name": "scikit-learn digits", "size": size, "train": len(data.x_train),
                 "test": len(data.x_test)},
        "budget": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": 0.9,
                   "schedule": "cosine", "seeds": list(seeds)},
        "threads": torch.get_num_threads(),
        "runs": runs,
        "seconds": round(time.perf_counter() - t_all, 1),
        "environment": environment(["torch", "numpy", "sklearn"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.exercises.pooling",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for pooling.json")
    p.add_argument("--epochs", type=int, default=FULL["epochs"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(FULL["seeds"]))
    p.add_argument("--size", type=int, default=FULL["size"])
    p.add_argument("--batch-size", type=int, default=FULL["batch_size"])
    p.add_argument("--lr", type=float, default=FULL["lr"])
    p.add_argument("--subset", type=int, default=None, help="first N train/test images only")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(epochs=args.epochs, seeds=args.seeds, size=args.size,
                 batch_size=args.batch_size, lr=args.lr, subset=args.subset)
    result["command"] = command_line("pooling", argv)
    path = write_json(result, args.out / "pooling.json")
    print(f"wrote {path} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
