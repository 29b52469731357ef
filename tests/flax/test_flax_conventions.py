"""The guide's Flax NNX column: the conventions introspect reads off the real modules.

``densenet_multi.guide.introspect`` builds the chapter's parts with this backend's
classes and reads each fact from the objects (or measures it by running them); the
guide's tables print those facts. These tests pin the facts a reader is told.
"""

from __future__ import annotations

import pytest

pytest.importorskip("flax.nnx")

from densenet_multi.guide import introspect as I  # noqa: E402


@pytest.fixture(scope="module")
def facts():
    return I.introspect("flax")["parts"]


def _names(fact):
    return set(fact["names"])


def test_batchnorm_in_flaxs_own_convention(facts):
    cb = facts["conv_block"]
    assert cb["bn_eps"]["value"] == pytest.approx(1e-5)
    # Flax's momentum weighs the old running value: PyTorch's 0.1 is Flax's 0.9
    assert cb["bn_momentum"]["value"] == pytest.approx(0.9)
    assert cb["bn_momentum"]["measured_new_weight"] == pytest.approx(0.1, abs=1e-5)
    assert cb["bn_momentum"]["meaning"] == "weight of the old running value"
    assert cb["bn_running_var"]["rule"] == "biased"


def test_parameter_names_and_layouts(facts):
    cb = facts["conv_block"]
    assert _names(cb["trainable"]) == {"norm/scale", "norm/bias", "conv/kernel", "conv/bias"}
    assert _names(cb["non_trainable"]) == {"norm/mean", "norm/var"}
    assert cb["kernel"]["layout"] == "HWIO" and cb["kernel"]["shape"] == [3, 3, 3, 10]
    assert facts["transition"]["kernel"]["layout"] == "HWIO"
    assert cb["shapes"]["layout"] == "NHWC" and cb["shapes"]["output"] == [4, 8, 8, 10]
    assert facts["stem_and_head"]["classifier"]["layout"] == "(in, out)"
    net = facts["network"]
    assert net["name_map"]["found"] == 126 and net["name_map"]["identical"] == 0
    assert net["name:features.denseblock1.denselayer1.norm.weight"]["native"] == \
        "features/denseblock1/denselayer1/norm/scale"


def test_the_chapters_shapes(facts):
    assert facts["dense_block"]["shapes"]["output"] == [4, 8, 8, 23]
    assert facts["dense_block"]["concat"]["axis"] == -1
    assert facts["transition"]["shapes"]["output"] == [4, 4, 4, 10]
    assert facts["stem_and_head"]["stem_shapes"]["output"] == [2, 24, 24, 64]


def test_train_eval_switch_changes_the_output(facts):
    for part in ("conv_block", "network"):
        te = facts[part]["train_eval"]
        assert te["differs"] and te["in_runtime"], te
    assert "use_running_average=False" in facts["conv_block"]["train_eval"]["text"]


def test_pooling_padding_and_head(facts):
    sh = facts["stem_and_head"]
    assert sh["stem_pool"]["border"] == -1.0
    assert sh["head_pool"]["global_mean"]
    assert "((3, 3), (3, 3))" in sh["stem_padding"]["text"]  # explicit pairs, never "SAME"


def test_initialisers_and_sgd(facts):
    assert "variance_scaling(2.0, 'fan_in', 'normal')" in facts["conv_block"]["init"]["text"]
    assert 0.9 < facts["network"]["conv_init"]["std_ratio"] < 1.1
    sgd = facts["network"]["sgd"]
    assert sgd["values"] == pytest.approx([0.9, 0.805])
    assert sgd["fits"].startswith("velocity of gradients")


def test_the_run_leaves_jaxs_random_generator_alone(facts):
    import jax

    assert jax.config.jax_default_prng_impl == "threefry2x32"
