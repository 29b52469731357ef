"""The report: a rich table in the terminal, report.json and report.md in the run folder.

Per case, two tables:

* **backends** (rows) x **checks** (columns): each backend against the float64
  NumPy reference (shapes against the spec, copy against the canonical
  weights); for ``grad``, ``trajectory`` and ``copy`` the cell also sums up
  every pair the backend is in whose other member passes on its own (so a
  backend is not blamed for its partner's bug). With a baseline, a
  ``vs baseline`` column says per backend whether any of its items regressed;
* **pairs** x checks: every pair of backends compared directly, and the copy
  chains canonical -> A -> canonical -> B -> canonical.

A cell shows the status the comparison decided (the worst of the cells it
sums up), the worst relative error (``max|a-b| / max|b|``) and, when it did
not pass, the *first* stage / parameter where it did not, with its errors.

Exit status (:func:`exit_status`): 1 when any cell, worker outcome or (with a
baseline) regressed item has a status that :func:`status.fails_run` says
fails the run (with ``require_all`` for ``--require-all``), or when the run
decided nothing at all (no cell); else 0. The
report.json schema is in :mod:`.runfolder`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..testing import TOLERANCES
from .cases import CHECK_DOC, CHECKS, VALUE_CHECKS
from .compare import CaseComparison, Cell
from .runfolder import FORMAT, RunFolder
from .status import Status, fails_run, from_outcome, worst

__all__ = ["baseline_fields", "exit_status", "markdown", "render_terminal", "report_data", "summary",
           "write_reports"]

RUNNING_NOTE = (
    "Running statistics after the K trajectory steps are not compared: each framework "
    "updates them by its own rule (biased vs unbiased variance, in the forward or the "
    "backward pass; see the design notes). They are compared, in the canonical convention, "
    "after one train-mode forward: the `train` check."
)
_QUIET = (Status.PASS, Status.NA)
_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.ERROR: "red",
          Status.CRASHED: "red", Status.TIMEOUT: "red", Status.REGRESSED: "bold red",
          Status.NA: "dim"}


def _style(status: Any) -> str:
    return _STYLE.get(status, "yellow")


# ---------------------------------------------------------------------- what the tables show
def _checks_in(cc: CaseComparison) -> list[str]:
    return [c for c in CHECKS if cc.case.has(c) and (c != "device" or cc.case.device == "cuda")]


def _own(cc: CaseComparison, backend: str, check: str) -> Cell | None:
    return next((c for c in cc.cells if c.check == check and c.subject == backend), None)


def explained(cc: CaseComparison, cell: Cell) -> bool:
    """A pair cell whose status is already reported against one member's own check."""
    if not cell.is_pair:
        return False
    own = [_own(cc, m, cell.check) for m in cell.members]
    return any(o is not None and o.status != Status.PASS for o in own)


def backend_cell(cc: CaseComparison, backend: str, check: str
                 ) -> tuple[Status | str, float | None, str]:
    """(status, worst rel, text) of one backend's check: the worst of its own cell and,
    for grad, trajectory and copy, the pair / copy-chain cells it is in (not explained
    by a partner's own status)."""
    cells = [c for c in cc.cells if c.check == check and c.subject == backend]
    if check in ("grad", "trajectory", "copy"):
        cells += [c for c in cc.cells if c.check == check and c.status != Status.NA
                  and c.is_pair and backend in c.members and not explained(cc, c)]
    if not cells:
        return Status.NA, None, ""
    status = worst(c.status for c in cells)
    rels = [c.worst_rel for c in cells if c.worst_rel is not None]
    bad = next((c for c in cells if c.status not in _QUIET), None)
    return status, max(rels) if rels else None, "" if bad is None else _why(bad, backend)


def _why(cell: Cell, backend: str | None = None) -> str:
    """The first item that did not pass, else the cell's message."""
    who = "" if backend is None or cell.subject == backend else f"[{cell.subject}] "
    ff = cell.first_fail
    if ff is not None:
        return who + ff.short()
    return who + (cell.message.splitlines()[0][:200] if cell.message else str(cell.status))


def _fmt_rel(v: float | None) -> str:
    return "" if v is None else f"{v:.1e}"


def summary(ccs: Sequence[CaseComparison]) -> dict[str, Any]:
    """Worst relative error per (check, subject) over all cases, and the counts by status."""
    worst_rel: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for cc in ccs:
        for c in cc.cells:
            counts[str(c.status)] = counts.get(str(c.status), 0) + 1
            if c.worst_rel is None:
                continue
            k = c.subject if c.is_pair else f"{c.subject} vs {c.against}"
            d = worst_rel.setdefault(c.check, {})
            d[k] = max(d.get(k, 0.0), c.worst_rel)
    return {"worst_rel": worst_rel, "counts": counts}


