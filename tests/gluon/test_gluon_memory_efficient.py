"""The memory-efficient mode (dense layers recomputed in the backward pass, layers.Recomputed)
against the default mode: the same outputs, running statistics, gradients of every
parameter and of the input, and training trajectories, imperatively and hybridized."""

from __future__ import annotations

import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from gluon_cases import batch

from densenet_multi.gluon import (
    build,
    export_canonical,
    gradients,
    layers,
    legacy_mode,
    load_canonical,
    run,
    train_steps,
)
from densenet_multi.params import init_params
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_all_close, assert_close

#: a DenseNet-121-like net (ImageNet stem, bottleneck layers, k=16: oneDNN's aligned
#: concat) and a CIFAR one (plain layers, k=12: the 5-d concat), both small
SPECS = {
    "bottleneck": get_spec("densenet121", block_config=(2, 3), growth_rate=16,
                           num_init_features=32, num_classes=10),
    "plain": get_spec("densenet40_k12", block_config=(2, 2)),
}
SIZE = 32
N = 4


def _pair(spec, dtype, hybridize):
    params = init_params(spec, seed=1, nontrivial_bn=True, dtype=dtype)
    nets = []
    for eff in (False, True):
        net = build(spec, dtype=dtype, memory_efficient=eff, hybridize=hybridize)
        load_canonical(net, params)
        nets.append(net)
    return nets


def check_same_as_default(spec, dtype, hybridize):
    """The memory-efficient net against the default one: train-mode stages and running
    statistics (run), loss and every gradient (gradients), two SGD steps (train_steps)."""
    plain, eff = _pair(spec, dtype, hybridize)
    x = batch(spec, SIZE, n=N, seed=11)
    labels = np.arange(N) % spec.num_classes
    a, b = run(plain, x, train=True), run(eff, x, train=True)
    assert_all_close(b.stages, a.stages, "train", dtype, order=spec.stage_names)
    assert_all_close(b.running, a.running, "running", dtype)
    ga, gb = gradients(plain, x, labels), gradients(eff, x, labels)
    assert_close(gb.loss, ga.loss, "train", dtype, name="loss")
    # a conv bias before a BN has a zero gradient (rounding noise): no spec here has one
    assert not spec.conv_bias
    assert_all_close(gb.params, ga.params, "grad", dtype)
    assert_close(gb.input, ga.input, "grad", dtype, name="input")
    batches = [(x, labels), (batch(spec, SIZE, n=N, seed=12), labels[::-1].copy())]
    la = train_steps(plain, batches, lr=0.1, momentum=0.9)
    lb = train_steps(eff, batches, lr=0.1, momentum=0.9)
    assert_close(np.array(lb), np.array(la), "trajectory", dtype, name="losses")
    assert_all_close(export_canonical(eff), export_canonical(plain), "trajectory", dtype)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("name", list(SPECS))
def test_same_as_default_float64(name, hybridize):
    check_same_as_default(SPECS[name], "float64", hybridize)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_same_as_default_float32_three_times(hybridize):
    """float32 is where MXNet's asynchronous custom-function backward went wrong (values up
    to 1e18, different from run to run) before Recomputation.backward waited for its
    gradients: three runs in a row."""
    for _ in range(3):
        check_same_as_default(SPECS["bottleneck"], "float32", hybridize)


def test_a_recomputation_that_drops_parameter_gradients_fails(monkeypatch):
    """The check above fails when the recomputation's backward hands back zero gradients for
    the recomputed part's parameters (norm1, conv1, norm2)."""
    real = layers._Recomputation.backward_into

    def broken(self, dy, *, grads, reqs):
        real(self, dy, grads=grads, reqs=reqs)
        for g in grads[len(grads) - len(self.trainable):]:
            g[:] = 0
            g.wait_to_read()

    monkeypatch.setattr(layers._Recomputation, "backward_into", broken)
    with pytest.raises(AssertionError, match="grad comparisons fail"):
        check_same_as_default(SPECS["bottleneck"], "float64", False)


