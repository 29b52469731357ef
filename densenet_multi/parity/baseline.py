"""Regression against a baseline: this run's errors next to a committed run's.

A parity report (``report.json``) holds a flat list ``items``, one per compared
stage, statistic, parameter, loss or weight, each with ``case``, ``check``,
``subject`` (a backend, or a pair such as ``torch~keras``), ``against``
(``"reference"`` or the partner), ``name``, ``error`` (the relative error
``max|a-b| / max|b|``, or null where the item has no number), ``tolerance``
and ``status``; next to it ``versions`` (``{backend: {package: version}}``)
and ``machine``. :func:`compare_with_baseline` matches the items of two
reports by (case, check, subject, against, name) and gives each a verdict:

``regressed``
    * it **crossed its tolerance**: its status was ``pass`` in the baseline
      and is anything else now (FAIL, error, ill-conditioned, ...); or
    * its **error grew more than 10x** (:data:`GROWTH`). Growth is measured
      from ``max(baseline error, FLOOR_FRACTION x tolerance)``: an error below
      1% of its tolerance (a zero included) counts as 1% of it, so growth is a
      regression once the new error is more than 10x the old one *and* more
      than 10% of the tolerance (the tighter of the two runs' tolerances, so a
      loosened tolerance hides nothing); rounding noise far below the tolerance does
      not raise alarms. Without a positive tolerance (bit-exact checks such as
      ``copy``) there is no floor: 0 -> anything above 0 is regressed; or
    * its error is NaN or infinite now and was a finite number.
``missing``
    in the baseline, not in this run: **counted as regressed** (a stage,
    parameter, check or backend that vanished is a hole, not an improvement).
    ``compare_with_baseline(..., cases=, checks=, backends=)`` limits this to
    what the run asked for, so ``--cases d2l`` does not report every other case.
``new``
    in this run, not in the baseline (reported, not a regression).
``fixed``
    not passing in the baseline, passing now.
``ok``
    none of the above.

The baseline is evidence of what the code did on named framework versions, so
every regression line shows the versions of the subject's backend(s) in both
runs side by side: ``tensorflow 2.21.0 -> 2.22.0: eval block3 6.6e-07 -> 4.1e-05``.

Only the standard library is used: this module imports under numpy 1.23 and 2.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FLOOR_FRACTION", "GROWTH", "KEY_FIELDS", "PASSING", "BaselineComparison", "BaselineError",
    "ItemDelta", "VersionChange", "compare_with_baseline", "judge", "load_baseline", "regression",
    "regression_lines", "render_markdown", "render_text", "report_problems", "subject_backends",
    "summary_line", "validate_report", "version_changes",
]

#: An error that grew by more than this factor is regressed.
GROWTH = 10.0
#: Errors below this fraction of their tolerance count as this fraction of it (see the module doc).
FLOOR_FRACTION = 0.01
#: Item statuses that count as passing (the harness writes "pass").
PASSING = frozenset({"pass"})
#: The fields that identify an item in both reports.
KEY_FIELDS = ("case", "check", "subject", "against", "name")
Key = tuple[str, str, str, str, str]

REGRESSED, MISSING, NEW, FIXED, OK = "regressed", "missing", "new", "fixed", "ok"
DEFAULT_BASELINE = "parity/baseline/report.json.gz"
#: what a committed baseline keeps of a run's report.json: everything but the per-case
#: tables (``cases``, ``cells``), which report.md shows and the comparison never reads.
#: gzip: the default run's items are 14 MB of JSON, 0.5 MB compressed.
BASELINE_DROPS = ("cases", "cells")
_SUBJECT_SEPARATORS = re.compile(r"<?->|[~,/@|\s]+")


class BaselineError(ValueError):
    """A baseline (or current report) that cannot be compared; the message names it and why."""


# ---------------------------------------------------------------------------- loading


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The baseline report at ``path``, checked against the item schema.

    Raises :class:`BaselineError` naming the path and what is wrong (no such
    file, not JSON, not a parity report with ``items``, a malformed item) and
    returns nothing partial.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
        # a committed baseline is gzip'd JSON (report.json.gz), a run's report.json is not
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except FileNotFoundError:
        raise BaselineError(f"baseline {p}: no such file (the committed baseline is "
                            f"{DEFAULT_BASELINE}; parity/README.md says how to make one)") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:  # gzip errors are OSError/EOFError
        raise BaselineError(f"baseline {p}: cannot read it: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BaselineError(f"baseline {p}: not valid JSON: {e.msg} at line {e.lineno} "
                            f"column {e.colno}") from None
    validate_report(data, f"baseline {p}")
    return data


def validate_report(data: Any, source: str, *, allow_empty: bool = False) -> None:
    """Raise :class:`BaselineError` ("<source>: <problems>") unless ``data`` fits the schema."""
    problems = report_problems(data, allow_empty=allow_empty)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise BaselineError(f"{source}: " + "; ".join(problems[:5]) + more)


def report_problems(data: Any, *, allow_empty: bool = False) -> list[str]:
    """Everything that keeps ``data`` from being a comparable report (empty: it is one)."""
    if not isinstance(data, dict):
        return [f"the top level is {_kind(data)}, not an object with \"items\""]
    problems: list[str] = []
    items = data.get("items")
    if items is None:
        problems.append('no "items" list: not a parity report, or one written before the '
                        "item format (make a new one with densenet-multi parity)")
    elif not isinstance(items, list):
        problems.append(f'"items" is {_kind(items)}, not a list')
    elif not items and not allow_empty:
        problems.append('"items" is empty: nothing to compare with')
    else:
        problems += _item_problems(items)
    problems += _versions_problems(data.get("versions", {}))
    if not isinstance(data.get("machine", {}), dict):
        problems.append(f'"machine" is {_kind(data["machine"])}, not an object')
    return problems


def _item_problems(items: list[Any]) -> list[str]:
    problems: list[str] = []
    seen: dict[Key, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"items[{i}] is {_kind(item)}, not an object")
            continue
        for k in (*KEY_FIELDS, "status"):
            if not isinstance(item.get(k), str):
                problems.append(f"items[{i}].{k} is {_kind(item.get(k))}, not a string")
        for k in ("error", "tolerance"):
            if k not in item:
                problems.append(f"items[{i}] has no {k!r} (a number or null)")
            elif item[k] is not None and not _is_number(item[k]):
                problems.append(f"items[{i}].{k} is {_kind(item[k])}, not a number or null")
        if all(isinstance(item.get(k), str) for k in KEY_FIELDS):
            key = _key(item)
            if key in seen:
                problems.append(f"items[{i}] repeats the key of items[{seen[key]}]: {key}")
            seen.setdefault(key, i)
    return problems


def _versions_problems(versions: Any) -> list[str]:
    if not isinstance(versions, dict):
        return [f'"versions" is {_kind(versions)}, not {{backend: {{package: version}}}}']
    return [f'"versions".{b} is not {{package: version}} with string versions'
            for b, pkgs in versions.items()
            if not isinstance(pkgs, dict) or not all(isinstance(v, str) for v in pkgs.values())]


def _kind(value: Any) -> str:
    if value is None:
        return "missing/null"
    return f"{type(value).__name__} {value!r}"[:60]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _key(item: Mapping[str, Any]) -> Key:
    return tuple(str(item[k]) for k in KEY_FIELDS)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class VersionChange:
    """One package of one backend whose version differs between the baseline and this run."""

    backend: str
    package: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        return f"{self.package} {self.before or '(absent)'} -> {self.after or '(absent)'}"


@dataclass(frozen=True)
class ItemDelta:
    """One item of either report, with its verdict (see the module doc) and why."""

    case: str
    check: str
    subject: str
    against: str
    name: str
    verdict: str
    before: Mapping[str, Any] | None  # the baseline's item
    after: Mapping[str, Any] | None  # this run's item
    reason: str = ""

    @property
    def key(self) -> Key:
        return (self.case, self.check, self.subject, self.against, self.name)

    @property
    def regressed(self) -> bool:
        """Regressed or missing: either fails the comparison."""
        return self.verdict in (REGRESSED, MISSING)

    def side(self, which: str) -> str:
        """The baseline's ("before") or this run's ("after") error as text, else its status."""
        item = self.before if which == "before" else self.after
        if item is None:
            return "missing" if which == "after" else "-"
        error = item.get("error")
        if not _is_number(error):
            return str(item.get("status"))
        return "0" if error == 0 else f"{error:.1e}"

    def marker(self) -> str:
        """This item's "vs baseline" cell: ``ok (was 6.6e-07)``, ``REGRESSED (62x)``, ..."""
        if self.verdict == OK:
            return f"ok (was {self.side('before')})"
        if self.verdict == FIXED:
            return f"fixed (was {self.before.get('status') if self.before else '?'})"
        if self.verdict == NEW:
            return "new"
        if self.verdict == MISSING:
            return f"MISSING (was {self.side('before')})"
        return f"REGRESSED ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return {**dict(zip(KEY_FIELDS, self.key, strict=True)), "verdict": self.verdict,
                "reason": self.reason, "baseline_error": (self.before or {}).get("error"),
                "error": (self.after or {}).get("error"),
                "baseline_status": (self.before or {}).get("status"),
                "status": (self.after or {}).get("status")}


