"""The cross-environment runner: writes the cases to a run folder, runs one worker per backend.

Frameworks don't share one interpreter (MXNet 1.9 needs numpy < 1.24), so each
backend runs in a worker subprocess started with *its* environment's
interpreter. The harness process never imports a framework: it writes the
run folder (:mod:`.runfolder`), has the float64 NumPy reference
(:mod:`.oracle`) computed in a background process of its own while the
workers run, and reads back canonical results. This module only manages
those processes.

Which interpreter runs backend ``B`` (first match wins):

1. ``--python B=/path/to/python`` (``pythons`` argument);
2. the environment variable ``DENSENET_MULTI_PYTHON_<B>`` (upper case);
3. ``<project root>/.tox/<env>/bin/python`` with ``env`` from ``backend.BACKENDS``
   (for ``onnx-B``, an exported graph in onnxruntime, B's env: :func:`env_backend`),
   the project root being the folder holding ``tox.ini``, searched upward from
   the current directory, then from this package;
4. for a backend that is not one of the four (the tests' fakes): ``sys.executable``.

A missing interpreter, or a worker that can't import its backend, makes that
backend MISSING (with the reason); a worker that exits non-zero or runs past
the timeout is CRASHED / TIMEOUT with the tail of its log. The others still run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backend import BACKENDS
from .cases import Case, check_unique_names, make_inputs, make_weights
from .oracle import reference_job
from .runfolder import EXIT_MISSING, RunFolder

__all__ = [
    "BackendTarget",
    "RunResult",
    "WorkerOutcome",
    "find_project_root",
    "parse_backends",
    "prepare_run",
    "resolve_python",
    "run_parity",
]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]

#: Environment a backend's tox env sets (tox.ini set_env), so that a worker
#: started by the harness sees what `tox -e <env>` would.
BACKEND_ENV: dict[str, dict[str, str]] = {
    "flax": {"JAX_PLATFORMS": "cpu"},
    "keras": {"KERAS_BACKEND": "tensorflow"},
}
COMMON_ENV = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "0",
}
DEFAULT_TIMEOUT_S = 1800.0
#: The variables that size a worker's compute thread pools (OpenMP: PyTorch, MXNet;
#: the BLAS libraries numpy links; TensorFlow's intra- and inter-op pools). XLA's
#: CPU pool has no variable: its flag is added to XLA_FLAGS (:func:`thread_env`).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
#: The module whose attribute ``B`` runs backend B's exported ONNX graph (``onnx-B``).
ONNX_TARGETS = "densenet_multi.export.ort_backend"


@dataclass(frozen=True)
class BackendTarget:
    """A backend to run: a name (one of ``backend.BACKENDS`` or any label) and
    optionally a ``target`` module (``pkg.mod``, ``pkg.mod:attr``, ``file.py:attr``)."""

    name: str
    target: str | None = None


@dataclass
class WorkerOutcome:
    backend: str
    phase: str
    status: str  # "ok", "missing", "crashed", "timeout"
    reason: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    python: str = ""
    log: str = ""
    log_tail: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    #: when the backend's cases ran in several workers: each one's cases, status, seconds, log
    shards: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: Worker statuses, the worst first: the one a backend's shards report together.
_SEVERITY = ("missing", "timeout", "crashed", "ok")


def merge_outcomes(outs: Sequence[WorkerOutcome], cases: Sequence[Sequence[str]]
                   ) -> WorkerOutcome:
    """One backend's outcome from its shards' (``cases``: each shard's case folders): the
    worst status with its reason and log tail, the shards' seconds added up."""
    if len(outs) == 1:
        return outs[0]
    worst = min(outs, key=lambda o: _SEVERITY.index(o.status))
    return replace(
        worst, seconds=round(sum(o.seconds for o in outs), 2),
        reason="; ".join(dict.fromkeys(o.reason for o in outs if o.reason)),
        versions=next((o.versions for o in outs if o.versions), {}),
        shards=[{"cases": list(c), "status": o.status, "seconds": o.seconds, "log": o.log}
                for o, c in zip(outs, cases, strict=True)])


@dataclass
class RunResult:
    run_dir: Path
    cases: list[Case]
    case_dirs: dict[str, Path]
    backends: list[BackendTarget]
    outcomes: dict[str, dict[str, WorkerOutcome]]  # backend -> phase -> outcome
    pythons: dict[str, str]
    devices: list[str]
    allow_tf32: bool
    seconds: float = 0.0


# ---------------------------------------------------------------------- interpreters
def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest folder holding tox.ini, upward from ``start`` (cwd), then from the package."""
    for origin in (Path(start or Path.cwd()).resolve(), PACKAGE_ROOT):
        for d in (origin, *origin.parents):
            if (d / "tox.ini").is_file():
                return d
    return None


def env_backend(name: str) -> str:
    """The backend whose environment runs ``name``: ``B`` for ``onnx-B`` (B's exported graph
    in onnxruntime, :mod:`densenet_multi.export.ort_backend`), else ``name`` itself."""
    base = name.removeprefix("onnx-")
    return base if base != name and base in BACKENDS else name


def resolve_python(name: str, overrides: Mapping[str, str] | None = None,
                   root: Path | None = None) -> tuple[str, str]:
    """(interpreter path, where it came from) for backend ``name``; the path may not exist."""
    if overrides and name in overrides:
        return overrides[name], "--python"
    var = f"DENSENET_MULTI_PYTHON_{name.upper().replace('-', '_')}"
    if os.environ.get(var):
        return os.environ[var], var
    if env_backend(name) in BACKENDS:
        root = root or find_project_root()
        env = BACKENDS[env_backend(name)][2]
        if root is None:
            return "", f"no tox.ini found upward from {Path.cwd()} or {PACKAGE_ROOT}"
        bindir = "Scripts" if os.name == "nt" else "bin"
        exe = "python.exe" if os.name == "nt" else "python"
        return str(root / ".tox" / env / bindir / exe), f"tox env {env!r}"
    return sys.executable, "this interpreter"


def parse_backends(items: Sequence[str]) -> list[BackendTarget]:
    """``["torch", "onnx-torch", "fake=tests/parity/fake_backends.py:same_padding"]`` -> targets."""
    out = []
    for item in items:
        for part in [p for p in item.split(",") if p]:
            name, eq, target = part.partition("=")
            if not eq and env_backend(name) != name:  # onnx-B: B's exported graph in onnxruntime
                target = f"{ONNX_TARGETS}:{env_backend(name)}"
            elif not eq and name not in BACKENDS:
                raise ValueError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}, "
                                 "onnx-<backend> (its exported graph), or name=module:attr")
            out.append(BackendTarget(name, target or None))
    if not out:
        raise ValueError("no backend given: a run of no backend would compare nothing")
    names = [b.name for b in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"backend(s) given twice: {dup}")
    return out


def parse_pythons(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise ValueError(f"--python expects NAME=PATH, got {item!r}")
        out[name] = path
    return out


# ---------------------------------------------------------------------- the run folder
def prepare_run(run_dir: Path, cases: Sequence[Case], *, reference: bool = True
                ) -> dict[str, Path]:
    """Write every case (case.json, canonical weights checkpoint, inputs) into ``run_dir``
    and, with ``reference``, its float64 NumPy reference (:mod:`.oracle`)."""
    check_unique_names(cases)
    run = RunFolder(run_dir)
    run.clear_workers()
    dirs: dict[str, Path] = {}
    for case, folder in zip(cases, run.new_cases(c.name for c in cases), strict=True):
        folder.write_case(case, make_weights(case), make_inputs(case))
        if reference:
            reference_job(folder.path)
        dirs[case.name] = folder.path
    return dirs


# ---------------------------------------------------------------------- workers
def thread_budget(jobs: int, cpus: int | None = None) -> int | None:
    """Compute threads per worker when ``jobs`` workers run at a time: the cores shared
    out (at least one), or None for one worker at a time (each framework's default).

    Every framework sizes its pool to the whole machine, and OpenMP's threads spin
    while they wait: two workers of two threads each on two cores measured 4.5x
    slower for the PyTorch worker (130 s against 29 s for the default cases, the
    machine otherwise loaded the same) than one thread each."""
    if jobs <= 1:
        return None
    if cpus is None:
        cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1)
    return max(1, cpus // jobs)


def thread_env(threads: int | None, env: Mapping[str, str]) -> dict[str, str]:
    """The variables that give a process ``threads`` compute threads, leaving any the
    user set alone (None: no change)."""
    if threads is None:
        return {}
    out = {v: str(threads) for v in THREAD_VARS if v not in env}
    if threads == 1:
        flags = with_xla_flag(env.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false")
        if flags != env.get("XLA_FLAGS", ""):
            out["XLA_FLAGS"] = flags
    return out


def with_xla_flag(flags: str, flag: str) -> str:
    """``flags`` (an XLA_FLAGS value) with ``--name=value`` added, unless it already
    sets that name (the user's own value wins)."""
    name = flag.split("=", 1)[0]
    return flags if name in flags else f"{flags} {flag}".strip()


def worker_env(name: str, devices: Sequence[str], allow_tf32: bool,
               root: Path | None, threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COMMON_ENV)
    env.update(BACKEND_ENV.get(env_backend(name), {}))
    env.update(thread_env(threads, env))
    # Make this densenet_multi (a source checkout: the working tree) win over
    # the copy installed in the backend's environment. An installed package's
    # site-packages is never put on another interpreter's path.
    paths = []
    if (PACKAGE_ROOT / "pyproject.toml").is_file():
        paths.append(str(PACKAGE_ROOT))
    if root is not None and str(root) not in paths:
        paths.append(str(root))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if "cuda" in devices:
        # tox.ini hides GPUs from the test envs; a GPU run needs them back.
        if env.get("CUDA_VISIBLE_DEVICES", None) == "":
            del env["CUDA_VISIBLE_DEVICES"]
        env.pop("JAX_PLATFORMS", None)
        if not allow_tf32:
            env["NVIDIA_TF32_OVERRIDE"] = "0"  # cuBLAS/cuDNN: no TF32 in any framework
            env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class _EventReader:
    """Reads a worker's events file as it grows, feeding whole lines to ``on_event``."""

    def __init__(self, path: Path, out: WorkerOutcome,
                 on_event: Callable[[dict[str, Any]], None] | None) -> None:
        self.path, self.out, self.on_event, self.pos = path, out, on_event, 0

    def __call__(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.pos)
            while (line := f.readline()).endswith("\n"):
                self.pos = f.tell()
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if ev.get("versions"):
                    self.out.versions = ev["versions"]
                if self.on_event:
                    self.on_event(ev)


def _worker_command(backend: BackendTarget, python: str, run: RunFolder, case_dirs: Sequence[str],
                    phase: str, devices: Sequence[str], sources: Sequence[str],
                    allow_tf32: bool, events: Path) -> list[str]:
    cmd = [python, "-m", "densenet_multi.parity.worker", "--backend", backend.name,
           "--run-dir", str(run.path), "--cases", ",".join(case_dirs), "--phase", phase,
           "--devices", ",".join(devices), "--events", str(events)]
    if backend.target:
        cmd += ["--target", backend.target]
    if sources:
        cmd += ["--sources", ",".join(sources)]
    if allow_tf32:
        cmd.append("--allow-tf32")
    return cmd


def _no_interpreter(backend: BackendTarget, python: str, out: WorkerOutcome) -> WorkerOutcome:
    env = BACKENDS.get(env_backend(backend.name), ("", "", backend.name))[2]
    out.status = "missing"
    out.reason = (f"no interpreter at {python or '(none)'}: build the env with "
                  f"`tox -e {env} --notest`, or pass --python {backend.name}=PATH "
                  f"(or set DENSENET_MULTI_PYTHON_{backend.name.upper()})")
    return out


def _wait(proc: subprocess.Popen, pump: Callable[[], None], timeout: float) -> bool:
    """Wait for ``proc``, pumping its events; kill it past ``timeout``. True if it timed out."""
    t0 = time.perf_counter()
    try:
        while proc.poll() is None:
            pump()
            if time.perf_counter() - t0 > timeout:
                _kill(proc)
                return True
            time.sleep(0.2)
    except BaseException:
        _kill(proc)
        raise
    finally:
        pump()
    return False


def _flax_compile_env(env: dict[str, str], root: Path) -> None:
    """The Flax worker's compilation settings, added to ``env``."""
    # JAX's persistent compilation cache, beside the runs: most of the Flax worker's
    # time is XLA compiling the networks, the same programs in every run (the cache
    # is keyed on the program, the jax/XLA versions and the flags).
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "parity" / "runs" / ".jax-cache"))
    # ... and XLA without LLVM's expensive optimisation passes: the checks' batches are
    # tiny, so compiling is the time; measured cold on float64 DenseNet-BC-100 (8x32x32)
    # and DenseNet-121 (2x224x224): the gradient program compiles in 26 s / 32 s
    # instead of 57 s / 41 s, the forward ones in about half the time, and the compiled
    # gradient runs no slower (1.8 s vs 4.5 s, under load).
    flags = with_xla_flag(env.get("XLA_FLAGS", ""), "--xla_llvm_disable_expensive_passes=true")
    # ... and with XLA's classic elemental emitters instead of the MLIR fusion emitters,
    # which spend seconds generating the ~550 small fusion kernels of a gradient program.
    # Measured cold on one core: the gradient programs compile in 38 s / 32 s / 10 s
    # instead of 50 s / 40 s / 18 s (float64 DenseNet-121 2x224x224, float32 BC-100
    # 8x32x32, float64 DenseNet-40 4x32x32), the forward ones in the same time, and the
    # compiled programs run as fast and give the same loss to the last digit or two.
    env["XLA_FLAGS"] = with_xla_flag(flags, "--xla_cpu_use_fusion_emitters=false")


def run_worker(
    backend: BackendTarget,
    python: str,
    run_dir: Path,
    case_dirs: Sequence[str],
    *,
    phase: str = "main",
    devices: Sequence[str] = ("cpu",),
    sources: Sequence[str] = (),
    allow_tf32: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    root: Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
    shard: str = "",
) -> WorkerOutcome:
    """Run one worker to completion (or timeout), feeding its progress events to ``on_event``.

    ``threads``: compute threads for the worker (:func:`thread_budget`; None: the
    frameworks' defaults). ``shard``: a suffix for this worker's log and events files,
    when several workers of one backend run at once, each on some of the cases (the
    caller then clears the backend's "missing" file, once, before starting them)."""
    run = RunFolder(run_dir)
    run.create()
    label = phase + shard
    log, events = run.worker_log(backend.name, label), run.worker_events(backend.name, label)
    stale = [events]
    if not shard:
        stale.append(run.worker_missing(backend.name))
    for f in stale:
        f.unlink(missing_ok=True)
    out = WorkerOutcome(backend.name, phase, "ok", python=python, log=str(log))
    if not python or not Path(python).exists():
        return _no_interpreter(backend, python, out)
    cmd = _worker_command(backend, python, run, case_dirs, phase, devices, sources, allow_tf32,
                          events)
    env = worker_env(backend.name, devices, allow_tf32, root, threads)
    if backend.name == "flax" and root is not None:
        _flax_compile_env(env, root)
    t0 = time.perf_counter()
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(root or Path.cwd()),
                                env=env, start_new_session=True)
        timed_out = _wait(proc, _EventReader(events, out, on_event), timeout)
    out.seconds = round(time.perf_counter() - t0, 2)
    out.returncode = proc.returncode
    out.log_tail = _tail(log)
    missing = run.worker_missing(backend.name)
    if timed_out:
        out.status = "timeout"
        out.reason = f"worker ran past the {timeout:g} s timeout and was killed"
    elif proc.returncode == EXIT_MISSING and missing.exists():
        info = json.loads(missing.read_text())
        out.status, out.reason = "missing", f"cannot import the backend: {info['reason']}"
    elif proc.returncode != 0:
        out.status = "crashed"
        out.reason = f"worker exited with status {proc.returncode}"
    return out


