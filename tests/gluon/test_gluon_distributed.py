"""Data-parallel training on MXNet Gluon's own engine (kvstore over 2 CPU contexts), 2 CPU replicas,
against single-device training and the NumPy reference's per-replica BatchNorm prediction
(densenet_multi.parity.data_parallel runs the worker, as the harness does): synchronised
BatchNorm in float64 is the all-reduce BatchNorm of gluon/distributed.py; MXNet's own
SyncBatchNorm operator (float32 only) is run here in this process."""

from __future__ import annotations

import threading

import pytest
from mxnet import nd

from densenet_multi.backend import SGD_DEFAULTS
from densenet_multi.gluon import distributed
from densenet_multi.parity import data_parallel as dp
from densenet_multi.parity import data_parallel_checks as checks

BACKEND = "gluon"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return checks.run_tiny(BACKEND, tmp_path_factory.mktemp("dp"))


def _with_sync_run(run, dtype):
    """``run`` with its synchronised-BN result replaced by one run here, in ``dtype``."""
    case, params, inputs, result, preds = run
    out = distributed.data_parallel_steps(
        case.build_spec(), {k: v.astype(dtype) for k, v in params.items()},
        dp._batches(inputs, dtype), devices=dp.REPLICAS, sync_bn=True, dtype=dtype,
        **SGD_DEFAULTS)
    sync = dp.run_arrays("sync", out, dtype, 0.0)
    rest = {k: v for k, v in result.items() if not k.startswith("sync/")}
    return case, params, inputs, {**rest, **sync}, preds


def test_sync_batchnorm_equals_single_device(run):
    # float64: the all-reduce BatchNorm (MXNet's SyncBatchNorm operator is float32 only)
    checks.sync_equals_single_device(BACKEND, run)


def test_mxnet_syncbatchnorm_operator_equals_single_device_in_float32(run):
    checks.sync_equals_single_device(BACKEND, _with_sync_run(run, "float32"), dtype="float32")


def test_the_check_fails_without_the_gradient_of_the_statistics(run, monkeypatch):
    # An all-reduce of the statistics whose backward does not all-reduce their gradient
    # (the other contexts' partial sums detached): the forward is right, so the first
    # loss agrees, but the gradients and so the second step are not the single device's.
    def detached_sum(self, x):
        values = self.gather(x.context, x)
        return nd.add_n(*[v if v is x else v.as_in_context(x.context).detach() for v in values])

    monkeypatch.setattr(distributed.ContextAllReduce, "sum", detached_sum)
    case, params, inputs, result, preds = _with_sync_run(run, "float64")
    row = {(r.mode, r.against): r for r in dp.compare_backend(BACKEND, result, preds)}[
        ("sync", "single")]
    assert row.ok is False and row.params > 1e-4, row
    assert abs(result["sync/losses"][0] - preds["single"][0][0]) < 1e-12, row


def test_a_failing_context_raises_instead_of_leaving_the_others_at_the_barrier(run, monkeypatch):
    # context 1's thread fails at its first exchange while context 0's waits at the barrier
    gather = distributed.ContextAllReduce.gather

    def failing_gather(self, ctx, value):
        if ctx == self.ctxs[1]:
            raise RuntimeError("context 1 failed")
        return gather(self, ctx, value)

    monkeypatch.setattr(distributed.ContextAllReduce, "gather", failing_gather)
    raised = []

    def steps():
        try:
            _with_sync_run(run, "float64")
        except RuntimeError as e:
            raised.append(e)

    t = threading.Thread(target=steps, daemon=True)  # a regression hangs there, not here
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "data_parallel_steps still waiting after 60 s"
    assert [str(e) for e in raised] == ["context 1 failed"]


def test_per_replica_batchnorm_equals_the_reference_prediction(run):
    checks.per_replica_equals_prediction(BACKEND, run)


def test_the_check_fails_on_a_sum_all_reduce(run):
    checks.fails_on_a_sum_all_reduce(BACKEND, run)


def test_the_check_fails_on_the_other_running_rule(run):
    checks.fails_on_the_other_running_rule(BACKEND, run)
