"""The guide's PyTorch column: the conventions introspect reads off the real modules.

``densenet_multi.guide.introspect`` builds the chapter's parts with this backend's
classes and reads each fact from the objects (or measures it by running them); the
guide's tables print those facts. These tests pin the facts a reader is told.
"""

from __future__ import annotations

import numpy as np
import pytest

from densenet_multi.guide import introspect as I
from densenet_multi.spec import get_spec


@pytest.fixture(scope="module")
def facts():
    return I.introspect("torch")["parts"]


def _names(fact):
    return set(fact["names"])


def test_batchnorm_in_pytorchs_own_convention(facts):
    cb = facts["conv_block"]
    assert cb["bn_eps"]["value"] == pytest.approx(1e-5)
    assert cb["bn_momentum"]["value"] == pytest.approx(0.1)
    # measured: one train pass moves the running mean 0.1 of the way to the batch mean
    assert cb["bn_momentum"]["measured_new_weight"] == pytest.approx(0.1, abs=1e-5)
    assert cb["bn_momentum"]["meaning"] == "weight of the new batch statistic"
    assert cb["bn_running_var"]["rule"] == "unbiased"


def test_parameter_names_and_layouts(facts):
    cb = facts["conv_block"]
    assert _names(cb["trainable"]) == {"norm.weight", "norm.bias", "conv.weight", "conv.bias"}
    assert _names(cb["non_trainable"]) == {"norm.running_mean", "norm.running_var",
                                           "norm.num_batches_tracked"}
    assert cb["kernel"]["layout"] == "OIHW" and cb["kernel"]["shape"] == [10, 3, 3, 3]
    assert cb["shapes"]["layout"] == "NCHW" and cb["shapes"]["output"] == [4, 10, 8, 8]
    assert cb["conv_bias"]["value"] is True
    assert facts["stem_and_head"]["classifier"]["layout"] == "(out, in)"
    net = facts["network"]
    assert net["name_map"]["identical"] == net["name_map"]["canonical"] == 126
    assert net["trainable_count"]["value"] == get_spec("d2l").num_params()


def test_the_chapters_shapes(facts):
    assert facts["dense_block"]["shapes"]["output"] == [4, 23, 8, 8]
    assert facts["dense_block"]["concat"]["axis"] == 1
    assert facts["transition"]["shapes"]["output"] == [4, 10, 4, 4]
    assert facts["stem_and_head"]["stem_shapes"]["output"] == [2, 64, 24, 24]
    assert "AvgPool2d(kernel_size=2, stride=2, padding=0)" in facts["transition"]["pool"]["text"]


def test_train_eval_switch_changes_the_output(facts):
    for part in ("conv_block", "network"):
        te = facts[part]["train_eval"]
        assert te["differs"] and te["in_runtime"], te
        assert te["train_call"] == "`model.train()`"


def test_pooling_padding_and_head(facts):
    sh = facts["stem_and_head"]
    assert sh["stem_pool"]["border"] == -1.0  # max-pool padding never wins
    assert sh["head_pool"]["global_mean"]


def test_initialisers_and_sgd(facts):
    assert facts["conv_block"]["init"]["within_bound"] and facts["conv_block"]["init"]["bn_ones_zeros"]
    assert 0.9 < facts["network"]["conv_init"]["std_ratio"] < 1.1  # kaiming_normal_: N(0, 2/fan_in)
    sgd = facts["network"]["sgd"]
    assert sgd["values"] == pytest.approx([0.9, 0.805])
    assert sgd["fits"].startswith("velocity of gradients")


def test_the_derived_facts_can_say_otherwise():
    """The measurements are not one-way: a wrong input gives the other answer."""
    assert I.kernel_layout((3, 3, 23, 10), (10, 23, 3, 3)) == ["HWIO"]
    assert I.kernel_layout((10, 3, 3, 3), (10, 3, 3, 3)) == ["OHIW", "OHWI", "OIHW"]
    assert I.activation_layout((4, 8, 8, 10), 10) == "NHWC"
    x = I.chapter_input()
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))  # a biased-variance update
    before = (np.zeros(3), np.ones(3))
    after = (0.1 * mean, 0.9 + 0.1 * var)
    bn = I._bn_update_facts("momentum", 0.9, x, 1, before, after)
    assert bn["bn_momentum"]["meaning"] == "weight of the old running value"
    assert bn["bn_running_var"]["rule"] == "biased"
    assert I._sgd_fact("SGD", "", "", [0.9, 0.76])["fits"].startswith("velocity of steps")
    y = np.ones((2, 2))
    assert not I._train_eval_fact("a", "b", y, y, ("t", "e"), True)["differs"]
