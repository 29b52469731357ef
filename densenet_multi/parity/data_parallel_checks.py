"""The data-parallel checks every backend's tests run (``tests/<backend>/test_*_distributed.py``).

One tiny DenseNet-BC trained K = 2 steps on a global batch of 8 split over 2 replicas, by
the backend's worker started as the harness starts it (:mod:`.data_parallel`), held to
single-device training and to the NumPy reference's per-replica prediction; and two
wrong predictions (a sum all-reduce, the other running-statistics rule) that must fail.
The four test files differ only in the backend they name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..spec import DenseNetSpec
from ..testing import tolerance
from . import data_parallel as dp

__all__ = ["TINY", "run_tiny", "sync_equals_single_device", "per_replica_equals_prediction",
           "fails_on_a_sum_all_reduce", "fails_on_the_other_running_rule"]

#: a DenseNet-BC small enough that the replicas start and compile in seconds
TINY = DenseNetSpec(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                    num_classes=5, in_channels=3, name="tiny").to_dict()


def run_tiny(backend: str, tmp_dir: Path) -> tuple[Any, ...]:
    """(case, params, inputs, result, predictions): ``backend``'s worker (this interpreter)
    on the tiny case, and the reference's predictions for it."""
    case = dp.make_case(TINY, size=16, batch=8, steps=2)
    folder = dp.prepare(case, Path(tmp_dir) / "case")
    params, inputs = folder.read_weights(case), folder.read_inputs()
    result = dp.run_backend(backend, folder, python=sys.executable)
    return case, params, inputs, result, dp.predictions(case, params, inputs)


def _rows(backend: str, run: tuple[Any, ...]) -> dict[tuple[str, str], dp.Row]:
    _, _, _, result, preds = run
    return {(r.mode, r.against): r for r in dp.compare_backend(backend, result, preds)}


def sync_equals_single_device(backend: str, run: tuple[Any, ...], dtype: str = "float64") -> None:
    """Synchronised BN: K data-parallel steps == K single-device steps on the global batch."""
    row = _rows(backend, run)[("sync", "single")]
    assert row.dtype == dtype, row
    assert row.ok, row
    assert max(row.losses, row.params, row.running) <= tolerance("trajectory", row.dtype), row


def per_replica_equals_prediction(backend: str, run: tuple[Any, ...]) -> None:
    """Per-replica BN equals the reference's per-replica prediction, and is *not* the
    single-device trajectory: per-replica BN is another network function."""
    rows = _rows(backend, run)
    row = rows[("per-replica", f"per-replica/{dp.RUNNING_RULES[backend]}")]
    assert row.dtype == "float64" and row.ok, row
    measured = rows[("per-replica", "single")]
    assert measured.params > 1e4 * tolerance("trajectory", "float64"), measured


def fails_on_a_sum_all_reduce(backend: str, run: tuple[Any, ...]) -> None:
    """Fed the prediction of a sum all-reduce (R times the gradient), both runs fail."""
    case, params, inputs, result, _ = run
    rows = dp.compare_backend(backend, result, dp.predictions(case, params, inputs, reduce="sum"))
    assert [r.ok for r in rows[:2]] == [False, False], rows


def fails_on_the_other_running_rule(backend: str, run: tuple[Any, ...]) -> None:
    """Which replica's running statistics the framework keeps is checked too: the other
    rule fails on the running statistics while the weights still agree."""
    other = {"replica0": "mean", "mean": "replica0"}[dp.RUNNING_RULES[backend]]
    _, _, _, result, preds = run
    row = dp.compare_backend(backend, result, preds, running_rule=other)[1]
    assert row.ok is False and row.params <= 1e-10 < row.running, row
