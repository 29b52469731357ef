"""The NumPy reference: against a naive loop implementation, and float32 vs float64."""

import numpy as np
import pytest

from densenet_multi.params import init_params, running_stat_names
from densenet_multi.reference import conv2d, forward, max_pool, softmax_cross_entropy
from densenet_multi.spec import ConvGeometry, DenseNetSpec, InputError, get_spec
from densenet_multi.testing import assert_all_close, assert_close, tolerance


# ---------------------------------------------------------------- naive implementation
def naive_conv(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), x.dtype)
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, o, ho, wo), x.dtype)
    for ni in range(n):
        for oi in range(o):
            for i in range(ho):
                for j in range(wo):
                    patch = xp[ni, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    y[ni, oi, i, j] = (patch * w[oi]).sum() + (b[oi] if b is not None else 0)
    return y


def naive_maxpool(x, k, s, p):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * p, w + 2 * p), -np.inf, x.dtype)
    xp[:, :, p:p + h, p:p + w] = x
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = np.zeros((n, c, ho, wo), x.dtype)
    for i in range(ho):
        for j in range(wo):
            y[:, :, i, j] = xp[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return y


def naive_bn(x, P, name, eps, train, mom, running):
    if train:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        n = x.size // x.shape[1]
        running[name + ".running_mean"] = (1 - mom) * P[name + ".running_mean"] + mom * mean
        running[name + ".running_var"] = (1 - mom) * P[name + ".running_var"] + mom * var * n / (n - 1)
    else:
        mean, var = P[name + ".running_mean"], P[name + ".running_var"]
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        gamma, beta = P[name + ".weight"][c], P[name + ".bias"][c]
        out[:, c] = (x[:, c] - mean[c]) / np.sqrt(var[c] + eps) * gamma + beta
    return out


def naive_densenet(spec, P, x, train=False):
    """Written straight from the paper, with its own width bookkeeping, loops everywhere."""
    running = {}
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    bn = lambda t, n: naive_bn(t, P, n, spec.bn_eps, train, spec.bn_momentum, running)  # noqa: E731
    conv = lambda t, n, s, p: naive_conv(t, P[n + ".weight"], P.get(n + ".bias"), s, p)  # noqa: E731
    out = {}
    if spec.stem == "imagenet":
        y = naive_maxpool(relu(bn(conv(x, "features.conv0", 2, 3), "features.norm0")), 3, 2, 1)
    else:
        y = conv(x, "features.conv0", 1, 1)
    out["stem"] = y
    for b, n_layers in enumerate(spec.block_config, start=1):
        for l in range(1, n_layers + 1):
            pre = f"features.denseblock{b}.denselayer{l}"
            if spec.bn_size:
                h = conv(relu(bn(y, pre + ".norm1")), pre + ".conv1", 1, 0)
                h = conv(relu(bn(h, pre + ".norm2")), pre + ".conv2", 1, 1)
            else:
                h = conv(relu(bn(y, pre + ".norm")), pre + ".conv", 1, 1)
            y = np.concatenate([y, h], axis=1)
        out[f"block{b}"] = y
        if b < len(spec.block_config):
            pre = f"features.transition{b}"
            t = conv(relu(bn(y, pre + ".norm")), pre + ".conv", 1, 0)
            hh, ww = t.shape[2] // 2, t.shape[3] // 2
            y = np.zeros(t.shape[:2] + (hh, ww), t.dtype)
            for i in range(hh):
                for j in range(ww):
                    y[:, :, i, j] = t[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(2, 3))
            out[f"transition{b}"] = y
    y = relu(bn(y, "features.norm5"))
    out["features"] = y
    out["pooled"] = y.mean(axis=(2, 3))
    out["logits"] = out["pooled"] @ P["classifier.weight"].T + P["classifier.bias"]
    return out, running


TINY = {
    "bottleneck-imagenet": DenseNetSpec(growth_rate=3, block_config=(2, 1), num_init_features=5,
                                        bn_size=2, compression=0.5, num_classes=4, in_channels=2),
    "plain-cifar-bias": DenseNetSpec(growth_rate=2, block_config=(1, 2, 1), num_init_features=3,
                                     bn_size=None, compression=0.7, num_classes=3, in_channels=1,
                                     stem="cifar", conv_bias=True, transition_rounding="ceil"),
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_reference_equals_naive_loops(name, train):
    spec = TINY[name]
    P = {k: v.astype(np.float64) for k, v in init_params(spec, 1, nontrivial_bn=True).items()}
    size = 33 if spec.stem == "imagenet" else 9  # odd sizes exercise floor pooling
    x = np.random.default_rng(0).standard_normal((2, spec.in_channels, size, size))
    ours = forward(spec, P, x, train=train)
    naive, running = naive_densenet(spec, P, x, train=train)
    assert list(ours.stages) == list(spec.stage_names)
    assert_all_close(ours.stages, naive, check="train" if train else "eval", dtype="float64")
    if train:
        assert_all_close(ours.running, running, check="running", dtype="float64")
        assert sorted(ours.running) == sorted(running_stat_names(spec))
    else:
        assert ours.running is None


def test_conv_and_pool_primitives_match_naive():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 11, 10))
    w, b = rng.standard_normal((4, 3, 7, 7)), rng.standard_normal(4)
    assert_close(conv2d(x, w, b, ConvGeometry(7, 2, 3)), naive_conv(x, w, b, 2, 3), "eval", "float64")
    w1 = rng.standard_normal((4, 3, 1, 1))
    assert_close(conv2d(x, w1, None, ConvGeometry(1, 1, 0)), naive_conv(x, w1, None, 1, 0),
                 "eval", "float64")
    # all-negative input: -inf padding never wins (zero padding would give 0 at the border)
    xn = -np.abs(x) - 1
    assert_close(max_pool(xn, ConvGeometry(3, 2, 1)), naive_maxpool(xn, 3, 2, 1), "eval", "float64")
    assert (max_pool(xn, ConvGeometry(3, 2, 1)) < 0).all()


