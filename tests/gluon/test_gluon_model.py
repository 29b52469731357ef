"""The Gluon DenseNet against the NumPy reference, hybridized and not; conversions; structure;
the parts from their constructors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import mxnet as mx
import numpy as np
import pytest
from gluon_cases import PRESET_SIZES, batch

import densenet_multi.gluon as G
from densenet_multi import reference
from densenet_multi.gluon import (
    DenseLayer,
    DenseNet,
    build,
    export_canonical,
    load_canonical,
    resolve,
    run,
)
from densenet_multi.gluon.layers import TwoPassBatchNorm
from densenet_multi.params import ParameterError, init_params, module_table, param_table
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_all_close, assert_close

PRESETS = list(PRESET_SIZES)
#: Gluon's BatchNorm attribute -> the canonical one
CANONICAL_ATTR = {"gamma": "weight", "beta": "bias"}


def _canonical_key(structural: str, prefix: str = "") -> str:
    """A structural Gluon parameter key ("features.norm0.gamma") as a canonical name."""
    head, _, attr = structural.rpartition(".")
    return f"{prefix}{head}.{CANONICAL_ATTR.get(attr, attr)}"


def _loaded(case_cache, name, hybridize=False):
    spec, params = case_cache(name)
    net = build(spec, hybridize=hybridize)
    load_canonical(net, params)
    return spec, params, net


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("name", PRESETS)
def test_eval_matches_reference(case_cache, name, hybridize):
    spec, params, net = _loaded(case_cache, name, hybridize)
    x = batch(spec, PRESET_SIZES[name])
    # float64 reference: the backend's own float32 error, not the sum of two
    ref = reference.forward(spec, params, x, dtype="float64")
    out = run(net, x)
    assert list(out.stages) == list(spec.stage_names)
    assert_all_close(out.stages, ref.stages, "eval", order=spec.stage_names)
    assert_close(out.logits, ref.logits, "eval")


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("name", PRESETS)
def test_train_mode_and_running_stats_match_reference(case_cache, name, hybridize):
    spec, params, net = _loaded(case_cache, name, hybridize)
    # norm5 normalises over N*H*W values per channel; an ImageNet-stem net at 32x32
    # ends in 1x1 maps, and BN over 2 values is ill-conditioned (it divides by
    # |a - b|), so the ImageNet-stem nets run at 64x64 (2x2 maps) with 4 samples.
    size, n = (64, 4) if spec.stem == "imagenet" else (PRESET_SIZES[name], 2)
    x = batch(spec, size, n=n, seed=3)
    ref = reference.forward(spec, params, x, train=True, dtype="float64")
    out = run(net, x, train=True)
    assert_all_close(out.stages, ref.stages, "train", order=spec.stage_names)
    assert_all_close(out.running, ref.running, "running")
    # run() leaves the model exactly as it was (every parameter AND running statistic,
    # which MXNet updates in the backward pass run() needs); MXNet's own are in extras
    after = export_canonical(net)
    assert list(after) == list(params)
    for k, v in params.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    native = out.extras["mxnet_running"]
    assert set(native) == set(ref.running)
    var_names = [k for k in native if k.endswith("running_var")]
    assert any(not np.array_equal(native[k], out.running[k]) for k in var_names)


@pytest.mark.parametrize("variant", ["imperative", "hybridized", "operator_bn"])
def test_train_mode_runs_a_backward_pass_only_where_the_operator_runs(monkeypatch, variant):
    """run(train=True) needs a backward pass where MXNet's BN operator keeps the running
    statistics (a hybridized net; a BN off the two-pass path, here one with fix_gamma)
    and skips it where every BN is TwoPassBatchNorm run imperatively (it updates them in
    the forward pass). Either way every BN's statistics move."""
    spec = get_spec("densenet40_k12", block_config=(2, 2, 2))
    net = build(spec, hybridize=variant == "hybridized")
    if variant == "operator_bn":
        norms = []
        net.apply(lambda b: norms.append(b) if isinstance(b, TwoPassBatchNorm) else None)
        norms[0]._kwargs["fix_gamma"] = True  # gamma is 1 at build: the same function
    before = export_canonical(net)
    calls = []
    grad = G.runtime.autograd.grad
    monkeypatch.setattr(G.runtime.autograd, "grad",
                        lambda *a, **k: calls.append(1) or grad(*a, **k))
    out = run(net, batch(spec, 8, n=2, seed=1), train=True)
    assert len(calls) == (0 if variant == "imperative" else 1)
    moved = {k: not np.array_equal(v, before[k]) for k, v in out.extras["mxnet_running"].items()
             if k.endswith("running_mean")}
    assert len(moved) == 2 * 3 + 2 + 1 and all(moved.values()), moved  # layers, transitions, norm5


