"""The reference's gradients against central finite differences, in float64."""

import numpy as np
import pytest

from densenet_multi.params import init_params, param_table
from densenet_multi.reference import forward, softmax_cross_entropy
from densenet_multi.reference_grad import gradients, train_steps
from densenet_multi.spec import DenseNetSpec, get_spec

SPECS = {
    "bottleneck-imagenet": DenseNetSpec(growth_rate=2, block_config=(2, 1), num_init_features=4,
                                        bn_size=2, num_classes=3, in_channels=2),
    "plain-cifar-bias": DenseNetSpec(growth_rate=2, block_config=(1, 2), num_init_features=3,
                                     bn_size=None, compression=0.7, num_classes=3, in_channels=1,
                                     stem="cifar", conv_bias=True),
}


def _loss(spec, p, x, y, train):
    return softmax_cross_entropy(forward(spec, p, x, train=train).logits, y)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradients_match_finite_differences(name, train):
    spec = SPECS[name]
    rng = np.random.default_rng(0)
    p = {k: v.astype(np.float64) for k, v in init_params(spec, 2, nontrivial_bn=True).items()}
    size = 31 if spec.stem == "imagenet" else 7
    x = rng.standard_normal((3, spec.in_channels, size, size))
    y = np.array([0, 2, 1])
    r = gradients(spec, p, x, y, train=train)
    assert r.loss == pytest.approx(_loss(spec, p, x, y, train), rel=1e-12)
    eps = 1e-6
    # a few entries of every trainable parameter, and of the input
    for info in param_table(spec):
        if not info.trainable:
            continue
        flat = p[info.name].reshape(-1)
        for idx in rng.choice(flat.size, size=min(2, flat.size), replace=False):
            old = flat[idx]
            flat[idx] = old + eps
            up = _loss(spec, p, x, y, train)
            flat[idx] = old - eps
            down = _loss(spec, p, x, y, train)
            flat[idx] = old
            fd = (up - down) / (2 * eps)
            assert r.params[info.name].reshape(-1)[idx] == pytest.approx(fd, abs=1e-7, rel=1e-5), \
                info.name
    xf = x.reshape(-1)
    for idx in rng.choice(xf.size, size=5, replace=False):
        old = xf[idx]
        xf[idx] = old + eps
        up = _loss(spec, p, x, y, train)
        xf[idx] = old - eps
        down = _loss(spec, p, x, y, train)
        xf[idx] = old
        assert r.input.reshape(-1)[idx] == pytest.approx((up - down) / (2 * eps), abs=1e-7, rel=1e-5)


def test_every_trainable_parameter_gets_a_gradient():
    spec = get_spec("densenet_bc_100_k12")
    p = init_params(spec, 0, nontrivial_bn=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    r = gradients(spec, p, x, np.array([1, 7]))
    assert set(r.params) == {i.name for i in param_table(spec) if i.trainable}
    assert all(np.abs(g).max() > 0 for g in r.params.values())
    assert r.input.shape == x.shape and r.input.dtype == np.float32


def test_train_steps_reduce_the_loss_and_update_running_stats():
    spec = get_spec("densenet40_k12", block_config=(2, 2, 2))
    p = init_params(spec, 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    losses, final = train_steps(spec, p, [(x, y)] * 4, lr=0.05, momentum=0.9)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert not np.array_equal(final["features.norm5.running_mean"], p["features.norm5.running_mean"])
    assert set(final) == set(p)