def _start_references(dirs: Sequence[Path], threads: int | None = None
                      ) -> tuple[Any, list[Any]]:
    """Submit every case's reference to one background process (inline if that fails),
    its BLAS limited to ``threads`` (its environment when it starts: the process is
    spawned by the first submit)."""
    try:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
        with _environ(thread_env(threads, os.environ)):
            return pool, [pool.submit(reference_job, str(d)) for d in dirs]
    except (OSError, ImportError, NotImplementedError):  # pragma: no cover - no processes
        return None, [lambda d=d: reference_job(str(d)) for d in dirs]


@contextlib.contextmanager
def _environ(changes: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``changes`` for the block (for a child process started in it)."""
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def case_cost(case: Case) -> int:
    """A worker's time on ``case``, relative to its other cases, to balance shards: the
    network's dense layers (compiling and running scale with them), three times over
    with a gradient (the backward pass), once more with a trajectory."""
    return sum(case.build_spec().block_config) * (1 + 2 * case.has("grad")
                                                   + case.has("trajectory"))


@dataclass(frozen=True)
class WorkerPlan:
    """One main-phase worker: a backend, the indices of its cases, its shard suffix
    ("" when the backend runs in one worker) and its expected share of the work."""

    backend: BackendTarget
    cases: tuple[int, ...]
    shard: str
    cost: float


def plan_workers(backends: Sequence[BackendTarget], cases: Sequence[Case], jobs: int,
                 seconds: Mapping[str, float] | None = None) -> list[WorkerPlan]:
    """The main phase's workers, the longest first, for ``jobs`` at a time.

    ``seconds``: each backend's expected time for all the cases (the baseline run's
    worker seconds; a backend without one counts as the average). With ``jobs`` > 1,
    a backend expected to take over half of a slot's fair share (the sum over
    ``jobs``) runs its cases in ``jobs`` workers, the cases dealt out by
    :func:`case_cost`, longest first, each to the least loaded: its time would
    otherwise be the whole run's."""
    known = [v for v in (seconds or {}).values() if v > 0]
    default = sum(known) / len(known) if known else 1.0
    weight = {b.name: (seconds or {}).get(b.name) or default for b in backends}
    total = sum(weight.values())
    costs = [case_cost(c) for c in cases]
    plans = []
    for b in backends:
        n = jobs if jobs > 1 and len(cases) > 1 and weight[b.name] > total / (2 * jobs) else 1
        groups: list[list[int]] = [[] for _ in range(min(n, len(cases)))]
        for i in sorted(range(len(cases)), key=lambda i: -costs[i]):
            min(groups, key=lambda g: sum(costs[j] for j in g)).append(i)
        for k, g in enumerate(groups):
            plans.append(WorkerPlan(b, tuple(sorted(g)), f"-{k + 1}" if len(groups) > 1 else "",
                                    weight[b.name] * sum(costs[j] for j in g) / sum(costs)))
    return sorted(plans, key=lambda p: -p.cost) if jobs > 1 else plans