@pytest.mark.parametrize("name", PRESETS)
def test_hybridized_equals_imperative(case_cache, name):
    spec, params = case_cache(name)
    x = batch(spec, PRESET_SIZES[name], seed=5)
    plain = build(spec)
    hyb = build(spec, hybridize=True)
    for net in (plain, hyb):
        load_canonical(net, params)
    a, b = run(plain, x), run(hyb, x)
    # oneDNN picks other memory layouts inside a cached graph: equal to ~1e-7 of
    # the magnitude, bit-identical without oneDNN (test below)
    assert_all_close(b.stages, a.stages, "eval")
    # __call__ (hybrid_forward) and forward_stages compute the same logits
    xd = mx.nd.array(x)
    np.testing.assert_array_equal(plain(xd).asnumpy(), a.logits)
    assert_close(hyb(xd).asnumpy(), b.logits, "eval")


def test_hybridized_bit_identical_without_onednn():
    """Eval mode: the same operators, bit for bit. Train mode: hybridized, BatchNorm is
    MXNet's operator, imperatively our two-pass statistics (see TwoPassBatchNorm): equal
    to the train tolerance, the imperative one closer to the float64 reference."""
    code = (
        "import numpy as np, mxnet as mx\n"
        "from densenet_multi.spec import get_spec\n"
        "from densenet_multi.params import init_params\n"
        "from densenet_multi.gluon import build, load_canonical, run\n"
        "from densenet_multi.reference import forward\n"
        "from densenet_multi.testing import assert_all_close, compare\n"
        "spec = get_spec('d2l'); p = init_params(spec, 1, nontrivial_bn=True)\n"
        "x = np.random.default_rng(0).standard_normal((4, 1, 64, 64)).astype('f4')\n"
        "outs = []\n"
        "for h in (False, True):\n"
        "    net = build(spec, hybridize=h); load_canonical(net, p)\n"
        "    outs.append(run(net, x)); outs.append(run(net, x, train=True))\n"
        "for k in outs[0].stages: assert np.array_equal(outs[0].stages[k], outs[2].stages[k]), k\n"
        "assert_all_close(outs[3].stages, outs[1].stages, 'train')\n"
        "assert_all_close(outs[3].running, outs[1].running, 'running')\n"
        "ref = forward(spec, p, x, train=True, dtype='float64')\n"
        "err = [max(compare(k, o.stages[k], ref.stages[k], 1.0).rel for k in ref.stages)\n"
        "       for o in (outs[1], outs[3])]\n"
        "assert err[0] < err[1], err\n"
        "print('identical', err)\n"
    )
    env = dict(os.environ, MXNET_MKLDNN_ENABLED="0")
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "identical" in res.stdout


def graph_ops(net: DenseNet) -> dict[str, int]:
    """Operator -> count in the network's symbolic graph (what ``hybridize()`` caches)."""
    nodes = json.loads(net(mx.sym.var("data")).tojson())["nodes"]
    return dict(Counter(n["op"] for n in nodes if n["op"] != "null"))


