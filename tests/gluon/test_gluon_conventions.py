"""The guide's MXNet Gluon column: the conventions introspect reads off the real blocks.

``densenet_multi.guide.introspect`` builds the chapter's parts with this backend's
classes and reads each fact from the objects (or measures it by running them); the
guide's tables print those facts. These tests pin the facts a reader is told.
"""

from __future__ import annotations

import pytest

from densenet_multi.guide import introspect as I


@pytest.fixture(scope="module")
def facts():
    return I.introspect("gluon")["parts"]


SUFFIXES = ("running_mean", "running_var", "gamma", "beta", "weight", "bias")


def _suffixes(fact):
    """The parameter kinds of Gluon's names (``convblock0_conv0_weight`` -> ``weight``)."""
    return {next(s for s in SUFFIXES if n.endswith("_" + s)) for n in fact["names"]}


def test_batchnorm_in_gluons_own_convention(facts):
    cb = facts["conv_block"]
    assert cb["bn_eps"]["value"] == pytest.approx(1e-5)
    assert cb["bn_momentum"]["value"] == pytest.approx(0.9)
    assert cb["bn_momentum"]["measured_new_weight"] == pytest.approx(0.1, abs=1e-5)
    assert cb["bn_momentum"]["meaning"] == "weight of the old running value"
    assert cb["bn_running_var"]["rule"] == "biased"


def test_parameter_names_and_layouts(facts):
    cb = facts["conv_block"]
    assert _suffixes(cb["trainable"]) == {"gamma", "beta", "weight", "bias"}
    assert _suffixes(cb["non_trainable"]) == {"running_mean", "running_var"}
    assert cb["kernel"]["layout"] == "OIHW" and cb["shapes"]["layout"] == "NCHW"
    assert facts["stem_and_head"]["classifier"]["layout"] == "(out, in)"
    name = facts["network"]["name:features.conv0.weight"]
    assert "`save_parameters` key `features.conv0.weight`" in name["text"]


def test_the_chapters_shapes(facts):
    assert facts["dense_block"]["shapes"]["output"] == [4, 23, 8, 8]
    assert facts["transition"]["shapes"]["output"] == [4, 10, 4, 4]
    assert facts["stem_and_head"]["stem_shapes"]["output"] == [2, 64, 24, 24]
    assert facts["dense_layer"]["maps"]["second_output"] == [4, 10, 8, 8]


def test_train_eval_switch_changes_the_output(facts):
    for part in ("conv_block", "network"):
        te = facts[part]["train_eval"]
        assert te["differs"] and te["in_runtime"], te
        assert "autograd.record(train_mode=True)" in te["train_call"]


def test_pooling_and_head(facts):
    assert facts["stem_and_head"]["stem_pool"]["border"] == -1.0
    assert facts["stem_and_head"]["head_pool"]["global_mean"]
    assert "global_pool=False" in facts["transition"]["pool"]["text"]


def test_initialisers_and_sgd(facts):
    assert facts["conv_block"]["init"]["weight"] == "None"  # initialize()'s initializer
    sgd = facts["network"]["sgd"]
    assert sgd["values"] == pytest.approx([0.9, 0.76])
    assert sgd["fits"].startswith("velocity of steps")