# ---------------------------------------------------------------------- the exit status
def _statuses(ccs: Sequence[CaseComparison], outcomes: Mapping[str, Mapping[str, Any]] | None,
              baseline: Any) -> Iterator[Status | str]:
    for cc in ccs:
        yield from (c.status for c in cc.cells)
    for phases in (outcomes or {}).values():
        yield from (from_outcome(o.status) for o in phases.values())
    if baseline is not None:
        yield from (Status.REGRESSED for _ in baseline.regressed)


def exit_status(ccs: Sequence[CaseComparison], outcomes: Mapping[str, Mapping[str, Any]] | None = None,
                *, require_all: bool = False, baseline: Any = None) -> int:
    """1 if any status of the run fails it (:func:`status.fails_run`), else 0; also 1 when
    the run decided nothing at all (no cell: nothing compared is never a pass)."""
    if not any(cc.cells for cc in ccs):
        return 1
    bad = any(fails_run(s, require_all=require_all)
              for s in _statuses(ccs, outcomes, baseline))
    return int(bad)


# ---------------------------------------------------------------------- report.json
def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def versions(ccs: Sequence[CaseComparison], outcomes: Mapping[str, Mapping[str, Any]],
             backends: Sequence[str]) -> dict[str, dict[str, str]]:
    """{backend: {package: version}}: what its worker imported (python, numpy, frameworks)."""
    out = {}
    for b in backends:
        o = outcomes.get(b, {}).get("main")
        found = dict(o.versions) if o is not None and o.versions else {}
        for cc in ccs:
            found = found or dict(cc.versions.get(b) or {})
        if found:
            out[b] = {k: str(v) for k, v in found.items()}
    return out


def items(ccs: Sequence[CaseComparison]) -> list[dict[str, Any]]:
    """The flat item list of report.json (schema in :mod:`.runfolder`)."""
    return [{"case": c.case, "check": c.check, "subject": c.subject, "against": c.against,
             "name": i.item, "error": i.rel, "tolerance": i.tol, "status": str(i.status)}
            for cc in ccs for c in cc.cells for i in c.items]


def baseline_fields(ccs: Sequence[CaseComparison], outcomes: Mapping[str, Mapping[str, Any]],
                    backends: Sequence[str]) -> dict[str, Any]:
    """The part of report.json a baseline comparison reads: the flat items, the
    versions and the machine (the per-case tables are for people, not for it)."""
    return {"items": items(ccs), "versions": versions(ccs, outcomes, backends),
            "machine": machine()}


def report_data(ccs: Sequence[CaseComparison], backends: Sequence[str],
                outcomes: Mapping[str, Mapping[str, Any]], *,
                pythons: Mapping[str, str] | None = None, seconds: float | None = None,
                code: int = 0, argv: Sequence[str] | None = None,
                require_all: bool = False) -> dict[str, Any]:
    """Everything report.json holds."""
    comparable = baseline_fields(ccs, outcomes, backends)
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(argv or []),
        "exit_status": code,
        "require_all": require_all,
        "wall_time_s": seconds,
        "machine": comparable["machine"],
        "versions": comparable["versions"],
        "backends": {b: {"python": (pythons or {}).get(b, ""),
                         "workers": {ph: o.to_dict() for ph, o in outcomes.get(b, {}).items()}}
                     for b in backends},
        "tolerances": {f"{c}/{d}": t for (c, d), t in TOLERANCES.items()},
        "checks": CHECK_DOC,
        "running_stats_note": RUNNING_NOTE,
        "summary": summary(ccs),
        "items": comparable["items"],
        "cells": [{k: v for k, v in c.to_dict().items() if k not in ("items", "detail")}
                  for cc in ccs for c in cc.cells],
        "cases": [_case_data(cc, backends) for cc in ccs],
    }


def _case_data(cc: CaseComparison, backends: Sequence[str]) -> dict[str, Any]:
    table = {b: {c: dict(zip(("status", "worst_rel", "first_fail"), backend_cell(cc, b, c),
                             strict=True)) for c in _checks_in(cc)} for b in backends}
    return {"case": cc.case.to_dict(), "folder": str(cc.case_dir),
            "contract_notes": {b: sorted(set(n)) for b, n in cc.notes.items() if n},
            "versions": cc.versions, "table": table,
            "comparisons": [c.to_dict() for c in cc.cells]}


