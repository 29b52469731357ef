"""The shipped parity cases as data files: ``parity/cases/<set>.json``.

The cases stay importable from the package (:data:`cases.DEFAULT_CASES`: an
installed wheel has no ``parity/`` folder); the files are the same cases as
data, for reading and for ``densenet-multi parity --case-file``. Each file is
a JSON list of case objects, one per case, holding every field of
:class:`cases.Case` (read from the dataclass, so a field added to ``Case`` is
written without touching this module) and nothing derived: the resolved spec,
which ``report.json`` shows, is left out because ``--case-file`` ignores it.

One file per case *set* (:data:`CASE_SETS`); today there is one set,
``default``, the cases the main job runs: ``--case-file
parity/cases/default.json`` runs exactly what ``densenet-multi parity`` runs,
and one file is one thing to compare with the package.

    python -m densenet_multi.parity.casefiles parity/cases          # (re)write them
    python -m densenet_multi.parity.casefiles --check parity/cases  # exit 1 if stale

``tests/parity/test_case_files.py`` runs the check on the committed files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

from .cases import DEFAULT_CASES, Case, load_case_file

__all__ = ["CASE_SETS", "case_record", "check_case_files", "main", "render_case_file",
           "write_case_files"]

#: Case sets written as ``<name>.json``.
CASE_SETS: dict[str, tuple[Case, ...]] = {"default": DEFAULT_CASES}


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples as lists); a TypeError names ``where`` otherwise."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Enum):
        return _plain(value.value, where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} can't be written to a case file")


def case_record(case: Case) -> dict[str, Any]:
    """Every init field of ``case`` (what ``Case(**record)`` takes), in declaration order,
    as JSON data."""
    return {f.name: _plain(getattr(case, f.name), f"{case.name}.{f.name}")
            for f in fields(case) if f.init}


def render_case_file(cases: Sequence[Case]) -> str:
    """The text of a case file: a JSON list, one object per case, one field a line
    (lists and objects inline, so a case reads top to bottom), newline-terminated."""
    objects = []
    for case in cases:
        lines = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in case_record(case).items()]
        objects.append("  {\n" + ",\n".join(lines) + "\n  }")
    return "[\n" + ",\n".join(objects) + "\n]\n"


def write_case_files(folder: str | Path) -> list[Path]:
    """Write every set of :data:`CASE_SETS` to ``folder/<set>.json``; the paths written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cases in CASE_SETS.items():
        path = out / f"{name}.json"
        path.write_text(render_case_file(cases))
        written.append(path)
    return written


def check_case_files(folder: str | Path) -> list[str]:
    """What differs between ``folder`` and :data:`CASE_SETS` (empty: they agree).

    A file must exist, have exactly the text :func:`render_case_file` gives and
    load (with :func:`cases.load_case_file`) to the package's cases; a ``.json``
    file of no set is reported too (a stale set).
    """
    folder = Path(folder)
    problems = []
    for name, cases in CASE_SETS.items():
        path = folder / f"{name}.json"
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if path.read_text() != render_case_file(cases):
            problems.append(f"{path}: differs from the package's {name} cases")
        try:
            loaded = load_case_file(str(path))
        except (ValueError, TypeError, KeyError) as e:
            problems.append(f"{path}: does not load: {e}")
            continue
        if loaded != list(cases):
            problems.append(f"{path}: loads to other cases than the package's {name} cases")
    stray = sorted(p.name for p in folder.glob("*.json") if p.stem not in CASE_SETS)
    problems += [f"{folder / n}: not a case set of the package" for n in stray]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.parity.casefiles",
                                description="Write the shipped parity cases as JSON files, or "
                                            "check that the files agree with the package.")
    p.add_argument("folder", nargs="?", default="parity/cases")
    p.add_argument("--check", action="store_true", help="only check; exit 1 on any difference")
    args = p.parse_args(argv)
    if not args.check:
        for path in write_case_files(args.folder):
            print(f"wrote {path}")
        return 0
    problems = check_case_files(args.folder)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"regenerate with: python -m densenet_multi.parity.casefiles {args.folder}",
              file=sys.stderr)
        return 1
    print(f"{args.folder}: the case files agree with the package")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
