"""The cross-environment runner: writes the cases to a run folder, runs one worker per backend.

Frameworks don't share one interpreter (MXNet 1.9 needs numpy < 1.24), so each
backend runs in a worker subprocess started with *its* environment's
interpreter. The harness process never imports a framework; it computes the
NumPy reference (float64) itself and reads back canonical results.

Which interpreter runs backend ``B`` (first match wins):

1. ``--python B=/path/to/python`` (``pythons`` argument);
2. the environment variable ``DENSENET_MULTI_PYTHON_<B>`` (upper case);
3. ``<project root>/.tox/<env>/bin/python`` with ``env`` from ``backend.BACKENDS``,
   the project root being the folder holding ``tox.ini``, searched upward from
   the current directory, then from this package;
4. for a backend that is not one of the four (the tests' fakes): ``sys.executable``.

A missing interpreter, or a worker that can't import its backend, makes that
backend MISSING (with the reason); a worker that exits non-zero or runs past
the timeout is CRASHED / TIMEOUT with the tail of its log. The others still run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint
from ..backend import BACKENDS
from ..params import param_table
from ..reference import forward, softmax_cross_entropy
from .cases import Case, make_inputs, make_weights
from .worker import EXIT_MISSING

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
#: Relative size of the conditioning probes' perturbation, per case dtype: about
#: how far a backend computing in that dtype is from the float64 reference
#: (float32, measured: 4e-7 to 1.5e-6 in eval mode on the default cases; float64:
#: 1e-15 .. 1e-14). Measured on densenet40_k12's float32 gradients: at 1e-7 the
#: reference moves 5e-7 (linear, no ReLU flips), at 1e-6 already 6e-3 (flips);
#: on densenet_bc_100_k12 and densenet121 it moves 5e-3..1e-2 even at 1e-7.
PROBE_REL = {"float32": 1e-6, "float64": 1e-13}


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def resolve_python(name: str, overrides: Mapping[str, str] | None = None,
                   root: Path | None = None) -> tuple[str, str]:
    """(interpreter path, where it came from) for backend ``name``; the path may not exist."""
    if overrides and name in overrides:
        return overrides[name], "--python"
    var = f"DENSENET_MULTI_PYTHON_{name.upper().replace('-', '_')}"
    if os.environ.get(var):
        return os.environ[var], var
    if name in BACKENDS:
        root = root or find_project_root()
        env = BACKENDS[name][2]
        if root is None:
            return "", f"no tox.ini found upward from {Path.cwd()} or {PACKAGE_ROOT}"
        bindir = "Scripts" if os.name == "nt" else "bin"
        exe = "python.exe" if os.name == "nt" else "python"
        return str(root / ".tox" / env / bindir / exe), f"tox env {env!r}"
    return sys.executable, "this interpreter"


def parse_backends(items: Sequence[str]) -> list[BackendTarget]:
    """``["torch", "fake=tests/parity/fake_backends.py:same_padding"]`` -> targets."""
    out = []
    for item in items:
        for part in [p for p in item.split(",") if p]:
            name, eq, target = part.partition("=")
            if not eq and name not in BACKENDS:
                raise ValueError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}, "
                                 "or name=module:attr")
            out.append(BackendTarget(name, target or None))
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
def _case_dirname(case: Case, taken: set[str]) -> str:
    base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case.name) or "case"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def prepare_run(run_dir: Path, cases: Sequence[Case], *, reference: bool = True
                ) -> dict[str, Path]:
    """Write every case (case.json, canonical weights checkpoint, inputs) and, with
    ``reference``, its float64 NumPy reference into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "_workers").mkdir(exist_ok=True)
    taken: set[str] = set()
    dirs: dict[str, Path] = {}
    for case in cases:
        d = run_dir / _case_dirname(case, taken)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        spec = case.build_spec()
        params = make_weights(case)
        checkpoint.save(d / "weights.safetensors", params, spec, dtype=case.dtype)
        inputs = make_inputs(case)
        np.savez(d / "inputs.npz", **inputs)
        (d / "case.json").write_text(json.dumps(case.to_dict(), indent=1))
        if reference:
            write_reference(d, case, params, inputs)
        dirs[case.name] = d
    return dirs


