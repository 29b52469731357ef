"""The backend contract: gradients, SGD steps, devices, input validation."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from gluon_cases import batch

from densenet_multi import reference
from densenet_multi.backend import SGD_DEFAULTS, load_backend
from densenet_multi.gluon import (
    DenseNet,
    build,
    densenet121,
    export_canonical,
    gradients,
    load_canonical,
    load_checkpoint,
    run,
    save_checkpoint,
    train_steps,
)
from densenet_multi.params import init_params, param_table
from densenet_multi.spec import InputError, get_spec
from densenet_multi.testing import assert_all_close, assert_close

# a small bottleneck net and a small plain one (with conv biases, as d2l), 8x8 / 16x16 inputs
TINY = {
    "bc": (get_spec("densenet_bc_100_k12", block_config=(2, 2), growth_rate=4,
                    num_init_features=8, num_classes=5), 8),
    "plain": (get_spec("d2l", block_config=(2, 2), growth_rate=4, num_init_features=8,
                       num_classes=5), 16),
}


def _ref_loss(spec, params, x, labels):
    out = reference.forward(spec, params, x, train=True, dtype="float64")
    return reference.softmax_cross_entropy(out.logits, labels)


def test_backend_contract_is_complete():
    mod = load_backend("gluon")  # raises unless every CONTRACT function is there
    n = mx.context.num_gpus()
    assert mod.devices() == ["cpu"] + (["cuda"] if n else []) + [f"cuda:{i}" for i in range(1, n)]


def test_device_names():
    spec = get_spec("densenet40_k12", block_config=(1, 1))
    assert build(spec, device="cpu").features.conv0.weight.list_ctx() == [mx.cpu()]
    # one vocabulary for all backends: MXNet's own "gpu" is not one of its words
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="unknown device"):
            build(spec, device=bad)
    if mx.context.num_gpus() == 0:
        for device in ("cuda", "cuda:0"):
            with pytest.raises(ValueError, match="no GPU"):
                build(spec, device=device)


@pytest.mark.parametrize("which", list(TINY))
def test_gradients_match_finite_differences_of_the_reference(which):
    spec, size = TINY[which]
    params = init_params(spec, seed=2, nontrivial_bn=True)
    x = batch(spec, size, n=4, seed=1)
    labels = np.array([0, 3, 1, 4])
    net = build(spec)
    load_canonical(net, params)
    before = export_canonical(net)
    g = gradients(net, x, labels)
    # the loss, and the model left untouched (MXNet updates BN stats in backward)
    assert_close(g.loss, _ref_loss(spec, params, x, labels), "grad")
    after = export_canonical(net)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    assert sorted(g.params) == sorted(p.name for p in param_table(spec) if p.trainable)
    assert g.input.shape == x.shape
    # directional derivatives along each gradient (float64 central differences)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    x64 = x.astype(np.float64)
    eps = 1e-6
    # every conv feeds a train-mode BN, which subtracts the batch mean: conv biases get
    # no gradient (float32 noise only)
    for name, grad in g.params.items():
        if name.endswith(".bias") and ".conv" in name:
            assert np.abs(grad).max() < 1e-6, name
    checked = ["features.conv0.weight", "classifier.weight",
               "classifier.bias", "features.norm5.weight", "features.norm5.bias",
               "features.transition1.conv.weight", "features.denseblock2.denselayer2.norm.weight",
               "features.denseblock2.denselayer2.norm1.weight",
               "features.denseblock1.denselayer1.conv2.weight", "input"]
    for name in checked:
        if name != "input" and name not in g.params:
            continue
        grad = g.input if name == "input" else g.params[name]
        d = grad.astype(np.float64) / np.linalg.norm(grad)

        def loss_at(t, name=name, d=d):
            if name == "input":
                return _ref_loss(spec, p64, x64 + t * d, labels)
            return _ref_loss(spec, {**p64, name: p64[name] + t * d}, x64, labels)

        fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        assert_close(float(np.sum(grad * d)), fd, "grad", name=name)


def test_gradients_refuse_frozen_parameters():
    spec, _ = TINY["bc"]
    net = build(spec)
    net.classifier.weight.grad_req = "null"
    with pytest.raises(ValueError, match="grad_req"):
        gradients(net, batch(spec, 8), np.array([0, 1]))


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_train_steps_follow_pytorchs_sgd(hybridize):
    spec, size = TINY["bc"]
    lr, mu = SGD_DEFAULTS["lr"], SGD_DEFAULTS["momentum"]
    p0 = init_params(spec, seed=3, nontrivial_bn=True)
    batches = [(batch(spec, size, n=4, seed=s), np.array([0, 1, 2, 3]) + s % 2) for s in (1, 2)]
    trainable = [p.name for p in param_table(spec) if p.trainable]

    def grads_at(params, x, y):
        net = build(spec)
        load_canonical(net, params)
        return gradients(net, x, y).params

    # the expected trajectory: PyTorch's v = mu*v + g; p -= lr*v, running stats from the reference
    (x1, y1), (x2, y2) = batches
    g0 = grads_at(p0, x1, y1)
    r1 = reference.forward(spec, p0, x1, train=True).running
    p1 = {**p0, **r1, **{k: p0[k] - lr * g0[k] for k in trainable}}
    g1 = grads_at(p1, x2, y2)
    r2 = reference.forward(spec, p1, x2, train=True).running
    p2 = {**p1, **r2, **{k: p1[k] - lr * (mu * g0[k] + g1[k]) for k in trainable}}
    expected_losses = [_ref_loss(spec, p0, x1, y1), _ref_loss(spec, p1, x2, y2)]

    net = build(spec, hybridize=hybridize)
    load_canonical(net, p0)
    losses = train_steps(net, batches, lr=lr, momentum=mu)
    assert_close(np.array(losses), np.array(expected_losses), "trajectory")
    assert_all_close(export_canonical(net), p2, "trajectory")


@pytest.mark.parametrize(
    "shape, dtype, match",
    [
        ((3, 16, 16), "float32", "4-d"),
        ((2, 16, 16, 3), "float32", "NHWC"),
        ((2, 1, 16, 16), "float32", r"\(N, 3, H, W\)"),
        ((2, 3, 16, 16), "int64", "dtype"),
        ((2, 3, 16, 16), "float16", "dtype"),
        ((0, 3, 16, 16), "float32", "non-empty"),
    ],
)
def test_bad_inputs(shape, dtype, match):
    spec = get_spec("densenet40_k12")
    net = build(spec)
    x = np.zeros(shape, dtype=dtype)
    for fn in (lambda: run(net, x), lambda: run(net, x, train=True),
               lambda: gradients(net, x, np.zeros(len(x), np.int64))):
        with pytest.raises(InputError, match=match):
            fn()


def test_too_small_input_names_the_minimum():
    spec = get_spec("densenet121")
    net = build(spec)
    with pytest.raises(InputError, match=r"smallest size that works is \d+x\d+"):
        run(net, np.zeros((1, 3, 16, 16), np.float32))


def test_bad_labels():
    spec, size = TINY["bc"]
    net = build(spec)
    x = batch(spec, size)
    for labels, match in ((np.array([0, 5]), r"\[0, 5\)"), (np.array([0.0, 1.0]), "integer"),
                          (np.array([0, 1, 2]), r"\(2,\)")):
        with pytest.raises(InputError, match=match):
            gradients(net, x, labels)
        with pytest.raises(InputError, match=match):
            train_steps(net, [(x, labels)], lr=0.1, momentum=0.9)


def test_float64_input_is_computed_in_float32(case_cache):
    spec, params = case_cache("densenet40_k12")
    net = build(spec)
    load_canonical(net, params)
    x = batch(spec, 16)
    a = run(net, x).logits
    b = run(net, x.astype(np.float64)).logits
    assert b.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip(case_cache, tmp_path):
    spec, params = case_cache("densenet_bc_100_k12")
    net = build(spec)
    load_canonical(net, params)
    path = save_checkpoint(net, tmp_path / "bc.safetensors")
    with pytest.raises(FileExistsError):
        save_checkpoint(net, path)
    again = load_checkpoint(path, hybridize=True)
    assert again.spec == spec
    for k, v in export_canonical(again).items():
        np.testing.assert_array_equal(v, params[k])
    # a float64 network saves float64 and loads back in float64 (or in a dtype asked for)
    net64 = build(spec, dtype="float64", seed=2)
    path64 = save_checkpoint(net64, tmp_path / "bc64.safetensors")
    want = export_canonical(net64)
    for dtype, loaded in ((np.float64, load_checkpoint(path64)),
                          (np.float32, load_checkpoint(path64, dtype="float32"))):
        got = export_canonical(loaded)
        for k, v in want.items():
            assert got[k].dtype == dtype
            np.testing.assert_array_equal(got[k], v.astype(dtype))


def test_works_inside_a_numpy_mode_program(case_cache):
    """A user program that turned on MXNet's numpy mode keeps it, and our functions
    still work (they run with it off and restore it). The model classes can be built
    in numpy mode too (a conv layer picks its operator when constructed: see _conv)."""
    spec, params = case_cache("densenet40_k12")
    x = batch(spec, 16)
    labels = np.array([1, 2])
    expected = reference.forward(spec, params, x, dtype="float64")
    mx.npx.set_np()
    try:
        net = build(spec)
        load_canonical(net, params)
        assert_close(run(net, x).logits, expected.logits, "eval")
        run(net, x, train=True)
        gradients(net, x, labels)
        train_steps(net, [(x, labels)], lr=0.01, momentum=0.9)
        built_here = DenseNet(spec)
        assert densenet121().features.conv0._op_name == "Convolution"
        assert mx.util.is_np_array() and mx.util.is_np_shape()
    finally:
        mx.npx.reset_np()
    assert not mx.util.is_np_array() and not mx.util.is_np_shape()
    built_here.initialize()
    load_canonical(built_here, params)
    assert_close(run(built_here, x).logits, expected.logits, "eval")


def test_gradients_hybridized_equal_imperative():
    spec, size = TINY["bc"]
    params = init_params(spec, seed=2, nontrivial_bn=True)
    x = batch(spec, size, n=4, seed=1)
    labels = np.array([0, 3, 1, 4])
    grads = []
    for hybridize in (False, True):
        net = build(spec, hybridize=hybridize)
        load_canonical(net, params)
        grads.append(gradients(net, x, labels))
    assert_all_close(grads[1].params, grads[0].params, "grad")
    assert_close(grads[1].input, grads[0].input, "grad")
    assert_close(grads[1].loss, grads[0].loss, "grad")


@pytest.mark.parametrize("which", ["bc", "plain"])
def test_float64_gradients_and_trajectory_match_the_reference(which):
    """In float64 the backward pass and the SGD steps agree with the reference's tape to
    1e-10: the float32 checks' ReLU-flip floor (docs/parity.md) is gone."""
    from densenet_multi import reference_grad

    spec, size = TINY[which]
    params = {k: v.astype(np.float64) for k, v in init_params(spec, 5, nontrivial_bn=True).items()}
    x = batch(spec, size, n=4, seed=3).astype(np.float64)
    y = np.array([0, 1, 2, 4])
    net = build(spec, dtype="float64")
    load_canonical(net, params)
    got = gradients(net, x, y)
    ref = reference_grad.gradients(spec, params, x, y, dtype="float64")
    assert got.input.dtype == np.float64
    assert_close(np.array(got.loss), np.array(ref.loss), "grad", "float64")
    # a conv bias's true gradient is 0 (a train-mode BN follows every conv): what both
    # compute is rounding noise, held to the tolerance relative to its kernel's gradient
    biases = {p.name for p in param_table(spec) if p.kind == "conv_bias"}
    assert_all_close({k: v for k, v in got.params.items() if k not in biases},
                     {k: v for k, v in ref.params.items() if k not in biases}, "grad", "float64")
    for k in biases:
        kernel = np.abs(ref.params[k.replace(".bias", ".weight")]).max()
        assert np.abs(got.params[k] - ref.params[k]).max() <= 1e-10 * kernel, k
    assert_close(got.input, ref.input, "grad", "float64")

    batches = [(x, y), (batch(spec, size, n=4, seed=4).astype(np.float64), y[::-1].copy())]
    losses = train_steps(net, batches, **SGD_DEFAULTS)
    ref_losses, ref_final = reference_grad.train_steps(spec, params, batches, dtype="float64",
                                                       **SGD_DEFAULTS)
    assert_close(np.array(losses), np.array(ref_losses), "trajectory", "float64")
    final = export_canonical(net)
    assert_all_close({k: final[k] for k in ref_final}, ref_final, "trajectory", "float64")
