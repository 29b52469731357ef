"""The harness itself: comparison logic, tolerance policy, runner paths, report files, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from parity_helpers import FAKES, TINY_IMAGENET, cell, fake, run

from densenet_multi.params import param_table
from densenet_multi.parity import cli
from densenet_multi.parity.cases import CHECKS, DEFAULT_CASES, Case, get_cases, make_inputs
from densenet_multi.parity.compare import (
    FAIL,
    ILL,
    MISSING,
    PASS,
    Cell,
    compare_exact,
    compare_items,
    grad_items,
    trajectory_items,
    worst_status,
)
from densenet_multi.parity.report import exit_status
from densenet_multi.parity.runner import (
    BackendTarget,
    find_project_root,
    parse_backends,
    resolve_python,
)
from densenet_multi.spec import get_spec
from densenet_multi.testing import TOLERANCES, tolerance


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
    assert a["traj_x"].shape == (3, 2, 3, 32, 32)
    assert not np.array_equal(make_inputs(c.with_(seed=1))["x"], a["x"])


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
    nan = compare_items({"t": np.array([np.nan])}, {"t": np.array([1.0])}, ["t"], "eval",
                        "float32")
    assert nan[0].status == FAIL


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


def test_ill_conditioned_trajectory_items_are_not_passed_and_not_failed():
    A = {"trajectory::losses": np.array([1.0, 1.0]), "trajectory::param::w": np.array([1.01]),
         "trajectory::param::v": np.array([1.01])}
    B = {"trajectory::losses": np.array([1.0, 1.0]), "trajectory::param::w": np.array([1.0]),
         "trajectory::param::v": np.array([1.0])}
    items = trajectory_items(A, B, ["w", "v"], "trajectory", "float32",
                             spread={"w": np.array(0.05), "v": np.array(1e-7)})
    by = {i.item: i.status for i in items}
    assert by == {"losses": PASS, "w": ILL, "v": FAIL}
    assert worst_status([PASS, ILL]) == ILL and worst_status([ILL, FAIL]) == FAIL
    spec = get_spec("densenet40_k12", block_config=(1, 1), growth_rate=2)
    names = [p.name for p in param_table(spec) if p.trainable]
    G = {f"grad::param::{n}": np.ones(3) for n in names} | {"grad::loss": np.array(1.0),
                                                             "grad::input": np.ones(2)}
    H = dict(G, **{f"grad::param::{names[0]}": np.full(3, 1.1), "grad::input": np.full(2, 1.1)})
    items = grad_items(H, G, spec, names, "grad", "float32",
                       spread={names[0]: np.array(0.5), "input": np.array(1e-9)})
    by = {i.item: i.status for i in items}
    assert by[names[0]] == ILL and by["input"] == FAIL and by["loss"] == PASS


def test_exit_status_policy():
    class CC:
        def __init__(self, *statuses):
            self.cells = [Cell("c", "eval", "b", "reference", s) for s in statuses]

    assert exit_status([CC(PASS, PASS)]) == 0
    assert exit_status([CC(PASS, FAIL)]) == 1
    assert exit_status([CC(PASS, "error")]) == 1
    assert exit_status([CC(PASS, "crashed")]) == 1
    assert exit_status([CC(PASS, MISSING)]) == 0
    assert exit_status([CC(PASS, MISSING)], require_all=True) == 1
    assert exit_status([CC(PASS, "unsupported")], require_all=True) == 1
    assert exit_status([CC(PASS, "not available", ILL)], require_all=True) == 0


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


# ---------------------------------------------------------------------- CLI and report files
def test_cli_writes_reports_and_exit_codes(tmp_path, capsys):
    spec = json.dumps([Case("tiny", TINY_IMAGENET, (32, 32),
                            checks=("shapes", "eval", "train", "copy")).to_dict()])
    (tmp_path / "cases.json").write_text(spec)
    base = ["--case-file", str(tmp_path / "cases.json"), "--no-progress",
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
    assert {"max_abs", "rel", "tol", "status"} <= set(ev["items"][0])
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
    assert c.status == "not available"
    assert cell(ccs["tiny"], "eval", "good").status == PASS


def test_device_check_compares_the_gpu_run_with_the_cpu_run(tmp_path):
    from parity_helpers import TINY_BC

    case = Case("bc", TINY_BC, (16, 16), checks=("eval", "train", "grad", "device"),
                device="cuda")
    _, ccs = run(tmp_path, [case], [fake("fake_gpu"), fake("fake_gpu_tf32"), fake("good")])
    cc = ccs["bc"]
    ok = cell(cc, "device", "fake_gpu")
    assert ok.status == PASS and ok.items and ok.items[0].tol == tolerance("device", "float32")
    bad = cell(cc, "device", "fake_gpu_tf32")
    assert bad.status == FAIL and bad.first_fail.item == "eval stem"
    assert cell(cc, "eval", "fake_gpu_tf32").status == PASS  # its CPU run is right
    assert cell(cc, "device", "good").status == "not available"


def test_checks_listed_everywhere():
    assert set(CHECKS) == {"shapes", "eval", "train", "grad", "trajectory", "copy", "device"}
    assert get_spec("d2l").stage_names[0] == "stem"