@dataclass(frozen=True)
class BaselineComparison:
    """Every item's verdict (this run's order, then the missing ones in the baseline's
    order), the version changes per backend and both runs' versions and machines."""

    deltas: tuple[ItemDelta, ...]
    version_changes: tuple[VersionChange, ...] = ()
    baseline_versions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    current_versions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    baseline_machine: Mapping[str, Any] = field(default_factory=dict)
    current_machine: Mapping[str, Any] = field(default_factory=dict)
    baseline_created: str = ""  # the baseline report's "created" (UTC, ISO 8601), if any
    _by_key: dict[Key, ItemDelta] = field(init=False, repr=False, compare=False)
    _by_cell: dict[tuple[str, str, str], list[ItemDelta]] = field(init=False, repr=False,
                                                                  compare=False)

    def __post_init__(self) -> None:
        # Indexes, so that a report marking each of its (thousands of) items stays linear.
        by_cell: dict[tuple[str, str, str], list[ItemDelta]] = {}
        for d in self.deltas:
            by_cell.setdefault((d.case, d.check, d.subject), []).append(d)
        object.__setattr__(self, "_by_key", {d.key: d for d in self.deltas})
        object.__setattr__(self, "_by_cell", by_cell)

    def with_verdict(self, *verdicts: str) -> list[ItemDelta]:
        return [d for d in self.deltas if d.verdict in verdicts]

    @property
    def regressed(self) -> list[ItemDelta]:
        """Regressed and missing items: any of them fails the comparison."""
        return [d for d in self.deltas if d.regressed]

    @property
    def missing(self) -> list[ItemDelta]:
        return self.with_verdict(MISSING)

    @property
    def new(self) -> list[ItemDelta]:
        return self.with_verdict(NEW)

    @property
    def fixed(self) -> list[ItemDelta]:
        return self.with_verdict(FIXED)

    @property
    def ok(self) -> bool:
        """True when nothing regressed and nothing is missing (exit status 0 as far as
        the baseline goes)."""
        return not self.regressed

    def delta(self, case: str, check: str, subject: str, against: str, name: str) -> ItemDelta | None:
        return self._by_key.get((case, check, subject, against, name))

    def marker(self, case: str, check: str, subject: str, against: str, name: str) -> str:
        """The "vs baseline" cell of one item ("" when neither report has it)."""
        d = self.delta(case, check, subject, against, name)
        return d.marker() if d else ""

    def cell_marker(self, case: str, check: str, subject: str, against: str | None = None) -> str:
        """The "vs baseline" cell of a (case, check, subject) table cell: the first
        regressed or missing item, else ``fixed``, ``new``, ``ok``; "" with no items."""
        ds = [d for d in self._by_cell.get((case, check, subject), [])
              if against in (None, d.against)]
        bad = [d for d in ds if d.regressed]
        if bad:
            word = "MISSING" if bad[0].verdict == MISSING else "REGRESSED"
            more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
            return f"{word} {bad[0].name} {bad[0].side('before')} -> {bad[0].side('after')}{more}"
        verdicts = {d.verdict for d in ds}
        if not verdicts:
            return ""
        return FIXED if FIXED in verdicts else NEW if verdicts == {NEW} else OK

    def versions_of(self, subject: str) -> str:
        """The versions of the subject's backend(s), baseline -> now: the changed packages
        (``tensorflow 2.21.0 -> 2.22.0``), or ``keras: versions unchanged``."""
        known = set(self.baseline_versions) | set(self.current_versions)
        backends = [b for b in subject_backends(subject) if b in known]
        changed = [b for b in backends if any(c.backend == b for c in self.version_changes)]
        if not changed:
            return f"{'/'.join(backends) or subject}: versions unchanged"
        parts = [(b, ", ".join(str(c) for c in self.version_changes if c.backend == b))
                 for b in changed]
        if len(backends) == 1:
            return parts[0][1]
        return "; ".join(f"{b}: {text}" for b, text in parts)

    def to_dict(self) -> dict[str, Any]:
        """For report.json: the counts, every non-ok item and the version changes."""
        counts = {v: len(self.with_verdict(v)) for v in (REGRESSED, MISSING, NEW, FIXED, OK)}
        return {"ok": self.ok, "counts": counts,
                "items": [d.to_dict() for d in self.deltas if d.verdict != OK],
                "version_changes": [vars(c) for c in self.version_changes],
                "baseline_versions": self.baseline_versions, "baseline_machine": self.baseline_machine}


