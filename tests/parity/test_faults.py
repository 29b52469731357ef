"""Fault injection: the harness must catch the mistakes real ports make, at the right
stage and check. Each fake backend (fake_backends.py) runs in a worker subprocess
through the real runner."""

from __future__ import annotations

import pytest
from parity_helpers import TINY_BC, cell, fake, run

from densenet_multi.parity.cases import Case
from densenet_multi.parity.compare import FAIL, PASS, UNSUPPORTED
from densenet_multi.spec import get_spec
from densenet_multi.testing import tolerance

FORWARD_FAKES = ["good", "same_padding", "initial_width", "momentum_convention",
                 "channels_last", "hwio_reshape", "hwio_reshape_export"]


@pytest.fixture(scope="module")
def d2l_run(tmp_path_factory):
    """d2l at 96x96 (the textbook's Fashion-MNIST setting) through every forward fake."""
    case = Case("d2l", "d2l", (96, 96), checks=("shapes", "eval", "train", "copy"))
    tmp = tmp_path_factory.mktemp("d2l")
    _, ccs = run(tmp, [case], [fake(n) for n in FORWARD_FAKES])
    return ccs["d2l"]


def test_correct_fakes_pass_everything(d2l_run):
    for name in ("good", "channels_last"):
        for check in ("shapes", "eval", "train", "copy"):
            c = cell(d2l_run, check, name)
            assert c.status == PASS, (name, check, c.first_fail, c.message)
    assert cell(d2l_run, "copy", "good->channels_last").status == PASS
    assert cell(d2l_run, "copy", "channels_last->good").status == PASS
    # real numbers, within the shared tolerance, not zero by accident
    ev = cell(d2l_run, "eval", "good")
    assert 0 < ev.worst_rel < tolerance("eval", "float32")
    assert [i.item for i in ev.items][:3] == ["stem", "block1", "transition1"]


def test_same_padding_fails_eval_at_the_stem(d2l_run):
    assert cell(d2l_run, "shapes", "same_padding").status == PASS  # same sizes: (2,3) vs (3,3)
    for check in ("eval", "train"):
        c = cell(d2l_run, check, "same_padding")
        assert c.status == FAIL
        assert c.first_fail.item == "stem"
        assert c.first_fail.rel > 0.1
    # and pairwise against a correct backend, at the same stage
    assert cell(d2l_run, "eval", "good~same_padding").first_fail.item == "stem"


def test_transition_width_from_initial_width_fails_shapes_at_transition2(d2l_run):
    c = cell(d2l_run, "shapes", "initial_width")
    assert c.status == FAIL
    ff = c.first_fail
    assert ff.item == "transition2"
    assert ff.expected_shape == [2, 112, 6, 6] and ff.actual_shape == [2, 96, 6, 6]
    assert [i.item for i in c.items if i.status == PASS][:4] == ["stem", "block1",
                                                                 "transition1", "block2"]
    # its canonical weights can't even be loaded: an error, not a pass
    assert cell(d2l_run, "eval", "initial_width").status == "error"


def test_bn_momentum_convention_shows_only_in_the_running_stats(d2l_run):
    assert cell(d2l_run, "eval", "momentum_convention").status == PASS
    c = cell(d2l_run, "train", "momentum_convention")
    assert c.status == FAIL
    stages = get_spec("d2l").stage_names
    assert all(i.status == PASS for i in c.items if i.item in stages)  # batch stats are right
    assert c.first_fail.item == "features.norm0.running_mean"
    assert c.first_fail.tol == tolerance("running", "float32")


def test_kernel_reshaped_instead_of_transposed_fails_eval_at_the_stem(d2l_run):
    c = cell(d2l_run, "eval", "hwio_reshape")
    assert c.status == FAIL and c.first_fail.item == "stem"
    # its own round trip is consistent (reshape back), so copy passes ...
    assert cell(d2l_run, "copy", "hwio_reshape").status == PASS
    # ... unless the export transposes: then copying fails, at the first kernel
    c = cell(d2l_run, "copy", "hwio_reshape_export")
    assert c.status == FAIL and c.first_fail.item == "features.conv0.weight"
    assert cell(d2l_run, "eval", "hwio_reshape_export").first_fail.item == "stem"
    chain = cell(d2l_run, "copy", "good->hwio_reshape_export")
    assert chain.status == FAIL and chain.first_fail.item == "features.conv0.weight"


