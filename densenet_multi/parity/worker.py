"""The parity worker: runs one backend on the cases of a run folder, in that backend's interpreter.

Started by the runner as ``python -m densenet_multi.parity.worker ...`` with the
interpreter of the backend's environment (``.tox/<env>/bin/python``). It
imports only numpy, safetensors and densenet_multi itself -- plus the backend,
which imports its framework. It never compares anything: it writes canonical
results (NCHW activations, OIHW kernels, torchvision names) to the run folder,
and the harness process compares them.

Two phases:

* ``main``: per case and device, the checks of the case: ``shapes`` (the model
  as built, before loading any weights, so a wrong width shows as a shape and
  not as a load error), ``copy`` (load the case's canonical weights, export
  them again), ``eval``, ``train``, ``grad``, ``trajectory``. Every check starts
  from the case's weights, loaded afresh.
* ``copy``: load every other backend's export of phase ``main`` and export
  it again (canonical -> A -> canonical -> B -> canonical).

A contract function raising :class:`NotImplementedError` marks its check
"unsupported"; any other exception marks it "error" with its traceback, and
the other checks still run. A backend that cannot be imported makes the worker
exit with :data:`EXIT_MISSING` after writing the reason to ``missing.json``.

Files, under the run folder:

* ``<case>/<backend>/<device>.json``: per-check status, error, seconds, notes;
* ``<case>/<backend>/<device>.npz``: the results (keys ``check::item``);
* ``<case>/<backend>/export.safetensors``: the ``copy`` export of phase main;
* ``<case>/<backend>/copy_from_<A>.npz``: phase copy, B's export of A's export;
* ``_workers/<backend>.<phase>.events.jsonl``: progress, one JSON object a line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import checkpoint
from ..backend import BACKENDS, CONTRACT, SGD_DEFAULTS, load_backend
from ..params import param_table
from .cases import Case

__all__ = ["EXIT_MISSING", "SEP", "load_target", "main"]

#: Exit status of a worker whose backend cannot be imported (reported as MISSING).
EXIT_MISSING = 3
#: Separator of check and item in the keys of a result .npz.
SEP = "::"
#: Frameworks whose version the worker records, if the backend imported them.
FRAMEWORKS = ("torch", "jax", "flax", "optax", "tensorflow", "keras", "mxnet")


class _Contract:
    """A backend given as an object (``module:attr``) seen as a module-like namespace."""

    def __init__(self, obj: Any, name: str) -> None:
        self._obj, self.__name__ = obj, name

    def __getattr__(self, item: str) -> Any:
        return getattr(self._obj, item)


def load_target(name: str, target: str | None) -> Any:
    """The backend to test: ``backend.load_backend(name)``, or ``target`` =
    ``package.module``, ``package.module:attr`` or ``path/to/file.py:attr``
    (the fake backends of the tests). Raises ImportError when it can't be had."""
    if not target:
        return load_backend(name)
    modname, _, attr = target.partition(":")
    if modname.endswith(".py") or os.sep in modname or "/" in modname:
        path = Path(modname).resolve()
        if not path.exists():
            raise ImportError(f"no backend module file {path}")
        spec = importlib.util.spec_from_file_location(f"_parity_target_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        mod: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(modname)
    obj: Any = _Contract(getattr(mod, attr), target) if attr else mod
    missing = [f for f in CONTRACT if not callable(getattr(obj, f, None))]
    if missing:
        raise ImportError(f"backend {name!r} ({target}) lacks {missing}")
    return obj


# ---------------------------------------------------------------------- helpers
class _Events:
    def __init__(self, path: Path | None) -> None:
        self.f = open(path, "a") if path else None

    def __call__(self, **event: Any) -> None:
        if self.f:
            self.f.write(json.dumps({"t": time.time(), **event}) + "\n")
            self.f.flush()


def _np(value: Any, what: str, notes: list[str]) -> np.ndarray:
    """A result as a numpy array; anything else is a contract violation, noted."""
    if not isinstance(value, np.ndarray):
        notes.append(f"{what} is a {type(value).__module__}.{type(value).__name__}, "
                     "not a numpy array")
    return np.asarray(value)


def _configure_precision(device: str, allow_tf32: bool) -> None:
    """Switch off TF32 / reduced-precision matmuls in the frameworks the backend imported.

    Only frameworks already in ``sys.modules`` are touched: the worker never
    imports a framework of its own accord. (The runner also sets
    NVIDIA_TF32_OVERRIDE=0 and JAX_DEFAULT_MATMUL_PRECISION=highest in the
    worker's environment, which covers TensorFlow and JAX before import.)
    """
    if allow_tf32:
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if hasattr(torch, "set_float32_matmul_precision"):
            torch.set_float32_matmul_precision("highest")
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.config.update("jax_default_matmul_precision", "highest")
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "config"):
        try:
            tf.config.experimental.enable_tensor_float_32_execution(False)
        except Exception:  # pragma: no cover - TF without the switch
            pass


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    for name in FRAMEWORKS:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def _backend_device(be: Any, device: str) -> str | None:
    """The name this backend uses for ``device``, or None if it can't run there."""
    available = [str(d).lower() for d in be.devices()]
    if device == "cpu":
        return "cpu" if "cpu" in available or not available else None
    for alias in ("cuda", "gpu"):
        if alias in available:
            return alias
    return None


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _save_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------- phase main
def run_case(be: Any, name: str, case_dir: Path, device: str, events: _Events) -> None:
    case = Case.from_dict(json.loads((case_dir / "case.json").read_text()))
    if device != "cpu" and case.device != device:
        return  # this case runs on the CPU only
    spec = case.build_spec()
    params, _ = checkpoint.load(case_dir / "weights.safetensors", spec, dtype=case.dtype)
    with np.load(case_dir / "inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    x, labels = inputs["x"], inputs["labels"]
    out_dir = case_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)

    arrays: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {"backend": name, "device": device, "case": case.name,
                              "checks": {}, "notes": [], "versions": _versions()}
    notes: list[str] = report["notes"]
    checks = [c for c in case.checks if c != "device"]
    if device != "cpu":  # shapes and copying don't depend on the device
        checks = [c for c in checks if c not in ("shapes", "copy")]

    bdev = _backend_device(be, device)
    report["backend_devices"] = [str(d) for d in be.devices()]
    if bdev is None:
        for c in checks:
            report["checks"][c] = {"status": "not available",
                                   "error": f"backend offers devices {report['backend_devices']}"}
            events(case=case.name, device=device, check=c, status="not available")
        _save_json(out_dir / f"{device}.json", report)
        return

    model: Any = None

    def fresh_model() -> Any:
        nonlocal model
        if model is None:
            model = be.build(spec, device=bdev, seed=case.seed, dtype=case.dtype)
        return model

    def loaded_model() -> Any:
        m = fresh_model()
        be.load_canonical(m, params)
        return m

    def do_shapes() -> None:
        # The model as built, with its framework's own initialisation: a wrong
        # width then shows up here as a shape, not as a load_canonical error.
        m = be.build(spec, device=bdev, seed=case.seed, dtype=case.dtype)
        out = be.run(m, x, train=False)
        shapes = {k: list(np.shape(v)) for k, v in out.stages.items()}
        shapes["@logits"] = list(np.shape(out.logits))
        report["shapes"] = shapes

    def do_copy() -> None:
        m = loaded_model()
        exported = be.export_canonical(m)
        arr = {str(k): _np(v, f"export_canonical()[{k!r}]", notes) for k, v in exported.items()}
        report["export_order"] = list(exported)
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arr.items()},
                  str(out_dir / "export.safetensors"))

    def put_forward(check: str, out: Any, running: bool) -> None:
        for k, v in out.stages.items():
            arrays[f"{check}{SEP}stage{SEP}{k}"] = _np(v, f"run(train={running}).stages[{k!r}]",
                                                       notes)
        arrays[f"{check}{SEP}logits"] = _np(out.logits, "run().logits", notes)
        if running:
            if out.running is None:
                notes.append("run(train=True) returned running=None")
            for k, v in (out.running or {}).items():
                arrays[f"{check}{SEP}running{SEP}{k}"] = _np(v, f"running[{k!r}]", notes)

    def do_eval() -> None:
        put_forward("eval", be.run(loaded_model(), x, train=False), False)

    def do_train() -> None:
        put_forward("train", be.run(loaded_model(), x, train=True), True)

    def do_grad() -> None:
        g = be.gradients(loaded_model(), x, labels)
        arrays[f"grad{SEP}loss"] = np.asarray(float(g.loss))
        arrays[f"grad{SEP}input"] = _np(g.input, "GradOutput.input", notes)
        for k, v in g.params.items():
            arrays[f"grad{SEP}param{SEP}{k}"] = _np(v, f"GradOutput.params[{k!r}]", notes)

    def do_trajectory() -> None:
        m = loaded_model()
        batches = [(inputs["traj_x"][i], inputs["traj_labels"][i])
                   for i in range(inputs["traj_x"].shape[0])]
        losses = be.train_steps(m, batches, **SGD_DEFAULTS)
        arrays[f"trajectory{SEP}losses"] = np.asarray([float(v) for v in losses])
        trainable = {p.name for p in param_table(spec) if p.trainable}
        for k, v in be.export_canonical(m).items():
            if k in trainable:
                arrays[f"trajectory{SEP}param{SEP}{k}"] = _np(v, f"export[{k!r}]", notes)

    steps: dict[str, Callable[[], None]] = {
        "shapes": do_shapes, "copy": do_copy, "eval": do_eval, "train": do_train,
        "grad": do_grad, "trajectory": do_trajectory,
    }
    for c in [c for c in ("shapes", "copy", "eval", "train", "grad", "trajectory") if c in checks]:
        events(case=case.name, device=device, check=c, status="running")
        t0 = time.perf_counter()
        entry: dict[str, Any]
        try:
            steps[c]()
            entry = {"status": "done"}
        except NotImplementedError as e:
            entry = {"status": "unsupported", "error": f"NotImplementedError: {e}"}
        except Exception as e:  # noqa: BLE001 - every failure is reported, the rest still runs
            entry = {"status": "error", "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-4000:]}
            model = None  # a failed check may leave the model half-updated: rebuild
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        report["checks"][c] = entry
        events(case=case.name, device=device, check=c, status=entry["status"],
               seconds=entry["seconds"])
    _save_npz(out_dir / f"{device}.npz", arrays)
    _save_json(out_dir / f"{device}.json", report)


# ---------------------------------------------------------------------- phase copy
def copy_case(be: Any, name: str, case_dir: Path, sources: Sequence[str], events: _Events) -> None:
    """canonical -> A -> canonical (A's export) -> this backend -> canonical, for every A."""
    from safetensors.numpy import load_file

    case = Case.from_dict(json.loads((case_dir / "case.json").read_text()))
    spec = case.build_spec()
    out_dir = case_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"backend": name, "case": case.name, "sources": {}, "notes": []}
    model: Any = None
    for src in sources:
        if src == name:
            continue
        path = case_dir / src / "export.safetensors"
        if not path.exists():
            continue
        events(case=case.name, device="cpu", check=f"copy<-{src}", status="running")
        t0 = time.perf_counter()
        try:
            if model is None:
                model = be.build(spec, device="cpu", seed=case.seed, dtype=case.dtype)
            be.load_canonical(model, load_file(str(path)))
            exported = be.export_canonical(model)
            arr = {str(k): _np(v, f"export_canonical()[{k!r}]", report["notes"])
                   for k, v in exported.items()}
            _save_npz(out_dir / f"copy_from_{src}.npz", arr)
            entry: dict[str, Any] = {"status": "done"}
        except NotImplementedError as e:
            entry = {"status": "unsupported", "error": f"NotImplementedError: {e}"}
        except Exception as e:  # noqa: BLE001
            entry = {"status": "error", "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-4000:]}
            model = None
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        report["sources"][src] = entry
        events(case=case.name, device="cpu", check=f"copy<-{src}", status=entry["status"])
    _save_json(out_dir / "copy_phase.json", report)


# ---------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.parity.worker")
    p.add_argument("--backend", required=True, help=f"a name: one of {sorted(BACKENDS)} or any")
    p.add_argument("--target", help="module, module:attr or file.py:attr offering the contract")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--cases", required=True, help="comma-separated case folder names")
    p.add_argument("--phase", choices=("main", "copy"), default="main")
    p.add_argument("--devices", default="cpu", help="comma-separated: cpu,cuda")
    p.add_argument("--sources", default="", help="phase copy: backends whose exports to load")
    p.add_argument("--allow-tf32", action="store_true")
    p.add_argument("--events", type=Path)
    args = p.parse_args(argv)

    events = _Events(args.events)
    try:
        be = load_target(args.backend, args.target)
    except Exception as e:  # noqa: BLE001 - any import failure makes the backend MISSING
        reason = f"{type(e).__name__}: {e}"
        _save_json(args.run_dir / "_workers" / f"{args.backend}.missing.json",
                   {"backend": args.backend, "reason": reason,
                    "traceback": traceback.format_exc()[-4000:]})
        print(f"backend {args.backend} cannot be imported: {reason}", file=sys.stderr)
        return EXIT_MISSING
    events(status="imported", versions=_versions())

    cases = [c for c in args.cases.split(",") if c]
    if args.phase == "copy":
        sources = [s for s in args.sources.split(",") if s]
        for c in cases:
            copy_case(be, args.backend, args.run_dir / c, sources, events)
        return 0
    for device in [d for d in args.devices.split(",") if d]:
        if device != "cpu":
            _configure_precision(device, args.allow_tf32)
        for c in cases:
            run_case(be, args.backend, args.run_dir / c, device, events)
    events(status="finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
