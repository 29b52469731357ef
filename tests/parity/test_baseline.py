"""Regression against the baseline (densenet_multi.parity.baseline) on synthetic reports.

Each scenario is checked twice: against the real comparison, and against a wrong
one (blind: never marks anything; or paranoid: marks everything) to show that
the scenario's assertions would catch it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from densenet_multi.parity import baseline as bl
from densenet_multi.parity.baseline import (
    BaselineError,
    ItemDelta,
    VersionChange,
    compare_with_baseline,
    load_baseline,
    regression,
    regression_lines,
    render_markdown,
    render_text,
)

Report = dict[str, Any]


def _item(case: str, check: str, subject: str, name: str, error: float | None, tol: float | None,
          status: str = "pass", against: str = "reference") -> dict[str, Any]:
    return {"case": case, "check": check, "subject": subject, "against": against, "name": name,
            "error": error, "tolerance": tol, "status": status}


KERAS_BLOCK3 = ("densenet121", "eval", "keras", "reference", "block3")
KERAS_STEM = ("densenet121", "eval", "keras", "reference", "stem")
TORCH_LOGITS = ("densenet121", "eval", "torch", "reference", "logits")
TORCH_BLOCK1 = ("densenet121", "eval", "torch", "reference", "block1")
PAIR_BLOCK3 = ("densenet121", "eval", "torch~keras", "keras", "block3")
COPY = ("d2l", "copy", "torch", "reference", "weights")
SHAPES = ("d2l", "shapes", "keras", "spec", "stem")


def _base() -> Report:
    stages = {"stem": 5.0e-7, "block1": 6.0e-7, "block2": 6.4e-7, "block3": 6.6e-7}
    items = [_item("d2l", "shapes", "keras", "stem", None, None, against="spec")]
    for backend in ("keras", "torch"):
        items += [_item("densenet121", "eval", backend, n, e, 1e-5) for n, e in stages.items()]
    items.append(_item("densenet121", "eval", "torch", "logits", 8.0e-6, 1e-5))
    items.append(_item("densenet121", "eval", "torch~keras", "block3", 8.0e-7, 1e-5, against="keras"))
    items.append(_item("d2l", "copy", "torch", "weights", 0.0, 0.0))
    items.append(_item("d2l-float64", "grad", "flax", "features.conv0.weight", 1e-13, 1e-10))
    versions = {
        "keras": {"python": "3.11.9", "numpy": "2.3.1", "keras": "3.15.1", "tensorflow": "2.21.0"},
        "torch": {"python": "3.11.9", "numpy": "2.3.1", "torch": "2.13.0"},
        "flax": {"python": "3.11.9", "numpy": "2.3.1", "jax": "0.10.2", "flax": "0.12.8"},
    }
    return {"items": items, "versions": versions, "machine": {"platform": "Linux", "cpus": 2}}


def _find(report: Report, key: tuple[str, ...]) -> dict[str, Any]:
    return next(i for i in report["items"] if tuple(i[k] for k in bl.KEY_FIELDS) == key)


def _set(report: Report, key: tuple[str, ...], **changes: Any) -> Report:
    _find(report, key).update(changes)
    return report


def _drop(report: Report, keep: Callable[[dict[str, Any]], bool]) -> Report:
    report["items"] = [i for i in report["items"] if keep(i)]
    return report


def _tensorflow_upgrade(r: Report) -> Report:
    r["versions"]["keras"]["tensorflow"] = "2.22.0"
    return _set(r, KERAS_BLOCK3, error=4.1e-5, status="FAIL")


def _jitter(r: Report) -> Report:
    for i in r["items"]:
        if i["error"]:
            i["error"] *= 3.0
    return r


# (id, how this run differs from the baseline, expected regressed keys, of which missing)
SCENARIOS: list[tuple[str, Callable[[Report], Report], set, set]] = [
    ("tensorflow upgrade worsens block3", _tensorflow_upgrade, {KERAS_BLOCK3}, set()),
    ("crosses its tolerance, grows 1.5x",
     lambda r: _set(r, TORCH_LOGITS, error=1.2e-5, status="FAIL"), {TORCH_LOGITS}, set()),
    ("grows 12x, below tolerance", lambda r: _set(r, KERAS_STEM, error=6.0e-6), {KERAS_STEM}, set()),
    ("error is NaN now", lambda r: _set(r, TORCH_BLOCK1, error=math.nan, status="FAIL"),
     {TORCH_BLOCK1}, set()),
    ("copy not bit-exact now", lambda r: _set(r, COPY, error=3e-8, status="FAIL"), {COPY}, set()),
    ("shape check fails now (no error number)", lambda r: _set(r, SHAPES, status="FAIL"),
     {SHAPES}, set()),
    ("stable: errors 3x", _jitter, set(), set()),
    ("an item went missing", lambda r: _drop(r, lambda i: i["subject"] != "torch~keras"),
     {PAIR_BLOCK3}, {PAIR_BLOCK3}),
    ("a check vanished", lambda r: _drop(r, lambda i: i["check"] != "copy"), {COPY}, {COPY}),
]


def _check_scenario(mutate: Callable[[Report], Report], regressed: set, missing: set) -> None:
    base = _base()
    cmp = compare_with_baseline(mutate(_base()), base)
    assert {d.key for d in cmp.regressed} == regressed
    assert {d.key for d in cmp.missing} == missing
    assert cmp.ok is (not regressed)
    assert len(regression_lines(cmp)) == len(regressed)


@pytest.mark.parametrize(("mutate", "regressed", "missing"),
                         [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_scenario(mutate, regressed, missing):
    _check_scenario(mutate, regressed, missing)


def _blind(before, after):
    item = after if after is not None else before
    return ItemDelta(*bl._key(item), bl.OK, before, after)


def _paranoid(before, after):
    item = after if after is not None else before
    return ItemDelta(*bl._key(item), bl.REGRESSED, before, after, "always")


@pytest.mark.parametrize(("mutate", "regressed", "missing"),
                         [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_scenario_catches_a_wrong_compare(monkeypatch, mutate, regressed, missing):
    """A compare that never marks anything (or, for the stable run, marks everything)
    fails the scenario's assertions."""
    monkeypatch.setattr(bl, "judge", _blind if regressed else _paranoid)
    with pytest.raises(AssertionError):
        _check_scenario(mutate, regressed, missing)


