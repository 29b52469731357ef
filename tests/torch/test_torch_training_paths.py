"""Gradients, SGD steps, the memory-efficient path, channels_last, torch.compile, dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_cases import TINY, TINY_PLAIN, case, labels

import densenet_multi.torch as dt
import densenet_multi.torch.densenet as densenet_module
from densenet_multi.backend import SGD_DEFAULTS
from densenet_multi.params import param_table
from densenet_multi.reference import forward
from densenet_multi.reference_grad import gradients as ref_gradients
from densenet_multi.reference_grad import train_steps as ref_train_steps
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_all_close, assert_close, tolerance
from densenet_multi.torch.convert import canonical_tensors

SPECS = [TINY, TINY_PLAIN]


def assert_grads_close(got: dict, ref: dict, spec) -> None:
    """Compare gradients with the "grad" tolerance. A conv bias followed only by
    train-mode BatchNorms (every conv of a ``conv_bias`` spec) has a gradient that
    is exactly zero in exact arithmetic (BN subtracts the batch mean), so both sides
    are rounding noise: those are compared against the largest gradient of the net."""
    biases = {p.name for p in param_table(spec) if p.kind == "conv_bias"}
    assert_all_close({k: v for k, v in got.items() if k not in biases},
                     {k: v for k, v in ref.items() if k not in biases}, "grad")
    scale = max(float(np.max(np.abs(v))) for v in ref.values())
    for k in biases:
        assert np.max(np.abs(got[k] - ref[k])) <= tolerance("grad") * scale, k


# ---------------------------------------------------------------------- gradients, SGD
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_gradients_match_reference(spec):
    spec, params, x = case(spec, 8, batch=3, seed=21)
    y = labels(spec, 3, seed=21)
    model = dt.load_canonical(dt.build(spec), params)
    got = dt.gradients(model, x, y)
    ref = ref_gradients(spec, params, x, y)
    assert abs(got.loss - ref.loss) <= 1e-5 * abs(ref.loss)
    assert_grads_close(got.params, ref.params, spec)
    assert_close(got.input, ref.input, "grad")
    # gradients() leaves the model as it was: weights, running stats, .grad fields
    after = dt.export_canonical(model)
    assert all(np.array_equal(after[k], params[k]) for k in params)
    assert all(p.grad is None for p in model.parameters())


def test_gradients_match_reference_densenet121_float64():
    """Train-mode gradients of a deep net at a tiny input are ill-conditioned in
    float32 (the float32 reference is 4.5% off its own float64 run in some BN biases
    of DenseNet-121 at 64x64, batch 2), so the deep check runs in float64."""
    spec, params, x = case(get_spec("densenet121", num_classes=10), 64, batch=2, seed=22,
                           dtype="float64")
    y = labels(spec, 2, seed=22)
    got = dt.gradients(dt.load_canonical(dt.build(spec, dtype="float64"), params), x, y)
    ref = ref_gradients(spec, params, x, y)
    assert_all_close(got.params, ref.params, "grad", "float64")
    assert_close(got.input, ref.input, "grad", "float64")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_train_steps_follow_reference_trajectory(spec):
    spec, params, _ = case(spec, 8, seed=23)
    rng = np.random.Generator(np.random.PCG64(23))
    batches = [(rng.standard_normal((4, spec.in_channels, 8, 8)).astype(np.float32),
                rng.integers(0, spec.num_classes, 4)) for _ in range(3)]
    model = dt.load_canonical(dt.build(spec), params)
    losses = dt.train_steps(model, batches, **SGD_DEFAULTS)
    ref_losses, ref_params = ref_train_steps(spec, params, batches, **SGD_DEFAULTS)
    assert_close(np.array(losses), np.array(ref_losses), "trajectory")
    assert_all_close(dt.export_canonical(model), ref_params, "trajectory")


# ---------------------------------------------------------------------- memory efficient
def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    return out.detach(), grads, x.grad


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_memory_efficient_same_outputs_gradients_and_running_stats(spec, monkeypatch):
    """pytorch/vision #2221: outputs and gradients equal, every parameter gets one."""
    spec, params, x = case(spec, 8, batch=3, seed=24)
    y = torch.from_numpy(labels(spec, 3, seed=24))
    plain = dt.load_canonical(dt.build(spec), params).train()
    eff = dt.load_canonical(dt.build(spec, memory_efficient=True), params).train()
    calls = []
    real = densenet_module.cp.checkpoint
    monkeypatch.setattr(densenet_module.cp, "checkpoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    xt = torch.from_numpy(x)
    out_p, g_p, gx_p = _loss_and_grads(plain, xt, y)
    out_e, g_e, gx_e = _loss_and_grads(eff, xt, y)
    n_layers = sum(spec.block_config)
    assert len(calls) == n_layers  # every dense layer was checkpointed
    torch.testing.assert_close(out_e, out_p, rtol=0, atol=0)
    assert set(g_e) == set(g_p)
    for k in g_p:
        assert g_e[k] is not None, f"{k} got no gradient on the memory-efficient path"
        torch.testing.assert_close(g_e[k], g_p[k], rtol=1e-6, atol=1e-7, msg=k)
    torch.testing.assert_close(gx_e, gx_p, rtol=1e-6, atol=1e-7)
    # the recomputation must not update the BN running statistics a second time
    a, b = dt.export_canonical(plain), dt.export_canonical(eff)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_memory_efficient_checkpoints_only_when_grad_is_needed(monkeypatch):
    spec, params, x = case(TINY, 8, seed=25)
    model = dt.load_canonical(dt.build(spec, memory_efficient=True), params).eval()
    calls = []
    monkeypatch.setattr(densenet_module.cp, "checkpoint", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        model(torch.from_numpy(x))
    assert calls == []
    out = dt.run(model, x)
    assert_all_close(out.stages, forward(spec, params, x).stages, "eval")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_plain_checkpoint_loads_into_a_memory_efficient_model(spec, tmp_path):
    """memory_efficient is a runtime option, not part of the spec: a checkpoint saved
    from a plain model loads into a memory-efficient one, with the same outputs and
    gradients (and the plain model's running statistics after a training pass)."""
    spec, params, x = case(spec, 8, batch=3, seed=30)
    y = labels(spec, 3, seed=30)
    plain = dt.load_canonical(dt.build(spec), params)
    path = dt.save_checkpoint(plain, tmp_path / "plain.safetensors")
    eff = dt.load_checkpoint(path, memory_efficient=True)
    assert eff.spec == plain.spec
    assert all(m.memory_efficient for m in eff.modules() if isinstance(m, dt.DenseLayer))
    for train in (False, True):
        a, b = dt.run(plain, x, train=train), dt.run(eff, x, train=train)
        for k in spec.stage_names:
            np.testing.assert_array_equal(b.stages[k], a.stages[k], err_msg=k)
    ga, gb = dt.gradients(plain, x, y), dt.gradients(eff, x, y)
    assert gb.loss == ga.loss
    for k in ga.params:
        np.testing.assert_allclose(gb.params[k], ga.params[k], rtol=1e-6, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(gb.input, ga.input, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------- memory format, compile
def test_channels_last_matches_reference():
    spec, params, x = case("d2l", 32, batch=2, seed=26)
    model = dt.load_canonical(dt.build(spec), params).eval().to(memory_format=torch.channels_last)
    assert model.features.conv0.weight.is_contiguous(memory_format=torch.channels_last)
    xt = torch.from_numpy(x).to(memory_format=torch.channels_last)
    with torch.no_grad():
        stages = model.forward_stages(xt)
    assert stages["block1"].is_contiguous(memory_format=torch.channels_last)
    ref = forward(spec, params, x)
    assert_all_close({k: v.numpy() for k, v in stages.items()}, ref.stages, "eval")


def test_torch_compile_fullgraph_matches_eager():
    spec, params, x = case(TINY, 8, batch=2, seed=27)
    model = dt.load_canonical(dt.build(spec), params).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    xt = torch.from_numpy(x)
    with torch.no_grad():
        got = compiled(xt)
    assert_close(got.numpy(), forward(spec, params, x).logits, "eval")
    # train mode, through the backward pass: the same gradients as eager
    y = torch.from_numpy(labels(spec, 2, seed=27))
    grads = []
    for m in (compiled, model):
        model.zero_grad(set_to_none=True)
        model.train()
        F.cross_entropy(m(xt), y).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[1]:
        assert_close(grads[0][k].numpy(), grads[1][k].numpy(), "grad", name=k)


# ---------------------------------------------------------------------- dropout
def test_dropout_statistics():
    spec, params, x = case(TINY_PLAIN.replace(drop_rate=0.5), 8, batch=4, seed=28)
    model = dt.load_canonical(dt.build(spec), params)
    layer = model.features.denseblock1.denselayer1
    xt = torch.from_numpy(x)
    stem = model.features.conv0(xt)
    torch.manual_seed(0)
    with torch.no_grad():
        model.eval()
        e1, e2 = layer([stem]), layer([stem])
        model.train()
        t1, t2 = layer([stem]), layer([stem])
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)  # eval: deterministic, no dropout
    assert not torch.equal(t1, t2)  # train: a new mask each call
    # with the BN in train mode the pre-dropout map is conv(relu(bn_batch(x))): recompute it
    with torch.no_grad():
        pre = layer.conv(F.relu(layer.norm(stem)))
    nonzero = pre != 0
    zeroed = ((t1 == 0) & nonzero).sum().item() / nonzero.sum().item()
    assert abs(zeroed - 0.5) < 0.05, zeroed  # 2048 values: 5 sigma is about 0.055
    kept = t1[t1 != 0]
    torch.testing.assert_close(kept, (pre * 2)[t1 != 0])  # inverted dropout scales by 1/(1-p)
    # eval-mode outputs of the whole network with dropout match the reference without it
    # (reloaded: the train-mode calls above moved the first layer's running statistics)
    out = dt.run(dt.load_canonical(model, params).eval(), x)
    assert_all_close(out.stages, forward(spec.replace(drop_rate=0.0), params, x).stages, "eval")


def test_train_steps_follow_reference_trajectory_densenet40_float64():
    """A deep net's SGD trajectory is ill-conditioned in float32 (the float32 reference
    drifts 5e-4 from float64 in 3 steps of DenseNet-40 at 32x32, batch 2), so the deep
    check runs in float64."""
    spec, params, _ = case("densenet40_k12", 16, dtype="float64", seed=29)
    rng = np.random.Generator(np.random.PCG64(29))
    batches = [(rng.standard_normal((2, 3, 16, 16)), rng.integers(0, 10, 2)) for _ in range(2)]
    model = dt.load_canonical(dt.build(spec, dtype="float64"), params)
    losses = dt.train_steps(model, batches, **SGD_DEFAULTS)
    ref_losses, ref_params = ref_train_steps(spec, params, batches, **SGD_DEFAULTS)
    assert_close(np.array(losses), np.array(ref_losses), "trajectory", "float64")
    # all of it, running statistics included: PyTorch's update rule is the canonical one
    got = {name: t.detach().numpy() for _, name, _, t in canonical_tensors(model)}
    assert_all_close(got, ref_params, "trajectory", "float64")
