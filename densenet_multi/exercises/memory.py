"""Exercise 3: how much memory does a DenseNet training step take, and what does the
memory-efficient mode save? Measured per backend.

Each configuration (backend x mode) runs in a fresh subprocess, started with
that backend's environment's interpreter (``parity.runner.resolve_python``) and
environment (``parity.runner.worker_env``), so that nothing one framework
allocated is counted against another. The subprocess is the benchmark's
memory probe (``python -m densenet_multi.bench.probe --what memory``, run by
``bench.harness.run_probe``: one implementation for both): it makes the input
batch, imports the framework, builds the network with the canonical weights
(``build(spec)`` or ``build(spec, memory_efficient=True)``) and takes the
framework's idiomatic training step (forward, backward, SGD-with-momentum
update) twice. It reports the process's peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) after the import, after the build and
after the steps; the step's own cost is the last minus the build.

This is host memory on the CPU (the chapter asks about GPU memory; the
allocation pattern, stored activations, is the same). The documented run,
DenseNet-121 at 224x224, batch 16, all four backends, from any env::

    python -m densenet_multi.exercises.memory --out docs/exercises
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backend import BACKENDS
from ..bench.probe import Config, peak_rss_mib
from . import command_line, environment, write_json

__all__ = ["MODES", "FULL", "peak_rss_mib", "probe", "measure", "run", "merge", "main"]

MODES = ("default", "memory_efficient")
FULL = {"preset": "densenet121", "size": 224, "batch": 16, "backends": tuple(BACKENDS)}


def _config(backend: str, preset: str, size: int, batch: int, memory_efficient: bool) -> Config:
    # the benchmark's memory probe: the first training step, then one more (steps=1)
    return Config(backend, preset=preset, size=size, batch=batch, what="memory",
                  memory_efficient=memory_efficient, steps=1, warmup=0)


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    """The exercise's row from a benchmark probe record (``densenet_multi.bench.probe``)."""
    keep = ("backend", "memory_efficient", "rss_start_mib", "rss_import_mib", "rss_build_mib",
            "build_seconds", "rss_peak_mib", "step_mib", "loss", "versions")
    return {**{k: record[k] for k in keep}, "step_seconds": record["first_step_seconds"]}


def probe(backend: str, preset: str, size: int, batch: int, memory_efficient: bool) -> dict[str, Any]:
    """One configuration, in this process (run it in a fresh one): the benchmark's memory
    probe (:func:`densenet_multi.bench.probe.measure`), peak RSS after the input batch,
    after importing the backend, after the build and after the training steps."""
    from ..bench.probe import measure as bench_measure

    return _row(bench_measure(_config(backend, preset, size, batch, memory_efficient)))


def measure(backend: str, *, preset: str, size: int, batch: int, memory_efficient: bool,
            python: str | None = None, threads: int = 2, timeout: float = 600.0,
            root: Path | None = None) -> dict[str, Any]:
    """Run :func:`probe` in a fresh subprocess of ``backend``'s environment (the benchmark's
    runner, :func:`densenet_multi.bench.harness.run_probe`); its result, or
    ``{"status": "failed", "reason": ...}`` with the log's tail."""
    from ..bench.harness import probe_env, run_probe
    from ..parity.runner import find_project_root, resolve_python

    root = root or find_project_root()
    if python is None:
        python, _ = resolve_python(backend, root=root)
    cfg = _config(backend, preset, size, batch, memory_efficient)
    record = run_probe(cfg, python=python, env=probe_env(backend, threads, root), cwd=root,
                       timeout=timeout)
    if record["status"] != "ok":
        reason = record["reason"] + (f"\n{record['log_tail']}" if record.get("log_tail") else "")
        return {"backend": backend, "memory_efficient": memory_efficient, "status": "failed",
                "reason": reason}
    return {**_row(record), "status": "ok", "seconds": record["seconds"]}


def run(*, backends: Sequence[str], preset: str, size: int, batch: int, threads: int = 2,
        pythons: Mapping[str, str] | None = None, log: Any = print) -> dict[str, Any]:
    """Every backend in both modes, one fresh subprocess each."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"unknown or no backend(s) {unknown}; known: {sorted(BACKENDS)}")
    t0 = time.perf_counter()
    rows = []
    for backend in backends:
        for mode in MODES:
            row = measure(backend, preset=preset, size=size, batch=batch,
                          memory_efficient=(mode == "memory_efficient"),
                          python=(pythons or {}).get(backend), threads=threads)
            rows.append(row)
            if log is not None:
                if row["status"] == "ok":
                    log(f"{backend:6s} {mode:16s} import {row['rss_import_mib']:7.1f}  build "
                        f"{row['rss_build_mib']:7.1f}  peak {row['rss_peak_mib']:7.1f} MiB  "
                        f"(step +{row['step_mib']:.1f} MiB, {row['step_seconds']} s)")
                else:
                    log(f"{backend:6s} {mode:16s} FAILED: {row['reason']}")
    return {"exercise": "memory", "preset": preset, "size": size, "batch": batch,
            "threads": threads, "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
            "environment": environment()}


def merge(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """``result`` plus the rows of other backends from an earlier run of the same
    configuration in ``path`` (so the backends can be measured one command at a time);
    a different configuration, or no earlier file, is replaced."""
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return result
    same = all(old.get(k) == result[k] for k in ("exercise", "preset", "size", "batch", "threads"))
    if not same or not isinstance(old.get("rows"), list):
        return result
    ran = {r["backend"] for r in result["rows"]}
    rows = [r for r in old["rows"] if isinstance(r, dict) and r.get("backend") not in ran]
    rows += result["rows"]
    order = list(BACKENDS)
    rows.sort(key=lambda r: (order.index(r["backend"]) if r["backend"] in order else len(order),
                             bool(r.get("memory_efficient"))))
    commands = list(dict.fromkeys(r.get("command", "?") for r in rows))
    seconds = sum(r.get("seconds", 0.0) for r in rows if r.get("status") == "ok")
    return {**result, "rows": rows, "command": "; ".join(commands), "seconds": round(seconds, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.exercises.memory",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder for memory.json")
    p.add_argument("--backends", nargs="+", default=list(FULL["backends"]), choices=sorted(BACKENDS))
    p.add_argument("--preset", default=FULL["preset"])
    p.add_argument("--size", type=int, default=FULL["size"])
    p.add_argument("--batch", type=int, default=FULL["batch"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.out is None:
        p.error("--out is required")
    result = run(backends=args.backends, preset=args.preset, size=args.size, batch=args.batch,
                 threads=args.threads)
    result["command"] = command_line("memory", argv)
    for row in result["rows"]:
        row["command"] = result["command"]
    result = merge(result, args.out / "memory.json")
    path = write_json(result, args.out / "memory.json")
    failed = [f"{r['backend']}/{'efficient' if r['memory_efficient'] else 'default'}"
              for r in result["rows"] if r["status"] != "ok"]
    print(f"wrote {path} ({result['seconds']} s)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
