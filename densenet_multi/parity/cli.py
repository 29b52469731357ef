"""``densenet-multi parity``: run the cross-framework parity report.

Examples::

    densenet-multi parity                               # all shipped cases, all four backends
    densenet-multi parity --backends torch,gluon --cases d2l
    densenet-multi parity --device cuda                 # also GPU vs CPU (torch, flax)
    densenet-multi parity --python torch=/opt/venv/bin/python --require-all
    densenet-multi parity --baseline parity/baseline/report.json.gz   # the default, when present
    densenet-multi parity --onnx --cases d2l,densenet121 --checks shapes,eval   # + exported graphs
    densenet-multi parity --checks data-parallel --backends torch   # 2-replica training (own options)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backend import BACKENDS
from ..spec import InputError, SpecError
from .baseline import DEFAULT_BASELINE, load_baseline
from .cases import (
    CHECK_DOC,
    CHECKS,
    DEFAULT_CASES,
    check_unique_names,
    get_cases,
    load_case_file,
    normalize_device,
)
from .runfolder import RunFolder
from .runner import DEFAULT_TIMEOUT_S, find_project_root, parse_backends, parse_pythons, run_parity

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    checks = "\n".join(f"  {c:<11} {d}" for c, d in CHECK_DOC.items())
    cases = "\n".join(f"  {c.describe()}" for c in DEFAULT_CASES)
    p = argparse.ArgumentParser(
        prog="densenet-multi parity",
        description=__doc__ + f"\nchecks:\n{checks}\n\nshipped cases:\n{cases}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated backends (default: all four); NAME=module:attr or "
                        "NAME=file.py:attr runs any module offering the backend contract")
    p.add_argument("--onnx", action="store_true",
                   help="also run each of the four backends' exported ONNX graph in onnxruntime "
                        "(onnx-torch, ...; inference only: use with --checks shapes,eval; "
                        "see docs/onnx.md)")
    p.add_argument("--cases", default="", help="comma-separated shipped cases (default: all)")
    p.add_argument("--case-file", help="JSON file with a list of cases (see docs/parity.md)")
    p.add_argument("--checks", default="", help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="override every case's input size")
    p.add_argument("--batch", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="K, the trajectory's SGD steps")
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--device", default=None,
                   help="cpu (default) or cuda / gpu: also run the backends that can on the GPU "
                        "and compare with their CPU results")
    p.add_argument("--allow-tf32", action="store_true",
                   help="leave TF32 / reduced-precision GPU matmuls on (off by default)")
    p.add_argument("--python", action="append", default=[], metavar="NAME=PATH",
                   help="interpreter for a backend (default: .tox/<env>/bin/python; or env var "
                        "DENSENET_MULTI_PYTHON_<NAME>)")
    p.add_argument("--out", default="parity/runs/latest", help="run folder (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds per worker (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1,
                   help="workers to run at a time, each with its share of the cores; a backend "
                        "that took most of the baseline run's time is split over several "
                        "(default: %(default)s)")
    p.add_argument("--require-all", action="store_true",
                   help="pass only if every requested item was decided and passed: a missing "
                        "backend, an unsupported or skipped check, an ill-conditioned, unpaired "
                        "or not available item, or a regression against the baseline fails")
    p.add_argument("--baseline", metavar="PATH",
                   help=f"compare every item's error with the same item's in this earlier run's "
                        f"report.json (default: {DEFAULT_BASELINE} when it exists)")
    p.add_argument("--no-baseline", action="store_true", help="no baseline comparison")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list", action="store_true", help="list the shipped cases and exit")
    return p


def _cases(args: argparse.Namespace) -> list:
    """The cases to run: shipped or from --case-file, with the command line's changes."""
    cases = load_case_file(args.case_file) if args.case_file else get_cases(
        [c for c in args.cases.split(",") if c])
    changes: dict = {f: getattr(args, f) for f in ("batch", "seed", "steps", "dtype")
                     if getattr(args, f) is not None}
    if args.input_size:
        changes["input_size"] = tuple(args.input_size)
    if args.checks:
        changes["checks"] = tuple(c for c in args.checks.split(",") if c)
    if args.device:
        changes["device"] = normalize_device(args.device)
    cases = [c.with_(**changes) for c in cases] if changes else cases
    if args.device and normalize_device(args.device) == "cuda":
        cases = [c.with_(checks=tuple(dict.fromkeys((*c.checks, "device")))) for c in cases]
    if not cases:
        raise ValueError("no cases to run: a run of no case would compare nothing")
    check_unique_names(cases)
    return cases