def test_float32_agrees_with_float64_on_densenet121():
    spec = get_spec("densenet121")
    P = init_params(spec, 0, nontrivial_bn=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    out32 = forward(spec, P, x)
    out64 = forward(spec, P, x, dtype="float64")
    assert out32.logits.dtype == np.float32 and out64.logits.dtype == np.float64
    comps = assert_all_close(out32.stages, out64.stages, check="eval", dtype="float32")
    # measured 2026-11: at most ~8e-7 of the magnitude at every stage
    assert max(c.rel for c in comps.values()) < tolerance("eval") / 5


def test_train_mode_float32_vs_float64():
    spec = get_spec("densenet_bc_100_k12")
    P = init_params(spec, 0, nontrivial_bn=True)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    a, b = forward(spec, P, x, train=True), forward(spec, P, x, train=True, dtype="float64")
    assert_all_close(a.stages, b.stages, check="train")
    assert_all_close(a.running, b.running, check="running")


def test_train_mode_normalises_with_batch_statistics():
    spec = get_spec("densenet40_k12")
    P = init_params(spec, 0, nontrivial_bn=True)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16))
    out = forward(spec, P, x, train=True)
    # features = ReLU(BN(x)) with batch stats: pre-ReLU mean per channel equals beta
    assert not np.allclose(out.logits, forward(spec, P, x).logits)
    assert out.running["features.norm5.running_var"].shape == (spec.channel_plan.final_channels,)


def test_global_pooling_accepts_any_size():
    spec = get_spec("d2l")
    P = init_params(spec, 0)
    for size in (29, 64, 97):
        out = forward(spec, P, np.zeros((1, 1, size, size), np.float32))
        assert out.logits.shape == (1, 10)


@pytest.mark.parametrize(
    "shape,dtype,fragment",
    [
        ((1, 224, 224), "float32", "expected a 4-d NCHW batch"),
        ((2, 224, 224, 3), "float32", "looks like an NHWC array"),
        ((2, 1, 224, 224), "float32", r"expected a NCHW batch of shape \(N, 3, H, W\)"),
        ((2, 3, 28, 28), "float32", "smallest size that works is 29x29"),
        ((2, 3, 64, 64), "int64", "dtype float32 or float64, got int64"),
    ],
)
def test_bad_inputs(shape, dtype, fragment):
    spec = get_spec("densenet121")
    P = init_params(spec, 0)
    with pytest.raises(InputError, match=fragment) as e:
        forward(spec, P, np.zeros(shape, dtype))
    if "dtype" not in fragment:
        assert str(shape) in str(e.value)


def test_softmax_cross_entropy():
    logits = np.array([[0.0, 0.0], [10.0, -10.0]])
    assert softmax_cross_entropy(logits, np.array([0, 0])) == pytest.approx(np.log(2) / 2, rel=1e-6)
