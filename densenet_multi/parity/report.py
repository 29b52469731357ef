"""The report: a rich table in the terminal, report.json and report.md in the run folder.

Per case, two tables:

* **backends** (rows) x **checks** (columns): each backend against the float64
  NumPy reference (shapes against the spec, copy against the canonical
  weights); for ``grad`` and ``trajectory``, which have no reference beyond
  the loss, the cell also sums up every pair the backend is in;
* **pairs** x checks: every pair of backends compared directly, and the copy
  chains canonical -> A -> canonical -> B -> canonical.

A cell shows the status, the worst relative error (``max|a-b| / max|b|``) and,
when the check fails, the *first* stage / parameter where it fails, with its
max abs and rel errors. ``missing`` (no environment or the backend can't be
imported), ``unsupported`` (the contract function raised NotImplementedError)
and ``not available`` (no GPU) are never shown as passed.

Exit status: 1 on any failure, error, crash or timeout; with ``require_all``
also on any missing backend or unsupported check; else 0.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..testing import TOLERANCES
from .cases import CHECK_DOC, CHECKS
from .compare import (
    FAILING,
    INCOMPLETE,
    NA,
    PASS,
    SKIPPED,
    CaseComparison,
    Cell,
    worst_status,
)

__all__ = ["exit_status", "render_terminal", "write_reports", "summary"]

RUNNING_NOTE = (
    "Running statistics after the K trajectory steps are not compared: each framework "
    "updates them by its own rule (biased vs unbiased variance, in the forward or the "
    "backward pass; see the design notes). They are compared, in the canonical convention, "
    "after one train-mode forward: the `train` check."
)
_STYLE = {PASS: "green", "FAIL": "bold red", "error": "red", "crashed": "red", "timeout": "red",
          "missing": "yellow", "unsupported": "yellow", "not available": "yellow",
          "unpaired": "yellow", "ill-conditioned": "yellow", NA: "dim", SKIPPED: "dim"}


def _checks_in(cc: CaseComparison) -> list[str]:
    return [c for c in CHECKS if cc.case.has(c) or (c == "device" and cc.case.device == "cuda")]


def _own(cc: CaseComparison, backend: str, check: str) -> Cell | None:
    return next((c for c in cc.cells if c.check == check and c.subject == backend), None)


def _members(subject: str) -> list[str]:
    return subject.replace("->", "~").split("~")


def explained(cc: CaseComparison, cell: Cell) -> bool:
    """A pair cell whose failure is already reported against one member's own check."""
    if cell.subject not in [c.subject for c in cc.cells if "~" in c.subject or "->" in c.subject]:
        return False
    for m in _members(cell.subject):
        own = _own(cc, m, cell.check)
        if own is not None and own.status not in (PASS, SKIPPED):
            return True
    return False


def backend_cell(cc: CaseComparison, backend: str, check: str) -> tuple[str, float | None, str]:
    """(status, worst rel, text) of one backend's check.

    Its own cell (against the reference, the spec, the canonical weights or its
    CPU run); for ``grad``, ``trajectory`` and ``copy`` also every pair / copy
    chain it is in whose other member passes its own check (so a backend is
    not blamed for its partner's bug).
    """
    own = [c for c in cc.cells if c.check == check and c.subject == backend]
    pairs = []
    if check in ("grad", "trajectory", "copy"):
        pairs = [c for c in cc.cells if c.check == check and c.status != NA
                 and c.subject != backend and backend in _members(c.subject)
                 and not explained(cc, c)]
    cells = own + pairs
    if not cells:
        return NA, None, ""
    status = worst_status(c.status for c in cells)
    if check in ("grad", "trajectory") and status == PASS and not pairs and own \
            and own[0].message:
        status = "unpaired"  # only the loss had a reference, and no other backend ran
    rels = [c.worst_rel for c in cells if c.worst_rel is not None]
    worst = max(rels) if rels else None
    bad = next((c for c in cells if c.status not in (PASS, NA, SKIPPED)), None)
    if bad is None:
        text = ""
    else:
        who = "" if bad.subject == backend else f"[{bad.subject}] "
        if bad.first_fail is not None:
            text = who + bad.first_fail.short()
        else:
            text = who + (bad.message.splitlines()[0][:120] if bad.message else bad.status)
    return status, worst, text


def _fmt_rel(v: float | None) -> str:
    return "" if v is None else f"{v:.1e}"


def summary(ccs: Sequence[CaseComparison]) -> dict[str, Any]:
    """Worst relative error per (check, subject) over all cases, and the counts by status."""
    worst: dict[str, dict[str, float | None]] = {}
    counts: dict[str, int] = {}
    for cc in ccs:
        for c in cc.cells:
            counts[c.status] = counts.get(c.status, 0) + 1
            if c.worst_rel is None:
                continue
            key = f"{c.subject} vs {c.against}" if c.against in ("reference", "spec",
                                                                  "canonical", "cpu") \
                else c.subject
            d = worst.setdefault(c.check, {})
            d[key] = max(d.get(key) or 0.0, c.worst_rel)
    return {"worst_rel": worst, "counts": counts}


