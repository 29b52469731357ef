"""``densenet_multi.bench.kernels`` for the flax backend, on a tiny DenseNet-BC (all four conv
kinds) at 32x32, batch 2, one inference round (a training round's jit compiles take
three times as long): its result is well formed and it ran exactly the spec's convolutions,
each alone and in one program. No timed assertion."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flax.nnx")

from flax_cases import tiny_spec  # noqa: E402

from densenet_multi.bench import kernels, probe  # noqa: E402
from densenet_multi.testing import conv_kinds  # noqa: E402


def check_result(data, spec, size, batch):
    assert data["kernels"] == 1 and data["status"] == "ok" and data["preset"] == spec.name
    assert set(data["parts"]) == {"network", "convs_each", "convs_one_program"}
    for part in data["parts"].values():
        assert 0 < part["ms_min"] <= part["ms_median"] <= part["ms_max"] and part["cores_busy"] > 0
    assert set(data["first_seconds"]) == set(data["parts"])
    counts, shapes = conv_kinds(spec)
    assert {k: v["count"] for k, v in data["kinds"].items()} == counts
    assert sorted((c["cout"], c["cin"], c["kernel"], c["kernel"]) for c in data["convs"]) == shapes
    assert sum(k["ms_median"] for k in data["kinds"].values() if k["count"]) == pytest.approx(
        data["parts"]["convs_each"]["ms_median"], abs=0.01)  # one round: the kinds add up
    # the forward passes' multiply-accumulates are the spec's (the classifier is not a conv)
    conv_macs = batch * (spec.macs(size) - spec.channel_plan.final_channels * spec.num_classes)
    assert sum(k["macs"] for k in data["kinds"].values()) == conv_macs


def test_flax_kernels_run_the_specs_convolutions():
    spec = tiny_spec()
    cfg = probe.Config("flax", preset="d2l", size=32, batch=2, what="infer", steps=1, warmup=0)
    data = json.loads(json.dumps(kernels.measure(cfg, spec, profile=1)))  # serialisable as printed
    assert data["backend"] == "flax" and data["mode"] == "jit" and data["what"] == "infer"
    check_result(data, spec, 32, 2)
    assert all(data["kinds"][k]["count"] for k in kernels.KINDS)  # every kind is exercised
    # the checks fail on a network the run did not measure: one dense layer more, or
    # wider bottlenecks (the same counts, other shapes)
    for wrong in (tiny_spec(block_config=(2, 3)), tiny_spec(bn_size=3)):
        with pytest.raises(AssertionError):
            check_result(data, wrong, 32, 2)
    # the profiled step's XLA ops, by kind: the convolutions are among them
    prof = data["profile"]
    assert prof["steps"] == 1 and prof["step_ms"] > 0 and prof["ops"] > 0
    assert 0 < sum(prof["by_kind_ms"].values()) <= prof["ops_ms"] + 0.01
    assert 0 < sum(prof["top_ops_ms"].values()) <= prof["ops_ms"] + 0.01
    assert any("conv" in kind for kind in prof["by_kind_ms"]), prof["by_kind_ms"]
    assert not any(kind[-1].isdigit() for kind in prof["by_kind_ms"])  # ".N" suffixes stripped
    md = kernels.summary_markdown({**data, "backend": "torch"}, data)
    top_kind, top_ms = next(iter(prof["by_kind_ms"].items()))
    assert f"| {top_kind} | {top_ms:.1f} |" in md