def write_reference(case_dir: Path, case: Case, params: Mapping[str, np.ndarray],
                    inputs: Mapping[str, np.ndarray]) -> None:
    """The oracle, in float64 whatever the case's dtype: eval and train forward, the
    gradients (:mod:`densenet_multi.reference_grad`) and the K-step trajectory."""
    from .. import reference_grad
    from ..backend import SGD_DEFAULTS
    from .worker import SEP

    spec = case.build_spec()
    arrays: dict[str, np.ndarray] = {}
    if case.has("eval") or case.has("shapes"):
        out = forward(spec, params, inputs["x"], dtype="float64")
        for k, v in out.stages.items():
            arrays[f"eval{SEP}stage{SEP}{k}"] = v
    if case.has("train") or case.has("grad"):
        out = forward(spec, params, inputs["x"], train=True, dtype="float64")
        for k, v in out.stages.items():
            arrays[f"train{SEP}stage{SEP}{k}"] = v
        for k, v in (out.running or {}).items():
            arrays[f"train{SEP}running{SEP}{k}"] = v
        arrays[f"grad{SEP}loss"] = np.asarray(softmax_cross_entropy(out.logits, inputs["labels"]))
    if case.has("grad") and "grad" in case.reference:
        g = reference_grad.gradients(spec, params, inputs["x"], inputs["labels"], dtype="float64")
        arrays[f"grad{SEP}loss"] = np.asarray(g.loss)
        arrays[f"grad{SEP}input"] = g.input
        for k, v in g.params.items():
            arrays[f"grad{SEP}param{SEP}{k}"] = v
        # Conditioning probe (see the trajectory's below): the same gradient from
        # weights and input perturbed by PROBE_REL. Millions of ReLU inputs sit
        # within float32 rounding of 0 somewhere in a deep net; where one of them
        # feeds few positions (a late block at a small input), rounding flips
        # its gradient term and moves whole gradients by far more than the tolerance.
        rng = np.random.Generator(np.random.PCG64([case.seed, 3]))
        rel = PROBE_REL[case.dtype]
        g2 = reference_grad.gradients(spec, _perturbed(params, rng, rel),
                                      _perturbed({"x": inputs["x"]}, rng, rel)["x"],
                                      inputs["labels"], dtype="float64")
        arrays[f"grad{SEP}spread{SEP}loss"] = np.asarray(abs(g2.loss - g.loss) / abs(g.loss))
        arrays[f"grad{SEP}spread{SEP}input"] = np.asarray(_spread(g2.input, g.input))
        for k, v in g.params.items():
            arrays[f"grad{SEP}spread{SEP}{k}"] = np.asarray(_spread(g2.params[k], v))
    if case.has("trajectory"):
        # The first loss is a forward at the initial weights: always referenced.
        out0 = forward(spec, params, inputs["traj_x"][0], train=True, dtype="float64")
        arrays[f"trajectory{SEP}loss0"] = np.asarray(
            softmax_cross_entropy(out0.logits, inputs["traj_labels"][0]))
        if "trajectory" in case.reference:
            batches = [(inputs["traj_x"][i], inputs["traj_labels"][i])
                       for i in range(inputs["traj_x"].shape[0])]
            losses, final = reference_grad.train_steps(spec, params, batches, dtype="float64",
                                                       **SGD_DEFAULTS)
            arrays[f"trajectory{SEP}losses"] = np.asarray(losses)
            trainable = [p.name for p in param_table(spec) if p.trainable]
            for k in trainable:
                arrays[f"trajectory{SEP}param{SEP}{k}"] = final[k]
            # Conditioning probe: the same K steps from weights perturbed by
            # PROBE_REL. A ReLU input within rounding
            # distance of 0 switches its gradient on or off, and a few steps can
            # amplify that far beyond the tolerance; where the reference's own
            # spread exceeds the tolerance, no implementation can be held to it.
            rng = np.random.Generator(np.random.PCG64([case.seed, 2]))
            losses2, final2 = reference_grad.train_steps(spec, _perturbed(params, rng,
                                                                          PROBE_REL[case.dtype]),
                                                         batches,
                                                         dtype="float64", **SGD_DEFAULTS)
            arrays[f"trajectory{SEP}spread{SEP}losses"] = np.asarray(
                _spread(np.asarray(losses2), np.asarray(losses)))
            for k in trainable:
                arrays[f"trajectory{SEP}spread{SEP}{k}"] = np.asarray(_spread(final2[k], final[k]))
    np.savez(case_dir / "reference.npz", **arrays)