@pytest.mark.parametrize("name", ["densenet121", "densenet40_k12"])
def test_cached_graph_takes_onednns_fast_operators_where_it_can(name):
    """The speed of the hybridized network (the Gluon model zoo's at DenseNet-121):
    oneDNN's ReLU (the Activation operator) in every unit, not the generic relu, which
    converts oneDNN's blocked layouts back and forth; 4-d concatenations where every
    channel offset is a multiple of oneDNN's channel block (DenseNet-121: 64 + 32i),
    and the slower 5-d ones only where the 4-d one fails in the backward pass
    (densenet40_k12: 16 + 12i; that failure is what the hybridized train-mode test
    above runs into with 4-d concats)."""
    spec = get_spec(name)
    ops = graph_ops(DenseNet(spec))
    layers, blocks = sum(spec.block_config), spec.num_blocks
    # one per BN-ReLU-conv unit (one or two per dense layer, one per transition) and
    # the stem's; the generic relu only once, on the final 7x7 features (fluent x.relu())
    units = layers * (2 if spec.bottleneck_channels else 1) + (blocks - 1)
    assert ops["Activation"] == units + (spec.stem == "imagenet")
    assert ops["relu"] == 1
    # one per dense layer but a block's first (its input alone), and one per block output
    assert ops["Concat"] == (layers - blocks) + blocks
    five_d = 0 if name == "densenet121" else ops["Concat"]  # one squeeze per 5-d concat
    assert ops.get("squeeze", 0) == five_d
    assert ("expand_dims" in ops) == (five_d > 0)


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip_bit_exact_and_counts(case_cache, name):
    spec, params, net = _loaded(case_cache, name)
    out = export_canonical(net)
    assert list(out) == [p.name for p in param_table(spec)]
    for k, v in params.items():
        assert out[k].dtype == np.float32 and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)
    trainable = [p for p in net.collect_params().values() if p.grad_req != "null"]
    assert sum(int(np.prod(p.shape)) for p in trainable) == spec.num_params()
    total = sum(int(np.prod(p.shape)) for p in net.collect_params().values())
    assert total == spec.num_params(trainable_only=False)


def test_densenet121_param_count_is_torchvisions():
    spec = get_spec("densenet121")
    net = DenseNet(spec)  # no initialisation needed: every shape is known up front
    counted = sum(int(np.prod(p.shape)) for p in net.collect_params().values()
                  if p.grad_req != "null")
    assert counted == spec.num_params() == 7_978_856


def test_children_have_the_canonical_names():
    """features: conv0, norm0, relu0, pool0, denseblock1, transition1, ..., norm5 (torchvision's
    order); dense layers denselayer1..N with flat norm1/conv1/norm2/conv2; the structural
    parameter keys (save_parameters) are the canonical names with Gluon's gamma/beta."""
    net = G.densenet121()
    names = list(net.features._children)
    assert names == ["conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1",
                     "denseblock2", "transition2", "denseblock3", "transition3", "denseblock4",
                     "norm5"]
    assert list(net._children) == ["features", "classifier"]
    assert list(net.features.denseblock3._children) == [f"denselayer{i}" for i in range(1, 25)]
    assert list(net.features.denseblock1.denselayer1._children) == ["norm1", "conv1", "norm2",
                                                                     "conv2"]
    assert list(net.features.transition1._children) == ["norm", "conv", "pool"]
    assert isinstance(net.features.transition1, G.ConvBlock)
    keys = [_canonical_key(k) for k in net._collect_params_with_prefix()]
    assert keys == [p.name for p in param_table(net.spec)]
    cifar = DenseNet(get_spec("densenet40_k12"))
    assert list(cifar.features._children)[:2] == ["conv0", "denseblock1"]
    assert list(cifar.features.denseblock1.denselayer1._children) == ["norm", "conv"]


