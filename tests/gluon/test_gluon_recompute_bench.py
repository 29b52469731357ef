"""``densenet_multi.bench.gluon_recompute`` on a tiny DenseNet: every variant trains the
same network (the same losses), the summary's arithmetic, and bad input. No timing is
asserted."""

from __future__ import annotations

import numpy as np
import pytest

from densenet_multi.bench import gluon_recompute as gr
from densenet_multi.spec import get_spec

SPEC = get_spec("densenet121", block_config=(2, 3), growth_rate=8, num_init_features=16,
                num_classes=10)


@pytest.fixture(scope="module")
def results():
    return {v: gr.measure(v, SPEC, batch=4, size=32, steps=2, warmup=1) for v in gr.VARIANTS[:4]}


def test_every_variant_trains_the_same_network(results):
    """The variants differ in where the work runs, not in what is computed: the first loss
    (before any update: the same weights and forward) is the same to the bit, and the
    loss after 3 SGD updates the same to float32 rounding; only this one sees the
    gradients (a variant whose pass-through or recomputation lost one moves it)."""
    first = {v: r["first_loss"] for v, r in results.items()}
    assert len(set(first.values())) == 1, first
    last = np.array([r["last_loss"] for r in results.values()])
    assert last[0] != first["default"]  # the steps trained
    np.testing.assert_allclose(last, last[0], rtol=1e-5)
    for r in results.values():
        assert r["steps"] == len(r["step_seconds"]) == 2 and r["step_seconds_median"] > 0
        assert r["preset"] == SPEC.name and r["rss_build_mib"] > 0


def test_the_recomputed_forward_is_profiled(results):
    ops = results["memory_efficient"]["recomputed_forward_ms"]
    assert {"Convolution", "BatchNorm", "Activation"} <= set(ops)
    assert "recomputed_forward_ms" not in results["default"]


def test_a_pass_through_that_drops_the_gradient_changes_the_losses(monkeypatch):
    """The check above can fail: ``custom`` with an operator whose backward writes zeros
    trains another network."""
    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        self.assign(in_grad[0], req[0], out_grad[0] * 0)
        in_grad[0].wait_to_read()

    gr._register_pass_through()
    monkeypatch.setattr(gr._pass_through, "backward", backward)
    default = gr.measure("default", SPEC, batch=4, size=32, steps=2, warmup=1)
    broken = gr.measure("custom", SPEC, batch=4, size=32, steps=2, warmup=1)
    assert broken["first_loss"] == default["first_loss"]
    assert abs(broken["last_loss"] - default["last_loss"]) > 1e-3


def test_summary_ratios_and_floor():
    def res(seconds, mib, **extra):
        return {"step_seconds_median": seconds, "steady_step_mib": mib, "last_loss": 1.0, **extra}

    rounds = [{"default": res(2.0, 1000.0), "split": res(2.2, 1100.0), "custom": res(2.4, 1000.0),
               "memory_efficient": res(3.0, 600.0, recomputed_forward_ms={"Convolution": 300.0,
                                                                          "BatchNorm": 100.0}),
               "default_unpooled": res(2.5, 2000.0), "memory_efficient_unpooled": res(5.0, 1000.0)}]
    rows = {r["variant"]: r for r in gr.summary(rounds)}
    assert rows["split"]["time_ratio"] == 1.1 and rows["split"]["memory_change"] == 0.1
    assert rows["memory_efficient"]["time_ratio"] == 1.5
    assert rows["memory_efficient"]["memory_change"] == -0.4
    # the unpooled ones against default_unpooled, not default
    assert rows["memory_efficient_unpooled"]["time_ratio"] == 2.0
    assert rows["memory_efficient_unpooled"]["memory_change"] == -0.5
    floor = rows["floor (custom + recomputed forward)"]
    assert floor["recomputed_forward_seconds"] == 0.4 and floor["time_ratio"] == 1.4
    table = gr.markdown(gr.summary(rounds))
    assert "| 1 | memory_efficient | 3.000 | 1.50x | 600 | -40% |" in table


def test_an_unknown_variant_is_refused():
    expected = "expected one of default, split, custom, memory_efficient, default_unpooled"
    with pytest.raises(ValueError, match=expected):
        gr.build("mirror", SPEC)


def test_an_unpooled_variant_needs_its_environment(monkeypatch):
    """In a process started without the allocator settings its figures would be another
    variant's: refused, not measured."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with pytest.raises(ValueError, match="expected a process started with MXNET_CPU_MEM_POOL_TYPE="):
        gr.measure("memory_efficient_unpooled", SPEC, batch=4, size=32, steps=1, warmup=0)


def test_the_unpooled_variants_run_in_their_own_processes():
    """Through the module's command line, as the full run starts them: the environment is
    set, and they train the same network as the others."""
    args = gr._parser().parse_args(["--preset", "densenet121", "--size", "32", "--batch", "2",
                                    "--steps", "1", "--warmup", "0"])
    out = gr._one("memory_efficient_unpooled", args)
    assert out["variant"] == "memory_efficient_unpooled" and out["steps"] == 1
    assert out["recomputed_forward_ms"]["Convolution"] > 0


def test_a_variant_process_past_its_timeout_is_an_error():
    args = gr._parser().parse_args(["--preset", "densenet121", "--size", "32", "--batch", "2",
                                    "--steps", "1", "--warmup", "0", "--timeout", "0.01"])
    with pytest.raises(RuntimeError, match="default: no result within 0.01 s"):
        gr._one("default", args)
