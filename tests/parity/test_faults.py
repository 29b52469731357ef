"""Fault injection: the harness must catch the mistakes real ports make, at the right
stage and check. Each fake backend (fake_backends.py) runs in a worker subprocess
through the real runner."""

from __future__ import annotations

import pytest
from parity_helpers import ILL_F32, TINY4, TINY_BC, TINY_IMAGENET, cell, fake, run

from densenet_multi.parity.cases import Case
from densenet_multi.parity.compare import compare_run
from densenet_multi.parity.report import exit_status
from densenet_multi.parity.runfolder import CaseFolder, key
from densenet_multi.parity.status import Status
from densenet_multi.spec import get_spec
from densenet_multi.testing import tolerance

PASS, FAIL, ERROR, ILL = Status.PASS, Status.FAIL, Status.ERROR, Status.ILL
FORWARD_FAKES = ["good", "same_padding", "initial_width", "momentum_convention",
                 "channels_last", "hwio_reshape", "hwio_reshape_export", "keras_eps"]


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
    assert cell(cc, "grad", "good").status == Status.UNSUPPORTED
    assert cell(cc, "trajectory", "good").status == Status.UNSUPPORTED


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


def test_keras_default_bn_epsilon_fails_eval_at_the_stem(d2l_run):
    """BatchNorm(epsilon=1e-3), Keras' default, instead of the spec's 1e-5: the ImageNet
    stem's norm0 is the first BN, so eval fails right there."""
    c = cell(d2l_run, "eval", "keras_eps")
    assert c.status == FAIL and c.first_fail.item == "stem"
    assert c.first_fail.rel > 10 * tolerance("eval", "float32")
    assert cell(d2l_run, "shapes", "keras_eps").status == PASS
    assert cell(d2l_run, "eval", "good~keras_eps").first_fail.item == "stem"


def test_fixed_7x7_average_pool_fails_at_pooled_at_256_only(tmp_path):
    """Gluon zoo's AvgPool2D(7) head: global at 224x224 (7x7 features), the top-left
    7x7 of the 8x8 features at 256x256: FAIL at ``pooled``, every stage before it passes."""
    cases = [Case(f"tiny4-{s}", TINY4, (s, s), checks=("eval",)) for s in (224, 256)]
    _, ccs = run(tmp_path, cases, [fake("good"), fake("fixed_pool7")])
    assert cell(ccs["tiny4-224"], "eval", "fixed_pool7").status == PASS
    c = cell(ccs["tiny4-256"], "eval", "fixed_pool7")
    assert c.status == FAIL and c.first_fail.item == "pooled"
    before = c.items[:c.items.index(c.first_fail)]
    assert [i.item for i in before][-1] == "features" and all(i.status == PASS for i in before)
    assert cell(ccs["tiny4-256"], "eval", "good~fixed_pool7").first_fail.item == "pooled"


def test_nan_on_both_sides_of_a_pair_fails(tmp_path):
    """Two backends that both produce NaN from block2 on do not agree: FAIL at block2,
    against the reference and against each other."""
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval",))
    _, ccs = run(tmp_path, [case], [fake("nan1", "nan_stage"), fake("nan2", "nan_stage"),
                                    fake("good")])
    cc = ccs["tiny"]
    pair = cell(cc, "eval", "nan1~nan2")
    assert pair.status == FAIL and pair.first_fail.item == "block2"
    assert "NaN or inf in nan1 and nan2" in pair.first_fail.note
    assert pair.first_fail.rel is None  # no number is reported as an error
    for b in ("nan1", "nan2"):
        own = cell(cc, "eval", b)
        assert own.status == FAIL and own.first_fail.item == "block2"
    assert exit_status([cc]) == 1


@pytest.mark.parametrize("bug", ["reuse_batch", "momentum_ema"])
def test_trajectory_only_bugs_fail_the_trajectory_at_the_losses(tmp_path, bug):
    """A step that trains on the first batch again, or momentum as an exponential average:
    gradients are right, the trajectory fails, first at the losses (the second step's)."""
    case = Case("bc64", TINY_BC, (16, 16), dtype="float64", batch=4, steps=3,
                checks=("grad", "trajectory"))
    _, ccs = run(tmp_path, [case], [fake("autograd"), fake(bug)])
    cc = ccs["bc64"]
    assert cell(cc, "trajectory", "autograd").status == PASS
    assert cell(cc, "grad", bug).status == PASS
    c = cell(cc, "trajectory", bug)
    assert c.status == FAIL and c.first_fail.item == "losses"
    assert c.first_fail.rel > 1e3 * tolerance("trajectory", "float64")
    assert cell(cc, "trajectory", f"autograd~{bug}").first_fail.item == "losses"


