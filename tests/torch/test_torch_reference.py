"""The PyTorch DenseNet against the NumPy reference: every stage, eval and train mode,
running statistics, canonical round trip, parameter counts and state_dict names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_cases import PRESET_CASES, TINY, TINY_PLAIN, case

import densenet_multi.torch as dt
from densenet_multi.params import init_params, module_table, param_table
from densenet_multi.reference import forward
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_all_close, assert_close

PRESETS = list(PRESET_CASES)


@pytest.fixture(scope="module", params=PRESETS)
def loaded(request):
    name = request.param
    spec = get_spec(name)
    model = dt.build(spec, seed=3)
    return name, model


def test_state_dict_keys_are_the_canonical_names(loaded):
    name, model = loaded
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert keys == [p.name for p in param_table(model.spec)]


def test_resolve_agrees_with_state_dict_names(loaded):
    _, model = loaded
    modules = dict(model.named_modules())
    for ref in module_table(model.spec):
        assert dt.resolve(model, ref.part) is modules[ref.prefix], ref.prefix


def test_trainable_parameter_count_matches_spec(loaded):
    _, model = loaded
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == model.spec.num_params()


def test_densenet121_parameter_count():
    assert sum(p.numel() for p in dt.densenet121().parameters()) == 7_978_856


def test_stage_shapes_match_spec(loaded):
    name, model = loaded
    size = PRESET_CASES[name][0]
    x = torch.zeros(1, model.spec.in_channels, size, size)
    with torch.no_grad():
        stages = model.eval().forward_stages(x)
    assert list(stages) == list(model.spec.stage_names)
    for k, shape in model.spec.stage_shapes(size, size).items():
        assert tuple(stages[k].shape) == (1, *shape), k


def test_canonical_round_trip_is_bit_exact(loaded):
    name, model = loaded
    spec, params, _ = case(name, 8, seed=11)
    dt.load_canonical(model, params)
    out = dt.export_canonical(model)
    assert list(out) == list(params)
    for k, v in params.items():
        assert out[k].dtype == np.float32 and np.array_equal(out[k], v), k


@pytest.mark.parametrize("name", PRESETS)
def test_eval_matches_reference(name):
    size = PRESET_CASES[name][0]
    spec, params, x = case(name, size, 2, seed=1)
    model = dt.load_canonical(dt.build(spec), params)
    out = dt.run(model, x)
    ref = forward(spec, params, x)
    assert out.running is None
    assert_all_close(out.stages, ref.stages, "eval", order=spec.stage_names)
    assert_close(out.logits, ref.logits, "eval")


@pytest.mark.parametrize("name", PRESETS)
def test_train_mode_matches_reference(name):
    _, size, batch = PRESET_CASES[name]
    spec, params, x = case(name, size, batch, seed=2)
    model = dt.load_canonical(dt.build(spec), params).eval()
    out = dt.run(model, x, train=True)
    ref = forward(spec, params, x, train=True)
    assert_all_close(out.stages, ref.stages, "train", order=spec.stage_names)
    assert_all_close(out.running, ref.running, "running")
    # run() is side-effect free: the model still holds the loaded statistics.
    after = dt.export_canonical(model)
    assert all(np.array_equal(after[k], params[k]) for k in params)
    assert not model.training


def test_train_mode_really_updates_running_stats_in_pytorch_convention():
    """One plain train-mode forward of the module updates running_var with the
    *unbiased* batch variance and momentum 0.1 as the weight of the new value."""
    spec, params, x = case(TINY, 8, batch=3, seed=4)
    model = dt.load_canonical(dt.build(spec), params).train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    ref = forward(spec, params, x, train=True)
    got = dt.export_canonical(model)
    assert_all_close({k: got[k] for k in ref.running}, ref.running, "running")


@pytest.mark.parametrize("spec", [TINY, TINY_PLAIN], ids=lambda s: s.name)
def test_float64_model_matches_float64_reference(spec):
    spec, params, x = case(spec, 8, batch=2, seed=5, dtype="float64")
    model = dt.load_canonical(dt.build(spec, dtype="float64"), params)
    for train in (False, True):
        out = dt.run(model, x, train=train)
        ref = forward(spec, params, x, train=train)
        assert out.logits.dtype == np.float64
        assert_all_close(out.stages, ref.stages, "eval" if not train else "train", "float64")
        if train:
            assert_all_close(out.running, ref.running, "running", "float64")
    exported = dt.export_canonical(model)
    assert {a.dtype for a in exported.values()} == {np.dtype(np.float64)}
    for k, v in params.items():  # float64 in, float64 out, bit for bit
        np.testing.assert_array_equal(exported[k], v)
    # a .double()'d model is the same thing
    assert dt.export_canonical(dt.load_canonical(dt.build(spec).double(), params)).keys() == params.keys()


def test_build_dtype():
    assert dt.build(TINY).classifier.weight.dtype == torch.float32
    assert dt.export_canonical(dt.build(TINY))["classifier.weight"].dtype == np.float32
    assert dt.export_canonical(dt.build(TINY).half())["classifier.weight"].dtype == np.float32
    with pytest.raises(ValueError, match=r"one of \('float32', 'float64'\), got 'float16'"):
        dt.build(TINY, dtype="float16")


def test_float32_model_casts_float64_input():
    spec, params, x = case(TINY, 8, seed=6)
    model = dt.load_canonical(dt.build(spec), params)
    out = dt.run(model, x.astype(np.float64))
    assert out.logits.dtype == np.float32
    assert_close(out.logits, forward(spec, params, x).logits, "eval")


def test_forward_equals_forward_stages_logits():
    spec, params, x = case(TINY, 8, seed=7)
    model = dt.load_canonical(dt.build(spec), params).eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        assert torch.equal(model(xt), model.forward_stages(xt)["logits"])
        assert torch.equal(model.forward_head(model.forward_features(xt), pre_logits=True),
                           model.forward_stages(xt)["pooled"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", [TINY, TINY_PLAIN, get_spec("d2l")], ids=lambda s: s.name)
def test_build_holds_the_canonical_seeded_weights_bit_for_bit(spec, dtype):
    """build() gives init_params(spec, seed): the same arrays as every other backend."""
    got = dt.export_canonical(dt.build(spec, seed=3, dtype=dtype))
    want = init_params(spec, 3, dtype=dtype)
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def test_build_is_seeded():
    a, b, c = (dt.export_canonical(dt.build(TINY_PLAIN, seed=s)) for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["features.conv0.weight"], c["features.conv0.weight"])


def test_model_class_keeps_torchvisions_own_init():
    """DenseNet(spec) used directly initialises like torchvision: Kaiming-normal convs
    (std sqrt(2 / fan_in)), BN 1/0, a zero classifier bias."""
    torch.manual_seed(0)
    model = dt.DenseNet(get_spec("densenet121"))
    w = model.features.denseblock3.denselayer20.conv1.weight  # 128 x 864 x 1 x 1
    assert abs(w.std().item() / (2 / 864) ** 0.5 - 1) < 0.02
    assert torch.all(model.features.norm5.weight == 1) and torch.all(model.classifier.bias == 0)


def test_run_in_train_mode_leaves_the_model_exactly_as_it_was():
    """Every parameter and buffer (running statistics, num_batches_tracked) and the mode."""
    spec, params, x = case(TINY, 8, batch=3, seed=8)
    model = dt.load_canonical(dt.build(spec), params)
    for mode in (False, True):
        model.train(mode)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        out = dt.run(model, x, train=True)
        assert out.running is not None and model.training == mode
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
    # the returned statistics are the updated ones, not the model's
    assert not np.array_equal(out.running["features.norm5.running_mean"],
                              params["features.norm5.running_mean"])


def test_the_textbook_parts_from_their_constructors():
    """d2l's examples: a 2-layer block with k=10 takes 3 channels to 23, a transition to
    10 channels halves the size; a dense layer returns only its k new maps."""
    spec = get_spec("d2l", growth_rate=10)
    x = torch.randn(4, 3, 8, 8)
    block = dt.DenseBlock(spec, 3, 2)
    assert list(dict(block.named_children())) == ["denselayer1", "denselayer2"]
    y = block(x)
    assert y.shape == (4, 23, 8, 8)
    assert torch.equal(y[:, :3], x)  # the block input is passed through
    assert dt.Transition(spec, 23, 10)(y).shape == (4, 10, 4, 4)
    assert dt.DenseLayer(spec, 3)(x).shape == (4, 10, 8, 8)
    assert dt.DenseLayer(spec, 13)([x, torch.randn(4, 10, 8, 8)]).shape == (4, 10, 8, 8)
    assert dt.ConvBlock(spec, 3, 7, spec.growth_conv)(x).shape == (4, 7, 8, 8)
    bottleneck = dt.DenseLayer(get_spec("densenet121"), 64)
    assert [n for n, _ in bottleneck.named_children()] == ["norm1", "conv1", "norm2", "conv2"]


def test_from_spec_and_presets():
    model = dt.from_spec("densenet121", num_classes=10, memory_efficient=True)
    assert model.spec == get_spec("densenet121", num_classes=10)
    assert model.classifier.out_features == 10
    assert all(m.memory_efficient for m in model.modules() if isinstance(m, dt.DenseLayer))
    assert dt.densenet169(num_classes=5).spec == get_spec("densenet169", num_classes=5)
    assert not dt.densenet121().features.denseblock1.denselayer1.memory_efficient


def test_densenet121_state_dict_matches_golden_torchvision_keys():
    """tests/spec/golden_densenet121_keys.txt: torchvision's key list and shapes (frozen)."""
    from pathlib import Path

    golden = Path(__file__).resolve().parents[1] / "spec" / "golden_densenet121_keys.txt"
    lines = [ln for ln in golden.read_text().splitlines() if ln and not ln.startswith("#")]
    ours = [f"{k} {tuple(v.shape)}" for k, v in dt.densenet121().state_dict().items()
            if not k.endswith("num_batches_tracked")]
    assert ours == lines
