"""The spec: validation, presets, the channel plan, shapes, parameter and MAC counts."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densenet_multi.spec import PRESETS, DenseNetSpec, InputError, SpecError, get_spec

# torchvision's weight metadata (num_params, GFLOPS as multiply-accumulates)
TORCHVISION = {
    "densenet121": (7_978_856, 2.834),
    "densenet161": (28_681_000, 7.728),
    "densenet169": (14_149_480, 3.360),
    "densenet201": (20_013_928, 4.291),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_parameter_and_mac_counts_equal_torchvision(name):
    spec = get_spec(name)
    params, gmacs = TORCHVISION[name]
    assert spec.num_params() == params
    assert round(spec.macs(224, 224) / 1e9, 3) == gmacs


def test_paper_counts_for_cifar_nets_and_densenet264():
    # Huang et al., Table 2: DenseNet (L=40, k=12) 1.0M; DenseNet-BC (L=100, k=12) 0.8M
    assert round(get_spec("densenet40_k12").num_params() / 1e6, 1) == 1.0
    assert round(get_spec("densenet_bc_100_k12").num_params() / 1e6, 1) == 0.8
    # DenseNet-264 (k=32, blocks 6,12,64,48): about 33.3M
    assert round(get_spec("densenet264").num_params() / 1e6, 1) == 33.3
    # depth L = 3 * layers * (2 if bottleneck else 1) + 4
    s = get_spec("densenet_bc_100_k12")
    assert 2 * sum(s.block_config) + 4 == 100
    assert sum(get_spec("densenet40_k12").block_config) + 4 == 40


def test_d2l_layer_shape_table():
    """The d2l chapter's table for a 1x1x224x224 input (PyTorch tab)."""
    spec = get_spec("d2l")
    shapes = spec.stage_shapes(224, 224)
    assert shapes["stem"] == (64, 56, 56)
    assert [shapes[f"block{i}"][0] for i in range(1, 5)] == [192, 224, 240, 248]
    assert [shapes[f"transition{i}"][0] for i in range(1, 4)] == [96, 112, 120]
    assert shapes["transition3"] == (120, 7, 7)
    assert shapes["block4"] == (248, 7, 7)
    assert shapes["logits"] == (10,)
    assert spec.in_channels == 1 and spec.conv_bias and spec.bn_size is None


def test_densenet121_stage_sizes_at_224():
    shapes = get_spec("densenet121").stage_shapes(224)
    assert get_spec("densenet121").stem_conv.out_size(224) == 112
    assert [shapes[s][1] for s in ("stem", "block1", "transition1", "transition2", "transition3",
                                   "block4")] == [56, 56, 28, 14, 7, 7]
    assert [shapes[f"block{i}"][0] for i in range(1, 5)] == [256, 512, 1024, 1024]
    assert [shapes[f"transition{i}"][0] for i in range(1, 4)] == [128, 256, 512]
    assert shapes["pooled"] == (1024,)


def test_channel_plan_running_width():
    plan = get_spec("d2l").channel_plan
    b2 = plan.blocks[1]
    assert b2.in_channels == 96
    assert b2.layer_in_channels == (96, 128, 160, 192)
    assert b2.out_channels == 224
    assert plan.final_channels == 248
    assert plan.blocks[0].bottleneck_channels is None
    assert get_spec("densenet121").channel_plan.blocks[0].bottleneck_channels == 128


def test_stage_names_order():
    assert get_spec("densenet40_k12").stage_names == (
        "stem", "block1", "transition1", "block2", "transition2", "block3",
        "features", "pooled", "logits")


def test_cifar_stem_keeps_size():
    shapes = get_spec("densenet40_k12").stage_shapes(32)
    assert shapes["stem"] == (16, 32, 32)
    assert shapes["block3"] == (16 + 36 * 12, 8, 8)
    assert get_spec("densenet40_k12").channel_plan.transitions[0].out_channels == 16 + 12 * 12


@pytest.mark.parametrize("rounding,expected", [("floor", 4), ("ceil", 5), ("round", 5)])
def test_transition_rounding_on_odd_width(rounding, expected):
    spec = DenseNetSpec(growth_rate=3, block_config=(1, 1), num_init_features=6,
                        bn_size=None, transition_rounding=rounding)
    assert spec.channel_plan.transitions[0].in_channels == 9
    assert spec.channel_plan.transitions[0].out_channels == expected


def test_floor_is_robust_to_float_error():
    spec = DenseNetSpec(growth_rate=4, block_config=(1, 1), num_init_features=96,
                        compression=0.29)
    assert spec.transition_width(100) == 29  # 0.29 * 100 = 28.999999999999996 in floats


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_too_small_input_names_smallest_size(name):
    spec = get_spec(name)
    m = spec.min_input_size()
    spec.stage_shapes(m, m)
    with pytest.raises(InputError, match=f"smallest size that works is {m}x{m}"):
        spec.stage_shapes(m - 1, m)
    with pytest.raises(InputError, match="too small"):
        spec.stage_shapes(m, m - 1)


def test_min_sizes():
    assert get_spec("densenet121").min_input_size() == 29
    assert get_spec("densenet40_k12").min_input_size() == 4