def _each(fn: Callable[[Any], None], items: Sequence[Any], jobs: int) -> None:
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for f in [pool.submit(fn, item) for item in items]:
            f.result()


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
    proc.wait()


# ---------------------------------------------------------------------- the whole run
class _Progress:
    """The run's progress bars (a :class:`rich.progress.Progress`, or none)."""

    def __init__(self, progress: Any, backends: Sequence[BackendTarget], cases: Sequence[Case]
                 ) -> None:
        self.p = progress
        # progress units: the checks of every case on the CPU, and on the GPU for cuda cases
        self.total = sum(len([c for c in case.checks if c != "device"]) for case in cases) + sum(
            len([c for c in case.checks if c not in ("device", "shapes", "copy")])
            for case in cases if case.device == "cuda") or 1
        self.tasks = {} if progress is None else {
            b.name: progress.add_task(f"{b.name}: waiting", total=self.total) for b in backends}
        self.ref = None if progress is None else progress.add_task(
            "reference (NumPy, float64)", total=len(cases))
        self.copy = None

    def update(self, name: str, **kw: Any) -> None:
        if self.p is not None and name in self.tasks:
            self.p.update(self.tasks[name], **kw)

    def listener(self, name: str) -> Callable[[dict[str, Any]], None]:
        def on_event(ev: dict[str, Any]) -> None:
            st = ev.get("status")
            if st == "running":
                dev = f" ({ev['device']})" if ev.get("device") != "cpu" else ""
                self.update(name, description=f"{name}: {ev['case']} {ev['check']}{dev}")
            elif st == "imported":
                self.update(name, description=f"{name}: imported")
            elif ev.get("check") and self.p is not None:
                self.p.advance(self.tasks[name])
        return on_event

    def start_copy(self, n: int) -> None:
        if self.p is not None:
            self.copy = self.p.add_task("copy phase", total=n)

    def copying(self, name: str, done: bool = False) -> None:
        if self.p is not None and self.copy is not None:
            if done:
                self.p.advance(self.copy)
            else:
                self.p.update(self.copy, description=f"copy phase: {name} loads the others")

    def reference_done(self) -> None:
        if self.p is not None:
            self.p.advance(self.ref)


