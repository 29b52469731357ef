"""Data-parallel training on Keras 3 (TensorFlow)'s own engine (tf.distribute.MirroredStrategy over 2
logical CPUs), 2 CPU replicas, against single-device training and the NumPy reference's per-replica
BatchNorm prediction (densenet_multi.parity.data_parallel runs the worker, as the harness does)."""

from __future__ import annotations

import sys

import keras
import pytest

from densenet_multi.parity import data_parallel as dp
from densenet_multi.spec import DenseNetSpec
from densenet_multi.testing import tolerance

# tf.distribute is TensorFlow's engine: the keras-jax env, which runs the same tests/keras
# folder with KERAS_BACKEND=jax and has no TensorFlow, skips this module; the tensorflow env runs it.
if keras.backend.backend() != "tensorflow":
    pytest.skip("MirroredStrategy is TensorFlow's (tox env tensorflow)", allow_module_level=True)

BACKEND = "keras"
#: a DenseNet-BC small enough that the replicas start and compile in seconds
TINY = DenseNetSpec(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                    num_classes=5, in_channels=3, name="tiny").to_dict()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    case = dp.make_case(TINY, size=16, batch=8, steps=2)
    folder = dp.prepare(case, tmp_path_factory.mktemp("dp") / "case")
    params, inputs = folder.read_weights(case), folder.read_inputs()
    result = dp.run_backend(BACKEND, folder, python=sys.executable)
    return case, params, inputs, result, dp.predictions(case, params, inputs)


def _rows(run):
    _, _, _, result, preds = run
    return {(r.mode, r.against): r for r in dp.compare_backend(BACKEND, result, preds)}


def test_sync_batchnorm_equals_single_device(run):
    row = _rows(run)[("sync", "single")]
    assert row.dtype == "float64"
    assert row.ok, row
    assert max(row.losses, row.params, row.running) <= tolerance("trajectory", row.dtype)


def test_per_replica_batchnorm_equals_the_reference_prediction(run):
    rows = _rows(run)
    row = rows[("per-replica", f"per-replica/{dp.RUNNING_RULES[BACKEND]}")]
    assert row.dtype == "float64" and row.ok, row
    # and it is not the single-device trajectory: per-replica BN is another network
    measured = rows[("per-replica", "single")]
    assert measured.params > 1e4 * tolerance("trajectory", "float64"), measured


def test_the_check_fails_on_a_sum_all_reduce(run):
    """Fed the prediction of a sum all-reduce (R times the gradient), both runs fail."""
    case, params, inputs, result, _ = run
    wrong = dp.predictions(case, params, inputs, reduce="sum")
    rows = dp.compare_backend(BACKEND, result, wrong)
    assert [r.ok for r in rows[:2]] == [False, False], rows


def test_the_check_fails_on_the_other_running_rule(run):
    """Which replica's running statistics the framework keeps is checked too."""
    other = {"replica0": "mean", "mean": "replica0"}[dp.RUNNING_RULES[BACKEND]]
    _, _, _, result, preds = run
    row = dp.compare_backend(BACKEND, result, preds, running_rule=other)[1]
    assert row.ok is False and row.params <= 1e-10 < row.running, row