def test_unknown_preset_lists_known():
    with pytest.raises(SpecError, match="known presets are") as e:
        get_spec("densenet122")
    for name in PRESETS:
        assert name in str(e.value)


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("growth_rate", 0, r"growth_rate must be an integer in \[1, 4096\], got 0"),
        ("growth_rate", 2.5, "growth_rate"),
        ("block_config", (), "block_config"),
        ("block_config", (6, 0), "block_config"),
        ("compression", 0.0, r"compression must be a number in \(0, 1\], got 0.0"),
        ("compression", 1.5, "compression"),
        ("bn_size", 0, "bn_size"),
        ("drop_rate", 1.0, r"drop_rate must be a number in \[0, 1\)"),
        ("num_classes", 0, "num_classes"),
        ("in_channels", -1, "in_channels"),
        ("bn_eps", 0.0, "bn_eps"),
        ("bn_momentum", 0.0, "bn_momentum"),
        ("bn_momentum", 1.5, "PyTorch's convention"),
        ("stem", "resnet", "stem must be one of"),
        ("transition_rounding", "trunc", "transition_rounding"),
        ("conv_bias", 1, "conv_bias"),
    ],
)
def test_invalid_fields_name_field_value_and_range(field, value, fragment):
    with pytest.raises(SpecError, match=fragment) as e:
        get_spec("densenet121", **{field: value})
    assert field in str(e.value)
    assert repr(value) in str(e.value)


def test_replace_unknown_field():
    with pytest.raises(SpecError, match="no field"):
        get_spec("d2l").replace(depth=3)


def test_spec_is_frozen_and_name_not_compared():
    spec = get_spec("densenet121")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.growth_rate = 12
    assert spec == spec.replace(name="other")
    assert spec.differences(spec.replace(bn_eps=1.001e-5)) == [("bn_eps", 1e-5, 1.001e-5)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    spec = get_spec(name)
    back = DenseNetSpec.from_json(spec.to_json())
    assert back == spec and back.name == spec.name
    assert json.loads(spec.to_json())["format"] == 1


def test_from_json_rejects_unknown_fields():
    with pytest.raises(SpecError, match="unknown DenseNetSpec field"):
        DenseNetSpec.from_dict({"growth_rate": 12, "depth": 40})


def test_momentum_is_stated_once_in_pytorchs_convention():
    spec = get_spec("densenet121")
    assert spec.bn_momentum == 0.1
    # no framework-named translations live in the spec: backends write 1 - m themselves
    assert not [n for n in dir(spec) if "keras" in n or "flax" in n or "gluon" in n]


def test_memory_efficient_is_not_a_spec_field_and_old_files_still_load():
    assert "memory_efficient" not in DenseNetSpec.field_names()
    old = {**get_spec("d2l").to_dict(), "memory_efficient": False, "format": 1}
    assert DenseNetSpec.from_dict(old) == get_spec("d2l")


def test_block_plan_is_the_textbook_block():
    # the chapter's DenseBlock(2, 10) on 3 input channels: 3 + 2 * 10 = 23 channels out
    spec = get_spec("d2l", growth_rate=10)
    plan = spec.block_plan(3, 2)
    assert plan.layer_in_channels == (3, 13) and plan.out_channels == 23
    assert plan.bottleneck_channels is None
    assert get_spec("densenet121").block_plan(64, 6).bottleneck_channels == 128
    assert get_spec("densenet121").channel_plan.blocks[1] == get_spec("densenet121").block_plan(
        128, 12, index=2)
    with pytest.raises(SpecError, match="num_layers >= 1, got 0"):
        spec.block_plan(3, 0)


def test_stage_parts_name_the_part_ending_each_stage():
    assert list(get_spec("d2l").stage_parts.items())[:3] == [
        ("pool0", "stem"), ("denseblock1", "block1"), ("transition1", "transition1")]
    cifar = get_spec("densenet40_k12")
    assert list(cifar.stage_parts) == ["conv0", "denseblock1", "transition1", "denseblock2",
                                       "transition2", "denseblock3"]
    for spec in (get_spec("densenet121"), cifar):
        assert tuple(spec.stage_parts.values()) == spec.stage_names[:-3]


valid_specs = st.builds(
    DenseNetSpec,
    growth_rate=st.integers(1, 16),
    block_config=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    num_init_features=st.integers(4, 32),
    bn_size=st.one_of(st.none(), st.integers(1, 4)),
    compression=st.floats(0.5, 1.0),
    num_classes=st.integers(1, 20),
    in_channels=st.integers(1, 4),
    stem=st.sampled_from(["imagenet", "cifar"]),
    conv_bias=st.booleans(),
    transition_rounding=st.sampled_from(["floor", "ceil", "round"]),
)


@settings(max_examples=60, deadline=None)
@given(valid_specs)
def test_plan_properties_hold_for_random_specs(spec):
    plan = spec.channel_plan
    width = spec.num_init_features
    for bp in plan.blocks:
        assert bp.in_channels == width
        assert bp.out_channels == width + bp.num_layers * spec.growth_rate
        width = bp.out_channels
        if bp.index < spec.num_blocks:
            tp = plan.transitions[bp.index - 1]
            assert tp.in_channels == width
            assert 1 <= tp.out_channels <= width
            assert abs(tp.out_channels - width * spec.compression) <= 1
            width = tp.out_channels
    assert plan.final_channels == width
    m = spec.min_input_size()
    shapes = spec.stage_shapes(m, m)
    assert list(shapes) == list(spec.stage_names)
    assert all(s[-1] >= 1 for s in shapes.values())
    assert DenseNetSpec.from_json(spec.to_json()) == spec


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["growth_rate", "num_classes", "in_channels", "num_init_features"]),
       value=st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.text(max_size=3)))
def test_invalid_values_always_rejected(field, value):
    with pytest.raises(SpecError, match=field):
        DenseNetSpec(**{field: value})
