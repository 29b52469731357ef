"""The ``data-parallel`` check: K data-parallel SGD steps on each framework's own engine,
held to single-device training and to the NumPy reference's per-replica prediction.

For each backend a worker, started in that backend's environment like the
harness's (:func:`.runner.resolve_python`, :func:`.runner.worker_env`), runs
``densenet_multi.<backend>.distributed.data_parallel_steps`` twice over the same
K global batches split across :data:`REPLICAS` replicas: with synchronised
BatchNorm and without. Here, in the core, the results are compared with

- **synchronised BN** -> the single-device trajectory on the global batch
  (:func:`densenet_multi.reference_grad.train_steps`), within the trajectory
  tolerance of the run's dtype: losses, every trainable parameter and every
  running statistic after K steps;
- **per-replica BN** -> the reference's per-replica prediction
  (:func:`densenet_multi.reference_dp.data_parallel_steps`, with the backend's
  rule for which replica's running statistics it ends with,
  :data:`RUNNING_RULES`), within the same tolerance; its distance from the
  single-device trajectory is measured and reported, not judged.

Both use a *mean* all-reduce of the gradients: a backend that sums them (or
scales its loss by the shard instead of the global batch) is R times off in
every update and fails both comparisons.

On GPUs (``--device cuda``) the PyTorch and JAX steps run there (the project's
TensorFlow and MXNet environments are CPU builds); on a machine without an NVIDIA
GPU that run reports "not available" and fails, and the CPU run's report says so.

Run it: ``densenet-multi parity --checks data-parallel`` (or ``python -m
densenet_multi.parity.data_parallel``); ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import reference_dp
from .._files import write_text_atomic
from ..backend import BACKENDS, SGD_DEFAULTS
from ..testing import tolerance
from .cases import Case, make_inputs, make_weights
from .runfolder import CaseFolder, load_npz, save_npz
from .runner import find_project_root, parse_pythons, resolve_python, worker_env

__all__ = ["REPLICAS", "RUNNING_RULES", "Row", "make_case", "prepare", "run_arrays",
           "run_backend", "predictions", "compare_backend", "main"]

#: replicas (processes, host devices, logical CPUs, contexts) of every run
REPLICAS = 2
#: which running statistics each framework's data-parallel model ends with, without
#: synchronised BN (see reference_dp and each backend's distributed.py)
RUNNING_RULES = {"torch": "replica0", "flax": "mean", "keras": "replica0", "gluon": "replica0"}
#: environment a worker needs beyond the harness's (JAX's host devices are fixed at start)
EXTRA_ENV = {"flax": {"XLA_FLAGS": f"--xla_force_host_platform_device_count={REPLICAS}"}}
MODES = ("sync", "per-replica")
#: backends whose data-parallel steps run on GPUs here (the others' environments are CPU builds)
GPU_BACKENDS = ("torch", "flax")


def make_case(spec: str | Mapping[str, Any] = "d2l", *, size: int = 32, batch: int = 8,
              steps: int = 2, seed: int = 0, dtype: str = "float64") -> Case:
    """The check's case: seeded weights with non-trivial BN statistics and K global batches."""
    return Case(name="data-parallel", spec=spec, input_size=(size, size), batch=batch,
                steps=steps, seed=seed, dtype=dtype, checks=("trajectory",), reference=())


def prepare(case: Case, folder: str | Path) -> CaseFolder:
    """Write the case (case.json, weights, inputs) into ``folder``."""
    out = CaseFolder(folder)
    out.write_case(case, make_weights(case), make_inputs(case))
    return out


