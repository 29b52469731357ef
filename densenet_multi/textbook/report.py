"""The textbook and the blogs under the harness: one run, one table, one figure.

:func:`generate` runs every link of every source in :mod:`.catalog` through the parity
harness in **one** run (:func:`densenet_multi.parity.runner.run_parity`, compared by
:func:`densenet_multi.parity.compare.compare_run`), each link in a worker of its
framework's environment (the interpreter
:func:`~densenet_multi.parity.runner.resolve_python` gives the framework's backend),
and writes

* ``textbook.md``: the networks as written (for each, the check and stage where it
  first diverges from the canonical network, the error and its tolerance, the
  status), then every fix-chain link (the change it adds, what that fixed, what
  diverges next), then the equivalent ``densenet-multi parity`` command;
* ``textbook.json``: the same rows, each link's per-stage eval and train errors
  against the float64 reference, the cases, the workers' times and versions;
* ``figures/textbook_stages.png``: each tab's eval error by stage against the
  canonical network, log scale, with the tolerance;
* ``textbook-cases.json``: the cases of the run, for ``densenet-multi parity
  --case-file``.

Every number comes from the comparison; nothing is typed. ``python -m
densenet_multi.textbook.report --out DIR`` does it all and prints the tables.

This module imports no framework.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import source_root, write_text_atomic
from ..guide.figures import pyplot, save_figure
from ..parity.cases import Case
from ..parity.compare import CaseComparison, Cell, compare_run
from ..parity.runner import BackendTarget, resolve_python, run_parity
from ..parity.status import Status
from ..testing import tolerance
from .catalog import CHECKS, FRAMEWORKS, Link, Source, cases, links, source

__all__ = ["TextbookRun", "command", "generate", "interpreter", "main", "render", "rows",
           "run", "stage_errors", "stages_figure"]

#: Errors of exactly 0 are drawn at this floor (a log axis has no 0) and marked.
ZERO_FLOOR = 1e-9
PASS = str(Status.PASS)


# ---------------------------------------------------------------------- the run
def interpreter(src: Source) -> str:
    """The interpreter a source's links run in: its framework's backend environment."""
    return resolve_python(src.backend)[0]


@dataclass
class TextbookRun:
    """One harness run of catalog links: the runner's result, the comparison by case
    name, which links ran, and how long the run and the comparison took (seconds)."""

    result: Any
    ccs: dict[str, CaseComparison]
    entries: list[tuple[Source, Link]]
    seconds_run: float
    seconds_compare: float


def _run_cases(entries: Sequence[tuple[Source, Link]], checks: Sequence[str] | None,
               changes: Mapping[str, Mapping[str, Any]] | None) -> list[Case]:
    wanted = list(dict.fromkeys(s.case for s, _ in entries))
    out = []
    for name, case in cases(wanted).items():
        if checks is not None:
            keep = tuple(c for c in case.checks if c in checks)
            if not keep:
                raise ValueError(f"case {name!r} keeps none of its checks {case.checks} "
                                 f"among {tuple(checks)}")
            case = case.with_(checks=keep)
        if changes and name in changes:
            case = case.with_(**changes[name])
        out.append(case)
    return out


def run(out_dir: Path, entries: Sequence[tuple[Source, Link]] | None = None, *, jobs: int = 2,
        checks: Sequence[str] | None = None,
        case_changes: Mapping[str, Mapping[str, Any]] | None = None) -> TextbookRun:
    """One harness run of ``entries`` (default: every link of the catalog) on their cases,
    in ``out_dir/textbook-run`` (replaced). ``checks`` narrows every case's checks and
    ``case_changes`` changes a case by name (a smaller input, for a quick test)."""
    entries = list(links() if entries is None else entries)
    if not entries:
        raise ValueError("no catalog entry to run: a run of nothing compares nothing")
    run_cases = _run_cases(entries, checks, case_changes)
    case_of = {c.name: c for c in run_cases}
    # the slowest workers first (JAX compiles, TensorFlow imports, DenseNet-121 at 224):
    # with `jobs` at a time, the run then ends with the quick ones
    ordered = sorted(entries, key=lambda e: _cost_rank(e[0], case_of[e[0].case]))
    backends = [BackendTarget(ln.name, ln.target) for _, ln in ordered]
    pythons = {ln.name: interpreter(s) for s, ln in entries}
    run_dir = Path(out_dir) / "textbook-run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # no worker log of an earlier run stays behind
    t0 = time.perf_counter()
    result = run_parity(run_cases, backends, run_dir, pythons=pythons, jobs=jobs)
    t1 = time.perf_counter()
    ccs = {cc.case.name: cc for cc in compare_run(result)}
    return TextbookRun(result, ccs, entries, round(t1 - t0, 1), round(time.perf_counter() - t1, 1))


def _cost_rank(src: Source, case: Case) -> int:
    rank = {"jax": 0, "tensorflow": 1}.get(src.framework, 3)
    return min(rank, 2) if case.input_size[0] * case.input_size[1] > 96 * 96 else rank


# ---------------------------------------------------------------------- reading the cells
def _cell(cc: CaseComparison, check: str, subject: str) -> Cell | None:
    return next((c for c in cc.cells if c.check == check and c.subject == subject), None)


def _num(v: float | None) -> float | None:
    return None if v is None else float(v)


def first_line(text: str, limit: int = 220) -> str:
    """The telling line of an error message (the exception's own, not a traceback's)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    told = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "^"))]
    line = told[-1] if told else (lines[0] if lines else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_summary(cell: Cell | None) -> dict[str, Any]:
    if cell is None:
        return {"status": "missing", "message": "no cell: the harness compared nothing here"}
    out: dict[str, Any] = {"status": str(cell.status), "worst_rel": _num(cell.worst_rel)}
    if cell.worst is not None:
        out["worst_item"], out["tol"] = cell.worst.item, _num(cell.worst.tol)
    ff = cell.first_fail
    if ff is not None:
        out["first_fail"] = {"item": ff.item, "status": str(ff.status), "rel": _num(ff.rel),
                             "tol": _num(ff.tol), "actual_shape": ff.actual_shape,
                             "expected_shape": ff.expected_shape, "note": ff.note}
    if cell.message:
        out["message"] = first_line(cell.message, 400)
    return out


def stage_errors(cc: CaseComparison, subject: str, check: str) -> dict[str, float | None] | None:
    """``{stage: error vs the float64 reference}`` of one link's ``check`` cell (every stage
    of the spec, then the logits); None where the link produced no values."""
    cell = _cell(cc, check, subject)
    if cell is None or not any(i.rel is not None for i in cell.items):
        return None
    names = set(cc.case.build_spec().stage_names)
    return {i.item: _num(i.rel) for i in cell.items if i.item in names}


def _divergence(checks: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The first check (in CHECKS order) that does not pass, and where it first fails."""
    for check in CHECKS:
        s = checks.get(check)
        if s is None or s["status"] == PASS:
            continue
        ff = s.get("first_fail") or {}
        return {"check": check, "status": s["status"], "item": ff.get("item"),
                "rel": ff.get("rel"), "tol": ff.get("tol"),
                "actual_shape": ff.get("actual_shape"), "expected_shape": ff.get("expected_shape"),
                "note": ff.get("note", ""), "message": s.get("message", "")}
    return None


def rows(tr: TextbookRun) -> list[dict[str, Any]]:
    """One row per link of the run, in the run's order, read from the comparison on the
    link's own case: per check its summary, the first divergence, the per-stage errors;
    and for a fix link, where the link before it in its chain diverged (what the change
    fixed; None with ``fixed_run`` False where that link was not in the run)."""
    out: list[dict[str, Any]] = []
    for src, ln in tr.entries:
        cc = tr.ccs[src.case]
        attrs = [a for a, _ in src.chain]
        row: dict[str, Any] = {
            "source": src.key, "title": src.title, "seed": src.seed, "seed_file": src.seed_file,
            "tab": src.tab, "kind": src.kind, "framework": src.framework,
            "framework_label": FRAMEWORKS[src.framework][1], "env": src.env,
            "network": src.network, "link": ln.attr, "name": ln.name, "target": ln.target,
            "change": ln.change, "case": src.case, "checks": {}, "stages": {},
            "chain_index": attrs.index(ln.attr), "chain_length": len(attrs),
        }
        for check in [c for c in CHECKS if cc.case.has(c)]:
            row["checks"][check] = _check_summary(_cell(cc, check, ln.name))
        for check in ("eval", "train"):
            if cc.case.has(check):
                row["stages"][check] = stage_errors(cc, ln.name, check)
        row["divergence"] = _divergence(row["checks"])
        row["status"] = PASS if row["divergence"] is None else row["divergence"]["status"]
        out.append(row)
    by = {(r["source"], r["link"]): r for r in out}
    for r in out:
        i = r["chain_index"]
        prev = by.get((r["source"], source(r["source"]).chain[i - 1][0])) if i else None
        r["fixed"] = None if prev is None else prev["divergence"]
        r["fixed_run"] = prev is not None
    return out


# ---------------------------------------------------------------------- the tables
def _g(v: float | None) -> str:
    return "-" if v is None else ("0" if v == 0 else f"{v:.2g}")


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def where(d: dict[str, Any] | None) -> str:
    """'eval at `stem`', 'shapes at `transition1`', 'eval: error' (no item)."""
    if d is None:
        return "nothing: passes every check"
    if d.get("item"):
        return f"{d['check']} at `{d['item']}`"
    return f"{d['check']}: {d['status']}"


def error_text(d: dict[str, Any] | None, row: dict[str, Any] | None = None) -> str:
    """The measured error and its tolerance, the shapes, or the error message."""
    if d is None:
        if row is None:
            return "-"
        worst = [(s.get("worst_rel"), s.get("worst_item"), s.get("tol"), c)
                 for c, s in row["checks"].items() if c in ("eval", "train")
                 and s.get("worst_rel") is not None]
        if not worst:
            return "-"
        rel, item, tol, check = max(worst, key=lambda t: t[0])
        return f"worst {_g(rel)} at {check} `{item}` (tol {_g(tol)})"
    if d.get("rel") is not None:
        return f"{_g(d['rel'])} (tol {_g(d.get('tol'))})"
    if d.get("expected_shape") is not None and d.get("actual_shape") != d.get("expected_shape"):
        return f"shape {tuple(d['actual_shape'] or ())}, canonical {tuple(d['expected_shape'])}"
    if d.get("note"):
        return _md(d["note"])
    return _md(first_line(d.get("message", ""), 260))


def _status_cells(row: dict[str, Any]) -> list[str]:
    return [row["checks"].get(c, {}).get("status", "-") for c in CHECKS]


def render(table_rows: Sequence[dict[str, Any]]) -> str:
    """The two markdown tables: the networks as written, then every fix-chain link."""
    head = ("| network | source | framework (env) | case | shapes | eval | train | copy | "
            "first diverges at | error (tolerance) | status |")
    lines = ["### The networks as written", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in [r for r in table_rows if r["chain_index"] == 0]:
        lines.append("| " + " | ".join([
            _md(r["title"]), _md(_source_text(r)),
            f"{_md(r['framework_label'])} (`{r['env']}`)", r["case"], *_status_cells(r),
            where(r["divergence"]), error_text(r["divergence"], r), r["status"]]) + " |")
    chained = [r for r in table_rows if r["chain_length"] > 1]
    if chained:
        head = ("| network | link | the change it adds | shapes | eval | train | copy | "
                "fixes | then first diverges at | error (tolerance) |")
        lines += ["", "### The fix chains", "", head, "|" + "---|" * (head.count("|") - 1)]
        for r in chained:
            fixed = ("-" if r["chain_index"] == 0 else where(r["fixed"]) if r["fixed_run"]
                     else "(the link before it was not run)")
            lines.append("| " + " | ".join([
                _md(r["title"]), f"`{r['link']}`", _md(r["change"]), *_status_cells(r),
                fixed, where(r["divergence"]), error_text(r["divergence"], r)]) + " |")
    return "\n".join(lines) + "\n"


def _source_text(r: dict[str, Any]) -> str:
    return f"{r['seed']} ({r['tab']} tab)" if r["tab"] else r["seed"]


def _short(path: str | Path) -> str:
    """``path`` relative to the working folder where it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def command(tr: TextbookRun, case_file: str | Path) -> str:
    """The ``densenet-multi parity`` invocation that runs the same links on the same cases
    (one ``--backends NAME=module:attr`` and one ``--python NAME=PATH`` per link)."""
    backends = ",".join(f"{ln.name}={ln.target}" for _, ln in tr.entries)
    pythons = " ".join(f"--python {ln.name}={_short(interpreter(s))}" for s, ln in tr.entries)
    return (f"densenet-multi parity --case-file {_short(case_file)} --backends {backends} "
            f"{pythons} --no-baseline --jobs 2 --out parity/runs/textbook")


# ---------------------------------------------------------------------- the figure


def _tab_series(table_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tab, the links to draw: every link of its chain that produced eval values and
    whose errors differ from the last one drawn (a momentum fix, say, changes nothing in
    eval). The first is the tab as written where its weights load, else the first link
    of its chain that runs with them."""
    out = []
    for key in dict.fromkeys(r["source"] for r in table_rows if r["kind"] == "tab"):
        chain = sorted((r for r in table_rows if r["source"] == key),
                       key=lambda r: r["chain_index"])
        drawn: list[dict[str, Any]] = []
        for r in chain:
            errs = r["stages"].get("eval")
            if errs and (not drawn or errs != drawn[-1]["stages"]["eval"]):
                drawn.append(r)
        out.append({"source": key, "title": chain[0]["title"], "as_written": chain[0],
                    "drawn": drawn})
    return out


def stages_figure(table_rows: Sequence[dict[str, Any]], stage_names: Sequence[str],
                  tol: float, path: Path) -> Path:
    """Each tab's eval error by stage against the canonical network (log scale), the
    tolerance as a line: the tab as written (or, where its weights do not load, the
    first link of its chain that runs), solid, then each later link of its chain that
    changes the eval errors, dashed. An error of exactly 0 is drawn at
    :data:`ZERO_FLOOR` as an open circle."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    xs = list(range(len(stage_names)))
    colours = ("#ee4c2c", "#2a9d8f", "#4a90d9", "#7b2cbf", "#555555")
    markers = "osD^v"
    for i, s in enumerate(_tab_series(table_rows)):
        colour, marker = colours[i % len(colours)], markers[i % len(markers)]
        if not s["drawn"]:
            ax.plot([], [], color=colour, label=f"{s['title']}: no eval values "
                                                f"({where(s['as_written']['divergence'])})")
        for j, r in enumerate(s["drawn"]):
            ys = [r["stages"]["eval"].get(n) for n in stage_names]
            plotted = [float("nan") if y is None else max(y, ZERO_FLOOR) for y in ys]
            as_written = r is s["as_written"]
            label = s["title"] + ("" if as_written else f", `{r['link']}`")
            if j == 0 and not as_written:
                label += " (as written: no eval values)"
            ax.plot(xs, plotted, color=colour, marker=marker, ms=4.5,
                    lw=1.5 if j == 0 else 1.0, ls="-" if j == 0 else "--",
                    alpha=1.0 if j == 0 else 0.75, label=label)
            zeros = [x for x, y in zip(xs, ys, strict=True) if y is not None and y <= 0]
            if zeros:
                ax.plot(zeros, [ZERO_FLOOR] * len(zeros), ls="none", marker="o", ms=9,
                        mfc="none", mec=colour)
    ax.axhline(tol, color="#c00", ls=":", lw=1.4, label=f"eval tolerance {tol:g}")
    ax.axhline(ZERO_FLOOR, color="#999", ls=":", lw=0.8,
               label=f"exactly 0, drawn at {ZERO_FLOOR:g} (open circles)")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(stage_names, rotation=35, ha="right")
    ax.set_ylabel("max|tab - reference| / max|reference|")
    ax.set_title("The d2l tabs against the canonical network, eval mode, by stage")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


# ---------------------------------------------------------------------- generate
def _versions(tr: TextbookRun) -> dict[str, str]:
    out: dict[str, str] = {}
    for cc in tr.ccs.values():
        for per in cc.versions.values():
            for k in ("torch", "mxnet", "jax", "flax", "tensorflow", "keras", "numpy"):
                if k in per:
                    out.setdefault(k, per[k])
    return out


#: The committed result of the full run (``python -m densenet_multi.textbook.report --out
#: docs/textbook``): the evidence the guide's build renders, as parity/baseline is the
#: main job's. The full run takes minutes per link group (9 minutes for the 45 links on an
#: idle 2-core machine, 14 under load); the test suite runs a subset of it (tests/parity/test_textbook.py).
EVIDENCE = source_root() / "docs" / "textbook" / "textbook.json"


def generate(out_dir: Path, *, jobs: int = 2) -> dict[str, Any]:
    """Run every catalog link through the harness (one run) and write ``textbook.json``
    (the evidence), ``textbook-cases.json``, ``textbook.md`` and
    ``figures/textbook_stages.png`` into ``out_dir``; returns what the json holds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tr = run(out_dir, jobs=jobs)
    table_rows = rows(tr)
    d2l = tr.ccs["d2l"].case
    case_file = out_dir / "textbook-cases.json"
    write_text_atomic(case_file, json.dumps([cc.case.to_dict() for cc in tr.ccs.values()],
                                            indent=1) + "\n")
    data: dict[str, Any] = {
        "cases": {n: cc.case.to_dict() for n, cc in tr.ccs.items()},
        "rows": table_rows,
        "tabs": {s["source"]: {"as_written": s["as_written"]["link"],
                               "eval": {r["link"]: r["stages"]["eval"] for r in s["drawn"]}}
                 for s in _tab_series(table_rows)},
        "stage_names": list(d2l.build_spec().stage_names),
        "tolerance": {c: tolerance(c, d2l.dtype) for c in ("eval", "train", "running")},
        "zero_floor": ZERO_FLOOR,
        "workers": {b: {ph: {"status": o.status, "seconds": o.seconds} for ph, o in per.items()}
                    for b, per in tr.result.outcomes.items()},
        "versions": _versions(tr),
        "command": command(tr, "docs/textbook/textbook-cases.json"),
        "links": len(tr.entries),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    data["seconds"] = {"harness_run": tr.seconds_run, "compare": tr.seconds_compare,
                       "total": round(time.perf_counter() - t0, 1)}
    write_text_atomic(out_dir / "textbook.json", json.dumps(data, indent=1, default=str) + "\n")
    render_evidence(out_dir / "textbook.json", out_dir)
    return data


def render_evidence(evidence: Path, out_dir: Path) -> list[Path]:
    """``textbook.md`` and ``figures/textbook_stages.png`` in ``out_dir`` from a full run's
    ``textbook.json`` (by default the committed one, :data:`EVIDENCE`). No framework, no run."""
    evidence, out_dir = Path(evidence), Path(out_dir)
    if not evidence.is_file():
        raise FileNotFoundError(f"textbook evidence {evidence} not found: run "
                                "`python -m densenet_multi.textbook.report --out docs/textbook`")
    data = json.loads(evidence.read_text(encoding="utf-8"))
    missing = [k for k in ("rows", "stage_names", "tolerance", "versions", "command", "seconds")
               if k not in data]
    if missing:
        raise ValueError(f"{evidence}: not a textbook report (no {missing})")
    figure = stages_figure(data["rows"], data["stage_names"], data["tolerance"]["eval"],
                           out_dir / "figures" / "textbook_stages.png")
    note = (f"\n*Generated by `python -m densenet_multi.textbook.report`: one parity-harness "
            f"run of {data.get('links', len(data['rows']))} links on {len(data.get('cases', {}))} "
            f"cases ({data['seconds']['total']:.0f} s"
            + (f", {data['created']}" if data.get("created") else "") + "); "
            + ", ".join(f"{k} {v}" for k, v in data["versions"].items()) + ".*\n")
    cli = ("\n??? note \"The same run with the parity CLI\"\n\n    ```bash\n    "
           + data["command"] + "\n    ```\n")
    md = write_text_atomic(out_dir / "textbook.md", render(data["rows"]) + note + cli)
    return [md, figure]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m densenet_multi.textbook.report",
        description="Run the d2l chapter's tabs and the blogs' networks (every fix-chain "
                    "link) through the parity harness, each in its framework's environment, "
                    "and write textbook.md, textbook.json and figures/textbook_stages.png.")
    p.add_argument("--out", required=True, type=Path, help="folder to write into")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only render textbook.md and the figure from a full run's textbook.json "
                        "(no harness run)")
    p.add_argument("--jobs", type=int, default=2, help="workers at a time (default: 2)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.render is not None:
        for path in render_evidence(args.render, args.out):
            print(path)
        return 0
    data = generate(args.out, jobs=args.jobs)
    print((args.out / "textbook.md").read_text())
    missing = [r["name"] for r in data["rows"] if r["status"] == str(Status.MISSING)]
    if missing:  # an incomplete table is not a result
        print(f"missing (no interpreter, or not importable): {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