def test_int_rounding_on_an_odd_width_fails_shapes_at_that_transition(tmp_path):
    # transition1 gets 16 channels (even), transition2 gets 8 + 3 * 3 = 17 (odd):
    # the spec says round up (9), int(17 * 0.5) gives 8.
    spec = get_spec("densenet40_k12", growth_rate=3, block_config=(2, 3, 2),
                    num_init_features=10, compression=0.5, transition_rounding="ceil")
    assert [t.in_channels for t in spec.channel_plan.transitions] == [16, 17]
    case = Case("odd", spec.to_dict(), (16, 16), checks=("shapes", "eval"))
    _, ccs = run(tmp_path, [case], [fake("good"), fake("int_rounding")])
    assert cell(ccs["odd"], "shapes", "good").status == PASS
    c = cell(ccs["odd"], "shapes", "int_rounding")
    assert c.status == FAIL and c.first_fail.item == "transition2"
    assert c.first_fail.expected_shape == [2, 9, 4, 4]
    assert c.first_fail.actual_shape == [2, 8, 4, 4]


def test_wrong_gradient_is_reported_at_its_parameter(tmp_path):
    case = Case("bc", TINY_BC, (16, 16), checks=("grad", "trajectory"), steps=2)
    _, ccs = run(tmp_path, [case], [fake("autograd"), fake("grad_bug"), fake("good")])
    cc = ccs["bc"]
    g = cell(cc, "grad", "autograd")
    assert g.status == PASS, g.first_fail
    assert 0 < g.worst_rel < tolerance("grad", "float32")
    assert cell(cc, "trajectory", "autograd").status == PASS
    bad = cell(cc, "grad", "grad_bug")
    assert bad.status == FAIL
    assert bad.first_fail.item == "features.transition1.conv.weight"
    assert bad.first_fail.rel == pytest.approx(0.01, rel=0.05)
    # parameters before it in depth order pass, the input gradient is still reported
    names = [i.item for i in bad.items]
    assert names[0] == "loss" and names[-1] == "input"
    assert all(i.status == PASS for i in bad.items[:names.index(bad.first_fail.item)])
    pair = cell(cc, "grad", "autograd~grad_bug")
    assert pair.first_fail.item == "features.transition1.conv.weight"
    # NotImplementedError marks the check unsupported, never passed
    assert cell(cc, "grad", "good").status == UNSUPPORTED
    assert cell(cc, "trajectory", "good").status == UNSUPPORTED


def test_float64_case_holds_gradients_to_1e10_and_catches_a_float32_backend(tmp_path):
    """A float64 case: a float64 backend passes grad and trajectory at the float64
    tolerances (well inside them), the gradient bug is a FAIL at its parameter (not
    'ill-conditioned': the probe moves the float64 reference by ~1e-13), and a backend
    that ignores build(dtype=...) and computes in float32 fails from the first stage."""
    case = Case("bc64", TINY_BC, (16, 16), dtype="float64", batch=4, steps=2,
                checks=("eval", "train", "grad", "trajectory", "copy"))
    _, ccs = run(tmp_path, [case], [fake("autograd"), fake("grad_bug"), fake("float32_only")])
    cc = ccs["bc64"]
    for check in ("eval", "train", "grad", "trajectory", "copy"):
        c = cell(cc, check, "autograd")
        assert c.status == PASS, (check, c.first_fail)
        assert c.worst_rel <= 1e-3 * tolerance(check, "float64") or check == "copy"
    bad = cell(cc, "grad", "grad_bug")
    assert bad.status == FAIL
    assert bad.first_fail.item == "features.transition1.conv.weight"
    assert bad.first_fail.rel == pytest.approx(0.01, rel=0.05)
    f32 = cell(cc, "eval", "float32_only")
    assert f32.status == FAIL and f32.first_fail.item == "stem"
    assert tolerance("eval", "float64") < f32.first_fail.rel < 1e-5
    # its export is float32: the bit-exact copy check fails on the dtype
    assert cell(cc, "copy", "float32_only").status == FAIL