def test_frozen_layers_before_a_recomputed_one():
    """A fine-tuning setup: the stem frozen (grad_req 'null'), so the first dense layer's
    input needs no gradient while its parameters do. MXNet 1.9's own Function stops
    writing gradients at the first unwanted one; the layers' must not."""
    spec = SPECS["bottleneck"]
    x = mx.nd.array(batch(spec, SIZE, n=N, seed=13), dtype="float64")
    y = mx.nd.array(np.arange(N) % spec.num_classes, dtype="float64")
    grads = []
    with legacy_mode():
        for net in _pair(spec, "float64", False):
            for name in ("conv0", "norm0"):
                getattr(net.features, name).collect_params().setattr("grad_req", "null")
            with mx.autograd.record():
                loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y).mean()
            loss.backward()
            mx.nd.waitall()
            grads.append({k: p.grad().asnumpy() for k, p in net._collect_params_with_prefix().items()
                          if p.grad_req != "null"})
    assert "features.denseblock1.denselayer1.conv1.weight" in grads[0]
    assert_all_close(grads[1], grads[0], "grad", "float64")


def test_plain_gluon_training_loop_hybridized():
    """The idiomatic loop, trainer.step right after backward and nothing waited for, as the
    benchmark probe runs it: the next step's forward must not wait on this step's
    recomputations (a deadlock, found while writing this mode) and the weights must
    follow the default mode's. In a subprocess, so that a deadlock fails on the timeout."""
    code = (
        "import numpy as np, mxnet as mx\n"
        "from mxnet import autograd, gluon, nd\n"
        "from densenet_multi.gluon import build, export_canonical\n"
        "from densenet_multi.spec import get_spec\n"
        "from densenet_multi.testing import assert_all_close\n"
        "spec = get_spec('densenet121', block_config=(2, 3), growth_rate=16,\n"
        "                num_init_features=32, num_classes=10)\n"
        "x = nd.array(np.random.default_rng(0).standard_normal((4, 3, 32, 32)))\n"
        "y = nd.array(np.arange(4) % 10)\n"
        "out = []\n"
        "for eff in (False, True):\n"
        "    net = build(spec, memory_efficient=eff)\n"
        "    net.hybridize(static_alloc=True, static_shape=True)\n"
        "    tr = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9})\n"
        "    for _ in range(3):\n"
        "        with autograd.record():\n"
        "            loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)\n"
        "        loss.backward()\n"
        "        tr.step(4)\n"
        "    out.append(export_canonical(net))\n"
        "assert_all_close(out[1], out[0], 'trajectory')\n"
        "print('same')\n"
    )
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "same" in res.stdout


def test_inputs_whose_gradients_accumulate(monkeypatch):
    """Leaf inputs with grad_req 'add' feeding a recomputed layer directly: MXNet asks the
    recomputation for req 'add', and two backward passes must sum into them as into the
    default layer's (float32 and hybridized: oneDNN's layouts are in play)."""
    reqs = []
    real = layers._Recomputation.backward_into

    def spy(self, dy, *, grads, reqs_):
        reqs.extend(reqs_)
        real(self, dy, grads=grads, reqs=reqs_)

    monkeypatch.setattr(layers._Recomputation, "backward_into",
                        lambda self, dy, *, grads, reqs: spy(self, dy, grads=grads, reqs_=reqs))
    spec = SPECS["bottleneck"]
    rng = np.random.default_rng(5)
    # denselayer2 of block 1 at 32x32: the stem's 32 maps (8x8) and denselayer1's 16
    xs = [rng.standard_normal((N, c, 8, 8)).astype(np.float32) for c in (32, 16)]
    w = mx.nd.array(rng.standard_normal((N, 16, 8, 8)).astype(np.float32))
    grads = {}
    with legacy_mode():
        for name, net in zip(("plain", "eff"), _pair(spec, "float32", True), strict=True):
            leaves = [mx.nd.array(x) for x in xs]
            for v in leaves:
                v.attach_grad(grad_req="add")
            for _ in range(2):
                with mx.autograd.record():
                    loss = (net.features.denseblock1.denselayer2(*leaves) * w).sum()
                loss.backward()
            mx.nd.waitall()
            grads[name] = {f"input{i}": v.grad.asnumpy() for i, v in enumerate(leaves)}
    assert 3 in reqs  # the add path ran
    assert_all_close(grads["eff"], grads["plain"], "grad", "float32")