def _baseline_path(args: argparse.Namespace) -> Path | None:
    """--baseline PATH; by default the committed baseline when there is one; --no-baseline: none."""
    if args.no_baseline:
        return None
    if args.baseline:
        return Path(args.baseline)
    root = find_project_root()
    for base in (Path.cwd(), root):
        if base is not None and (base / DEFAULT_BASELINE).is_file():
            return base / DEFAULT_BASELINE
    return None


def _worker_seconds(baseline: dict | None) -> dict[str, float]:
    """Each backend's main-phase worker seconds in the ``baseline`` run: what this run's
    workers are planned with (:func:`.runner.plan_workers`)."""
    out = {}
    for b, info in ((baseline or {}).get("backends") or {}).items():
        try:
            out[b] = float(info["workers"]["main"]["seconds"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _run(args: argparse.Namespace, cases: list, backends: list, pythons: dict, console,
         baseline: dict | None = None) -> Any:
    kw = dict(pythons=pythons, allow_tf32=args.allow_tf32, timeout=args.timeout, jobs=args.jobs,
              expected_seconds=_worker_seconds(baseline))
    if args.no_progress:
        return run_parity(cases, backends, Path(args.out), **kw)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        return run_parity(cases, backends, Path(args.out), progress=progress, **kw)


def _against_baseline(baseline: dict | None, report: dict, cases: list, backends: list) -> Any:
    """This run's report compared with the ``baseline`` report (None: no comparison)."""
    if baseline is None:
        return None
    from .baseline import compare_with_baseline

    return compare_with_baseline(report, baseline, cases=[c.name for c in cases],
                                 checks={k for c in cases for k in c.checks}, backends=backends)


def _without_data_parallel(argv: list[str]) -> list[str] | None:
    """``argv`` less ``--checks data-parallel`` when that is the check asked for, else None."""
    for i, a in enumerate(argv):
        if a == "--checks=data-parallel":
            return argv[:i] + argv[i + 1:]
        if a == "--checks" and argv[i + 1:i + 2] == ["data-parallel"]:
            return argv[:i] + argv[i + 2:]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    argv = list(sys.argv[1:] if argv is None else argv)
    rest = _without_data_parallel(argv)
    if rest is not None:  # `--checks data-parallel`: its own runner and options
        from . import data_parallel

        return data_parallel.main(rest)
    args = build_parser().parse_args(argv)
    console = Console()
    if args.list:
        for c in DEFAULT_CASES:
            console.print(f"{c.describe()}; checks {', '.join(c.checks)}; K={c.steps}")
        return 0
    try:
        cases = _cases(args)
        backends = parse_backends([args.backends] + (
            [f"onnx-{b}" for b in args.backends.split(",") if b in BACKENDS] if args.onnx else []))
        pythons = parse_pythons(args.python)
        baseline_path = _baseline_path(args)
        # a broken baseline is a usage error, found before any work
        baseline = None if baseline_path is None else load_baseline(baseline_path)
    except (ValueError, SpecError, InputError, OSError) as e:
        console.print(f"densenet-multi parity: error: {e}", style="red", markup=False)
        return EXIT_USAGE
    if baseline_path is None and not args.no_baseline:
        console.print(f"no baseline: {DEFAULT_BASELINE} not found, so no regression check "
                      "(commit a baseline run, or pass --baseline PATH)", style="yellow",
                      markup=False)
    t0 = time.perf_counter()
    result = _run(args, cases, backends, pythons, console, baseline)
    from .compare import compare_run
    from .report import baseline_fields, exit_status, render_terminal, write_reports

    ccs = compare_run(result, jobs=args.jobs)
    names = [b.name for b in backends]
    cmp = _against_baseline(baseline, baseline_fields(ccs, result.outcomes, names), cases, names)
    code = exit_status(ccs, result.outcomes, require_all=args.require_all, baseline=cmp)
    seconds = time.perf_counter() - t0
    write_reports(result.run_dir, ccs, names, result.outcomes, pythons=result.pythons,
                  seconds=seconds, code=code, argv=argv, require_all=args.require_all,
                  baseline=cmp, baseline_source=None if baseline_path is None
                  else str(baseline_path))
    RunFolder(result.run_dir).drop_copies()
    render_terminal(ccs, names, result.outcomes, console=console, seconds=seconds,
                    run_dir=result.run_dir, code=code, baseline=cmp)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
