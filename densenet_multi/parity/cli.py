"""``densenet-multi parity``: run the cross-framework parity report.

Examples::

    densenet-multi parity                               # all shipped cases, all four backends
    densenet-multi parity --backends torch,gluon --cases d2l
    densenet-multi parity --device cuda                 # also GPU vs CPU (torch, flax)
    densenet-multi parity --python torch=/opt/venv/bin/python --require-all
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..backend import BACKENDS
from ..spec import InputError, SpecError
from .cases import CHECK_DOC, CHECKS, DEFAULT_CASES, get_cases, load_case_file, normalize_device
from .runner import DEFAULT_TIMEOUT_S, parse_backends, parse_pythons, run_parity

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
    p.add_argument("--out", default="parity-runs/latest", help="run folder (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds per worker (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1,
                   help="workers to run at a time (default: %(default)s)")
    p.add_argument("--require-all", action="store_true",
                   help="exit non-zero if a backend is missing or a check unsupported")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list", action="store_true", help="list the shipped cases and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console()
    if args.list:
        for c in DEFAULT_CASES:
            console.print(f"{c.describe()}; checks {', '.join(c.checks)}; K={c.steps}")
        return 0
    try:
        cases = load_case_file(args.case_file) if args.case_file else get_cases(
            [c for c in args.cases.split(",") if c])
        changes: dict = {}
        for f in ("batch", "seed", "steps", "dtype"):
            if getattr(args, f) is not None:
                changes[f] = getattr(args, f)
        if args.input_size:
            changes["input_size"] = tuple(args.input_size)
        if args.checks:
            changes["checks"] = tuple(c for c in args.checks.split(",") if c)
        if args.device:
            changes["device"] = normalize_device(args.device)
        if changes:
            cases = [c.with_(**changes) for c in cases]
        if args.device and normalize_device(args.device) == "cuda":
            cases = [c.with_(checks=tuple(dict.fromkeys((*c.checks, "device")))) for c in cases]
        backends = parse_backends([args.backends])
        pythons = parse_pythons(args.python)
    except (ValueError, SpecError, InputError, OSError) as e:
        console.print(f"densenet-multi parity: error: {e}", style="red", markup=False)
        return EXIT_USAGE

    t0 = time.perf_counter()
    out = Path(args.out)
    if args.no_progress:
        result = run_parity(cases, backends, out, pythons=pythons, allow_tf32=args.allow_tf32,
                            timeout=args.timeout, jobs=args.jobs)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            result = run_parity(cases, backends, out, pythons=pythons,
                                allow_tf32=args.allow_tf32, timeout=args.timeout,
                                progress=progress, jobs=args.jobs)
    from .compare import compare_run
    from .report import exit_status, render_terminal, write_reports

    ccs = compare_run(result)
    code = exit_status(ccs, result.outcomes, require_all=args.require_all)
    seconds = time.perf_counter() - t0
    names = [b.name for b in backends]
    write_reports(result.run_dir, ccs, names, result.outcomes, pythons=result.pythons,
                  seconds=seconds, code=code, argv=argv)
    _drop_copy_files(result.run_dir)
    render_terminal(ccs, names, result.outcomes, console=console, seconds=seconds,
                    run_dir=result.run_dir, code=code)
    return code


def _drop_copy_files(run_dir: Path) -> None:
    """The second-phase copies are compared already; they'd be most of the folder's size."""
    for f in run_dir.glob("*/*/copy_from_*.npz"):
        f.unlink()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