def subject_backends(subject: str) -> list[str]:
    """The names in a subject: ``"torch~keras"`` -> ``["torch", "keras"]``."""
    return [t for t in _SUBJECT_SEPARATORS.split(subject) if t]


def compare_with_baseline(current: Mapping[str, Any], baseline: Mapping[str, Any], *,
                          cases: Collection[str] | None = None,
                          checks: Collection[str] | None = None,
                          backends: Collection[str] | None = None) -> BaselineComparison:
    """Compare this run's report with the baseline's (both in the item format).

    ``cases``, ``checks`` and ``backends`` (None: all) say what this run asked
    for: a baseline item outside them is not reported missing. Items are
    matched by :data:`KEY_FIELDS`. Raises :class:`BaselineError` if either
    report does not fit the schema (this run's may have no items: then every
    baseline item in scope is missing).
    """
    validate_report(current, "this run's report", allow_empty=True)
    validate_report(baseline, "baseline")
    before = {_key(i): i for i in baseline["items"]}
    after = {_key(i): i for i in current["items"]}
    old_v, new_v = baseline.get("versions", {}), current.get("versions", {})
    known = set(old_v) | set(new_v) | set(backends or ())

    def in_scope(item: Mapping[str, Any]) -> bool:
        names = [b for b in subject_backends(item["subject"]) if b in known]
        return ((cases is None or item["case"] in cases)
                and (checks is None or item["check"] in checks)
                and (backends is None or all(b in backends for b in names)))

    deltas = [judge(before.get(k), item) for k, item in after.items()]
    deltas += [judge(item, None) for k, item in before.items() if k not in after and in_scope(item)]
    return BaselineComparison(tuple(deltas), tuple(version_changes(old_v, new_v)), old_v, new_v,
                              baseline.get("machine", {}), current.get("machine", {}),
                              str(baseline.get("created", "")))


