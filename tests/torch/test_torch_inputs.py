"""Bad inputs and bad parameters fail early with messages that name what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_cases import TINY, TINY_PLAIN, case

import densenet_multi.torch as dt
from densenet_multi.checkpoint import CheckpointError
from densenet_multi.params import ParameterError
from densenet_multi.spec import InputError, get_spec


@pytest.fixture(scope="module")
def d2l():
    return dt.build(get_spec("d2l"))


@pytest.fixture(scope="module")
def rgb():
    return dt.build(TINY)


def test_wrong_rank(d2l):
    with pytest.raises(InputError, match=r"\(N, 1, H, W\).*shape \(1, 32, 32\)"):
        dt.run(d2l, np.zeros((1, 32, 32), np.float32))


def test_wrong_channel_count(rgb):
    with pytest.raises(InputError, match=r"\(N, 3, H, W\).*got shape \(2, 4, 8, 8\)"):
        dt.run(rgb, np.zeros((2, 4, 8, 8), np.float32))


def test_nhwc_passed_as_nchw_is_named(rgb):
    with pytest.raises(InputError, match=r"shape \(2, 8, 8, 3\).*looks like an NHWC array"):
        dt.run(rgb, np.zeros((2, 8, 8, 3), np.float32))


def test_wrong_dtype(rgb):
    with pytest.raises(InputError, match="float32 or float64, got uint8"):
        dt.run(rgb, np.zeros((2, 3, 8, 8), np.uint8))


def test_too_small(d2l):
    m = get_spec("d2l").min_input_size()
    with pytest.raises(InputError, match=rf"8x8 is too small.*{m}x{m}"):
        dt.run(d2l, np.zeros((1, 1, 8, 8), np.float32))


def test_validation_sits_at_the_runtime_boundary(d2l):
    """run() names the problem; the module's forward has no Python checks (so that
    torch.compile captures it whole) and gives PyTorch's own error."""
    with pytest.raises(InputError, match="looks like an NHWC array"):
        dt.run(d2l, np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(RuntimeError) as e:
        d2l(torch.zeros(2, 32, 32, 1))
    assert not isinstance(e.value, InputError)


def test_bad_labels(rgb):
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"labels must lie in \[0, 5\)"):
        dt.gradients(rgb, x, np.array([0, 5]))
    with pytest.raises(InputError, match=r"2 integer labels"):
        dt.gradients(rgb, x, np.array([0.0, 1.0]))


def test_load_canonical_reports_everything_and_copies_nothing():
    spec, params, _ = case(TINY, 8, seed=31)
    model = dt.build(spec, seed=0)
    before = dt.export_canonical(model)
    bad = dict(params)
    del bad["features.norm5.running_var"]
    bad["features.conv0.weight"] = bad["features.conv0.weight"][:, :2]
    bad["features.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ParameterError) as e:
        dt.load_canonical(model, bad)
    msg = str(e.value)
    assert "features.norm5.running_var" in msg and "features.extra.weight" in msg
    assert "features.conv0.weight: expected shape (8, 3, 3, 3), got (8, 2, 3, 3)" in msg
    after = dt.export_canonical(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing copied


def test_checkpoint_round_trip(tmp_path):
    spec, params, x = case(TINY, 8, seed=32)
    model = dt.load_canonical(dt.build(spec), params)
    path = dt.save_checkpoint(model, tmp_path / "tiny.safetensors")
    with pytest.raises(FileExistsError):
        dt.save_checkpoint(model, path)
    again = dt.load_checkpoint(path)
    assert again.spec == spec and again.classifier.weight.dtype == torch.float32
    got = dt.export_canonical(again)
    assert all(np.array_equal(got[k], params[k]) for k in params)
    np.testing.assert_array_equal(dt.run(again, x).logits, dt.run(model, x).logits)
    # the spec given must agree with the stored one; dtype= converts
    with pytest.raises(CheckpointError, match="num_classes"):
        dt.load_checkpoint(path, spec.replace(num_classes=6))
    wide = dt.load_checkpoint(path, spec, dtype="float64")
    assert wide.classifier.weight.dtype == torch.float64
    assert np.array_equal(dt.export_canonical(wide)["classifier.weight"],
                          params["classifier.weight"].astype(np.float64))


def test_float64_checkpoint_loads_in_float64(tmp_path):
    spec, params, _ = case(TINY_PLAIN, 8, seed=34, dtype="float64")
    path = dt.save_checkpoint(dt.load_canonical(dt.build(spec, dtype="float64"), params),
                              tmp_path / "f64.safetensors")
    got = dt.export_canonical(dt.load_checkpoint(path))
    assert all(got[k].dtype == np.float64 and np.array_equal(got[k], params[k]) for k in params)


def test_devices_and_backend_contract():
    from densenet_multi.backend import CONTRACT, load_backend

    assert load_backend("torch") is dt
    assert all(callable(getattr(dt, name)) for name in CONTRACT)
    assert dt.devices()[0] == "cpu"
    assert ("cuda" in dt.devices()) == torch.cuda.is_available()
    assert dt.build(TINY, device="cpu").classifier.weight.device.type == "cpu"
    for bad in ("gpu", "tpu", "meta"):
        with pytest.raises(ValueError, match=r"'cpu', 'cuda' or 'cuda:N'"):
            dt.build(TINY, device=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    from densenet_multi.testing import assert_close

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    spec, params, x = case("d2l", 32, seed=33)
    cpu = dt.run(dt.load_canonical(dt.build(spec), params), x)
    gpu = dt.run(dt.load_canonical(dt.build(spec, device="cuda"), params), x)
    for k in spec.stage_names:
        assert_close(gpu.stages[k], cpu.stages[k], "device", name=k)