@dataclass
class _Run:
    """One run in progress: what the phases share."""

    run_dir: Path
    root: Path | None
    names: list[str]  # case folder names
    copy_names: list[str]  # those with the copy check
    devices: list[str]
    resolved: dict[str, tuple[str, str]]
    allow_tf32: bool
    timeout: float
    progress: _Progress
    outcomes: dict[str, dict[str, WorkerOutcome]]
    threads: int | None = None

    def main_phase(self, plans: Sequence[WorkerPlan], jobs: int) -> None:
        """Every planned worker, ``jobs`` at a time; a backend's outcome once all of its
        shards are done."""
        shards: dict[str, list[WorkerPlan]] = {}
        for p in plans:
            shards.setdefault(p.backend.name, []).append(p)
        for name, ps in shards.items():
            if len(ps) > 1:  # its workers run at once: clear the "missing" file before
                RunFolder(self.run_dir).worker_missing(name).unlink(missing_ok=True)
        done: dict[str, dict[str, WorkerOutcome]] = {name: {} for name in shards}
        lock = threading.Lock()

        def one(p: WorkerPlan) -> None:
            out = self._worker(p)
            with lock:
                done[p.backend.name][p.shard] = out
                if len(done[p.backend.name]) < len(shards[p.backend.name]):
                    return
            self._finished(p.backend, shards[p.backend.name], done[p.backend.name])

        _each(one, plans, jobs)

    def _worker(self, p: WorkerPlan) -> WorkerOutcome:
        b = p.backend
        self.progress.update(b.name, description=f"{b.name}: starting")
        python, origin = self.resolved[b.name]
        out = run_worker(b, python, self.run_dir, [self.names[i] for i in p.cases],
                         devices=self.devices, allow_tf32=self.allow_tf32,
                         timeout=self.timeout, root=self.root, threads=self.threads,
                         shard=p.shard, on_event=self.progress.listener(b.name))
        if out.status == "missing" and not python:
            out.reason = origin
        return out

    def _finished(self, b: BackendTarget, plans: Sequence[WorkerPlan],
                  outs: Mapping[str, WorkerOutcome]) -> None:
        """A backend's outcome, from its workers' (one, or its shards)."""
        merged = merge_outcomes([outs[p.shard] for p in plans],
                                [[self.names[i] for i in p.cases] for p in plans])
        self.outcomes[b.name]["main"] = merged
        each = " + ".join(f"{q['seconds']:.0f}" for q in merged.shards)
        self.progress.update(b.name, completed=self.progress.total, description=(
            f"{b.name}: {merged.status} ({each or f'{merged.seconds:.0f}'} s)"))

    def copy_phase(self, backends: Sequence[BackendTarget], jobs: int) -> None:
        """Phase 2 of the copy check: every backend loads every other backend's export."""
        with_exports = [b.name for b in backends
                        if self.outcomes[b.name]["main"].status in ("ok", "crashed", "timeout")]
        if len(with_exports) < 2 or not self.copy_names:
            return
        self.progress.start_copy(len(with_exports))

        def one(b: BackendTarget) -> None:
            self.progress.copying(b.name)
            self.outcomes[b.name]["copy"] = run_worker(
                b, self.resolved[b.name][0], self.run_dir, self.copy_names, phase="copy",
                sources=[s for s in with_exports if s != b.name], timeout=self.timeout,
                root=self.root, threads=self.threads)
            self.progress.copying(b.name, done=True)

        _each(one, [b for b in backends if self.outcomes[b.name]["main"].status == "ok"], jobs)