def judge(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> ItemDelta:
    """The verdict on one item: the baseline's ``before``, this run's ``after`` (either None)."""
    item = after if after is not None else before
    if item is None:
        raise ValueError("judge() needs at least one of before, after")
    key = _key(item)
    if after is None:
        return ItemDelta(*key, MISSING, before, None, "in the baseline, not in this run")
    if before is None:
        return ItemDelta(*key, NEW, None, after, "not in the baseline")
    reason = regression(before, after)
    if reason:
        return ItemDelta(*key, REGRESSED, before, after, reason)
    if not _passed(before) and _passed(after):
        return ItemDelta(*key, FIXED, before, after, f"{before['status']} in the baseline, passes now")
    return ItemDelta(*key, OK, before, after)


def regression(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """Why ``after`` is a regression from ``before`` (None: it is not). The rules are in
    the module doc: crossed its tolerance, grew > GROWTH x its floored baseline error,
    or became NaN/inf. The tighter of the two tolerances is used, so that a change that
    loosens a tolerance cannot hide the growth it allows."""
    tols = [t for t in (before.get("tolerance"), after.get("tolerance")) if _is_number(t)]
    tol = min(tols) if tols else None
    reasons = []
    if _passed(before) and not _passed(after):
        within = f" (tolerance {tol:.0e})" if _is_number(tol) else ""
        reasons.append(f"passed in the baseline, {after['status']} now{within}")
    growth = _growth(before.get("error"), after.get("error"), tol)
    if growth:
        reasons.append(growth)
    return "; ".join(reasons) or None


def _growth(e0: Any, e1: Any, tol: Any) -> str | None:
    """The growth rule: e1 > GROWTH x max(e0, FLOOR_FRACTION x tol), or e1 NaN/inf."""
    if not (_is_number(e0) and _is_number(e1)) or not math.isfinite(e0):
        return None
    if not math.isfinite(e1):
        return f"error {e1} now, {e0:.1e} in the baseline"
    floor = FLOOR_FRACTION * tol if _is_number(tol) and 0 < tol < math.inf else 0.0
    ref = max(e0, floor)
    if e1 <= GROWTH * ref:
        return None
    if ref == 0:
        return "grew from 0"
    basis = "" if e0 >= floor else f" the floor ({FLOOR_FRACTION:g} x tolerance {tol:.0e})"
    return f"grew {e1 / ref:.0f}x{basis}"


def _passed(item: Mapping[str, Any]) -> bool:
    return str(item.get("status")) in PASSING


def version_changes(before: Mapping[str, Mapping[str, str]],
                    after: Mapping[str, Mapping[str, str]]) -> list[VersionChange]:
    """Per backend present in both runs, every package whose version differs (or that one
    of the runs lacks), in the baseline's package order."""
    out: list[VersionChange] = []
    for backend in [b for b in before if b in after]:
        old, new = before[backend], after[backend]
        for package in [*old, *(p for p in new if p not in old)]:
            if old.get(package) != new.get(package):
                out.append(VersionChange(backend, package, old.get(package), new.get(package)))
    return out


# ---------------------------------------------------------------------------- rendering


def regression_lines(cmp: BaselineComparison, *, limit: int | None = None) -> list[str]:
    """One line per regressed or missing item, versions side by side, e.g.
    ``tensorflow 2.21.0 -> 2.22.0: eval block3 6.6e-07 -> 4.1e-05 (densenet121, keras vs
    reference; grew 62x)``; at most ``limit`` lines and a line saying how many more."""
    bad = cmp.regressed
    lines = [f"{cmp.versions_of(d.subject)}: {d.check} {d.name} {d.side('before')} -> "
             f"{d.side('after')} ({d.case}, {d.subject} vs {d.against}; {d.reason})"
             for d in (bad if limit is None else bad[:limit])]
    if limit is not None and len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more (report.md lists every one)")
    return lines


def summary_line(cmp: BaselineComparison) -> str:
    """``vs baseline: 1 regressed, 0 missing, 2 new, 0 fixed, 510 ok``."""
    counts = ", ".join(f"{len(cmp.with_verdict(v))} {v}" for v in (REGRESSED, MISSING, NEW, FIXED, OK))
    return f"vs baseline: {counts}" + ("" if cmp.ok else " -- REGRESSED")


def render_text(cmp: BaselineComparison, *, limit: int | None = 20) -> str:
    """For the terminal: the summary, the version changes, then the regression lines."""
    lines = [summary_line(cmp)]
    if cmp.version_changes:
        lines.append("versions: " + "; ".join(f"{c.backend}: {c}" for c in cmp.version_changes))
    lines += ["  " + line for line in regression_lines(cmp, limit=limit)]
    return "\n".join(lines)


def render_markdown(cmp: BaselineComparison, *, source: str | None = None) -> str:
    """A report.md section: summary, versions and machines side by side, then a table of
    every item that is not ``ok`` (regressed and missing first, then fixed, then new)."""
    out = ["## Against the baseline", ""]
    if source or cmp.baseline_created:
        made = f" (made {cmp.baseline_created})" if cmp.baseline_created else ""
        out += [f"Baseline: `{source or 'report.json'}`{made}.", ""]
    out += [f"**{summary_line(cmp)}**", ""]
    out += _markdown_versions(cmp)
    shown = sorted((d for d in cmp.deltas if d.verdict != OK),
                   key=lambda d: (not d.regressed, d.verdict != FIXED))
    if shown:
        out += ["| verdict | case | check | subject | against | item | baseline | now | why |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {d.verdict} | {d.case} | {d.check} | {d.subject} | {d.against} | {d.name} | "
                f"{d.side('before')} | {d.side('after')} | {d.reason} |" for d in shown]
        out.append("")
    return "\n".join(out)


def _markdown_versions(cmp: BaselineComparison) -> list[str]:
    out: list[str] = []
    if cmp.version_changes:
        out += ["| backend | package | baseline | this run |", "|---|---|---|---|"]
        out += [f"| {c.backend} | {c.package} | {c.before or '(absent)'} | {c.after or '(absent)'} |"
                for c in cmp.version_changes]
        out.append("")
    else:
        out += ["Framework versions: the same as the baseline's.", ""]
    gone = [b for b in cmp.baseline_versions if b not in cmp.current_versions]
    if gone:
        out += [f"Backends in the baseline, not in this run: {', '.join(gone)}.", ""]
    if dict(cmp.baseline_machine) != dict(cmp.current_machine):
        out += [f"Machine: baseline {_machine(cmp.baseline_machine)}; "
                f"this run {_machine(cmp.current_machine)}.", ""]
    return out


def _machine(machine: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in machine.items()) or "(not recorded)"


# ---------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m densenet_multi.parity.baseline compare RUN/report.json [BASELINE]`` or
    ``... update RUN [--to parity/baseline]``. Exit 0 ok, 1 regressed, 2 unusable input."""
    p = argparse.ArgumentParser(prog="python -m densenet_multi.parity.baseline",
                                description="Compare a parity run with the baseline, or make "
                                            "a run the new baseline (see parity/README.md).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare a run's report.json with a baseline")
    c.add_argument("report", help="the run's report.json")
    c.add_argument("baseline", nargs="?", default=DEFAULT_BASELINE)
    u = sub.add_parser("update", help="copy a passing run's report.json and report.md "
                                      "into the baseline folder")
    u.add_argument("run", help="the run folder (holds report.json and report.md)")
    u.add_argument("--to", default=str(Path(DEFAULT_BASELINE).parent), help="baseline folder")
    args = p.parse_args(argv)
    try:
        if args.command == "compare":
            return _compare_command(args.report, args.baseline)
        return _update_command(Path(args.run), Path(args.to))
    except BaselineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _compare_command(report: str, baseline: str) -> int:
    current = load_baseline(report)
    cmp = compare_with_baseline(current, load_baseline(baseline))
    print(render_text(cmp, limit=None))
    return 0 if cmp.ok else 1


def _update_command(run: Path, to: Path) -> int:
    """Copy a run's reports into the baseline folder, refusing a run that did not pass."""
    report = load_baseline(run / "report.json")
    if report.get("exit_status", 0) != 0:
        raise BaselineError(f"{run / 'report.json'}: the run exited {report['exit_status']}; "
                            "a failing run is not a baseline")
    old = to / Path(DEFAULT_BASELINE).name
    if old.exists():
        print(render_text(compare_with_baseline(report, load_baseline(old)), limit=None))
    to.mkdir(parents=True, exist_ok=True)
    slim = {k: v for k, v in report.items() if k not in BASELINE_DROPS}
    text = json.dumps(slim, separators=(",", ":"), sort_keys=True)
    _write_atomic(old, gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    written = [old]
    if (run / "report.md").exists():
        _write_atomic(to / "report.md", (run / "report.md").read_bytes())
        written.append(to / "report.md")
    print(f"baseline updated: {', '.join(map(str, written))} (review and commit them)")
    return 0


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