def write_reports(run_dir: Path, ccs: Sequence[CaseComparison], backends: Sequence[str],
                  outcomes: Mapping[str, Mapping[str, Any]], *,
                  pythons: Mapping[str, str] | None = None, seconds: float | None = None,
                  code: int = 0, argv: Sequence[str] | None = None, require_all: bool = False,
                  baseline: Any = None, baseline_source: str | None = None) -> tuple[Path, Path]:
    """report.json and report.md in ``run_dir`` (each whole or not at all)."""
    data = report_data(ccs, backends, outcomes, pythons=pythons, seconds=seconds, code=code,
                       argv=argv, require_all=require_all)
    if baseline is not None:
        data["baseline"] = {"source": baseline_source, **baseline.to_dict()}
    md = markdown(ccs, backends, outcomes, seconds=seconds, code=code, baseline=baseline,
                  baseline_source=baseline_source)
    return RunFolder(run_dir).write_reports(data, md)


# ---------------------------------------------------------------------- terminal
def _vs_baseline(baseline: Any, cc: CaseComparison, backend: str) -> str:
    """The "vs baseline" cell of one backend in one case: its first regressed check, else
    fixed / new / ok."""
    marks = [m for m in (baseline.cell_marker(cc.case.name, c, backend) for c in _checks_in(cc))
             if m]
    bad = [m for m in marks if m.startswith(("REGRESSED", "MISSING"))]
    if bad:
        return bad[0]
    return "ok" if set(marks) <= {"ok"} and marks else ", ".join(sorted(set(marks)))


def _cell_markup(status: Any, rel: float | None, text: str, width: int = 90) -> str:
    s = f"[{_style(status)}]{status}[/]"
    s += f" {_fmt_rel(rel)}" if rel is not None else ""
    return s + (f"\n[dim]{_escape(text[:width])}[/dim]" if text else "")


def _case_table(cc: CaseComparison, backends: Sequence[str], baseline: Any) -> Any:
    from rich.table import Table

    checks = _checks_in(cc)
    t = Table(title=_escape(cc.case.describe()), title_justify="left", show_lines=True)
    t.add_column("backend", style="bold")
    for c in checks:
        t.add_column(c)
    if baseline is not None:
        t.add_column("vs baseline")
    for b in backends:
        row = [b]
        for c in checks:
            st, rel, text = backend_cell(cc, b, c)
            row.append(_cell_markup(st, None if c == "copy" else rel, text))
        if baseline is not None:
            row.append(_escape(_vs_baseline(baseline, cc, b)))
        t.add_row(*row)
    return t


def _pair_table(cc: CaseComparison, backends: Sequence[str]) -> Any:
    from rich.table import Table

    order = {b: i for i, b in enumerate(backends)}
    pairs = sorted({c.subject for c in cc.cells if "~" in c.subject},
                   key=lambda s: [order.get(x, 99) for x in s.split("~")])
    chains = {c.subject: c for c in cc.cells if "->" in c.subject}
    if not pairs and not chains:
        return None
    t = Table(title=f"{cc.case.name}: backend pairs", title_justify="left")
    t.add_column("pair", style="bold")
    checks = [c for c in VALUE_CHECKS if cc.case.has(c)]
    for c in checks:
        t.add_column(c)
    if chains:
        t.add_column("copy A->B / B->A")
    for p in pairs:
        row = [p] + [_pair_markup(next((x for x in cc.cells if x.subject == p and x.check == c),
                                       None)) for c in checks]
        if chains:
            a, b = p.split("~")
            row.append(" / ".join(_pair_markup(chains.get(s), rel=False)
                                  for s in (f"{a}->{b}", f"{b}->{a}")))
        t.add_row(*row)
    return t


def _pair_markup(cell: Cell | None, rel: bool = True) -> str:
    if cell is None:
        return ""
    text = _why(cell)[:80] if cell.status not in _QUIET and cell.first_fail else ""
    return _cell_markup(cell.status, cell.worst_rel if rel else None, text)


def _not_passed(ccs: Sequence[CaseComparison]) -> list[str]:
    failures = [c for cc in ccs for c in cc.cells if c.status not in _QUIET and not explained(cc, c)]
    lines = [f"  [{_style(c.status)}]{c.status}[/] {c.case} {c.check} {c.subject} vs "
             f"{c.against}: {_escape(_why(c))}" for c in failures[:40]]
    if len(failures) > 40:
        lines.append(f"  ... and {len(failures) - 40} more (report.json)")
    return ["[bold]Not passed:[/bold]", *lines] if lines else []


