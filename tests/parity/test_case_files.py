"""The committed case files (parity/cases/) agree with the package's DEFAULT_CASES."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from densenet_multi.parity import casefiles
from densenet_multi.parity.casefiles import (
    CASE_SETS,
    case_record,
    check_case_files,
    render_case_file,
    write_case_files,
)
from densenet_multi.parity.cases import DEFAULT_CASES, Case, load_case_file

CASE_DIR = Path(__file__).resolve().parents[2] / "parity" / "cases"
REGENERATE = "python -m densenet_multi.parity.casefiles parity/cases"


def test_committed_files_agree_with_the_package():
    assert CASE_SETS["default"] == DEFAULT_CASES
    assert check_case_files(CASE_DIR) == [], f"stale case files: run {REGENERATE}"


def test_default_file_loads_to_the_default_cases():
    """What --case-file reads (cases.load_case_file) is the package's DEFAULT_CASES."""
    assert load_case_file(str(CASE_DIR / "default.json")) == list(DEFAULT_CASES)


def test_records_hold_every_field_of_case():
    """Generic over the dataclass: a field added to Case is written without code changes."""
    names = [f.name for f in fields(Case) if f.init]
    for case in DEFAULT_CASES:
        record = case_record(case)
        assert list(record) == names
        assert Case.from_dict(record) == case
    assert json.loads(render_case_file(DEFAULT_CASES)) == [case_record(c) for c in DEFAULT_CASES]


def test_write_then_check_round_trips(tmp_path):
    assert [p.name for p in write_case_files(tmp_path)] == [f"{n}.json" for n in CASE_SETS]
    assert check_case_files(tmp_path) == []
    assert casefiles.main(["--check", str(tmp_path)]) == 0


def _edit_batch(path: Path) -> None:
    data = json.loads(path.read_text())
    data[0]["batch"] += 1
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("damage", "words"), [
    (lambda d: (d / "default.json").unlink(), "missing"),
    (lambda d: _edit_batch(d / "default.json"), "loads to other cases"),
    (lambda d: (d / "default.json").write_text((d / "default.json").read_text() + " "), "differs"),
    (lambda d: (d / "default.json").write_text("[{"), "does not load"),
    (lambda d: (d / "old-set.json").write_text("[]"), "not a case set"),
])
def test_check_catches_a_stale_folder(tmp_path, capsys, damage, words):
    write_case_files(tmp_path)
    damage(tmp_path)
    problems = check_case_files(tmp_path)
    assert problems and any(words in p for p in problems), problems
    assert casefiles.main(["--check", str(tmp_path)]) == 1
    assert "regenerate with" in capsys.readouterr().err


def test_check_catches_a_case_dropped_from_the_package(tmp_path, monkeypatch):
    write_case_files(tmp_path)
    monkeypatch.setitem(CASE_SETS, "default", DEFAULT_CASES[:-1])
    assert check_case_files(tmp_path)