def reference_job(case_dir: str) -> str:
    """Compute a prepared case's reference (in a subprocess of the harness: numpy only)."""
    d = Path(case_dir)
    case = Case.from_dict(json.loads((d / "case.json").read_text()))
    params, _ = checkpoint.load(d / "weights.safetensors", case.build_spec(), dtype=case.dtype)
    with np.load(d / "inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    write_reference(d, case, params, inputs)
    return case.name


def _perturbed(arrays: Mapping[str, np.ndarray], rng: np.random.Generator, rel: float
               ) -> dict[str, np.ndarray]:
    """float64 copies, each element scaled by (1 + rel * N(0, 1))."""
    return {k: np.asarray(v, np.float64) * (1 + rel * rng.standard_normal(np.shape(v)))
            for k, v in arrays.items()}


def _spread(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b|, the error measure of densenet_multi.testing."""
    scale = float(np.max(np.abs(b))) if np.size(b) else 0.0
    d = float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(b) else 0.0
    return d / scale if scale > 0 else d


# ---------------------------------------------------------------------- workers
def worker_env(name: str, devices: Sequence[str], allow_tf32: bool,
               root: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COMMON_ENV)
    env.update(BACKEND_ENV.get(name, {}))
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
) -> WorkerOutcome:
    """Run one worker to completion (or timeout), feeding its progress events to ``on_event``."""
    wdir = run_dir / "_workers"
    wdir.mkdir(parents=True, exist_ok=True)
    log = wdir / f"{backend.name}.{phase}.log"
    events = wdir / f"{backend.name}.{phase}.events.jsonl"
    missing_file = wdir / f"{backend.name}.missing.json"
    for f in (events, missing_file):
        if f.exists():
            f.unlink()
    out = WorkerOutcome(backend.name, phase, "ok", python=python, log=str(log))
    if not python or not Path(python).exists():
        env = BACKENDS.get(backend.name, ("", "", backend.name))[2]
        out.status = "missing"
        out.reason = (f"no interpreter at {python or '(none)'}: build the env with "
                      f"`tox -e {env} --notest`, or pass --python {backend.name}=PATH "
                      f"(or set DENSENET_MULTI_PYTHON_{backend.name.upper()})")
        return out
    cmd = [python, "-m", "densenet_multi.parity.worker", "--backend", backend.name,
           "--run-dir", str(run_dir), "--cases", ",".join(case_dirs), "--phase", phase,
           "--devices", ",".join(devices), "--events", str(events)]
    if backend.target:
        cmd += ["--target", backend.target]
    if sources:
        cmd += ["--sources", ",".join(sources)]
    if allow_tf32:
        cmd.append("--allow-tf32")
    t0 = time.perf_counter()
    pos = 0

    def pump() -> None:
        nonlocal pos
        if not events.exists():
            return
        with open(events) as f:
            f.seek(pos)
            while True:
                line = f.readline()
                if not line or not line.endswith("\n"):
                    break
                pos = f.tell()
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if ev.get("versions"):
                    out.versions = ev["versions"]
                if on_event:
                    on_event(ev)

    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(root or Path.cwd()),
                                env=worker_env(backend.name, devices, allow_tf32, root),
                                start_new_session=True)
        try:
            while proc.poll() is None:
                pump()
                if time.perf_counter() - t0 > timeout:
                    _kill(proc)
                    out.status = "timeout"
                    break
                time.sleep(0.2)
        except BaseException:
            _kill(proc)
            raise
        pump()
    out.seconds = round(time.perf_counter() - t0, 2)
    out.returncode = proc.returncode
    out.log_tail = _tail(log)
    if out.status == "timeout":
        out.reason = f"worker ran past the {timeout:g} s timeout and was killed"
    elif proc.returncode == EXIT_MISSING and missing_file.exists():
        info = json.loads(missing_file.read_text())
        out.status, out.reason = "missing", f"cannot import the backend: {info['reason']}"
    elif proc.returncode != 0:
        out.status = "crashed"
        out.reason = f"worker exited with status {proc.returncode}"
    return out


def _start_references(dirs: Sequence[Path]) -> tuple[Any, list[Any]]:
    """Submit every case's reference to one background process (inline if that fails)."""
    try:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
        return pool, [pool.submit(reference_job, str(d)) for d in dirs]
    except (OSError, ImportError, NotImplementedError):  # pragma: no cover - no processes
        return None, [lambda d=d: reference_job(str(d)) for d in dirs]


def _each(fn: Callable[[BackendTarget], None], backends: Sequence[BackendTarget],
          jobs: int) -> None:
    if jobs <= 1 or len(backends) <= 1:
        for b in backends:
            fn(b)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for f in [pool.submit(fn, b) for b in backends]:
            f.result()


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
    proc.wait()


# ---------------------------------------------------------------------- the whole run
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
) -> RunResult:
    """Prepare the run folder, run every backend's worker (main phase, then the
    copy phase), and return what happened. ``progress`` is an optional
    :class:`rich.progress.Progress` to show the workers' progress in; ``jobs``
    workers run at a time (default one: the frameworks use every core anyway)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    root = find_project_root()
    case_dirs = prepare_run(run_dir, cases, reference=False)
    # The float64 reference (minutes for the default cases: the conditioning
    # probes run the reference gradient and trajectory twice) is computed in a
    # process of its own while the workers run; only the comparison needs it.
    ref_task = progress.add_task("reference (NumPy, float64)", total=len(cases)) \
        if progress is not None else None
    pool, futures = _start_references([case_dirs[c.name] for c in cases])
    names = [case_dirs[c.name].name for c in cases]
    devices = ["cpu"] + (["cuda"] if any(c.device == "cuda" for c in cases) else [])
    resolved = {b.name: resolve_python(b.name, pythons, root) for b in backends}
    outcomes: dict[str, dict[str, WorkerOutcome]] = {b.name: {} for b in backends}

    def units(case: Case) -> int:  # progress units of one case, per device
        return len([c for c in case.checks if c != "device"])

    total = sum(units(c) for c in cases) + sum(
        len([x for x in c.checks if x not in ("device", "shapes", "copy")])
        for c in cases if c.device == "cuda")
    tasks = {}
    if progress is not None:
        for b in backends:
            tasks[b.name] = progress.add_task(f"{b.name}: waiting", total=total or 1)

    def main_phase(b: BackendTarget) -> None:
        task = tasks.get(b.name)

        def on_event(ev: dict[str, Any]) -> None:
            if progress is None or task is None:
                return
            st = ev.get("status")
            if st == "running":
                progress.update(task, description=f"{b.name}: {ev['case']} {ev['check']}"
                                f"{' (' + ev['device'] + ')' if ev.get('device') != 'cpu' else ''}")
            elif st == "imported":
                progress.update(task, description=f"{b.name}: imported")
            elif ev.get("check"):
                progress.advance(task)

        if progress is not None and task is not None:
            progress.update(task, description=f"{b.name}: starting")
        out = run_worker(b, resolved[b.name][0], run_dir, names, devices=devices,
                         allow_tf32=allow_tf32, timeout=timeout, root=root, on_event=on_event)
        if out.status == "missing" and not resolved[b.name][0]:
            out.reason = resolved[b.name][1]
        outcomes[b.name]["main"] = out
        if progress is not None and task is not None:
            progress.update(task, completed=total or 1,
                            description=f"{b.name}: {out.status} ({out.seconds:.0f} s)")

    _each(main_phase, backends, jobs)

    # Phase 2 of the copy check: every backend loads every other backend's export.
    with_exports = [b.name for b in backends
                    if outcomes[b.name]["main"].status in ("ok", "crashed", "timeout")]
    copy_cases = [case_dirs[c.name].name for c in cases if c.has("copy")]
    if len(with_exports) > 1 and copy_cases:
        ctask = progress.add_task("copy phase", total=len(with_exports)) if progress else None
        def copy_phase(b: BackendTarget) -> None:
            if progress is not None:
                progress.update(ctask, description=f"copy phase: {b.name} loads the others")
            outcomes[b.name]["copy"] = run_worker(
                b, resolved[b.name][0], run_dir, copy_cases, phase="copy",
                sources=[s for s in with_exports if s != b.name], timeout=timeout, root=root)
            if progress is not None:
                progress.advance(ctask)

        _each(copy_phase, [b for b in backends if outcomes[b.name]["main"].status == "ok"],
              jobs)
    for f in futures:
        f.result() if pool is not None else f()
        if progress is not None:
            progress.advance(ref_task)
    if pool is not None:
        pool.shutdown()
    return RunResult(run_dir, list(cases), case_dirs, list(backends), outcomes,
                     {k: v[0] for k, v in resolved.items()}, devices, allow_tf32,
                     seconds=round(time.perf_counter() - t0, 2))