def test_version_change_names_the_stage_with_versions_side_by_side():
    cmp = compare_with_baseline(_tensorflow_upgrade(_base()), _base())
    assert [d.key for d in cmp.regressed] == [KERAS_BLOCK3]
    assert cmp.version_changes == (VersionChange("keras", "tensorflow", "2.21.0", "2.22.0"),)
    (line,) = regression_lines(cmp)
    assert line.startswith("tensorflow 2.21.0 -> 2.22.0: eval block3 6.6e-07 -> 4.1e-05 ")
    assert "densenet121" in line and "FAIL now" in line and "grew 62x" in line
    assert "tensorflow 2.21.0 -> 2.22.0: eval block3 6.6e-07 -> 4.1e-05" in render_text(cmp)
    md = render_markdown(cmp, source="parity/baseline/report.json")
    assert "| keras | tensorflow | 2.21.0 | 2.22.0 |" in md
    assert "| regressed | densenet121 | eval | keras | reference | block3 | 6.6e-07 | 4.1e-05 |" in md
    assert cmp.cell_marker("densenet121", "eval", "keras") == "REGRESSED block3 6.6e-07 -> 4.1e-05"
    assert cmp.cell_marker("densenet121", "eval", "torch") == "ok"
    assert cmp.marker(*KERAS_BLOCK3).startswith("REGRESSED (")
    assert cmp.marker(*KERAS_STEM) == "ok (was 5.0e-07)"
    assert json.loads(json.dumps(cmp.to_dict()))["counts"]["regressed"] == 1


def test_version_line_would_catch_versions_left_out(monkeypatch):
    monkeypatch.setattr(bl, "version_changes", lambda before, after: [])
    cmp = compare_with_baseline(_tensorflow_upgrade(_base()), _base())
    assert not regression_lines(cmp)[0].startswith("tensorflow 2.21.0 -> 2.22.0: ")


def test_pair_lines_name_each_backends_versions():
    cur = _set(_base(), PAIR_BLOCK3, error=2e-5, status="FAIL")
    cur["versions"]["torch"]["torch"] = "2.14.0"
    (line,) = regression_lines(compare_with_baseline(cur, _base()))
    assert line.startswith("torch: torch 2.13.0 -> 2.14.0: eval block3 8.0e-07 -> 2.0e-05 ")
    (line,) = regression_lines(compare_with_baseline(_set(_base(), PAIR_BLOCK3, error=2e-5,
                                                           status="FAIL"), _base()))
    assert line.startswith("torch/keras: versions unchanged: eval block3")