def run_parity(
    cases: Sequence[Case],
    backends: Sequence[BackendTarget],
    run_dir: Path,
    *,
    pythons: Mapping[str, str] | None = None,
    allow_tf32: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Any = None,
    jobs: int = 1,
    expected_seconds: Mapping[str, float] | None = None,
) -> RunResult:
    """Prepare the run folder, run every backend's worker (main phase, then the
    copy phase), and return what happened. ``progress`` is an optional
    :class:`rich.progress.Progress` to show the workers' progress in.

    ``jobs`` workers run at a time (default one: the frameworks use every core
    anyway), each with its share of the cores (:func:`thread_budget`), the longest
    first, a backend that would take most of the run split over several
    (:func:`plan_workers`, with ``expected_seconds``: each backend's time in an
    earlier run, the baseline's)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    root = find_project_root()
    case_dirs = prepare_run(run_dir, cases, reference=False)
    threads = thread_budget(jobs)
    # The float64 reference (minutes for the default cases: the conditioning
    # probes run the reference gradient and trajectory twice) is computed in a
    # process of its own while the workers run; only the comparison needs it.
    bars = _Progress(progress, backends, cases)
    pool, futures = _start_references([case_dirs[c.name] for c in cases], threads)
    run = _Run(run_dir, root, [case_dirs[c.name].name for c in cases],
               [case_dirs[c.name].name for c in cases if c.has("copy")],
               ["cpu"] + (["cuda"] if any(c.device == "cuda" for c in cases) else []),
               {b.name: resolve_python(b.name, pythons, root) for b in backends},
               allow_tf32, timeout, bars, {b.name: {} for b in backends}, threads)
    run.main_phase(plan_workers(backends, cases, jobs, expected_seconds), jobs)
    run.copy_phase(backends, jobs)
    for f in futures:
        f.result() if pool is not None else f()
        bars.reference_done()
    if pool is not None:
        pool.shutdown()
    return RunResult(run_dir, list(cases), case_dirs, list(backends), run.outcomes,
                     {k: v[0] for k, v in run.resolved.items()}, run.devices, allow_tf32,
                     seconds=round(time.perf_counter() - t0, 2))