def _batches(inputs: Mapping[str, np.ndarray], dtype: str | None = None
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    tx, tl = inputs["traj_x"], inputs["traj_labels"]
    return [(tx[i] if dtype is None else tx[i].astype(dtype), tl[i]) for i in range(len(tx))]


def result_path(folder: CaseFolder, backend: str) -> Path:
    return folder.path / f"data-parallel-{backend}.npz"


# ---------------------------------------------------------------------- the worker
def run_arrays(mode: str, run: tuple[list[float], Mapping[str, np.ndarray],
                                     Mapping[str, np.ndarray]],
               dtype: str, seconds: float) -> dict[str, np.ndarray]:
    """One ``data_parallel_steps`` result (losses, trainable, running) as the result file's
    arrays for ``mode`` (what :func:`compare_backend` reads)."""
    losses, trainable, running = run
    arrays = {f"{mode}/seconds": np.asarray(seconds), f"{mode}/dtype": np.asarray(dtype),
              f"{mode}/losses": np.asarray(losses, dtype=np.float64)}
    arrays.update({f"{mode}/param/{k}": np.asarray(v) for k, v in trainable.items()})
    arrays.update({f"{mode}/running/{k}": np.asarray(v) for k, v in running.items()})
    return arrays


def worker(backend: str, case_dir: str | Path, device: str = "cpu") -> Path:
    """In the backend's environment: both runs of one backend on ``device``, written to its
    result file."""
    if device == "cuda" and "cuda" not in importlib.import_module(BACKENDS[backend][0]).devices():
        raise SystemExit(f"not available: {backend} sees no GPU (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})")
    folder = CaseFolder(case_dir)
    case = folder.read_case()
    params, inputs = folder.read_weights(case), folder.read_inputs()
    dist = importlib.import_module(f"{BACKENDS[backend][0]}.distributed")
    arrays: dict[str, np.ndarray] = {}
    spec = case.build_spec()
    args = ({k: v.astype(case.dtype) for k, v in params.items()}, _batches(inputs, case.dtype))
    t0 = time.perf_counter()
    if hasattr(dist, "data_parallel_runs"):  # PyTorch: both runs in one start of the processes
        runs = dist.data_parallel_runs(spec, *args, devices=REPLICAS, dtype=case.dtype,
                                       modes=[m == "sync" for m in MODES], device=device,
                                       **SGD_DEFAULTS)
        seconds = [(time.perf_counter() - t0) / len(MODES)] * len(MODES)
    else:
        runs, seconds = [], []
        for mode in MODES:
            t0 = time.perf_counter()
            runs.append(dist.data_parallel_steps(spec, *args, devices=REPLICAS,
                                                 sync_bn=mode == "sync", dtype=case.dtype,
                                                 device=device, **SGD_DEFAULTS))
            seconds.append(time.perf_counter() - t0)
    for mode, run, sec in zip(MODES, runs, seconds, strict=True):
        arrays.update(run_arrays(mode, run, case.dtype, sec))
    path = result_path(folder, backend)
    save_npz(path, arrays)
    return path


def run_backend(backend: str, folder: CaseFolder, *, python: str | None = None,
                timeout: float = 900.0, device: str = "cpu") -> dict[str, np.ndarray]:
    """Run :func:`worker` for ``backend`` in its environment (``python``, default the
    harness's choice) on ``device`` and return its arrays; a clear RuntimeError with the
    log's tail when it fails."""
    if device not in ("cpu", "cuda") or (device == "cuda" and backend not in GPU_BACKENDS):
        raise ValueError(f"device must be 'cpu', or 'cuda' for {', '.join(GPU_BACKENDS)} (this "
                         f"project's TensorFlow and MXNet environments are CPU builds); got "
                         f"{device!r} for {backend}")
    root = find_project_root()
    if python is None:
        python, origin = resolve_python(backend, root=root)
        if not python or not Path(python).exists():
            raise RuntimeError(f"no interpreter for {backend} ({origin}): build its tox env "
                               f"`tox -e {BACKENDS[backend][2]} --notest` or pass --python")
    env = worker_env(backend, (device,), False, root)
    env.update(EXTRA_ENV.get(backend, {}))
    out = result_path(folder, backend)
    out.unlink(missing_ok=True)
    proc = subprocess.run([python, "-m", "densenet_multi.parity.data_parallel", "--worker",
                           backend, "--case-dir", str(folder.path), "--device", device],
                          env=env,
                          cwd=str(root or Path.cwd()), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    arrays = load_npz(out)
    if proc.returncode != 0 or arrays is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"the {backend} data-parallel worker failed (exit "
                           f"{proc.returncode}):\n{tail}")
    return arrays


# ---------------------------------------------------------------------- the comparison
def predictions(case: Case, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                *, running: Sequence[str] = ("replica0", "mean"), reduce: str = "mean"
                ) -> dict[str, tuple[list[float], dict[str, np.ndarray]]]:
    """The float64 reference's trajectories: ``"single"`` (one device, the global batch:
    :func:`densenet_multi.reference_grad.train_steps`, what synchronised BN must equal)
    and ``"per-replica/<rule>"`` for each running rule.
    ``reduce="sum"`` predicts a sum all-reduce instead (what no backend should match)."""
    spec, batches = case.build_spec(), _batches(inputs, "float64")
    out = {"single": reference_dp.data_parallel_steps(
        spec, params, batches, replicas=REPLICAS, sync_bn=True, reduce=reduce,
        dtype="float64", **SGD_DEFAULTS)}
    for rule in running:
        out[f"per-replica/{rule}"] = reference_dp.data_parallel_steps(
            spec, params, batches, replicas=REPLICAS, sync_bn=False, running=rule,
            reduce=reduce, dtype="float64", **SGD_DEFAULTS)
    return out


@dataclass
class Row:
    """One comparison: a backend's run (``mode``) against a prediction (``against``)."""
    backend: str
    mode: str
    against: str
    dtype: str
    losses: float  # worst relative error of the K losses
    params: float  # worst relative error over the trainable parameters
    running: float  # worst relative error over the running statistics
    worst: str  # the tensor with the worst error
    tol: float | None  # None: measured, not judged
    seconds: float

    @property
    def ok(self) -> bool | None:
        if self.tol is None:
            return None
        return bool(max(self.losses, self.params, self.running) <= self.tol)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    return err / scale if scale > 0 else err


def _row(backend: str, mode: str, against: str, result: Mapping[str, np.ndarray],
         prediction: tuple[list[float], dict[str, np.ndarray]], tol: float | None) -> Row:
    losses, final = prediction
    errs: dict[str, tuple[str, float]] = {}
    for kind in ("param", "running"):
        prefix = f"{mode}/{kind}/"
        names = [k[len(prefix):] for k in result if k.startswith(prefix)]
        if not names:
            raise ValueError(f"{backend}: no {kind} arrays for {mode} in the result")
        missing = sorted(set(n for n in final if ("running_" in n) == (kind == "running"))
                         - set(names))
        if missing:
            raise ValueError(f"{backend} {mode}: the result lacks {missing[:3]}...")
        worst = max(names, key=lambda n: _rel(result[prefix + n], final[n]))
        errs[kind] = (worst, _rel(result[prefix + worst], final[worst]))
    worst_name = max(errs.values(), key=lambda e: e[1])[0]
    return Row(backend, mode, against, str(result[f"{mode}/dtype"]),
               _rel(result[f"{mode}/losses"], np.asarray(losses)), errs["param"][1],
               errs["running"][1], worst_name, tol, float(result[f"{mode}/seconds"]))


def compare_backend(backend: str, result: Mapping[str, np.ndarray],
                    preds: Mapping[str, tuple[list[float], dict[str, np.ndarray]]],
                    *, running_rule: str | None = None) -> list[Row]:
    """The check's rows for one backend: synchronised BN against the single-device
    trajectory and per-replica BN against its prediction (both judged at the trajectory
    tolerance of the run's dtype), and per-replica BN against single-device (measured)."""
    rule = running_rule or RUNNING_RULES[backend]
    rows = []
    for mode, against in (("sync", "single"), ("per-replica", f"per-replica/{rule}")):
        dtype = str(result[f"{mode}/dtype"])
        rows.append(_row(backend, mode, against, result, preds[against],
                         tolerance("trajectory", dtype)))
    rows.append(_row(backend, "per-replica", "single", result, preds["single"], None))
    return rows


# ---------------------------------------------------------------------- report
#: one entry per GPU where the NVIDIA driver is loaded
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def machine_gpus() -> int:
    """NVIDIA GPUs the machine's driver lists (:data:`NVIDIA_GPUS`), without importing a
    framework: 0 where there is no NVIDIA driver."""
    return len(list(NVIDIA_GPUS.iterdir())) if NVIDIA_GPUS.is_dir() else 0


def gpu_line(device: str) -> str:
    """What the report says of the GPU steps."""
    n = machine_gpus()
    if n == 0:
        return ("GPU: not available (no NVIDIA GPU on this machine: /proc/driver/nvidia/gpus "
                "is absent)" + ("; the PyTorch and JAX steps run on GPUs with `--device cuda`."
                                if device == "cpu" else ", so the GPU runs below fail."))
    if device == "cuda":
        return (f"GPU: {n} NVIDIA GPU(s) on this machine; the PyTorch and JAX steps run there "
                "(this project's TensorFlow and MXNet environments are CPU builds).")
    return (f"GPU: {n} NVIDIA GPU(s) on this machine, not used by this CPU run; the PyTorch "
            "and JAX steps run there with `--device cuda`.")


def render(rows: Sequence[Row], case: Case, device: str = "cpu", gpu: str | None = None) -> str:
    """The report; ``gpu``: what it says of GPUs (default :func:`gpu_line` of ``device``)."""
    h, w = case.input_size
    lines = [f"# {case.describe()}", "",
             f"{REPLICAS} replicas ({'GPUs' if device == 'cuda' else 'CPU'}), {case.steps} SGD "
             f"steps, global batch {case.batch} ({case.batch // REPLICAS} per replica), {h}x{w}",
             "", gpu if gpu is not None else gpu_line(device), "",
             "| backend | run | against | dtype | losses | params | running | worst tensor "
             "| tol | status | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = {True: "pass", False: "FAIL", None: "measured"}[r.ok]
        tol = "-" if r.tol is None else f"{r.tol:.0e}"
        lines.append(f"| {r.backend} | {r.mode} | {r.against} | {r.dtype} | {r.losses:.2e} | "
                     f"{r.params:.2e} | {r.running:.2e} | `{r.worst}` | {tol} | {status} | "
                     f"{r.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="densenet-multi parity --checks data-parallel",
        description="K data-parallel SGD steps on each framework's own engine (2 CPU "
                    "replicas) against single-device training and the NumPy reference's "
                    "per-replica BatchNorm prediction.")
    p.add_argument("--backends", default=None,
                   help=f"default: all ({','.join(BACKENDS)}); with --device cuda "
                        f"{','.join(GPU_BACKENDS)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default), or cuda: the PyTorch and JAX steps on GPUs")
    p.add_argument("--spec", default="d2l", help="a preset (default %(default)s)")
    p.add_argument("--size", type=int, default=32, help="input height and width (32)")
    p.add_argument("--batch", type=int, default=8, help="global batch (8)")
    p.add_argument("--steps", type=int, default=2, help="K, the SGD steps (2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--python", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--out", default="parity/runs/data-parallel",
                   help="run folder (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per backend")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case-dir", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        worker(args.worker, args.case_dir, args.device)
        return 0
    default = GPU_BACKENDS if args.device == "cuda" else tuple(BACKENDS)
    backends = [b for b in (args.backends or ",".join(default)).split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; known: {sorted(BACKENDS)}")
    if args.device == "cuda" and set(backends) - set(GPU_BACKENDS):
        raise SystemExit(f"--device cuda runs {', '.join(GPU_BACKENDS)} only (this project's "
                         f"TensorFlow and MXNet environments are CPU builds); got {backends}")
    pythons = parse_pythons(args.python)
    case = make_case(args.spec, size=args.size, batch=args.batch, steps=args.steps,
                     seed=args.seed)
    folder = prepare(case, Path(args.out) / "case")
    params, inputs = folder.read_weights(case), folder.read_inputs()
    preds = predictions(case, params, inputs)
    rows: list[Row] = []
    failed: dict[str, str] = {}
    for b in backends:
        print(f"{b}: running {REPLICAS} replicas ...", flush=True)
        try:
            result = run_backend(b, folder, python=pythons.get(b), timeout=args.timeout,
                                 device=args.device)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            failed[b] = str(e)
            print(f"{b}: {e}", file=sys.stderr)
            continue
        rows += compare_backend(b, result, preds)
    gpu = gpu_line(args.device)
    text = render(rows, case, args.device, gpu)
    for b, why in failed.items():
        text += f"\n{b}: the worker failed\n```\n{why}\n```\n"
    write_text_atomic(Path(args.out) / "report.md", text)
    write_text_atomic(Path(args.out) / "report.json", json.dumps(
        {"case": case.to_dict(), "device": args.device, "gpu": gpu,
         "rows": [asdict(r) | {"ok": r.ok} for r in rows], "failed": failed}, indent=1))
    print(text)
    return 0 if rows and not failed and all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
