"""The teaching notebook, notebooks/keras_densenet.py, runs top to bottom in this
environment (tensorflow tox env); what it printed is held here to the spec and to the tolerance
table, not to the notebook's own asserts. The executed copy is written to
docs/generated/notebooks, where the guide's build reuses it (same fingerprint)."""

from __future__ import annotations

import json
import os

import pytest

from densenet_multi.guide import notebooks
from densenet_multi.params import init_params
from densenet_multi.spec import get_spec
from densenet_multi.testing import tolerance

BACKEND = "keras"
OUT = notebooks.SOURCE_ROOT / "docs" / "generated" / "notebooks"
SPEC = get_spec("d2l")
#: measured with the notebook's run (5 epochs, 512 digits, cosine from 0.05, seed 0):
#: 0.961; seeds 1 and 2 gave 0.986, 0.972. The floor leaves a wide margin and is far
#: above chance (0.10).
ACCURACY_FLOOR = 0.85

# The notebook is Keras on TensorFlow (its kernel is the tensorflow env); the keras-jax
# env, which runs this folder too, has no TensorFlow.
pytestmark = pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                                reason="the Keras notebook runs on TensorFlow (tox env tensorflow)")


@pytest.fixture(scope="module")
def executed():
    sources = notebooks.fingerprint(BACKEND)
    path = notebooks.execute(BACKEND, OUT)
    return path, notebooks.read_report(path), sources


def test_the_chapters_parts_have_its_shapes(executed):
    _, report, _ = executed
    assert report.errors_raised == []
    assert report.parts == {
        "conv block": ((4, 3, 8, 8), (4, 10, 8, 8)),
        "dense block": ((4, 3, 8, 8), (4, 23, 8, 8)),  # 3 + 2 x 10 channels
        "transition": ((4, 23, 8, 8), (4, 10, 4, 4)),  # 10 channels, half the size
    }, report.text


def test_the_shape_tables_at_96_and_224_are_the_specs(executed):
    _, report, _ = executed
    assert sorted(report.shape_tables) == [96, 224], report.text
    for size, table in report.shape_tables.items():
        assert table == SPEC.stage_shapes(size), size
    at224 = report.shape_tables[224]
    stages = ("block1", "transition1", "block2", "transition2", "block3", "transition3", "block4")
    assert [at224[s][:2] for s in stages] == [(192, 56), (96, 28), (224, 28), (112, 14),
                                              (240, 14), (120, 7), (248, 7)]


def test_every_stage_in_both_modes_is_within_tolerance(executed):
    _, report, _ = executed
    assert set(report.errors) == {(c, s) for c in ("eval", "train") for s in SPEC.stage_names}
    for (check, stage), err in report.errors.items():
        assert err <= tolerance(check, "float32"), (check, stage, err)
    n_running = sum(k.endswith((".running_mean", ".running_var")) for k in init_params(SPEC))
    assert report.running is not None, report.text
    count, worst = report.running
    assert count == n_running and worst <= tolerance("running", "float32"), report.running


def test_training_history_figure_and_accuracy_floor(executed):
    path, report, _ = executed
    history = json.loads(path.with_name(f"{BACKEND}_history.json").read_text())
    n = len(history["epoch"])
    assert history["backend"] == BACKEND and n >= 1
    assert history["epoch"] == list(range(1, n + 1))
    assert all(len(history[k]) == n for k in ("train_loss", "train_acc", "test_acc")), history
    assert [e[0] for e in report.epochs] == history["epoch"]  # one printed line per epoch
    assert history["test_acc"][-1] == pytest.approx(report.final_accuracy, abs=1e-4)
    assert history["test_acc"][-1] >= ACCURACY_FLOOR, history
    assert report.images >= 1  # the loss and accuracy figure


def test_the_outputs_carry_the_fingerprint_of_the_sources_they_ran(executed):
    """So that the guide's build (ensure_executed) reuses them instead of running again."""
    path, _, sources = executed
    written = path.with_name(f"{BACKEND}_densenet.fingerprint").read_text().strip()
    assert written == sources
