"""Compatibility with ``mxnet.gluon.model_zoo.vision.densenet121/161/169/201`` (random weights).

The zoo's head is a fixed ``AvgPool2D(7)`` (stride 7) where ours is global average
pooling: they agree where the final map is 7x7 (224x224 inputs) and differ elsewhere.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from gluon_cases import batch
from mxnet.gluon.model_zoo import vision

from densenet_multi.gluon import build, export_canonical, from_zoo, load_canonical, run, to_zoo
from densenet_multi.params import ParameterError, init_params
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_close

pytestmark = pytest.mark.zoo


def _zoo(name: str):
    """A zoo DenseNet with random weights, its deferred parameters materialised."""
    zoo = getattr(vision, name)(pretrained=False)
    zoo.initialize(mx.init.Xavier())
    zoo(mx.nd.zeros((1, 3, 224, 224)))  # the zoo builds without in_channels: shapes come now
    return zoo


@pytest.fixture(scope="module")
def zoo121():
    return _zoo("densenet121")


def test_zoo_weights_load_into_ours_densenet121_224(zoo121):
    spec = get_spec("densenet121")
    # non-trivial running statistics in the zoo, so eval mode exercises them
    rng = np.random.default_rng(0)
    for p in zoo121.collect_params().values():
        if p.name.endswith("running_mean"):
            p.set_data(mx.nd.array(rng.normal(0, 0.2, p.shape)))
        elif p.name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
    params = from_zoo(zoo121, spec)
    net = build(spec)
    load_canonical(net, params)
    x = batch(spec, 224, n=1)
    theirs = zoo121(mx.nd.array(x)).asnumpy()
    ours = run(net, x)
    assert_close(ours.logits, theirs, "eval")


def test_ours_export_into_the_zoo_densenet121_224(zoo121):
    spec = get_spec("densenet121")
    params = init_params(spec, seed=5, nontrivial_bn=True)
    net = build(spec, hybridize=True)
    load_canonical(net, params)
    to_zoo(export_canonical(net), zoo121, spec)
    back = from_zoo(zoo121, spec)
    for k, v in params.items():
        np.testing.assert_array_equal(back[k], v)
    x = batch(spec, 224, n=1, seed=2)
    assert_close(zoo121(mx.nd.array(x)).asnumpy(), run(net, x).logits, "eval")


def test_fixed_7x7_head_differs_from_global_pooling_off_224(zoo121):
    """At 256x256 the final map is 8x8; AvgPool2D(7) (stride 7) averages its top-left
    7x7 window only. Our features stage reproduces the zoo exactly that way, and our
    (global-pool) logits differ from the zoo's."""
    spec = get_spec("densenet121")
    params = init_params(spec, seed=6, nontrivial_bn=True)
    to_zoo(params, zoo121, spec)
    net = build(spec)
    load_canonical(net, params)
    x = batch(spec, 256, n=1, seed=4)
    theirs = zoo121(mx.nd.array(x)).asnumpy()
    ours = run(net, x)
    assert ours.stages["features"].shape[2:] == (8, 8)
    corner = ours.stages["features"][:, :, :7, :7].mean(axis=(2, 3))
    as_zoo = corner @ params["classifier.weight"].T + params["classifier.bias"]
    assert_close(theirs, as_zoo, "eval")
    rel = np.abs(theirs - ours.logits).max() / np.abs(ours.logits).max()
    assert rel > 1e-3, rel  # a different network off 224, not rounding


@pytest.mark.slow
@pytest.mark.parametrize("depth", [161, 169, 201])
def test_zoo_round_trip_and_logits_deeper_nets(depth):
    name = f"densenet{depth}"
    spec = get_spec(name)
    zoo = _zoo(name)
    params = init_params(spec, seed=depth, nontrivial_bn=True)
    to_zoo(params, zoo, spec)
    back = from_zoo(zoo, spec)
    for k, v in params.items():
        np.testing.assert_array_equal(back[k], v)
    net = build(spec)
    load_canonical(net, params)
    x = batch(spec, 224, n=1, seed=depth)
    assert_close(run(net, x).logits, zoo(mx.nd.array(x)).asnumpy(), "eval")


def test_zoo_mismatch_is_reported(zoo121):
    with pytest.raises(ParameterError, match="densenet169"):
        from_zoo(zoo121, get_spec("densenet169"))
    bad = init_params(get_spec("densenet169"))
    with pytest.raises(ParameterError):
        to_zoo(bad, zoo121, get_spec("densenet121"))