def test_from_spec_and_presets():
    net = G.from_spec("densenet121", num_classes=10, memory_efficient=True)
    assert net.spec == get_spec("densenet121", num_classes=10)
    assert net.classifier.weight.shape == (10, 1024)
    layers = [c for b in net.features._children.values() if isinstance(b, G.DenseBlock)
              for c in b._children.values()]
    assert len(layers) == 58 and all(layer.memory_efficient for layer in layers)
    assert G.from_spec(get_spec("d2l"), growth_rate=8).spec == get_spec("d2l", growth_rate=8)
    for depth in (121, 161, 169, 201):
        net = getattr(G, f"densenet{depth}")(num_classes=5)
        assert net.spec == get_spec(f"densenet{depth}", num_classes=5)
        assert not net.features.denseblock1.denselayer1.memory_efficient


def _part_params(block, prefix, rng):
    """Random canonical values for a part's parameters (BN statistics non-trivial),
    copied into the block; returns {canonical name: array} under ``prefix``."""
    block.initialize()
    out = {}
    for key, p in block._collect_params_with_prefix().items():
        name = _canonical_key(key, prefix)
        if key.endswith(("gamma", "running_var")):
            value = rng.uniform(0.5, 1.5, p.shape)
        else:
            value = rng.normal(0.0, 0.3, p.shape)
        out[name] = value.astype(np.float32)
        p.set_data(mx.nd.array(out[name]))
    return out


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_the_textbook_parts_from_their_constructors(train):
    """d2l's examples, against the NumPy reference's parts: a 2-layer block with k=10 takes
    3 channels to 23 (passing its input through), a transition to 10 channels halves the
    size, a dense layer returns only its k new maps."""
    spec = get_spec("d2l", growth_rate=10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    block, trans = G.DenseBlock(spec, 3, 2), G.Transition(spec, 23, 10)
    assert list(block._children) == ["denselayer1", "denselayer2"]
    p = {**_part_params(block, "features.denseblock1.", rng),
         **_part_params(trans, "features.transition1.", rng)}
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    x64 = x.astype(np.float64)
    check = "train" if train else "eval"
    with mx.autograd.record(train_mode=train):
        # a layer takes the block input and every earlier layer's maps: layer 2 sees 3 + 10
        first = block.denselayer1(mx.nd.array(x))
        new = block.denselayer2(mx.nd.array(x), first)
        y = block(mx.nd.array(x))
        z = trans(y)
    assert first.shape == new.shape == (4, 10, 8, 8)
    new_ref = reference.dense_layer(reference._Ctx(spec, p64, train),
                                    np.concatenate([x64, first.asnumpy()], 1),
                                    "features.denseblock1.denselayer2")
    assert_close(new.asnumpy(), new_ref, check, name="layer")
    ctx = reference._Ctx(spec, p64, train)
    y_ref = reference.dense_block(ctx, x64, 1, 2)
    z_ref = reference.transition(ctx, y_ref, 1)
    assert y.shape == (4, 23, 8, 8) and z.shape == (4, 10, 4, 4)
    np.testing.assert_array_equal(y.asnumpy()[:, :3], x)  # the block input passes through
    assert_close(y.asnumpy(), y_ref, check, name="block")
    assert_close(z.asnumpy(), z_ref, check, name="transition")
    assert G.ConvBlock(spec, 3, 7, spec.growth_conv).conv.weight.shape == (7, 3, 3, 3)
    bottleneck = DenseLayer(get_spec("densenet121"), 64)
    assert list(bottleneck._children) == ["norm1", "conv1", "norm2", "conv2"]
    assert bottleneck.conv2.weight.shape == (32, 128, 3, 3)


def test_forward_features_and_head_compose_the_call(case_cache):
    """net(x) = forward_head(forward_features(x)), imperatively and hybridized, and the
    pieces are forward_stages' features and pooled stages."""
    spec, params = case_cache("densenet_bc_100_k12")
    x = mx.nd.array(batch(spec, 16, seed=2))
    for hybridize in (False, True):
        net = build(spec, hybridize=hybridize)
        load_canonical(net, params)
        stages = net.forward_stages(x)
        feats = net.forward_features(x)
        # forward_stages runs each child's cached graph, forward_features the one graph of
        # `features`: oneDNN picks its layouts per graph, so hybridized they agree to
        # rounding (~1e-7 of the magnitude), imperatively bit for bit
        same = assert_close if hybridize else np.testing.assert_array_equal
        args = ("eval",) if hybridize else ()
        same(feats.asnumpy(), stages["features"].asnumpy(), *args)
        pooled = net.forward_head(feats, pre_logits=True)
        same(pooled.asnumpy(), stages["pooled"].asnumpy(), *args)
        same(net.forward_head(feats).asnumpy(), stages["logits"].asnumpy(), *args)
        assert_close(net(x).asnumpy(), stages["logits"].asnumpy(), "eval")


def test_structural_resolution_is_independent_of_gluon_counters(case_cache):
    """A second network in the same program gets other Gluon prefixes (densenet1_...);
    loading and exporting go by structure, so nothing changes."""
    spec, params = case_cache("densenet_bc_100_k12")
    a, b = build(spec), build(spec)
    assert a.prefix != b.prefix
    load_canonical(b, params)
    for k, v in export_canonical(b).items():
        np.testing.assert_array_equal(v, params[k])
    # every canonical module resolves to a distinct layer of the right type
    layers = [resolve(a, ref.part) for ref in module_table(spec)]
    assert len({id(layer) for layer in layers}) == len(layers)
    kinds = {"conv": mx.gluon.nn.Conv2D, "bn": mx.gluon.nn.BatchNorm, "linear": mx.gluon.nn.Dense}
    for ref, layer in zip(module_table(spec), layers, strict=True):
        assert isinstance(layer, kinds[ref.kind]), ref.prefix


def test_batchnorm_conventions():
    spec = get_spec("d2l", bn_eps=1.001e-5, bn_momentum=0.25)
    net = build(spec)
    bn = net.features.norm5
    assert bn._kwargs["eps"] == pytest.approx(1.001e-5)
    assert bn._kwargs["momentum"] == pytest.approx(0.75)


def test_bad_parameters_copy_nothing(case_cache):
    spec, params, net = _loaded(case_cache, "d2l")
    before = export_canonical(net)
    bad = {k: v + 1 for k, v in params.items()}
    bad.pop("features.norm5.running_var")
    bad["features.conv0.weight"] = np.zeros((3, 3), np.float32)
    bad["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ParameterError) as e:
        load_canonical(net, bad)
    msg = str(e.value)
    assert "features.norm5.running_var" in msg and "extra.weight" in msg
    assert "features.conv0.weight" in msg
    after = export_canonical(net)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


@pytest.mark.parametrize("name", ["d2l", "densenet_bc_100_k12"])
def test_plain_checkpoint_loads_into_a_memory_efficient_network(case_cache, name, tmp_path):
    """memory_efficient is a build/constructor option, not part of the spec: a checkpoint
    saved from a plain network loads into a memory-efficient one, with the same outputs,
    running statistics and gradients (the forward pass runs the same operators: bit for
    bit; the gradients sum in another order: to the tolerance; see
    test_gluon_memory_efficient.py)."""
    spec, params = case_cache(name)
    size, n = (64, 4) if spec.stem == "imagenet" else (16, 2)
    x = batch(spec, size, n=n, seed=7)
    labels = np.arange(n) % spec.num_classes
    plain = build(spec)
    load_canonical(plain, params)
    path = G.save_checkpoint(plain, tmp_path / "plain.safetensors")
    eff = G.load_checkpoint(path, memory_efficient=True)
    assert eff.spec == plain.spec
    layers = [c for b in eff.features._children.values() if isinstance(b, G.DenseBlock)
              for c in b._children.values()]
    assert layers and all(layer.memory_efficient for layer in layers)
    for train in (False, True):
        a, b = run(plain, x, train=train), run(eff, x, train=train)
        for k in spec.stage_names:
            np.testing.assert_array_equal(b.stages[k], a.stages[k], err_msg=k)
        if train:
            for k in a.running:
                np.testing.assert_array_equal(b.running[k], a.running[k], err_msg=k)
    ga, gb = G.gradients(plain, x, labels), G.gradients(eff, x, labels)
    assert gb.loss == ga.loss
    # a conv bias before a BN (d2l's) has a zero gradient: rounding noise on either side
    before_bn = ("conv.bias", "conv0.bias")
    assert_all_close({k: v for k, v in gb.params.items() if not k.endswith(before_bn)},
                     {k: v for k, v in ga.params.items() if not k.endswith(before_bn)}, "grad")
    assert_close(gb.input, ga.input, "grad")


def test_dropout_statistics():
    """Dropout hits a layer's new maps with rate p and 1/(1-p) scaling, in train mode only."""
    rate = 0.3
    spec = get_spec("densenet_bc_100_k12", drop_rate=rate)
    cin = spec.channel_plan.blocks[0].layer_in_channels[0]
    layer = DenseLayer(spec, cin)
    plain = DenseLayer(spec.replace(drop_rate=0.0), cin)
    layer.initialize(mx.init.Xavier())
    plain.initialize()
    # structural names ("norm1.gamma"), not Gluon's counter-based ones
    theirs = plain._collect_params_with_prefix()
    for key, p in layer._collect_params_with_prefix().items():
        theirs[key].set_data(p.data())
    x = mx.nd.array(np.random.default_rng(0).standard_normal((8, cin, 16, 16)).astype("f4"))
    mx.random.seed(7)
    with mx.autograd.record(train_mode=True):
        new = layer(x).asnumpy()
        new0 = plain(x).asnumpy()
    assert new.shape == (8, spec.growth_rate, 16, 16)  # the k new maps only
    active = new0 != 0
    dropped = (new == 0) & active
    frac = dropped.sum() / active.sum()
    n = active.sum()
    assert abs(frac - rate) < 5 * np.sqrt(rate * (1 - rate) / n), (frac, n)
    kept = ~dropped & active
    np.testing.assert_allclose(new[kept], new0[kept] / (1 - rate), rtol=1e-5, atol=1e-6)
    # eval mode: no dropout at all
    np.testing.assert_array_equal(layer(x).asnumpy(), plain(x).asnumpy())


def test_no_global_state_leaks(case_cache):
    spec, params = case_cache("d2l")
    mx.random.seed(123)
    a = mx.nd.random.uniform(shape=(5,)).asnumpy()
    mx.random.seed(123)
    net = build(spec, seed=4)  # seeded without touching MXNet's global RNG
    b = mx.nd.random.uniform(shape=(5,)).asnumpy()
    np.testing.assert_array_equal(a, b)
    load_canonical(net, params)
    x = batch(spec, 32)
    run(net, x)
    run(net, x, train=True)
    assert not mx.util.is_np_array() and not mx.util.is_np_shape()
    assert not mx.autograd.is_recording() and not mx.autograd.is_training()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["d2l", "densenet_bc_100_k12", "densenet40_k12"])
def test_build_holds_the_canonical_seeded_weights_bit_for_bit(name, dtype):
    """build() gives init_params(spec, seed): the same arrays as every other backend."""
    spec = get_spec(name)
    got = export_canonical(build(spec, seed=3, dtype=dtype))
    want = init_params(spec, 3, dtype=dtype)
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
    other = export_canonical(build(spec, seed=4))
    assert not np.array_equal(other["features.conv0.weight"], want["features.conv0.weight"])


def _bn_reference(x, gamma, beta, eps):
    x64 = x.astype(np.float64)
    mean, var = x64.mean((0, 2, 3), keepdims=True), x64.var((0, 2, 3), keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def test_batchnorm_two_pass_statistics_are_precise():
    """Our BatchNorm's imperative train-mode output vs MXNet's operator on the same batch
    (DenseNet-121's first block at 224x224, batch 4; channel means 30 make the operator's
    float32 accumulation show): errors relative to the output's magnitude."""
    from mxnet import autograd

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 16, 56, 56)) + 30.0).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    beta = rng.standard_normal(16).astype(np.float32)
    expected = _bn_reference(x, gamma, beta, 1e-5)
    errors = {}
    for name, layer in (("ours", TwoPassBatchNorm(in_channels=16)),
                        ("operator", mx.gluon.nn.BatchNorm(in_channels=16))):
        layer.initialize()
        layer.gamma.set_data(mx.nd.array(gamma))
        layer.beta.set_data(mx.nd.array(beta))
        with autograd.record(train_mode=True):
            y = layer(mx.nd.array(x))
        errors[name] = np.abs(y.asnumpy() - expected).max() / np.abs(expected).max()
    assert errors["ours"] < 1e-6 < errors["operator"], errors  # measured 3.5e-7 vs 1.2e-5