def test_wrong_conv_bias_gradient_fails_in_a_conv_bias_net(tmp_path):
    """A d2l-like float64 net (conv biases, no bottleneck): the true bias gradient is 0.
    A bias gradient of half the kernel gradient's magnitude is FAIL at that bias, not
    'ill-conditioned': the probe's spread is measured on the kernel gradient's scale too."""
    assert TINY_IMAGENET["conv_bias"] and TINY_IMAGENET["bn_size"] is None
    case = Case("conv_bias64", TINY_IMAGENET, (32, 32), dtype="float64", batch=4,
                checks=("grad",))
    _, ccs = run(tmp_path, [case], [fake("autograd"), fake("bias_grad_bug")])
    cc = ccs["conv_bias64"]
    good = cell(cc, "grad", "autograd")
    assert good.status == PASS
    biases = [i for i in good.items if i.item.endswith("conv.bias") or i.item.endswith("conv0.bias")]
    assert biases and all(i.spread < 1e-3 * i.tol for i in biases)  # noise on the kernel's scale
    bad = cell(cc, "grad", "bias_grad_bug")
    assert bad.status == FAIL
    assert bad.first_fail.item == "features.transition1.conv.bias"
    assert bad.first_fail.rel == pytest.approx(0.5, rel=0.01)
    assert bad.first_fail.spread < bad.first_fail.tol
    assert cell(cc, "grad", "autograd~bias_grad_bug").first_fail.item == \
        "features.transition1.conv.bias"
    assert exit_status([cc]) == 1


def test_1000_percent_trajectory_error_on_an_ill_conditioned_float32_case_fails(tmp_path):
    """A float32 case where the reference itself moves past the tolerance under the probe
    (1.4e-3 at the bugged weight): a weight 1000% wrong is FAIL, not 'ill-conditioned'.
    A correct float32 implementation (the tape in float32) passes it."""
    case = Case("ill32", ILL_F32["spec"], ILL_F32["size"], batch=ILL_F32["batch"],
                seed=ILL_F32["seed"], checks=("trajectory",), steps=3)
    _, ccs = run(tmp_path, [case], [fake("float32_tape"), fake("trajectory_x11")])
    cc = ccs["ill32"]
    name = "features.denseblock1.denselayer1.conv2.weight"
    ok = cell(cc, "trajectory", "float32_tape")
    assert ok.status == PASS, ok.first_fail
    spread = {i.item: i.spread for i in ok.items}
    assert spread[name] > 10 * tolerance("trajectory", "float32")  # ill-conditioned there
    assert sum(s > tolerance("trajectory", "float32") for s in spread.values()) > 10
    bad = cell(cc, "trajectory", "trajectory_x11")
    assert bad.status == FAIL and bad.first_fail.item == name
    assert bad.first_fail.rel == pytest.approx(10, rel=1e-3)
    assert "more than 10x" in bad.first_fail.note and "1e-06 of their size" in bad.first_fail.note
    assert exit_status([cc]) == 1 and exit_status([cc], require_all=True) == 1


def test_reference_missing_a_stage_or_a_file_is_an_error_naming_it(tmp_path):
    """A reference that covers fewer stages than the spec, or none at all, is an error
    (never a pass); so is a pair partner missing an item, which is named."""
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval", "train"))
    result, ccs = run(tmp_path, [case], [fake("a", "good"), fake("b", "good")])
    assert cell(ccs["tiny"], "eval", "a").status == PASS
    folder = CaseFolder(result.case_dirs["tiny"])
    ref = folder.read_reference()
    del ref[key("eval", "stage", "block1")]
    folder.write_reference(ref)
    cc = compare_run(result)[0]
    c = cell(cc, "eval", "a")
    assert c.status == ERROR and c.first_fail.item == "block1"
    assert c.first_fail.note == "missing from the reference"
    assert cell(cc, "train", "a").status == PASS
    assert exit_status([cc]) == 1
    # a pair partner without an item: an error that names the partner
    report, arrays = folder.read_result("b", "cpu")
    del arrays[key("train", "stage", "transition1")]
    folder.write_result("b", "cpu", report, arrays)
    cc = compare_run(result)[0]
    assert cell(cc, "train", "b").first_fail.note == "missing from b's output"
    pair = cell(cc, "train", "a~b")
    assert pair.status == ERROR and pair.first_fail.item == "transition1"
    assert pair.first_fail.note == "missing from b"
    # no reference file at all
    folder.reference.unlink()
    cc = compare_run(result)[0]
    for check in ("eval", "train"):
        c = cell(cc, check, "a")
        assert c.status == ERROR and "reference.npz is missing" in c.message
