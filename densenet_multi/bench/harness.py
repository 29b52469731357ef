"""The benchmark plan and its runner: one configuration per process, one process at a time.

Each configuration (:class:`~densenet_multi.bench.probe.Config`) runs
``python -m densenet_multi.bench.probe`` in a fresh subprocess, started with its
backend's environment's interpreter (:func:`densenet_multi.parity.runner.resolve_python`)
and environment (:func:`~densenet_multi.parity.runner.worker_env`), the same
machinery as the parity workers. The PyTorch rows run in the ``torch-zoo``
environment, where torchvision is: ours and torchvision with one interpreter.

A *pair* is our network and its reference (the framework's official DenseNet;
for Flax, which has none, torchvision in eager mode) in the same mode, preset
and batch. In every round both sides of every pair run, one right after the
other, the order alternating between rounds (ours first in odd rounds), so that
a ratio never compares figures taken minutes apart. The thread settings are the
same for both sides: ``OMP_NUM_THREADS`` and friends set to ``threads`` (by
default every core; MXNet on its own would use half).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .probe import MODES, OFFICIAL, Config, official_available, parse_line

__all__ = ["Pair", "plan", "memory_plan", "probe_python", "probe_env", "run_probe", "run_pairs"]

#: the environment (tox env name) each backend's probes run in
PROBE_ENVS = {"torch": "torch-zoo", "flax": "jax", "keras": "tensorflow", "gluon": "mxnet"}
DEFAULT_TIMEOUT_S = 1200.0


@dataclass(frozen=True)
class Pair:
    """One row of the ratio table: ours, and the reference it is divided by (None: no reference)."""

    ours: Config
    reference: Config | None
    note: str = ""

    @property
    def key(self) -> str:
        c = self.ours
        eff = " memory-efficient" if c.memory_efficient else ""
        return f"{c.backend} {c.mode}{eff} {c.preset}@{c.size} b{c.batch} {c.what}"

    @property
    def reference_name(self) -> str:
        r = self.reference
        if r is None:
            return "none"
        name = {"torch": "torchvision", "keras": "keras.applications",
                "gluon": "Gluon model zoo"}.get(r.backend, r.backend)
        return f"{name} {r.mode}" if r.official else f"ours-{r.backend} {r.mode}"


def _reference(ours: Config) -> tuple[Config | None, str]:
    """The reference of a configuration of ours, and a note when it is not the official net."""
    b = ours.backend
    if OFFICIAL[b] is None:
        # Flax has no official DenseNet: the bar is PyTorch eager (torchvision)
        if official_available("torch", ours.preset, ours.size):
            return replace(ours, backend="torch", official=True, mode="eager"), \
                "no official Flax DenseNet: against torchvision eager"
        return replace(ours, backend="torch", official=False, mode="eager"), \
            "no official Flax DenseNet, no torchvision preset: against ours-torch eager"
    if official_available(b, ours.preset, ours.size):
        return replace(ours, official=True), ""
    return None, f"no official {b} net builds {ours.preset}@{ours.size}"


def plan(backends: Sequence[str], whats: Sequence[str], presets: Sequence[tuple[str, int]],
         batch: int, steps: int, warmup: int, modes: Mapping[str, Sequence[str]] | None = None,
         device: str = "cpu") -> list[Pair]:
    """Throughput pairs: every backend x mode x preset x (infer, train)."""
    pairs = []
    for b in backends:
        for mode in (modes or MODES)[b]:
            for preset, size in presets:
                for what in whats:
                    ours = Config(b, False, mode, preset, size, batch, what, False, steps, warmup,
                                  device)
                    ref, note = _reference(ours)
                    pairs.append(Pair(ours, ref, note))
    return pairs


def memory_plan(backends: Sequence[str], preset: str, size: int, batch: int, steps: int,
                warmup: int, device: str = "cpu") -> list[Pair]:
    """Memory pairs, in each backend's default mode: ours default and memory-efficient, each
    against the official net (its memory-efficient mode where it has one: torchvision)."""
    pairs = []
    for b in backends:
        for eff in (False, True):
            ours = Config(b, False, None, preset, size, batch, "memory", eff, steps, warmup, device)
            ref = None
            note = ""
            if OFFICIAL[b] is not None and official_available(b, preset, size):
                if eff and b != "torch":
                    note = f"the official {b} net has no memory-efficient mode"
                else:
                    ref = replace(ours, official=True)
            else:
                note = f"no official {b} net for {preset}@{size}"
            pairs.append(Pair(ours, ref, note))
    return pairs


# ---------------------------------------------------------------------- processes
def probe_python(backend: str, pythons: Mapping[str, str] | None = None,
                 root: Path | None = None) -> tuple[str, str]:
    """(interpreter, where it came from) for ``backend``'s probes: ``pythons[backend]``, then
    ``DENSENET_MULTI_PYTHON_<ENV>`` (e.g. ``..._TORCH_ZOO``), then ``.tox/<env>/bin/python``."""
    from ..parity.runner import find_project_root, resolve_python

    if pythons and backend in pythons:
        return pythons[backend], "--python"
    env = PROBE_ENVS[backend]
    path, where = resolve_python(env, root=root)
    if where != "this interpreter":  # found through DENSENET_MULTI_PYTHON_<ENV>
        return path, where
    root = root or find_project_root()
    if root is None:
        return "", "no tox.ini found upward from the current directory"
    bindir, exe = ("Scripts", "python.exe") if os.name == "nt" else ("bin", "python")
    return str(root / ".tox" / env / bindir / exe), f"tox env {env!r}"


def probe_env(backend: str, threads: int | None, root: Path | None = None,
              device: str = "cpu") -> dict[str, str]:
    """The parity workers' environment for ``backend`` on ``device`` ("cpu": GPUs hidden;
    "cuda": the frameworks' default precision, TF32 allowed, on both sides alike), with
    ``threads`` threads in every pool (None: the frameworks' own defaults)."""
    from ..parity.runner import worker_env

    env = worker_env(backend, ["cpu", device] if device != "cpu" else ["cpu"], True, root)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if threads is not None:
        n = str(threads)
        env.update({"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
                    "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1",
                    "MXNET_CPU_WORKER_NTHREADS": "1"})
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_probe(cfg: Config, *, python: str, env: Mapping[str, str], cwd: Path | None = None,
              timeout: float = DEFAULT_TIMEOUT_S, module: str = "densenet_multi.bench.probe",
              extra_argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run one configuration in a fresh process; its probe record, or a failed record
    (``status: "failed"`` and ``reason``, with the log's tail) when the interpreter is
    missing, the process fails, runs past ``timeout`` or prints no probe line."""
    base = {"backend": cfg.backend, "net": cfg.net, "mode": cfg.mode, "preset": cfg.preset,
            "size": cfg.size, "batch": cfg.batch, "what": cfg.what,
            "memory_efficient": cfg.memory_efficient, "python": python}
    if not python or not Path(python).exists():
        return {**base, "status": "failed", "reason": f"no interpreter for {cfg.backend}: "
                f"{python or 'not found'} does not exist"}
    cmd = [python, "-m", module, *extra_argv, *cfg.argv()]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=timeout,
                              cwd=cwd)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {**base, "status": "failed", "reason": f"timed out after {timeout:.0f} s",
                "log_tail": _tail(out)}
    seconds = round(time.perf_counter() - t0, 1)
    record = parse_line(proc.stdout)
    if proc.returncode != 0 or record is None or record.get("status") != "ok":
        reason = (record or {}).get("reason") or f"probe exited with {proc.returncode}"
        return {**base, "status": "failed", "reason": reason, "returncode": proc.returncode,
                "log_tail": _tail(proc.stdout + proc.stderr), "seconds": seconds}
    return {**record, "python": python, "seconds": seconds}


def run_pairs(pairs: Sequence[Pair], *, rounds: int, threads: int | None,
              pythons: Mapping[str, str] | None = None, root: Path | None = None,
              timeout: float = DEFAULT_TIMEOUT_S,
              log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every pair, ``rounds`` times, both sides back to back (ours first in odd rounds);
    one row per pair with a ``rounds`` list of ``{"ours": record, "reference": record}``."""
    from ..parity.runner import find_project_root

    root = root or find_project_root()
    rows = [{"key": p.key, "backend": p.ours.backend, "mode": p.ours.mode, "preset": p.ours.preset,
             "size": p.ours.size, "batch": p.ours.batch, "what": p.ours.what,
             "memory_efficient": p.ours.memory_efficient, "reference": p.reference_name,
             "note": p.note, "rounds": []} for p in pairs]
    envs: dict[str, dict[str, str]] = {}
    for r in range(1, rounds + 1):
        for pair, row in zip(pairs, rows, strict=True):
            sides = [("ours", pair.ours)] + ([("reference", pair.reference)] if pair.reference else [])
            if r % 2 == 0:
                sides.reverse()
            records: dict[str, Any] = {"round": r, "order": [s for s, _ in sides]}
            for side, cfg in sides:
                python, _ = probe_python(cfg.backend, pythons, root)
                if cfg.backend not in envs:
                    envs[cfg.backend] = probe_env(cfg.backend, threads, root, cfg.device)
                rec = run_probe(cfg, python=python, env=envs[cfg.backend], cwd=root, timeout=timeout)
                records[side] = rec
                if log is not None:
                    log(_describe(r, side, cfg, rec))
            row["rounds"].append(records)
    return rows


def _describe(r: int, side: str, cfg: Config, rec: Mapping[str, Any]) -> str:
    head = f"round {r} {side:9s} {cfg.backend}/{cfg.net} {cfg.mode} {cfg.preset}@{cfg.size} " \
           f"b{cfg.batch} {cfg.what}{' (memory-efficient)' if cfg.memory_efficient else ''}"
    if rec["status"] != "ok":
        return f"{head}: FAILED {rec['reason'].splitlines()[0] if rec['reason'] else ''}"
    text = f"{head}: {rec['ips_median']:.2f} img/s (first step {rec['first_step_seconds']:.1f} s)"
    if cfg.what == "memory":
        text += f", peak RSS {rec['rss_peak_mib']:.0f} MiB (build {rec['rss_build_mib']:.0f})"
    return text

