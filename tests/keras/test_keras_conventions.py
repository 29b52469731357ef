"""The guide's Keras 3 column: the conventions introspect reads off the real layers.

``densenet_multi.guide.introspect`` builds the chapter's parts with this backend's
classes and reads each fact from the objects (or measures it by running them); the
guide's tables print those facts. These tests pin the facts a reader is told (under
``KERAS_BACKEND=tensorflow`` and ``jax`` alike).
"""

from __future__ import annotations

import pytest

from densenet_multi.guide import introspect as I


@pytest.fixture(scope="module")
def facts():
    return I.introspect("keras")["parts"]


def _names(fact):
    return set(fact["names"])


def test_batchnorm_in_keras_own_convention(facts):
    cb = facts["conv_block"]
    assert cb["bn_eps"]["value"] == pytest.approx(1e-5)  # passed: Keras's default is 1e-3
    assert cb["bn_momentum"]["value"] == pytest.approx(0.9)
    assert cb["bn_momentum"]["measured_new_weight"] == pytest.approx(0.1, abs=1e-5)
    assert cb["bn_momentum"]["meaning"] == "weight of the old running value"
    assert cb["bn_running_var"]["rule"] == "biased"


def test_parameter_names_and_layouts(facts):
    cb = facts["conv_block"]
    assert _names(cb["trainable"]) == {"conv_block/norm/gamma", "conv_block/norm/beta",
                                       "conv_block/conv/kernel", "conv_block/conv/bias"}
    assert _names(cb["non_trainable"]) == {"conv_block/norm/moving_mean",
                                           "conv_block/norm/moving_variance"}
    assert cb["kernel"]["layout"] == "HWIO" and cb["shapes"]["layout"] == "NHWC"
    assert facts["stem_and_head"]["classifier"]["layout"] == "(in, out)"
    assert facts["network"]["name:classifier.weight"]["native"] == "d2l/classifier/kernel"


def test_the_chapters_shapes(facts):
    assert facts["dense_block"]["shapes"]["output"] == [4, 8, 8, 23]
    assert facts["transition"]["shapes"]["output"] == [4, 4, 4, 10]
    assert facts["stem_and_head"]["stem_shapes"]["output"] == [2, 24, 24, 64]


def test_train_eval_switch_changes_the_output(facts):
    for part in ("conv_block", "network"):
        te = facts[part]["train_eval"]
        assert te["differs"] and te["in_runtime"], te
        assert te["train_call"] == "`layer(x, training=True)`"


def test_stem_padding_is_explicit_and_the_pool_pads_with_zeros(facts):
    sh = facts["stem_and_head"]
    assert "ZeroPadding2D(padding=((3, 3), (3, 3)))" in sh["stem_padding"]["text"]
    assert "padding='valid'" in sh["stem_padding"]["text"]
    assert sh["stem_pool"]["border"] == 0.0  # zero padding: exact only after the ReLU
    assert sh["head_pool"]["global_mean"]


def test_initialisers_and_sgd(facts):
    assert facts["conv_block"]["init"]["kernel"] == "GlorotUniform"
    assert facts["network"]["conv_init"]["std_ratio"] < 0.5  # not torchvision's N(0, 2/fan_in)
    sgd = facts["network"]["sgd"]
    assert sgd["values"] == pytest.approx([0.9, 0.76])
    assert sgd["fits"].startswith("velocity of steps")