def render_terminal(ccs: Sequence[CaseComparison], backends: Sequence[str],
                    outcomes: Mapping[str, Mapping[str, Any]], console: Any = None,
                    seconds: float | None = None, run_dir: Path | None = None,
                    code: int | None = None, baseline: Any = None) -> None:
    from rich.console import Console

    console = console or Console()
    for name in backends:
        for phase, o in outcomes.get(name, {}).items():
            if o.status != "ok":
                console.print(f"[{_style(from_outcome(o.status))}]{name} ({phase}): {o.status}"
                              f"[/] -- {_escape(o.reason)}")
                if o.status in ("crashed", "timeout") and o.log_tail:
                    console.print("[dim]" + _escape(o.log_tail[-1500:]) + "[/dim]")
    for cc in ccs:
        console.print(_case_table(cc, backends, baseline))
        pairs = _pair_table(cc, backends)
        if pairs is not None:
            console.print(pairs)
        for b, notes in cc.notes.items():
            for n in sorted(set(notes))[:5]:
                console.print(f"[yellow]contract: {b}: {_escape(n)}[/yellow]")
    for line in _not_passed(ccs):
        console.print(line)
    if baseline is not None:
        from .baseline import render_text

        console.print(_escape(render_text(baseline)))
    console.print(f"[dim]{RUNNING_NOTE}[/dim]")
    tail = f"wall time {seconds:.0f} s" if seconds is not None else ""
    if run_dir is not None:
        tail += f"; reports in {run_dir}/report.md and report.json"
    console.print(tail + (f"; exit status {code}" if code is not None else ""))


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s or "")


# ---------------------------------------------------------------------- markdown
def markdown(ccs: Sequence[CaseComparison], backends: Sequence[str],
             outcomes: Mapping[str, Mapping[str, Any]], *, seconds: float | None = None,
             code: int = 0, baseline: Any = None, baseline_source: str | None = None) -> str:
    tols = ", ".join(f"{c} {t:g}" for (c, d), t in TOLERANCES.items() if d == "float32")
    L = ["# densenet_multi parity report", "",
         f"Exit status **{code}**" + (f", wall time {seconds:.0f} s." if seconds else "."), "",
         "Errors are `max|a - b| / max|b|` per tensor (b: the reference or the second "
         "backend of a pair); tolerances from `densenet_multi.testing.TOLERANCES` "
         f"(float32: {tols}).", "", "## Backends", "",
         "| backend | worker | seconds | versions | note |", "|---|---|---|---|---|"]
    for b in backends:
        o = outcomes.get(b, {}).get("main")
        if o is not None:
            v = ", ".join(f"{k} {x}" for k, x in o.versions.items())
            L.append(f"| {b} | {o.status} | {o.seconds:.0f} | {v} | {_md(o.reason)} |")
    L.append("")
    for cc in ccs:
        L += _md_case(cc, backends, baseline)
    if baseline is not None:
        from .baseline import render_markdown

        L += [render_markdown(baseline, source=baseline_source), ""]
    L += ["## Worst relative error per check", "", "| check | subject | worst rel (all cases) |",
          "|---|---|---|"]
    for check, d in summary(ccs)["worst_rel"].items():
        L += [f"| {check} | {subject} | {_fmt_rel(v)} |" for subject, v in d.items()]
    return "\n".join([*L, "", RUNNING_NOTE, ""])


def _md_case(cc: CaseComparison, backends: Sequence[str], baseline: Any) -> list[str]:
    checks = _checks_in(cc)
    extra = ["vs baseline"] if baseline is not None else []
    L = [f"## {cc.case.name}", "", f"`{cc.case.describe()}`", "",
         "| backend | " + " | ".join([*checks, *extra]) + " |",
         "|---" * (len(checks) + len(extra) + 1) + "|"]
    for b in backends:
        row = []
        for c in checks:
            st, rel, text = backend_cell(cc, b, c)
            s = f"**{st}**" if st not in _QUIET else str(st)
            s += f" {rel:.1e}" if rel is not None and c != "copy" else ""
            row.append(s + (f"<br>{_md(text)}" if text else ""))
        if baseline is not None:
            row.append(_md(_vs_baseline(baseline, cc, b)))
        L.append(f"| {b} | " + " | ".join(row) + " |")
    L.append("")
    pair_cells = [c for c in cc.cells if c.is_pair and c.status != Status.NA]
    if pair_cells:
        L += ["| pair | check | status | worst rel | first item not passed |", "|---|---|---|---|---|"]
        L += [f"| {c.subject} | {c.check} | {c.status} | {_fmt_rel(c.worst_rel)} | "
              f"{_md(_why(c)) if c.status != Status.PASS else ''} |" for c in pair_cells]
        L.append("")
    notes = {b: sorted(set(n)) for b, n in cc.notes.items() if n}
    if notes:
        L += ["Contract notes:", "", *[f"- {b}: {_md(n)}" for b, ns in notes.items() for n in ns],
              ""]
    return L


def _md(s: str) -> str:
    return (s or "").replace("|", "\\|").replace("\n", " ")[:300]