def test_batchnorm_updates_running_stats_in_the_forward_by_mxnets_rule():
    from mxnet import autograd

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32) * 2 + 1
    layer = TwoPassBatchNorm(in_channels=4, momentum=0.75)
    layer.initialize()
    with autograd.record(train_mode=True):
        layer(mx.nd.array(x))  # no backward: the update is already there
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer.running_mean.data().asnumpy(),
                               0.25 * x64.mean((0, 2, 3)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.running_var.data().asnumpy(),
                               0.75 + 0.25 * x64.var((0, 2, 3)), rtol=1e-6)  # biased, as MXNet
    # eval mode uses the running statistics (the operator), and changes nothing
    before = layer.running_var.data().asnumpy().copy()
    y = layer(mx.nd.array(x)).asnumpy()
    rm, rv = layer.running_mean.data().asnumpy(), layer.running_var.data().asnumpy()
    np.testing.assert_allclose(y, (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer.running_var.data().asnumpy(), before)


@pytest.mark.parametrize("name", ["d2l", "densenet_bc_100_k12"])
def test_float64_network_matches_float64_reference(name):
    spec = get_spec(name)
    size, n = (64, 4) if spec.stem == "imagenet" else (16, 2)
    params = {k: v.astype(np.float64) for k, v in init_params(spec, 4, nontrivial_bn=True).items()}
    x = batch(spec, size, n=n, seed=2).astype(np.float64)
    net = build(spec, dtype="float64")
    load_canonical(net, params)
    for train in (False, True):
        out = run(net, x, train=train)
        ref = reference.forward(spec, params, x, train=train, dtype="float64")
        assert out.logits.dtype == np.float64
        assert_all_close(out.stages, ref.stages, "train" if train else "eval", "float64",
                         order=spec.stage_names)
        if train:
            assert_all_close(out.running, ref.running, "running", "float64")
    exported = export_canonical(net)
    assert {v.dtype for v in exported.values()} == {np.dtype(np.float64)}
    for k, v in params.items():
        np.testing.assert_array_equal(exported[k], v)


def test_build_dtype():
    spec = get_spec("densenet40_k12", block_config=(2, 2, 2))
    assert export_canonical(build(spec))["classifier.weight"].dtype == np.float32
    net = build(spec, dtype=np.float64)
    assert {np.dtype(p.dtype) for p in net.collect_params().values()} == {np.dtype(np.float64)}
    # float32 canonical parameters load into a float64 network (cast up)
    p32 = init_params(spec, 0)
    load_canonical(net, p32)
    assert export_canonical(net)["features.conv0.weight"].dtype == np.float64
    with pytest.raises(ValueError, match=r"one of \('float32', 'float64'\), got 'float16'"):
        build(spec, dtype="float16")
