"""What an executed teaching notebook must show, checked against the spec and the
tolerance table (never against the notebook's own asserts). One set of checks for the
four notebooks: each backend's ``tests/<fw>/test_<fw>_notebook.py`` executes its
notebook (:func:`execute`) and calls these, with its own measured accuracy floor.

Each check raises :class:`AssertionError` with what it expected and what the notebook
printed (explicit raises, not ``assert``: they hold under ``python -O`` too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..params import init_params
from ..spec import get_spec
from ..testing import tolerance
from . import notebooks

__all__ = ["Executed", "execute", "parts", "shape_tables", "stage_errors", "training", "fingerprint"]

#: Where the tests write the executed notebooks: the guide's build reuses them.
OUT = notebooks.SOURCE_ROOT / "docs" / "generated" / "notebooks"
SPEC = get_spec("d2l")
#: The chapter's examples: (input, output) of each part, NCHW.
PARTS = {
    "conv block": ((4, 3, 8, 8), (4, 10, 8, 8)),
    "dense block": ((4, 3, 8, 8), (4, 23, 8, 8)),  # 3 + 2 x 10 channels
    "transition": ((4, 23, 8, 8), (4, 10, 4, 4)),  # 10 channels, half the size
}
#: (channels, height) after each block and transition at 224x224, as the issue states them.
AT_224 = {"block1": (192, 56), "transition1": (96, 28), "block2": (224, 28),
          "transition2": (112, 14), "block3": (240, 14), "transition3": (120, 7),
          "block4": (248, 7)}


@dataclass(frozen=True)
class Executed:
    backend: str
    path: Path
    report: notebooks.NotebookReport
    sources: str  # the fingerprint of the sources before the run


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def execute(backend: str, out_dir: Path = OUT) -> Executed:
    """Execute ``backend``'s notebook in this interpreter, into ``out_dir``."""
    sources = notebooks.fingerprint(backend)
    path = notebooks.execute(backend, out_dir)
    return Executed(backend, path, notebooks.read_report(path), sources)


def parts(ex: Executed) -> None:
    """The conv block, the 2-layer growth-10 dense block and the transition to 10."""
    r = ex.report
    _expect(r.errors_raised == [], f"{ex.backend}: the notebook raised {r.errors_raised}")
    _expect(r.parts == PARTS, f"{ex.backend}: parts {r.parts}, expected {PARTS}")


def shape_tables(ex: Executed) -> None:
    """The network's shape tables at 96x96 and 224x224 equal the spec's."""
    tables = ex.report.shape_tables
    _expect(sorted(tables) == [96, 224], f"{ex.backend}: shape tables at {sorted(tables)}, "
                                         "expected 96 and 224")
    for size, table in tables.items():
        expected = SPEC.stage_shapes(size)
        _expect(table == expected, f"{ex.backend}: at {size}x{size} {table}, the spec says {expected}")
    got = {s: tables[224][s][:2] for s in AT_224}
    _expect(got == AT_224, f"{ex.backend}: at 224x224 {got}, expected {AT_224}")


def stage_errors(ex: Executed) -> None:
    """Every stage in eval and train mode, and every running statistic, within tolerance."""
    r = ex.report
    wanted = {(c, s) for c in ("eval", "train") for s in SPEC.stage_names}
    _expect(set(r.errors) == wanted, f"{ex.backend}: compared {sorted(r.errors)}, "
                                     f"expected every stage in both modes")
    for (check, stage), err in r.errors.items():
        tol = tolerance(check, "float32")
        _expect(err <= tol, f"{ex.backend}: {check} {stage} rel err {err:g} > tolerance {tol:g}")
    n_running = sum(k.endswith((".running_mean", ".running_var")) for k in init_params(SPEC))
    _expect(r.running is not None, f"{ex.backend}: no running statistics compared")
    count, worst = r.running
    tol = tolerance("running", "float32")
    _expect(count == n_running and worst <= tol,
            f"{ex.backend}: {count} running statistics (expected {n_running}), worst {worst:g} "
            f"(tolerance {tol:g})")


def training(ex: Executed, accuracy_floor: float) -> None:
    """One history entry and one printed line per epoch, a figure, the accuracy floor."""
    r = ex.report
    history = json.loads(ex.path.with_name(f"{ex.backend}_history.json").read_text())
    n = len(history["epoch"])
    _expect(history["backend"] == ex.backend and n >= 1, f"{ex.backend}: history {history}")
    _expect(history["epoch"] == list(range(1, n + 1)), f"{ex.backend}: epochs {history['epoch']}")
    _expect(all(len(history[k]) == n for k in ("train_loss", "train_acc", "test_acc")),
            f"{ex.backend}: history lists of unequal length: {history}")
    _expect([e[0] for e in r.epochs] == history["epoch"],
            f"{ex.backend}: printed epochs {[e[0] for e in r.epochs]}, history {history['epoch']}")
    final = history["test_acc"][-1]
    _expect(r.final_accuracy is not None and abs(final - r.final_accuracy) <= 1e-4,
            f"{ex.backend}: printed test accuracy {r.final_accuracy}, history {final}")
    _expect(final >= accuracy_floor, f"{ex.backend}: test accuracy {final} < floor {accuracy_floor}")
    _expect(r.images >= 1, f"{ex.backend}: no figure (image/png output) in the notebook")


def fingerprint(ex: Executed) -> None:
    """The outputs carry the fingerprint of the sources they ran, so that the guide's
    build (``notebooks.ensure_executed``) reuses them instead of running again."""
    written = ex.path.with_name(f"{ex.backend}_densenet.fingerprint").read_text().strip()
    _expect(written == ex.sources, f"{ex.backend}: fingerprint {written}, sources {ex.sources}")