@pytest.mark.parametrize(("e0", "e1", "tol", "regressed"), [
    (5e-7, 4.9e-6, 1e-5, False),  # 9.8x: not more than 10x
    (5e-7, 5.1e-6, 1e-5, True),   # 10.2x
    (0.0, 9e-7, 1e-5, False),     # from 0, but below 10x the floor (1% of the tolerance)
    (1e-9, 9e-7, 1e-5, False),    # 900x a tiny error: still below 10% of the tolerance
    (0.0, 1.1e-6, 1e-5, True),    # from 0 past 10x the floor
    (0.0, 1e-300, 0.0, True),     # bit-exact check: no floor
    (0.0, 0.0, 0.0, False),
    (1e-13, 9e-12, 1e-10, False),  # float64: below 10% of the tolerance
    (1e-13, 1.1e-11, 1e-10, True),
    (None, None, None, False),    # no numbers: only the status rule applies
    (6.6e-7, math.inf, 1e-5, True),
    (6.6e-7, math.nan, 1e-5, True),
])
def test_growth_rule(e0, e1, tol, regressed):
    before = _item("c", "eval", "torch", "stem", e0, tol)
    after = _item("c", "eval", "torch", "stem", e1, tol)
    assert (regression(before, after) is not None) is regressed


def test_a_loosened_tolerance_does_not_hide_growth():
    """The floor comes from the tighter of the two runs' tolerances: a change that loosens
    eval's tolerance 100x and moves block3 100x (1e-6 -> 1e-4) is still regressed."""
    before = _item("c", "eval", "torch", "block3", 1e-6, 1e-5)
    after = _item("c", "eval", "torch", "block3", 1e-4, 1e-3)
    assert "grew 100x" in regression(before, after)
    assert regression(after, before) is None  # tightened, and the error shrank


def test_crossing_rule_uses_the_status():
    before = _item("c", "eval", "torch", "stem", 8e-6, 1e-5)
    for status in ("FAIL", "ill-conditioned", "error", "not available"):
        after = _item("c", "eval", "torch", "stem", 9e-6, 1e-5, status=status)
        assert "passed in the baseline" in regression(before, after)
    failing = _item("c", "eval", "torch", "stem", 2e-5, 1e-5, status="FAIL")
    assert regression(failing, failing) is None  # failing in both: the run's own status says so


def test_new_and_fixed_items_are_not_regressions():
    base = _set(_base(), TORCH_LOGITS, error=2e-5, status="FAIL")
    cur = _base()
    cur["items"].append(_item("d2l", "eval", "gluon", "stem", 1e-7, 1e-5))
    cmp = compare_with_baseline(cur, base)
    assert cmp.ok
    assert [d.key for d in cmp.new] == [("d2l", "eval", "gluon", "reference", "stem")]
    assert [d.key for d in cmp.fixed] == [TORCH_LOGITS]
    assert cmp.cell_marker("d2l", "eval", "gluon") == "new"


def test_missing_is_limited_to_what_the_run_asked_for():
    only_d2l = _drop(_base(), lambda i: i["case"] == "d2l")
    assert compare_with_baseline(only_d2l, _base(), cases=["d2l"]).ok
    assert not compare_with_baseline(only_d2l, _base()).ok
    no_keras = _drop(_base(), lambda i: "keras" not in i["subject"])
    assert compare_with_baseline(no_keras, _base(), backends=["torch", "flax"]).ok
    missing = compare_with_baseline(no_keras, _base(), backends=["torch", "flax", "keras"]).missing
    assert {d.subject for d in missing} == {"keras", "torch~keras"}
    assert compare_with_baseline(_drop(_base(), lambda i: i["check"] == "eval"), _base(),
                                 checks=["eval"]).ok
    assert not compare_with_baseline({"items": []}, _base()).ok


def test_missing_item_is_shown():
    cmp = compare_with_baseline(_drop(_base(), lambda i: i["subject"] != "torch~keras"), _base())
    (line,) = regression_lines(cmp)
    assert "eval block3 8.0e-07 -> missing" in line
    assert cmp.cell_marker("densenet121", "eval", "torch~keras") == "MISSING block3 8.0e-07 -> missing"
    assert "| missing | densenet121 | eval | torch~keras |" in render_markdown(cmp)


def test_stable_report_marks_nothing():
    cmp = compare_with_baseline(_base(), _base())
    assert cmp.ok and not cmp.regressed and not cmp.missing and not cmp.new
    assert {d.verdict for d in cmp.deltas} == {"ok"}
    assert cmp.version_changes == ()
    assert render_text(cmp).startswith("vs baseline: 0 regressed, 0 missing, 0 new, 0 fixed, 13 ok")


