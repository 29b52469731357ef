"""The harness itself: comparison logic, tolerance policy, runner paths, report files, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from parity_helpers import FAKES, TINY_BC, TINY_IMAGENET, cell, fake, run

from densenet_multi.params import param_table
from densenet_multi.parity import cli
from densenet_multi.parity.cases import CHECKS, DEFAULT_CASES, Case, get_cases, make_inputs
from densenet_multi.parity.compare import (
    ILL_FACTOR,
    Cell,
    Item,
    compare_entries,
    compare_exact,
    compare_items,
    entries,
    mark_ill,
    status_of,
)
from densenet_multi.parity.report import exit_status
from densenet_multi.parity.runfolder import key
from densenet_multi.parity.runner import (
    BackendTarget,
    find_project_root,
    parse_backends,
    resolve_python,
)
from densenet_multi.parity.status import Status, fails_run, worst
from densenet_multi.spec import get_spec
from densenet_multi.testing import TOLERANCES, compare, tolerance

PASS, FAIL, ERROR, ILL, MISSING = (Status.PASS, Status.FAIL, Status.ERROR, Status.ILL,
                                   Status.MISSING)


# ---------------------------------------------------------------------- cases
def test_default_cases_are_the_issue_s():
    got = {c.name: (c.spec, c.input_size, c.batch, c.dtype) for c in DEFAULT_CASES}
    # float32 batches chosen for float32 conditioning (see cases.py)
    assert got == {
        "d2l": ("d2l", (96, 96), 4, "float32"),
        "densenet121": ("densenet121", (224, 224), 4, "float32"),
        "densenet_bc_100_k12": ("densenet_bc_100_k12", (32, 32), 8, "float32"),
        "densenet40_k12": ("densenet40_k12", (32, 32), 8, "float32"),
        "d2l-float64": ("d2l", (96, 96), 4, "float64"),
        "densenet121-float64": ("densenet121", (224, 224), 2, "float64"),
        "densenet_bc_100_k12-float64": ("densenet_bc_100_k12", (32, 32), 4, "float64"),
        "densenet40_k12-float64": ("densenet40_k12", (32, 32), 4, "float64"),
    }
    for c in DEFAULT_CASES:
        assert c.build_spec().drop_rate == 0.0
        assert c.device == "cpu"
        assert 1 <= c.steps <= 5
    # every check of the issue runs on the defaults; gradients and trajectories in
    # float64 (where they are determined by the weights), on every network
    checks = {(c.spec, c.dtype): set(c.checks) for c in DEFAULT_CASES}
    for net in ("d2l", "densenet121", "densenet_bc_100_k12", "densenet40_k12"):
        assert {"shapes", "eval", "train", "copy"} <= checks[net, "float32"]
        assert {"eval", "train", "grad", "copy"} <= checks[net, "float64"]
    assert sum("trajectory" in c.checks for c in DEFAULT_CASES) == 3
    # float32 gradients on request (--cases d2l --checks grad) are referenced, not unpaired
    assert {"grad", "trajectory"} <= set(get_cases(["d2l"])[0].reference)


def test_case_validation_and_round_trip():
    with pytest.raises(ValueError, match="unknown check"):
        Case("x", "d2l", (96, 96), checks=("eval", "nope"))
    with pytest.raises(ValueError, match="too small"):
        Case("x", "densenet121", (8, 8))
    with pytest.raises(ValueError, match="unknown case"):
        get_cases(["nope"])
    c = Case("x", TINY_IMAGENET, (32, 32), changes={"num_classes": 3}, device="gpu")
    assert c.device == "cuda" and c.build_spec().num_classes == 3
    assert Case.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_inputs_are_seeded_and_integer_labels():
    c = Case("x", "densenet40_k12", (32, 32), steps=3)
    a, b = make_inputs(c), make_inputs(c)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["x"].shape == (2, 3, 32, 32) and a["x"].dtype == np.float32
    assert a["labels"].dtype == np.int64 and a["labels"].max() < 10
    assert a["traj_x"].shape == (3, 2, 3, 32, 32) and a["traj_labels"].shape == (3, 2)
    assert not np.array_equal(make_inputs(c.with_(seed=1))["x"], a["x"])
    # K different batches, one per step (a backend that reuses the first one fails)
    for i in range(3):
        for j in range(i):
            assert not np.array_equal(a["traj_x"][i], a["traj_x"][j])
        assert not np.array_equal(a["traj_x"][i], a["x"])
    assert make_inputs(c.with_(dtype="float64"))["traj_x"].dtype == np.float64


# ---------------------------------------------------------------------- comparison
def test_compare_items_uses_the_shared_tolerances_and_reports_the_first_failure():
    rng = np.random.default_rng(0)
    exp = {k: rng.standard_normal((2, 3)) for k in ("stem", "block1", "transition1", "logits")}
    act = {k: v.astype(np.float32) for k, v in exp.items()}
    act["block1"] = act["block1"] + 1e-3  # a drift that starts at block1 ...
    act["transition1"] = act["transition1"] + 1e-2  # ... and grows
    items = compare_items(act, exp, ["stem", "block1", "transition1", "logits"], "eval",
                          "float32")
    assert [i.item for i in items] == ["stem", "block1", "transition1", "logits"]
    assert [i.status for i in items] == [PASS, FAIL, FAIL, PASS]
    assert all(i.tol == TOLERANCES[("eval", "float32")] for i in items)
    c = Cell("case", "eval", "b", "reference", FAIL, items)
    assert c.first_fail.item == "block1"
    assert c.first_fail.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert c.first_fail.rel == pytest.approx(1e-3 / np.abs(exp["block1"]).max(), rel=1e-3)
    assert c.worst.item == "transition1"
    assert tolerance("grad", "float64") < tolerance("grad", "float32")


def test_error_is_relative_to_the_magnitude_not_elementwise():
    exp = np.array([1000.0, 1e-6])  # an element near zero must not blow the error up
    act = exp + np.array([1e-3, 1e-6])
    (it,) = compare_items({"t": act}, {"t": exp}, ["t"], "eval", "float32")
    assert it.rel == pytest.approx(1e-6) and it.status == PASS


def test_missing_unexpected_and_misshapen_outputs_fail():
    exp = {"stem": np.ones((2, 2)), "logits": np.ones(3)}
    items = compare_items({"stem": np.ones((2, 3)), "extra": np.ones(1)}, exp,
                          ["stem", "logits"], "eval", "float32")
    by = {i.item: i for i in items}
    assert by["stem"].status == FAIL and by["stem"].actual_shape == [2, 3]
    assert by["logits"].status == FAIL and "missing" in by["logits"].note
    assert by["extra"].status == FAIL and "unexpected" in by["extra"].note
    # an item the expected side lacks is an error naming that side, never skipped
    items = compare_items({"stem": np.ones(2), "logits": np.ones(3)}, {"stem": np.ones(2)},
                          ["stem", "logits"], "eval", "float32", sides=("torch", "flax"))
    assert [i.status for i in items] == [PASS, ERROR]
    assert items[1].note == "missing from flax"
    nan = compare_items({"t": np.array([np.nan])}, {"t": np.array([1.0])}, ["t"], "eval",
                        "float32")
    assert nan[0].status == FAIL


@pytest.mark.parametrize("a, b", [
    ([np.nan, 1.0], [np.nan, 1.0]),  # NaN in the same places on both sides
    ([np.inf, 1.0], [np.inf, 1.0]),
    ([-np.inf], [-np.inf]),
    ([1.0, np.nan], [1.0, 2.0]),
    ([1.0, 2.0], [np.nan, 2.0]),
])
def test_nan_or_inf_anywhere_is_fail(a, b):
    c = compare("t", np.array(a), np.array(b), 1e-5)
    assert not c.ok and c.nonfinite and "NaN or inf" in str(c)
    (it,) = compare_items({"t": np.array(a)}, {"t": np.array(b)}, ["t"], "eval", "float32")
    assert it.status == FAIL and it.rel is None and "NaN or inf" in it.note
    assert compare("t", np.array([1.0, 2.0]), np.array([1.0, 2.0]), 1e-5).ok


def test_every_item_of_the_spec_is_compared_and_none_is_never_pass():
    spec = get_spec("densenet40_k12", block_config=(1, 1), growth_rate=2)
    trainable = [p.name for p in param_table(spec) if p.trainable]
    running = [p.name for p in param_table(spec) if not p.trainable]
    assert [e.name for e in entries(spec, "eval")] == [*spec.stage_names, "logits"]
    assert [e.name for e in entries(spec, "train")][-len(running):] == running
    assert [e.name for e in entries(spec, "grad")] == ["loss", *trainable, "input"]
    assert [e.name for e in entries(spec, "trajectory")] == ["losses", *trainable]
    # a result with every item but one, against a reference with every item but another
    ents = entries(spec, "eval")
    full = {key("eval", e.kind, e.name): np.ones(2) for e in ents}
    A = {k: v for k, v in full.items() if k != key("eval", "stage", "block1")}
    B = {k: v for k, v in full.items() if k != key("eval", "stage", "pooled")}
    B[key("eval", "stage", "extra")] = np.ones(2)  # the reference's extras are not items
    A[key("eval", "stage", "bogus")] = np.ones(2)  # the result's are: FAIL
    items = compare_entries(A, B, "eval", ents, "float32", sides=("a", "b"), full=ents)
    by = {i.item: (i.status, i.note) for i in items}
    assert len(items) == len(ents) + 1
    assert by["stage bogus"] == (FAIL, "unexpected in a")
    assert by["block1"] == (FAIL, "missing from a")
    assert by["pooled"] == (ERROR, "missing from b")
    assert status_of(items) == FAIL
    assert status_of([]) == ERROR  # nothing compared is never a pass

def test_conv_bias_gradient_is_measured_against_its_kernel_gradient():
    # A conv bias feeding train-mode BNs has a zero gradient: rounding noise only.
    exp = {"w": np.full((2, 2), 0.5), "b": np.array([1e-12, -1e-12])}
    act = {"w": exp["w"], "b": np.array([3e-9, 2e-9])}
    plain = compare_items(act, exp, ["w", "b"], "grad", "float32")
    assert plain[1].status == FAIL  # noise / noise
    scaled = compare_items(act, exp, ["w", "b"], "grad", "float32", scales={"b": 0.5})
    assert scaled[1].status == PASS and scaled[1].rel == pytest.approx((3e-9 - 1e-12) / 0.5)
    assert scaled[1].tol == tolerance("grad", "float32")


def test_copy_is_bit_exact_dtype_included():
    exp = {"a": np.array([0.0, 1.0], np.float32)}
    assert compare_exact({"a": exp["a"].copy()}, exp, ["a"], "float32")[0].status == PASS
    assert compare_exact({"a": np.array([-0.0, 1.0], np.float32)}, exp, ["a"],
                         "float32")[0].status == FAIL
    assert compare_exact({"a": exp["a"].astype(np.float64)}, exp, ["a"],
                         "float32")[0].status == FAIL
    nudged = np.nextafter(exp["a"], np.float32(2))
    assert compare_exact({"a": nudged}, exp, ["a"], "float32")[0].status == FAIL


def _ill_items(rel: float, spread_abs: float, scale: float = 1.0, tol: float = 1e-4):
    it = Item("w", FAIL, max_abs=rel * scale, scale=scale, rel=rel, tol=tol)
    ref = {key("trajectory", "spread", "w"): np.array(spread_abs),
           key("trajectory", "probe", "rel"): np.array(1e-6)}
    mark_ill([it], ref, "trajectory")
    return it


def test_ill_conditioned_only_within_10x_of_the_reference_s_own_spread():
    assert ILL_FACTOR == 10
    # the reference moves 2e-4 (beyond the 1e-4 tolerance)
    assert _ill_items(5e-4, 2e-4).status == ILL  # 2.5x its spread
    assert _ill_items(2e-3, 2e-4).status == ILL  # exactly 10x
    it = _ill_items(10.0, 2e-4)  # a weight 1000% wrong
    assert it.status == FAIL and "more than 10x" in it.note
    assert _ill_items(2.1e-3, 2e-4).status == FAIL
    # where the reference is stable, FAIL stays FAIL however close
    assert _ill_items(2e-4, 5e-5).status == FAIL
    # the spread is measured on the item's scale (here a conv bias: its kernel's)
    it = _ill_items(0.5, spread_abs=1e-9, scale=0.3)
    assert it.status == FAIL and it.spread == pytest.approx(1e-9 / 0.3)
    # the note names the probe size the reference stored (1e-13 for float64 cases)
    ref = {key("grad", "spread", "w"): np.array(5e-3), key("grad", "probe", "rel"): np.array(1e-13)}
    it = Item("w", FAIL, max_abs=1e-2, scale=1.0, rel=1e-2, tol=1e-10)
    mark_ill([it], ref, "grad")
    assert it.status == ILL and "perturbed by 1e-13 of their size" in it.note
    # NaN is never ill-conditioned
    it = Item("w", FAIL, tol=1e-4, scale=1.0, note="NaN or inf in a")
    mark_ill([it], ref, "grad")
    assert it.status == FAIL


@pytest.mark.parametrize("status, always, with_require_all", [
    (Status.PASS, False, False),
    (Status.NA, False, False),
    (Status.FAIL, True, True),
    (Status.ERROR, True, True),
    (Status.CRASHED, True, True),
    (Status.TIMEOUT, True, True),
    (Status.MISSING, False, True),
    (Status.UNSUPPORTED, False, True),
    (Status.NOT_AVAILABLE, False, True),
    (Status.ILL, False, True),
    (Status.UNPAIRED, False, True),
    (Status.SKIPPED, False, True),
    (Status.REGRESSED, False, True),
    ("no such status", True, True),
])
def test_one_rule_decides_which_statuses_fail_the_run(status, always, with_require_all):
    assert fails_run(status) is always
    assert fails_run(status, require_all=True) is with_require_all
    assert fails_run(str(status), require_all=True) is with_require_all  # as read back from JSON

    class CC:
        cells = [Cell("c", "eval", "b", "reference", PASS), Cell("c", "eval", "b", "x", status)]

    assert exit_status([CC()]) == int(always)
    assert exit_status([CC()], require_all=True) == int(with_require_all)


def test_every_status_is_in_the_rule():
    assert {s.value for s in Status} >= {"pass", "FAIL", "error", "crashed", "timeout", "missing",
                                         "unsupported", "not available", "ill-conditioned",
                                         "unpaired", "skipped", "regressed", "n/a"}
    assert f"{Status.FAIL}" == "FAIL" and str(Status.ILL) == "ill-conditioned"
    assert worst([PASS, ILL, FAIL]) == FAIL and worst([PASS, ILL]) == ILL
    assert worst([PASS, "weird"]) == "weird" and worst([]) == Status.NA


# ---------------------------------------------------------------------- interpreters
def test_interpreter_resolution_order(monkeypatch, tmp_path):
    root = find_project_root()
    assert (root / "tox.ini").is_file()
    path, why = resolve_python("torch", root=root)
    monkeypatch.delenv("DENSENET_MULTI_PYTHON_TORCH", raising=False)
    path, why = resolve_python("torch", root=root)
    assert path == str(root / ".tox" / "torch" / "bin" / "python") and "tox env" in why
    assert resolve_python("gluon", root=root)[0].endswith("/.tox/mxnet/bin/python")
    monkeypatch.setenv("DENSENET_MULTI_PYTHON_TORCH", "/env/python")
    assert resolve_python("torch", root=root) == ("/env/python", "DENSENET_MULTI_PYTHON_TORCH")
    assert resolve_python("torch", {"torch": "/cli/python"}, root)[0] == "/cli/python"
    assert resolve_python("my_fake")[0] == sys.executable
    assert find_project_root(tmp_path) == root  # falls back to the package's project
    with pytest.raises(ValueError, match="unknown backend"):
        parse_backends(["torch,nope"])
    assert parse_backends(["torch,x=m:a"]) == [BackendTarget("torch"), BackendTarget("x", "m:a")]


# ---------------------------------------------------------------------- runner paths
@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """good next to a missing interpreter, an import failure, a crash, a hang, an exception."""
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("shapes", "eval", "train", "copy"))
    backends = [fake("good"), BackendTarget("torch"), BackendTarget("broken", "no_such_module_x"),
                fake("crash"), fake("hang"), fake("raises")]
    result, ccs = run(tmp_path_factory.mktemp("faulty"), [case], backends,
                      pythons={"torch": "/nonexistent/python"}, timeout=20, jobs=3)
    return result, ccs["tiny"]


def test_missing_interpreter_is_missing_not_passed(faulty_run):
    result, cc = faulty_run
    o = result.outcomes["torch"]["main"]
    assert o.status == "missing" and "/nonexistent/python" in o.reason
    assert "tox -e torch" in o.reason
    for check in ("shapes", "eval", "train", "copy"):
        assert cell(cc, check, "torch").status == MISSING


def test_import_failure_is_missing_with_the_reason(faulty_run):
    result, cc = faulty_run
    o = result.outcomes["broken"]["main"]
    assert o.status == "missing" and "no_such_module_x" in o.reason
    assert cell(cc, "eval", "broken").status == MISSING


def test_crash_and_timeout_are_reported_with_the_log_and_the_others_still_run(faulty_run):
    result, cc = faulty_run
    crash = result.outcomes["crash"]["main"]
    assert crash.status == "crashed" and crash.returncode == 17
    assert cell(cc, "eval", "crash").status == "crashed"
    hang = result.outcomes["hang"]["main"]
    assert hang.status == "timeout"
    assert cell(cc, "eval", "hang").status == "timeout"
    # an exception inside one check: that check errors, with its traceback; the others run
    err = cell(cc, "eval", "raises")
    assert err.status == "error" and "deliberate failure" in err.message
    assert "Traceback" in err.detail
    assert cell(cc, "copy", "raises").status == PASS
    for check in ("shapes", "eval", "train", "copy"):
        assert cell(cc, check, "good").status == PASS
    assert exit_status([cc], result.outcomes) == 1


def test_a_copy_phase_that_leaves_no_result_is_an_error_not_n_a(tmp_path):
    """A backend whose copy-phase worker exits 0 without writing (no copy_phase.json, no
    copy): the chains into it were never compared, which is an error, not 'n/a'."""
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval", "copy"))
    result, ccs = run(tmp_path, [case], [fake("good"), fake("exit_in_copy")])
    cc = ccs["tiny"]
    assert result.outcomes["exit_in_copy"]["copy"].status == "ok"  # it exited 0
    assert cell(cc, "copy", "exit_in_copy->good").status == PASS
    c = cell(cc, "copy", "good->exit_in_copy")
    assert c.status == ERROR and "no result" in c.message
    assert exit_status([cc], result.outcomes) == 1


def test_complex_outputs_are_not_numbers_to_compare(tmp_path):
    """Complex stages whose real part is right: FAIL (a cast to float64 would drop the
    imaginary part and pass them)."""
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval",))
    _, ccs = run(tmp_path, [case], [fake("good"), fake("complex_stages")])
    c = cell(ccs["tiny"], "eval", "complex_stages")
    assert c.status == FAIL and c.first_fail.item == "stem"
    assert "complex" in c.first_fail.note
    assert cell(ccs["tiny"], "eval", "good~complex_stages").status == ERROR  # b's side


# ---------------------------------------------------------------------- CLI and report files
def _case_file(tmp_path: Path, *cases: Case) -> str:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([c.to_dict() for c in cases]))
    return str(path)


def test_cli_writes_reports_and_exit_codes(tmp_path, capsys):
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("shapes", "eval", "train", "copy"))
    base = ["--case-file", _case_file(tmp_path, case), "--no-progress", "--no-baseline",
            "--python", "torch=/nonexistent/python"]
    out = tmp_path / "ok"
    code = cli.main([*base, "--backends", f"torch,a={FAKES}:good,b={FAKES}:channels_last",
                     "--out", str(out)])
    assert code == 0  # a missing backend is not a failure ...
    report = json.loads((out / "report.json").read_text())
    assert report["exit_status"] == 0
    table = report["cases"][0]["table"]
    assert table["a"]["eval"]["status"] == PASS and table["torch"]["eval"]["status"] == MISSING
    comps = report["cases"][0]["comparisons"]
    ev = next(c for c in comps if c["check"] == "eval" and c["subject"] == "a")
    assert [i["item"] for i in ev["items"]][:2] == ["stem", "block1"]
    assert {"max_abs", "rel", "tol", "status", "spread"} <= set(ev["items"][0])
    md = (out / "report.md").read_text()
    assert "| a |" in md and "missing" in md
    assert not list(out.glob("*/*/copy_from_*.npz"))  # compared, then dropped
    # ... unless every backend is required
    assert cli.main([*base, "--backends", f"torch,a={FAKES}:good", "--require-all",
                     "--out", str(tmp_path / "all")]) == 1
    # any mismatch: non-zero, and the report says where
    out = tmp_path / "bad"
    assert cli.main([*base, "--backends", f"a={FAKES}:good,s={FAKES}:same_padding",
                     "--out", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    first = report["cases"][0]["table"]["s"]["eval"]
    assert first["status"] == FAIL and first["first_fail"].startswith("stem:")
    text = capsys.readouterr().out
    assert "stem" in text and "FAIL" in text
    assert cli.main(["--cases", "nope"]) == 2


def test_report_json_has_the_flat_items_versions_and_machine(tmp_path):
    """The schema runfolder.py documents and baseline.py reads: one item per compared
    tensor, flat; the versions per backend; the machine."""
    from densenet_multi.parity.baseline import validate_report

    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("shapes", "eval", "train", "copy"))
    out = tmp_path / "run"
    assert cli.main(["--case-file", _case_file(tmp_path, case), "--no-progress",
                     "--no-baseline", "--backends", f"a={FAKES}:good,b={FAKES}:channels_last",
                     "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    validate_report(report, "this run")  # the baseline's reader accepts it
    items = report["items"]
    assert set(items[0]) == {"case", "check", "subject", "against", "name", "error",
                             "tolerance", "status"}
    n_cells = sum(len(c["items"]) for cc in report["cases"] for c in cc["comparisons"])
    assert len(items) == n_cells
    by = {(i["check"], i["subject"], i["against"], i["name"]): i for i in items}
    stem = by["eval", "a", "reference", "stem"]
    assert stem["status"] == "pass" and 0 < stem["error"] < stem["tolerance"] == 1e-5
    assert by["eval", "a~b", "b", "stem"]["status"] == "pass"
    assert by["copy", "a->b", "canonical", "features.conv0.weight"]["tolerance"] == 0.0
    assert by["shapes", "a", "spec", "stem"]["error"] is None
    assert {"python", "numpy"} <= set(report["versions"]["a"])
    assert {"platform", "cpu_count", "python"} <= set(report["machine"])
    assert report["require_all"] is False


def test_device_cuda_with_require_all_fails_without_a_gpu(tmp_path):
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval",))
    base = ["--case-file", _case_file(tmp_path, case), "--no-progress", "--no-baseline",
            "--backends", f"a={FAKES}:good", "--device", "cuda"]
    assert cli.main([*base, "--out", str(tmp_path / "r1")]) == 0
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    dev = [c for c in report["cells"] if c["check"] == "device"]
    assert [c["status"] for c in dev] == ["not available"]
    assert cli.main([*base, "--require-all", "--out", str(tmp_path / "r2")]) == 1


def test_a_run_that_compares_nothing_never_passes(tmp_path):
    """No backend, no case, a case without checks, or a device check on a CPU case: each
    once exited 0 with --require-all having compared nothing. Now a usage error (exit 2)
    up front, and a run without a single decided cell is never exit 0."""
    with pytest.raises(ValueError, match="no checks"):
        Case("x", TINY_IMAGENET, (32, 32), checks=())
    with pytest.raises(ValueError, match="device"):
        Case("x", TINY_IMAGENET, (32, 32), checks=("eval", "device"))
    with pytest.raises(ValueError, match="no backend"):
        parse_backends([","])
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval",))
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    base = ["--no-progress", "--no-baseline", "--require-all"]
    one = ["--case-file", _case_file(tmp_path, case)]
    good = ["--backends", f"a={FAKES}:good"]
    for args in ([*one, "--backends", ","], ["--case-file", str(empty), *good],
                 [*one, *good, "--checks", "device"], [*one, *good, "--checks", ","]):
        assert cli.main([*base, *args, "--out", str(tmp_path / "r")]) == 2, args
    assert not (tmp_path / "r").exists()
    # through the API: a requested check nobody ran is an error; no cell at all fails
    _, ccs = run(tmp_path, [case], [])
    (c,) = ccs["tiny"].cells
    assert c.check == "eval" and c.status == ERROR and "nothing was compared" in c.message
    assert exit_status([ccs["tiny"]]) == 1
    assert exit_status([]) == 1 and exit_status([], require_all=True) == 1


def test_two_cases_with_one_name_are_refused(tmp_path):
    """Results are found by case name: two cases named alike once compared the second
    case's results twice and never the first's (a fixed 7x7 pool at 256x256 passed)."""
    from parity_helpers import TINY4

    from densenet_multi.parity.runner import run_parity

    cases = [Case("t", TINY4, (256, 256), checks=("eval",)),
             Case("t", TINY4, (224, 224), checks=("eval",))]
    with pytest.raises(ValueError, match="more than one case named 't'"):
        run_parity(cases, [fake("good")], tmp_path / "api")
    assert cli.main(["--case-file", _case_file(tmp_path, *cases), "--no-progress",
                     "--no-baseline", "--backends", f"a={FAKES}:good,p={FAKES}:fixed_pool7",
                     "--out", str(tmp_path / "r")]) == 2


def test_a_check_the_worker_did_not_report_is_skipped_and_an_unknown_one_an_error(tmp_path):
    """A result file without an entry for a requested check (a stale worker) is 'skipped'
    (fails --require-all); an entry with a status the harness does not know is 'error'."""
    from densenet_multi.parity.compare import compare_run
    from densenet_multi.parity.runfolder import CaseFolder

    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval", "train"))
    result, ccs = run(tmp_path, [case], [fake("good")])
    assert exit_status([ccs["tiny"]], require_all=True) == 0
    folder = CaseFolder(result.case_dirs["tiny"])
    report, arrays = folder.read_result("good", "cpu")
    del report["checks"]["train"]
    report["checks"]["eval"]["status"] = "done-ish"
    folder.write_result("good", "cpu", report, arrays)
    (cc,) = compare_run(result)
    assert cell(cc, "train", "good").status == Status.SKIPPED
    assert cell(cc, "eval", "good").status == ERROR
    report["checks"]["eval"]["status"] = "done"
    folder.write_result("good", "cpu", report, arrays)
    (cc,) = compare_run(result)
    assert cell(cc, "train", "good").status == Status.SKIPPED
    assert exit_status([cc]) == 0 and exit_status([cc], require_all=True) == 1


def test_unpaired_is_decided_by_the_comparison(tmp_path):
    """Gradients referenced by their loss only (Case.reference without grad), and no other
    backend to pair with: 'unpaired', which fails --require-all; with a partner: pass."""
    case = Case("bc", TINY_BC, (16, 16), checks=("grad", "trajectory"), reference=(), steps=2)
    _, ccs = run(tmp_path / "one", [case], [fake("autograd")])
    cc = ccs["bc"]
    for check in ("grad", "trajectory"):
        c = cell(cc, check, "autograd")
        assert c.status == Status.UNPAIRED and "no other backend" in c.message
    assert exit_status([cc]) == 0 and exit_status([cc], require_all=True) == 1
    _, ccs = run(tmp_path / "two", [case], [fake("autograd"), fake("a2", "autograd")])
    cc = ccs["bc"]
    assert cell(cc, "grad", "autograd").status == PASS
    assert cell(cc, "grad", "autograd~a2").status == PASS
    assert exit_status([cc], require_all=True) == 0


def test_baseline_column_and_regressed_under_require_all(tmp_path, capsys):
    """A run compared with an earlier run's report.json: an error that grew past 10x (still
    within the tolerance) is 'regressed', named in the terminal and report.md, and fails
    the run only with --require-all."""
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval",))
    base = ["--case-file", _case_file(tmp_path, case), "--no-progress"]
    assert cli.main([*base, "--no-baseline", "--backends", f"a={FAKES}:good",
                     "--out", str(tmp_path / "before")]) == 0
    baseline = str(tmp_path / "before" / "report.json")
    capsys.readouterr()
    after = [*base, "--baseline", baseline, "--backends", f"a={FAKES}:drift"]
    assert cli.main([*after, "--out", str(tmp_path / "after")]) == 0  # within tolerance
    text = capsys.readouterr().out
    assert "vs baseline" in text and "REGRESSED block2" in text
    report = json.loads((tmp_path / "after" / "report.json").read_text())
    assert report["baseline"]["ok"] is False
    regressed = [i for i in report["baseline"]["items"] if i["verdict"] == "regressed"]
    assert regressed[0]["name"] == "block2"
    md = (tmp_path / "after" / "report.md").read_text()
    assert "vs baseline" in md and "REGRESSED block2" in md
    assert cli.main([*after, "--require-all", "--out", str(tmp_path / "strict")]) == 1
    # the same backend again: nothing regressed
    assert cli.main([*base, "--baseline", baseline, "--require-all", "--backends",
                     f"a={FAKES}:good", "--out", str(tmp_path / "same")]) == 0
    # a baseline that is not a report is a usage error, before anything runs
    (tmp_path / "bad.json").write_text("{}")
    assert cli.main([*base, "--baseline", str(tmp_path / "bad.json"), "--backends",
                     f"a={FAKES}:good", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_missing_default_baseline_is_said_not_silent(monkeypatch, capsys):
    """No baseline file: the run says it checks no regressions (unless --no-baseline)."""
    def stop(*args):
        raise SystemExit("stopped before running anything")

    monkeypatch.setattr(cli, "_baseline_path", lambda args: None)
    monkeypatch.setattr(cli, "_run", stop)
    with pytest.raises(SystemExit):
        cli.main(["--cases", "d2l", "--no-progress"])
    assert "no baseline: parity/baseline/report.json.gz not found" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--cases", "d2l", "--no-progress", "--no-baseline"])
    assert "no baseline" not in capsys.readouterr().out


def test_default_baseline_is_the_committed_one_when_present(tmp_path, monkeypatch):
    from densenet_multi.parity.baseline import DEFAULT_BASELINE

    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args([])
    committed = find_project_root() / DEFAULT_BASELINE
    assert cli._baseline_path(args) == (committed if committed.is_file() else None)
    (tmp_path / DEFAULT_BASELINE).parent.mkdir(parents=True)
    (tmp_path / DEFAULT_BASELINE).write_text("{}")
    assert cli._baseline_path(args) == tmp_path / DEFAULT_BASELINE
    assert cli._baseline_path(cli.build_parser().parse_args(["--no-baseline"])) is None
    assert cli._baseline_path(cli.build_parser().parse_args(["--baseline", "b.json"])) == \
        Path("b.json")
    assert args.out == "parity/runs/latest"


def test_reports_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A report that can't be written (a full disk) leaves the previous one intact and
    no temporary file behind."""
    from densenet_multi.parity import report as rp

    (tmp_path / "report.json").write_text('{"old": true}')
    (tmp_path / "report.md").write_text("old")
    real_write = Path.write_text

    def full_disk(self, text, *a, **k):
        if self.name.startswith(".report.md"):
            real_write(self, text[: len(text) // 2])  # half written, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        rp.write_reports(tmp_path, [], [], {})
    assert (tmp_path / "report.md").read_text() == "old"
    assert json.loads((tmp_path / "report.json").read_text())["exit_status"] == 0  # the new one
    assert sorted(f.name for f in tmp_path.iterdir()) == ["report.json", "report.md"]


def test_gpu_checks_say_not_available_without_a_gpu(tmp_path):
    case = Case("tiny", TINY_IMAGENET, (32, 32), checks=("eval", "device"), device="cuda")
    _, ccs = run(tmp_path, [case], [fake("good")])
    c = cell(ccs["tiny"], "device", "good")
    assert c.status == Status.NOT_AVAILABLE
    assert cell(ccs["tiny"], "eval", "good").status == PASS
    assert exit_status([ccs["tiny"]]) == 0
    assert exit_status([ccs["tiny"]], require_all=True) == 1


def test_device_check_compares_the_gpu_run_with_the_cpu_run(tmp_path):
    case = Case("bc", TINY_BC, (16, 16), checks=("eval", "train", "grad", "device"),
                device="cuda")
    _, ccs = run(tmp_path, [case], [fake("fake_gpu"), fake("fake_gpu_tf32"), fake("good")])
    cc = ccs["bc"]
    ok = cell(cc, "device", "fake_gpu")
    assert ok.status == PASS and ok.items and ok.items[0].tol == tolerance("device", "float32")
    bad = cell(cc, "device", "fake_gpu_tf32")
    assert bad.status == FAIL and bad.first_fail.item == "eval stem"
    assert cell(cc, "eval", "fake_gpu_tf32").status == PASS  # its CPU run is right
    assert cell(cc, "device", "good").status == Status.NOT_AVAILABLE


def test_checks_listed_everywhere():
    assert set(CHECKS) == {"shapes", "eval", "train", "grad", "trajectory", "copy", "device"}
    assert get_spec("d2l").stage_names[0] == "stem"
