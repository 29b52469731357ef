"""Canonical checkpoints: round trips, every kind of bad file, atomic writes."""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densenet_multi import checkpoint
from densenet_multi.checkpoint import CheckpointError
from densenet_multi.params import init_params
from densenet_multi.spec import DenseNetSpec, get_spec


@pytest.fixture
def d2l():
    spec = get_spec("d2l")
    return spec, init_params(spec, 0, nontrivial_bn=True)


def _save_raw(path, tensors, spec=None):
    from safetensors.numpy import save_file

    meta = {checkpoint.METADATA_KEY: spec.to_json()} if spec is not None else None
    save_file(tensors, str(path), metadata=meta)


def test_round_trip_is_bit_exact_and_keeps_spec(tmp_path, d2l):
    spec, p = d2l
    path = checkpoint.save(tmp_path / "a.safetensors", p, spec)
    q, spec2 = checkpoint.load(path)
    assert spec2 == spec and spec2.name == "d2l"
    assert list(q) == list(p)
    assert all(np.array_equal(p[k], q[k]) and q[k].dtype == np.float32 for k in p)
    assert checkpoint.read_spec(path) == spec
    meta = json.loads(checkpoint.read_spec(path).to_json())
    assert meta["block_config"] == [4, 4, 4, 4]


def test_never_overwrites_unless_asked(tmp_path, d2l):
    spec, p = d2l
    path = checkpoint.save(tmp_path / "a.safetensors", p, spec)
    before = path.read_bytes()
    p2 = init_params(spec, 1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        checkpoint.save(path, p2, spec)
    assert path.read_bytes() == before
    checkpoint.save(path, p2, spec, overwrite=True)
    assert np.array_equal(checkpoint.load(path)[0]["features.conv0.weight"],
                          p2["features.conv0.weight"])


def test_invalid_params_are_never_written(tmp_path, d2l):
    spec, p = d2l
    del p["classifier.bias"]
    with pytest.raises(CheckpointError, match="missing 1 key"):
        checkpoint.save(tmp_path / "bad.safetensors", p, spec)
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_temp_file(tmp_path, d2l, monkeypatch):
    spec, p = d2l
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path / "a.safetensors", p, spec)
    assert os.listdir(tmp_path) == []


def test_missing_unexpected_misshapen_and_mistyped_keys_in_one_error(tmp_path, d2l):
    spec, p = d2l
    bad = dict(p)
    del bad["features.norm5.running_var"]
    bad["features.norm5.num_batches_tracked"] = np.zeros((), np.float32)
    bad["classifier.weight"] = np.zeros((5, 248), np.float32)
    bad["classifier.bias"] = bad["classifier.bias"].astype(np.float16)
    path = tmp_path / "bad.safetensors"
    _save_raw(path, bad, spec)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path)
    msg = str(e.value)
    assert "missing 1 key(s): features.norm5.running_var" in msg
    assert "unexpected 1 key(s): features.norm5.num_batches_tracked" in msg
    assert "classifier.weight: expected shape (10, 248), got (5, 248)" in msg
    assert "classifier.bias: expected dtype float32, got float16" in msg


def test_truncated_file(tmp_path, d2l):
    spec, p = d2l
    path = checkpoint.save(tmp_path / "a.safetensors", p, spec)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        checkpoint.load(path)


def test_spec_mismatch_names_the_fields(tmp_path, d2l):
    spec, p = d2l
    path = checkpoint.save(tmp_path / "a.safetensors", p, spec)
    other = spec.replace(bn_eps=1.001e-5, num_classes=12)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path, other)
    msg = str(e.value)
    assert "bn_eps: expected 1.001e-05, file has 1e-05" in msg
    assert "num_classes: expected 12, file has 10" in msg


def test_file_without_spec_needs_one(tmp_path):
    spec = get_spec("densenet40_k12")
    p = init_params(spec, 0)
    path = tmp_path / "torchvision_style.safetensors"
    _save_raw(path, p)
    with pytest.raises(CheckpointError, match="no densenet_multi spec"):
        checkpoint.load(path)
    q, s = checkpoint.load(path, spec)
    assert s == spec and set(q) == set(p)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "nope.safetensors")


def test_float64_checkpoints_on_request(tmp_path, d2l):
    spec, _ = d2l
    p = init_params(spec, 0, dtype="float64")
    path = checkpoint.save(tmp_path / "a.safetensors", p, spec, dtype="float64")
    with pytest.raises(CheckpointError, match="expected dtype float32, got float64"):
        checkpoint.load(path)
    q, _ = checkpoint.load(path, dtype="float64")
    assert q["features.conv0.weight"].dtype == np.float64


small_specs = st.builds(
    DenseNetSpec,
    growth_rate=st.integers(1, 6),
    block_config=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
    num_init_features=st.integers(4, 12),
    bn_size=st.one_of(st.none(), st.integers(1, 3)),
    compression=st.sampled_from([0.5, 0.75, 1.0]),
    num_classes=st.integers(1, 5),
    in_channels=st.integers(1, 3),
    stem=st.sampled_from(["imagenet", "cifar"]),
    conv_bias=st.booleans(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=small_specs, seed=st.integers(0, 2**32 - 1))
def test_round_trip_for_random_specs(tmp_path, spec, seed):
    p = init_params(spec, seed, nontrivial_bn=True)
    path = checkpoint.save(tmp_path / f"{seed}.safetensors", p, spec, overwrite=True)
    q, s = checkpoint.load(path)
    assert s == spec
    assert all(np.array_equal(p[k], q[k]) for k in p)