def _write(tmp_path, text: str):
    path = tmp_path / "report.json"
    path.write_text(text)
    return path


def _report_text(mutate: Callable[[Report], Any]) -> str:
    """The baseline's JSON after ``mutate`` changed it in place."""
    r = _base()
    mutate(r)
    return json.dumps(r)


BAD_FILES = [
    ("not JSON", "{'items': [", "not valid JSON"),
    ("a list", json.dumps(_base()["items"]), "top level is list"),
    ("no items", _report_text(lambda r: r.pop("items")), 'no "items" list'),
    ("empty items", _report_text(lambda r: r.update(items=[])), '"items" is empty'),
    ("item without error", _report_text(lambda r: r["items"][1].pop("error")), "items[1] has no 'error'"),
    ("error not a number", _report_text(lambda r: r["items"][2].update(error="1e-7")),
     "items[2].error is str"),
    ("item without status", _report_text(lambda r: r["items"][0].pop("status")),
     "items[0].status is missing"),
    ("repeated key", _report_text(lambda r: r["items"].append(dict(r["items"][3]))),
     "repeats the key of items[3]"),
    ("bad versions", _report_text(lambda r: r.update(versions=["torch 2.13"])), '"versions" is list'),
]


@pytest.mark.parametrize(("text", "words"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_baseline_file_is_a_clear_error(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(BaselineError) as e:
        load_baseline(path)
    assert str(path) in str(e.value) and words in str(e.value)


@pytest.mark.parametrize(("text", "words"), [b[1:] for b in BAD_FILES[1:]],
                         ids=[b[0] for b in BAD_FILES[1:]])
def test_bad_file_test_catches_a_loader_without_checks(tmp_path, monkeypatch, text, words):
    monkeypatch.setattr(bl, "validate_report", lambda data, source, allow_empty=False: None)
    with pytest.raises(pytest.fail.Exception):
        test_bad_baseline_file_is_a_clear_error(tmp_path, text, words)


def test_missing_baseline_file_names_it(tmp_path):
    with pytest.raises(BaselineError, match=r"nope\.json: no such file"):
        load_baseline(tmp_path / "nope.json")
    with pytest.raises(BaselineError, match="cannot read it"):
        load_baseline(tmp_path)


def test_good_file_loads_whole(tmp_path):
    assert load_baseline(_write(tmp_path, json.dumps(_base()))) == _base()


def test_current_report_is_checked_too():
    with pytest.raises(BaselineError, match="this run's report: items\\[0\\]"):
        compare_with_baseline({"items": [{"case": "d2l"}]}, _base())


def test_command_line_compare_and_update(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({**_tensorflow_upgrade(_base()), "exit_status": 1}))
    (run / "report.md").write_text("# report\n")
    committed = tmp_path / "baseline"
    committed.mkdir()
    (committed / "report.json").write_text(json.dumps(_base()))
    assert bl.main(["compare", str(run / "report.json"), str(committed / "report.json")]) == 1
    assert "tensorflow 2.21.0 -> 2.22.0: eval block3" in capsys.readouterr().out
    assert bl.main(["update", str(run), "--to", str(committed)]) == 2  # a failing run is refused
    assert "a failing run is not a baseline" in capsys.readouterr().err
    (run / "report.json").write_text(json.dumps({**_jitter(_base()), "exit_status": 0}))
    assert bl.main(["update", str(run), "--to", str(committed)]) == 0
    written = committed / "report.json.gz"  # gzip'd, without the per-case tables
    assert written.read_bytes()[:2] == b"\x1f\x8b"
    assert load_baseline(written)["exit_status"] == 0
    assert (committed / "report.md").read_text() == "# report\n"
    assert sorted(p.name for p in committed.iterdir()) == ["report.json", "report.json.gz",
                                                         "report.md"]  # no temporary left
    assert bl.main(["compare", str(run / "report.json"), str(written)]) == 0
    written.write_bytes(written.read_bytes()[:100])  # a truncated baseline is refused
    assert bl.main(["compare", str(run / "report.json"), str(written)]) == 2
    assert "cannot read it" in capsys.readouterr().err
    assert bl.main(["compare", str(tmp_path / "none.json")]) == 2


def test_imports_without_numpy():
    code = ("import sys, densenet_multi.parity.baseline as b; "
            "assert 'numpy' not in sys.modules, 'numpy imported'; print(b.GROWTH)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
