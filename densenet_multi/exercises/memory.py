"""Exercise 3: how much memory does a DenseNet training step take, and what does the
memory-efficient mode save? Measured per backend.

Each configuration (backend x mode) runs in a fresh subprocess, started with
that backend's environment's interpreter (``parity.runner.resolve_python``) and
environment (``parity.runner.worker_env``), so that nothing one framework
allocated is counted against another. The subprocess (``--probe``) makes the
input batch, imports the backend, builds the network with the canonical
weights (``build(spec)`` or ``build(spec, memory_efficient=True)``) and takes
one training step through the backend contract (``train_steps``: forward,
backward, SGD update). It reports the process's peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) after the import, after the build and
after the step; the step's own cost is the last minus the build.

This is host memory on the CPU (the chapter asks about GPU memory; the
allocation pattern, stored activations, is the same). The documented run,
DenseNet-121 at 224x224, batch 16, all four backends, from any env::

    python -m densenet_multi.exercises.memory --out docs/exercises
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backend import BACKENDS
from . import command_line, environment, write_json

__all__ = ["MODES", "FULL", "peak_rss_mib", "probe", "measure", "run", "merge", "main"]

MODES = ("default", "memory_efficient")
FULL = {"preset": "densenet121", "size": 224, "batch": 16, "backends": tuple(BACKENDS)}
_MARK = "EXERCISE-MEMORY "
_FRAMEWORK_MODULES = {"torch": ["torch"], "flax": ["jax", "flax"], "keras": ["keras", "tensorflow"],
                      "gluon": ["mxnet"]}


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux and macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def probe(backend: str, preset: str, size: int, batch: int, memory_efficient: bool) -> dict[str, Any]:
    """One configuration, in this process (run it in a fresh one): peak RSS after the
    input batch, after importing the backend, after the build and after one step."""
    import numpy as np

    from ..backend import SGD_DEFAULTS, load_backend
    from ..spec import get_spec

    spec = get_spec(preset)
    rng = np.random.Generator(np.random.PCG64(0))
    x = rng.standard_normal((batch, spec.in_channels, size, size)).astype(np.float32)
    labels = rng.integers(0, spec.num_classes, size=batch)
    out: dict[str, Any] = {"backend": backend, "memory_efficient": memory_efficient,
                           "rss_start_mib": round(peak_rss_mib(), 1)}
    t0 = time.perf_counter()
    mod = load_backend(backend)
    out["rss_import_mib"] = round(peak_rss_mib(), 1)
    model = mod.build(spec, seed=0, memory_efficient=memory_efficient)
    out["rss_build_mib"] = round(peak_rss_mib(), 1)
    out["build_seconds"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    (loss,) = mod.train_steps(model, [(x, labels)], **SGD_DEFAULTS)
    out["step_seconds"] = round(time.perf_counter() - t1, 2)
    out["rss_peak_mib"] = round(peak_rss_mib(), 1)
    out["step_mib"] = round(out["rss_peak_mib"] - out["rss_build_mib"], 1)
    out["loss"] = float(loss)
    out["versions"] = environment(_FRAMEWORK_MODULES.get(backend, []) + ["numpy"])
    return out


def measure(backend: str, *, preset: str, size: int, batch: int, memory_efficient: bool,
            python: str | None = None, threads: int = 2, timeout: float = 600.0,
            root: Path | None = None) -> dict[str, Any]:
    """Run :func:`probe` in a fresh subprocess of ``backend``'s environment; its result,
    or ``{"status": "failed", "reason": ...}`` with the log's tail."""
    from ..parity.runner import find_project_root, resolve_python, worker_env

    root = root or find_project_root()
    where = "--python"
    if python is None:
        python, where = resolve_python(backend, root=root)
    base = {"backend": backend, "memory_efficient": memory_efficient}
    if not python or not Path(python).exists():
        return {**base, "status": "failed",
                "reason": f"no interpreter for {backend} ({where}: {python or 'not found'})"}
    env = worker_env(backend, ["cpu"], False, root)
    n = str(threads)
    env.update({"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
                "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1",
                "MXNET_CPU_WORKER_NTHREADS": n, "CUDA_VISIBLE_DEVICES": ""})
    cmd = [python, "-m", "densenet_multi.exercises.memory", "--probe", backend, "--preset", preset,
           "--size", str(size), "--batch", str(batch)]
    if memory_efficient:
        cmd.append("--memory-efficient")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=root)
    except subprocess.TimeoutExpired:
        return {**base, "status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return {**base, "status": "failed",
                "reason": f"probe exited with {proc.returncode}:\n{tail}"}
    result = json.loads(lines[-1][len(_MARK):])
    return {**result, "status": "ok", "seconds": round(time.perf_counter() - t0, 1)}


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
    p.add_argument("--probe", choices=sorted(BACKENDS), help=argparse.SUPPRESS)
    p.add_argument("--memory-efficient", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        result = probe(args.probe, args.preset, args.size, args.batch, args.memory_efficient)
        print(_MARK + json.dumps(result), flush=True)
        return 0
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
