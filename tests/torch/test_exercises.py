"""The chapter's exercises on small budgets: the measuring code runs and measures what it says.

The documented full runs (``python -m densenet_multi.exercises.<name> --out
docs/exercises``) write the committed results the guide shows; these tests run
the same functions on a few images, epochs and seeds.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from densenet_multi.exercises import memory, mlp, pooling
from densenet_multi.spec import get_spec


# ---------------------------------------------------------------------- 1: pooling
def _module_types(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules()}


def test_the_pooling_variants_differ_only_in_the_transitions_pool():
    spec = get_spec("d2l")
    avg, mx = pooling.build_variant(spec, "avg", seed=3), pooling.build_variant(spec, "max", seed=3)
    # the same parameters and buffers, bit for bit (the pool has none)
    sa, sm = avg.state_dict(), mx.state_dict()
    assert list(sa) == list(sm)
    assert all(torch.equal(sa[k], sm[k]) for k in sa)
    # the same modules, except each transition's pool
    ta, tm = _module_types(avg), _module_types(mx)
    changed = {name for name in ta if ta[name] is not tm[name]}
    pools = pooling.pooling_layers(mx)
    assert changed == {f"{t}.pool" for t in pools} == {
        f"features.transition{i}.pool" for i in (1, 2, 3)}
    tp = spec.transition_pool
    for layer in pools.values():
        assert isinstance(layer, nn.MaxPool2d)
        assert (layer.kernel_size, layer.stride, layer.padding) == (tp.kernel, tp.stride, tp.padding)
    for layer in pooling.pooling_layers(avg).values():
        assert isinstance(layer, nn.AvgPool2d)
    # and the swap changes what the network computes
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert not torch.allclose(avg.eval()(x), mx.eval()(x))


def test_build_variant_refuses_an_unknown_variant():
    with pytest.raises(ValueError, match="variant must be one of"):
        pooling.build_variant(get_spec("d2l"), "median")


def test_both_pooling_variants_train_on_a_small_budget():
    result = pooling.run(epochs=1, seeds=[0], subset=96, batch_size=32, log=None)
    runs = {r["variant"]: r for r in result["runs"]}
    assert set(runs) == {"avg", "max"}
    for r in runs.values():
        assert r["epoch"] == [1]
        assert math.isfinite(r["loss"][0]) and 0 < r["loss"][0] < 10
        assert 0 <= r["train_acc"][0] <= 1 and 0 <= r["test_acc"][0] <= 1
    # the same weights and batches, a different pool: different training
    assert runs["avg"]["loss"] != runs["max"]["loss"]
    assert result["data"]["train"] == 96 and result["budget"]["seeds"] == [0]


# ---------------------------------------------------------------------- 5: MLP
def test_dense_mlp_layers_see_the_input_and_every_earlier_layer():
    m = mlp.DenseMLP(10, growth=4, depth=3)
    assert [layer.in_features for layer in m.layers] == [10, 14, 18]
    assert m.head.in_features == 22
    # the output depends on the input through the head directly (a skip no plain MLP has)
    x = torch.randn(5, 10, requires_grad=True)
    for layer in m.layers:  # cut every hidden path: only the concatenation's input part remains
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    m(x).sum().backward()
    assert torch.allclose(x.grad, m.head.weight[0, :10].expand(5, 10))


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_the_plain_mlp_has_the_nearest_parameter_count(depth):
    target = mlp.count_params(mlp.DenseMLP(10, 16, depth))
    width = mlp.matching_width(10, depth, target)
    assert mlp.count_params(mlp.PlainMLP(10, width, depth)) == mlp.plain_params(10, width, depth)
    gap = abs(mlp.plain_params(10, width, depth) - target)
    for other in (width - 1, width + 1):
        assert abs(mlp.plain_params(10, other, depth) - target) >= gap


def test_matching_width_refuses_an_unreachable_target():
    with pytest.raises(ValueError, match="at least"):
        mlp.matching_width(10, 2, 5)


def test_the_mlp_comparison_runs_on_a_small_budget():
    result = mlp.run(depths=[2], growth=4, seeds=[0, 1], epochs=3, batch_size=64, lr=1e-2, log=None)
    (cfg,) = result["configs"]
    assert {(r["model"], r["seed"]) for r in cfg["runs"]} == {
        (m, s) for m in ("dense", "plain") for s in (0, 1)}
    for r in cfg["runs"]:
        assert len(r["test_mse"]) == 3 and all(0 < v < 1e5 for v in r["test_mse"])
    # least squares on diabetes: about 2,900 +- 300 on a 20% test split
    assert all(2000 < v < 4500 for v in result["least_squares_test_mse"])


# ---------------------------------------------------------------------- 3: memory
def test_memory_probe_measures_both_modes_in_fresh_processes():
    result = memory.run(backends=["torch"], preset="d2l", size=64, batch=4, threads=1,
                        pythons={"torch": sys.executable}, log=None)
    rows = {r["memory_efficient"]: r for r in result["rows"]}
    assert set(rows) == {False, True}
    for r in rows.values():
        assert r["status"] == "ok", r.get("reason")
        assert 0 < r["rss_start_mib"] <= r["rss_import_mib"] <= r["rss_build_mib"] <= r["rss_peak_mib"]
        assert r["rss_import_mib"] > 50  # importing torch alone takes more than this
        assert r["step_mib"] >= 0 and r["step_seconds"] > 0 and math.isfinite(r["loss"])
    # the same weights and batch give the same loss in both modes
    assert rows[False]["loss"] == pytest.approx(rows[True]["loss"], rel=1e-5)
    # at this size the saving is within noise; the mode must not cost more than that
    assert rows[True]["rss_peak_mib"] <= rows[False]["rss_peak_mib"] + 64


def test_memory_reports_a_missing_interpreter_as_a_failed_row():
    row = memory.measure("torch", preset="d2l", size=64, batch=4, memory_efficient=False,
                         python="/nonexistent/python")
    assert row["status"] == "failed" and "/nonexistent/python" in row["reason"]


def test_memory_merge_keeps_other_backends_rows(tmp_path):
    from densenet_multi.exercises import write_json

    def result(backend, peak):
        rows = [{"backend": backend, "memory_efficient": eff, "status": "ok", "seconds": 1.0,
                 "command": f"cmd {backend}", "rss_peak_mib": peak} for eff in (False, True)]
        return {"exercise": "memory", "preset": "d2l", "size": 64, "batch": 4, "threads": 1,
                "rows": rows, "command": f"cmd {backend}"}

    path = write_json(result("keras", 1.0), tmp_path / "memory.json")
    merged = memory.merge(result("torch", 2.0), path)
    assert [r["backend"] for r in merged["rows"]] == ["torch", "torch", "keras", "keras"]
    assert merged["command"] == "cmd torch; cmd keras"
    # another configuration is not merged
    other = {**result("torch", 2.0), "size": 224}
    assert [r["backend"] for r in memory.merge(other, path)["rows"]] == ["torch", "torch"]
