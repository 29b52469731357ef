"""Small helpers the four teaching notebooks share (NumPy and matplotlib only).

The notebooks in ``notebooks/`` walk the d2l.ai DenseNet chapter cell for cell the
same in every framework; what differs is only the framework code. The printing,
the comparisons with the NumPy reference and the plot live here, so that every
notebook prints the same lines, which ``tests/<fw>/test_<fw>_notebook.py`` parse:

* a part:          ``conv block: (4, 3, 8, 8) -> (4, 10, 8, 8)`` (NCHW shapes);
* a shape table:   ``stage shapes at 96x96 (N, C, H, W)``, a header line, then
  ``<stage> <channels> <H> <W>`` per stage (``-`` for the 1-d stages);
* a stage:         ``eval    block1       rel err 1.23e-07  tol 1e-05  ok``;
* running stats:   ``running 42 statistics, worst rel err 4.56e-08 (...)  tol 1e-05``;
* an epoch:        ``epoch 1  train loss 1.2345  train acc 0.5000  test acc 0.6000``;
* the result:      ``final test accuracy 0.9500 (floor 0.80)``.

Nothing here imports a framework: the notebook hands over shapes and NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import DenseNetSpec
from ..testing import compare, tolerance

__all__ = ["HISTORY_KEYS", "nchw", "show_part", "shape_table", "check_stages", "check_running",
           "new_history", "record_epoch", "plot_history", "check_floor"]

#: the keys of a notebook's ``history`` dict (lists, one entry per epoch)
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_acc")


def nchw(shape: Sequence[int], layout: str = "NCHW") -> tuple[int, ...]:
    """A shape as (N, C, H, W): ``layout`` is "NCHW" (kept) or "NHWC" (moved); 2-d kept."""
    shape = tuple(int(s) for s in shape)
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if len(shape) == 4 and layout == "NHWC":
        n, h, w, c = shape
        return (n, c, h, w)
    return shape


def show_part(label: str, x_shape: Sequence[int], y_shape: Sequence[int],
              expected: Sequence[int]) -> None:
    """Print ``label: x -> y`` (NCHW) and assert ``y`` is ``expected``."""
    x, y = tuple(int(s) for s in x_shape), tuple(int(s) for s in y_shape)
    print(f"{label}: {x} -> {y}")
    assert y == tuple(expected), f"{label}: got {y}, expected {tuple(expected)}"


def shape_table(spec: DenseNetSpec, height: int, shapes: Mapping[str, Sequence[int]]) -> None:
    """Print the (N, C, H, W) shape of every stage, in the network's order, as a table
    and assert each equals ``spec.stage_shapes(height)`` (the batch dimension aside)."""
    expected = spec.stage_shapes(height)
    if set(shapes) != set(expected):
        raise AssertionError(f"stages {sorted(shapes)} != the spec's {sorted(expected)}")
    print(f"stage shapes at {height}x{height} (N, C, H, W)")
    print(f"{'stage':12s} {'channels':>8s} {'H':>5s} {'W':>5s}")
    wrong = []
    for name in expected:  # in the network's order
        shape = tuple(int(s) for s in shapes[name])
        c, *hw = shape[1:]
        h, w = (str(v) for v in hw) if hw else ("-", "-")
        print(f"{name:12s} {c:8d} {h:>5s} {w:>5s}")
        if shape[1:] != expected[name]:
            wrong.append(f"{name}: {shape[1:]} != spec {expected[name]}")
    print()
    assert not wrong, "; ".join(wrong)


def check_stages(check: str, ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                 names: Sequence[str]) -> None:
    """Print every stage's error against the reference (``max|a-b| / max|b|``), then
    assert each is within ``tolerance(check, "float32")``."""
    tol = tolerance(check, "float32")
    failed = []
    for name in names:
        c = compare(name, ours[name], ref[name], tol)
        print(f"{check:7s} {name:12s} rel err {c.rel:.2e}  tol {tol:.0e}  {'ok' if c.ok else 'FAIL'}")
        if not c.ok:
            failed.append(str(c))
    assert not failed, f"{check}: " + "; ".join(failed)


def check_running(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> None:
    """The updated BatchNorm running statistics against the reference: print the worst,
    assert all within ``tolerance("running", "float32")``."""
    if set(ours) != set(ref):
        raise AssertionError(f"running statistics differ in names: {sorted(set(ours) ^ set(ref))}")
    tol = tolerance("running", "float32")
    results = [compare(k, ours[k], ref[k], tol) for k in sorted(ref)]
    worst = max(results, key=lambda c: c.rel)
    print(f"running {len(results)} statistics, worst rel err {worst.rel:.2e} ({worst.name})  "
          f"tol {tol:.0e}")
    assert all(c.ok for c in results), "; ".join(str(c) for c in results if not c.ok)


def new_history() -> dict[str, list[Any]]:
    """An empty training history: ``{"epoch": [], "train_loss": [], ...}``."""
    return {k: [] for k in HISTORY_KEYS}


def record_epoch(history: dict[str, list[Any]], epoch: int, train_loss: float,
                 train_acc: float, test_acc: float) -> None:
    """Append one epoch (as plain Python numbers, so the history is JSON) and print it."""
    values = (int(epoch), float(train_loss), float(train_acc), float(test_acc))
    for key, value in zip(HISTORY_KEYS, values, strict=True):
        history[key].append(value)
    print(f"epoch {values[0]}  train loss {values[1]:.4f}  train acc {values[2]:.4f}  "
          f"test acc {values[3]:.4f}")


def _validated(history: Mapping[str, Sequence[Any]]) -> int:
    missing = [k for k in HISTORY_KEYS if k not in history]
    if missing:
        raise ValueError(f"history lacks {missing}; it needs {list(HISTORY_KEYS)}")
    lengths = {k: len(history[k]) for k in HISTORY_KEYS}
    if len(set(lengths.values())) != 1 or not lengths["epoch"]:
        raise ValueError(f"history needs one entry per epoch in every list, got lengths {lengths}")
    return lengths["epoch"]


def plot_history(history: Mapping[str, Sequence[float]], title: str):
    """A two-panel figure: training loss, and train/test accuracy, per epoch."""
    import matplotlib.pyplot as plt  # the notebook chose the (inline) backend

    _validated(history)
    epochs = history["epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    ax_loss.plot(epochs, history["train_loss"], "o-", color="tab:blue")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.plot(epochs, history["train_acc"], "o-", label="train (train mode)")
    ax_acc.plot(epochs, history["test_acc"], "s--", label="test (eval mode)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.set_xticks(list(epochs))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def check_floor(history: Mapping[str, Sequence[float]], floor: float) -> None:
    """Print the last epoch's test accuracy and assert it reaches ``floor``."""
    _validated(history)
    acc = float(history["test_acc"][-1])
    print(f"final test accuracy {acc:.4f} (floor {floor:.2f})")
    assert acc >= floor, f"test accuracy {acc:.4f} is below the floor {floor}"