def exit_status(ccs: Sequence[CaseComparison], outcomes: dict[str, dict[str, Any]] | None = None,
                *, require_all: bool = False) -> int:
    for cc in ccs:
        for c in cc.cells:
            if c.status in FAILING or (require_all and c.status in INCOMPLETE):
                return 1
    for phases in (outcomes or {}).values():
        for o in phases.values():
            if o.status in ("crashed", "timeout") or (require_all and o.status == "missing"):
                return 1
    return 0


# ---------------------------------------------------------------------- terminal
def render_terminal(ccs: Sequence[CaseComparison], backends: Sequence[str],
                    outcomes: dict[str, dict[str, Any]], console: Any = None,
                    seconds: float | None = None, run_dir: Path | None = None,
                    code: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for name in backends:
        for phase, o in outcomes.get(name, {}).items():
            if o.status != "ok":
                console.print(f"[{_STYLE.get(o.status, 'red')}]{name} ({phase}): {o.status}"
                              f"[/] -- {o.reason}")
                if o.status in ("crashed", "timeout") and o.log_tail:
                    console.print("[dim]" + _escape(o.log_tail[-1500:]) + "[/dim]")
    for cc in ccs:
        checks = _checks_in(cc)
        t = Table(title=f"{_escape(cc.case.describe())}", title_justify="left",
                  show_lines=True)
        t.add_column("backend", style="bold")
        for c in checks:
            t.add_column(c)
        for b in backends:
            row = [b]
            for c in checks:
                st, rel, text = backend_cell(cc, b, c)
                style = _STYLE.get(st, "")
                s = f"[{style}]{st}[/]" if style else st
                s += f" {_fmt_rel(rel)}" if rel is not None and c != "copy" else ""
                if text:
                    s += f"\n[dim]{_escape(text[:90])}[/dim]"
                row.append(s)
            t.add_row(*row)
        console.print(t)
        pairs = sorted({c.subject for c in cc.cells if "~" in c.subject},
                       key=lambda s: [backends.index(x) if x in backends else 99
                                      for x in s.split("~")])
        chains = [c for c in cc.cells if "->" in c.subject]
        if pairs or chains:
            pt = Table(title=f"{cc.case.name}: backend pairs", title_justify="left")
            pt.add_column("pair", style="bold")
            pcs = [c for c in ("eval", "train", "grad", "trajectory") if cc.case.has(c)]
            for c in pcs:
                pt.add_column(c)
            if chains:
                pt.add_column("copy A->B / B->A")
            for p in pairs:
                row = [p]
                for c in pcs:
                    cell = next((x for x in cc.cells if x.subject == p and x.check == c), None)
                    row.append(_cell_text(cell))
                if chains:
                    a, b = p.split("~")
                    row.append(" / ".join(_cell_text(next(
                        (x for x in chains if x.subject == s), None), rel=False)
                        for s in (f"{a}->{b}", f"{b}->{a}")))
                pt.add_row(*row)
            console.print(pt)
        for b, notes in cc.notes.items():
            for n in sorted(set(notes))[:5]:
                console.print(f"[yellow]contract: {b}: {_escape(n)}[/yellow]")
    failures = [c for cc in ccs for c in cc.cells
                if c.status not in (PASS, NA, SKIPPED) and not explained(cc, c)]
    if failures:
        console.print("[bold]Not passed:[/bold]")
        for c in failures[:40]:
            ff = c.first_fail
            what = ff.short() if ff is not None else (c.message.splitlines()[0][:200]
                                                      if c.message else "")
            console.print(f"  [{_STYLE.get(c.status, '')}]{c.status}[/] {c.case} {c.check} "
                          f"{c.subject} vs {c.against}: {_escape(what)}")
        if len(failures) > 40:
            console.print(f"  ... and {len(failures) - 40} more (report.json)")
    console.print(f"[dim]{RUNNING_NOTE}[/dim]")
    tail = f"wall time {seconds:.0f} s" if seconds is not None else ""
    if run_dir is not None:
        tail += f"; reports in {run_dir}/report.md and report.json"
    if code is not None:
        tail += f"; exit status {code}"
    console.print(tail)


def _cell_text(cell: Cell | None, rel: bool = True) -> str:
    if cell is None:
        return ""
    style = _STYLE.get(cell.status, "")
    s = f"[{style}]{cell.status}[/]" if style else cell.status
    if rel and cell.worst_rel is not None:
        s += f" {_fmt_rel(cell.worst_rel)}"
    ff = cell.first_fail
    if cell.status not in (PASS, NA, SKIPPED) and ff is not None:
        s += f"\n[dim]{_escape(ff.short()[:80])}[/dim]"
    return s


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


# ---------------------------------------------------------------------- files
def write_reports(run_dir: Path, ccs: Sequence[CaseComparison], backends: Sequence[str],
                  outcomes: dict[str, dict[str, Any]], *, pythons: dict[str, str] | None = None,
                  seconds: float | None = None, code: int = 0,
                  argv: Sequence[str] | None = None) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    data = {
        "format": "densenet_multi.parity/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(argv or []),
        "exit_status": code,
        "wall_time_s": seconds,
        "backends": {
            b: {"python": (pythons or {}).get(b, ""),
                "workers": {ph: o.to_dict() for ph, o in outcomes.get(b, {}).items()}}
            for b in backends
        },
        "tolerances": {f"{c}/{d}": t for (c, d), t in TOLERANCES.items()},
        "checks": CHECK_DOC,
        "running_stats_note": RUNNING_NOTE,
        "summary": summary(ccs),
        "cases": [
            {
                "case": cc.case.to_dict(),
                "folder": str(cc.case_dir),
                "contract_notes": {b: sorted(set(n)) for b, n in cc.notes.items() if n},
                "versions": cc.versions,
                "table": {b: {c: dict(zip(("status", "worst_rel", "first_fail"),
                                          backend_cell(cc, b, c), strict=True))
                              for c in _checks_in(cc)} for b in backends},
                "comparisons": [c.to_dict() for c in cc.cells],
            }
            for cc in ccs
        ],
    }
    # Both texts first, then each file atomically: a failure (a full disk) leaves the
    # previous reports or none, never a truncated one.
    texts = {run_dir / "report.json": json.dumps(data, indent=1, default=str),
             run_dir / "report.md": markdown(ccs, backends, outcomes, seconds=seconds, code=code)}
    for path, text in texts.items():
        _write_atomic(path, text)
    jpath, mpath = texts
    return jpath, mpath


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def markdown(ccs: Sequence[CaseComparison], backends: Sequence[str],
             outcomes: dict[str, dict[str, Any]], *, seconds: float | None = None,
             code: int = 0) -> str:
    L = ["# densenet_multi parity report", ""]
    L.append(f"Exit status **{code}**" + (f", wall time {seconds:.0f} s." if seconds else "."))
    L.append("")
    L.append("Errors are `max|a - b| / max|b|` per tensor (b: the reference or the second "
             "backend of a pair); tolerances from `densenet_multi.testing.TOLERANCES` "
             "(float32: " + ", ".join(f"{c} {t:g}" for (c, d), t in TOLERANCES.items()
                                      if d == "float32") + ").")
    L.append("")
    L.append("## Backends")
    L.append("")
    L.append("| backend | worker | seconds | versions | note |")
    L.append("|---|---|---|---|---|")
    for b in backends:
        o = outcomes.get(b, {}).get("main")
        if o is None:
            continue
        v = ", ".join(f"{k} {x}" for k, x in o.versions.items())
        L.append(f"| {b} | {o.status} | {o.seconds:.0f} | {v} | {_md(o.reason)} |")
    L.append("")
    for cc in ccs:
        checks = _checks_in(cc)
        L.append(f"## {cc.case.name}")
        L.append("")
        L.append(f"`{cc.case.describe()}`")
        L.append("")
        L.append("| backend | " + " | ".join(checks) + " |")
        L.append("|---" * (len(checks) + 1) + "|")
        for b in backends:
            row = []
            for c in checks:
                st, rel, text = backend_cell(cc, b, c)
                s = f"**{st}**" if st not in (PASS, NA, SKIPPED) else st
                if rel is not None and c != "copy":
                    s += f" {rel:.1e}"
                if text:
                    s += f"<br>{_md(text)}"
                row.append(s)
            L.append(f"| {b} | " + " | ".join(row) + " |")
        L.append("")
        pair_cells = [c for c in cc.cells
                      if ("~" in c.subject or "->" in c.subject) and c.status != NA]
        if pair_cells:
            L.append("| pair | check | status | worst rel | first failing item |")
            L.append("|---|---|---|---|---|")
            for c in pair_cells:
                ff = c.first_fail
                fail = _md(ff.short()) if ff is not None and c.status != PASS else _md(c.message)
                L.append(f"| {c.subject} | {c.check} | {c.status} | {_fmt_rel(c.worst_rel)} | "
                         f"{fail} |")
            L.append("")
        notes = {b: sorted(set(n)) for b, n in cc.notes.items() if n}
        if notes:
            L.append("Contract notes:")
            L.append("")
            for b, ns in notes.items():
                for n in ns:
                    L.append(f"- {b}: {_md(n)}")
            L.append("")
    L.append("## Worst relative error per check")
    L.append("")
    L.append("| check | subject | worst rel (all cases) |")
    L.append("|---|---|---|")
    for check, d in summary(ccs)["worst_rel"].items():
        for subject, v in d.items():
            L.append(f"| {check} | {subject} | {_fmt_rel(v)} |")
    L.append("")
    L.append(RUNNING_NOTE)
    L.append("")
    return "\n".join(L)


def _md(s: str) -> str:
    return (s or "").replace("|", "\\|").replace("\n", " ")[:300]
