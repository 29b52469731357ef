"""The data-parallel check's core: the reference's per-replica prediction and the
comparison (densenet_multi.reference_dp, densenet_multi.parity.data_parallel), on
results built from the reference itself; each backend's engine is run by the
tests/<backend>/test_<backend>_distributed.py of its own environment."""

from __future__ import annotations

import numpy as np
import pytest

from densenet_multi import reference_dp, reference_grad
from densenet_multi.backend import SGD_DEFAULTS
from densenet_multi.params import init_params
from densenet_multi.parity import cli
from densenet_multi.parity import data_parallel as dp
from densenet_multi.spec import DenseNetSpec

TINY = DenseNetSpec(growth_rate=2, block_config=(1,), num_init_features=4, bn_size=2,
                    num_classes=3, in_channels=1, name="tiny-dp")


@pytest.fixture(scope="module")
def setup():
    params = init_params(TINY, 0, nontrivial_bn=True, dtype="float64")
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((4, 1, 16, 16)), rng.integers(0, 3, 4)) for _ in range(2)]
    return params, batches


def _steps(setup, **kw):
    params, batches = setup
    return reference_dp.data_parallel_steps(TINY, params, batches, dtype="float64",
                                            **{**SGD_DEFAULTS, **kw})


def _worst(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


def test_one_replica_is_single_device_training(setup):
    params, batches = setup
    single = reference_grad.train_steps(TINY, params, batches, dtype="float64", **SGD_DEFAULTS)
    one = _steps(setup, replicas=1, sync_bn=False)
    assert one[0] == single[0]
    assert _worst(one[1], single[1]) == 0.0
    # with two replicas and per-replica BN it is another trajectory
    two = _steps(setup, replicas=2, sync_bn=False)
    assert _worst(two[1], single[1]) > 1e-4


def test_per_replica_gradient_is_the_mean_of_the_shards(setup):
    """One step at lr 1, momentum 0: the update is the mean of the two shards' gradients,
    each computed on its own by the reference gradient."""
    params, batches = setup
    (x, y), = batches[:1]
    _, final = reference_dp.data_parallel_steps(TINY, params, [(x, y)], replicas=2,
                                                sync_bn=False, lr=1.0, momentum=0.0)
    g0 = reference_grad.gradients(TINY, params, x[:2], y[:2]).params
    g1 = reference_grad.gradients(TINY, params, x[2:], y[2:]).params
    step = {k: params[k] - final[k] for k in g0}
    assert _worst(step, {k: (g0[k] + g1[k]) / 2 for k in g0}) < 1e-13


def test_a_sum_all_reduce_is_the_mean_at_lr_over_r(setup):
    """Sum of R gradients at lr / R == their mean at lr (momentum is linear): the
    convention only scales the step, which is what the check's comparison sees."""
    lr = SGD_DEFAULTS["lr"]
    mean = _steps(setup, replicas=2, sync_bn=False)
    summed = _steps(setup, replicas=2, sync_bn=False, reduce="sum", lr=lr / 2)
    assert _worst(summed[1], mean[1]) < 1e-13
    assert _worst(_steps(setup, replicas=2, sync_bn=False, reduce="sum")[1], mean[1]) > 1e-4


def test_running_rules_differ_only_in_running_statistics(setup):
    r0 = _steps(setup, replicas=2, sync_bn=False, running="replica0")[1]
    mean = _steps(setup, replicas=2, sync_bn=False, running="mean")[1]
    trainable = [k for k in r0 if "running_" not in k]
    running = [k for k in r0 if "running_" in k]
    assert _worst({k: r0[k] for k in trainable}, {k: mean[k] for k in trainable}) == 0.0
    assert _worst({k: r0[k] for k in running}, {k: mean[k] for k in running}) > 1e-3


def test_bad_batches_are_refused(setup):
    params, batches = setup
    with pytest.raises(ValueError, match="does not split into 3 equal shards"):
        reference_dp.data_parallel_steps(TINY, params, batches, replicas=3, sync_bn=False,
                                         **SGD_DEFAULTS)
    with pytest.raises(ValueError, match="each of 4 replicas would get 1 example"):
        reference_dp.data_parallel_steps(TINY, params, batches, replicas=4, sync_bn=False,
                                         **SGD_DEFAULTS)
    with pytest.raises(ValueError, match="running must be one of"):
        _steps(setup, replicas=2, sync_bn=False, running="replica1")


def _fake_result(preds, sync="single", per_replica="per-replica/replica0", dtype="float64"):
    """A worker's result file's arrays, made from reference predictions."""
    out = {}
    for mode, key in (("sync", sync), ("per-replica", per_replica)):
        losses, final = preds[key]
        out[f"{mode}/dtype"] = np.asarray(dtype)
        out[f"{mode}/seconds"] = np.asarray(0.0)
        out[f"{mode}/losses"] = np.asarray(losses)
        for k, v in final.items():
            out[f"{mode}/{'running' if 'running_' in k else 'param'}/{k}"] = v
    return out


@pytest.fixture(scope="module")
def preds(tmp_path_factory):
    case = dp.make_case(TINY.to_dict(), size=16, batch=4, steps=2)
    folder = dp.prepare(case, tmp_path_factory.mktemp("dp") / "case")
    params, inputs = folder.read_weights(case), folder.read_inputs()
    return (dp.predictions(case, params, inputs),
            dp.predictions(case, params, inputs, running=("replica0",), reduce="sum"))


def test_compare_passes_what_the_reference_predicts(preds):
    good, _ = preds
    rows = dp.compare_backend("torch", _fake_result(good), good)
    assert [r.ok for r in rows] == [True, True, None]
    assert rows[2].params > 1e-4  # per-replica vs single device: measured, and large


def test_compare_fails_a_sum_all_reduce(preds):
    good, summed = preds
    rows = dp.compare_backend("torch", _fake_result(summed), good)
    assert [r.ok for r in rows[:2]] == [False, False]
    assert rows[0].params > 1e-3


def test_compare_fails_per_replica_statistics_where_sync_is_claimed(preds):
    good, _ = preds
    rows = dp.compare_backend("torch", _fake_result(good, sync="per-replica/replica0"), good)
    assert rows[0].ok is False and rows[1].ok is True


def test_compare_fails_the_wrong_running_rule_and_a_missing_tensor(preds):
    good, _ = preds
    rows = dp.compare_backend("flax", _fake_result(good), good)  # flax keeps the mean
    assert rows[1].ok is False and rows[1].params == 0.0 and rows[1].running > 1e-3
    broken = _fake_result(good)
    del broken["sync/param/classifier.weight"]
    with pytest.raises(ValueError, match=r"lacks \['classifier.weight'\]"):
        dp.compare_backend("torch", broken, good)


def test_a_float32_run_is_held_to_the_float32_tolerance(preds):
    good, _ = preds
    result = _fake_result(good, dtype="float32")
    result.update({k: (v.astype(np.float32) * np.float32(1 + 3e-5)) for k, v in result.items()
                   if k.startswith("sync/param/")})
    row = dp.compare_backend("gluon", result, good)[0]
    assert row.tol == 1e-4 and row.ok and row.params > 1e-5


def test_parity_cli_dispatches_data_parallel():
    assert cli._without_data_parallel(["--checks", "data-parallel", "--backends", "torch"]) == [
        "--backends", "torch"]
    assert cli._without_data_parallel(["--checks=data-parallel"]) == []
    assert cli._without_data_parallel(["--checks", "eval"]) is None
    with pytest.raises(SystemExit, match="unknown backend"):
        cli.main(["--checks", "data-parallel", "--backends", "caffe"])


# ---------------------------------------------------------------------- GPUs
def test_the_report_says_whether_a_gpu_is_there(monkeypatch, tmp_path):
    gpus = tmp_path / "gpus"
    monkeypatch.setattr(dp, "NVIDIA_GPUS", gpus)
    assert dp.gpu_line("cpu").startswith("GPU: not available (no NVIDIA GPU")
    assert "the GPU runs below fail" in dp.gpu_line("cuda")
    (gpus / "0000:01:00.0").mkdir(parents=True)
    assert dp.machine_gpus() == 1
    assert dp.gpu_line("cpu").startswith("GPU: 1 NVIDIA GPU(s) on this machine, not used")
    assert dp.gpu_line("cuda").startswith("GPU: 1 NVIDIA GPU(s) on this machine; the PyTorch")


def test_gpu_runs_are_torch_and_jax_only(tmp_path):
    with pytest.raises(ValueError, match=r"'cuda' for torch, flax .* got 'cuda' for keras"):
        dp.run_backend("keras", None, device="cuda")
    with pytest.raises(SystemExit, match="--device cuda runs torch, flax only"):
        dp.main(["--device", "cuda", "--backends", "torch,gluon", "--out", str(tmp_path)])
