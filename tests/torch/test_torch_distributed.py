"""Data-parallel training on PyTorch's own engine (DistributedDataParallel, gloo, 2 processes), 2 CPU
replicas, against single-device training and the NumPy reference's per-replica BatchNorm prediction
(densenet_multi.parity.data_parallel runs the worker, as the harness does)."""

from __future__ import annotations

import pytest

from densenet_multi.parity import data_parallel_checks as checks

BACKEND = "torch"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return checks.run_tiny(BACKEND, tmp_path_factory.mktemp("dp"))


def test_sync_batchnorm_equals_single_device(run):
    checks.sync_equals_single_device(BACKEND, run, dtype="float64")


def test_per_replica_batchnorm_equals_the_reference_prediction(run):
    checks.per_replica_equals_prediction(BACKEND, run)


def test_the_check_fails_on_a_sum_all_reduce(run):
    checks.fails_on_a_sum_all_reduce(BACKEND, run)


def test_the_check_fails_on_the_other_running_rule(run):
    checks.fails_on_the_other_running_rule(BACKEND, run)
