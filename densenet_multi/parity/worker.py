"""The parity worker: runs one backend on the cases of a run folder, in that backend's interpreter.

Started by the runner as ``python -m densenet_multi.parity.worker ...`` with the
interpreter of the backend's environment (``.tox/<env>/bin/python``). It
imports only numpy, safetensors and densenet_multi itself -- plus the backend,
which imports its framework. It never compares anything: it writes canonical
results (NCHW activations, OIHW kernels, torchvision names) to the run folder
(:mod:`.runfolder` owns its format), and the harness process compares them.

Two phases:

* ``main``: per case and device, the checks of the case, in ``cases.CHECKS``
  order: ``shapes`` (the model as built, before loading any weights, so a
  wrong width shows as a shape and not as a load error), ``eval``, ``train``,
  ``grad``, ``trajectory`` (K SGD steps, one per batch of ``traj_x``),
  ``copy`` (load the case's canonical weights, export them again). Every check
  starts from the case's weights, loaded afresh.
* ``copy``: load every other backend's export of phase ``main`` and export
  it again (canonical -> A -> canonical -> B -> canonical).

A contract function raising :class:`NotImplementedError` marks its check
"unsupported"; any other exception marks it "error" with its traceback, and
the other checks still run. A backend that cannot be imported makes the worker
exit with :data:`runfolder.EXIT_MISSING` after writing the reason.
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

from ..backend import BACKENDS, CONTRACT, SGD_DEFAULTS, load_backend
from ..params import param_table
from .cases import CHECKS
from .runfolder import EXIT_MISSING, CaseFolder, RunFolder, key

__all__ = ["load_target", "main"]

#: Frameworks whose version the worker records, if the backend imported them.
FRAMEWORKS = ("torch", "jax", "flax", "optax", "tensorflow", "keras", "mxnet", "onnx", "onnxruntime")


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
    return "cuda" if "cuda" in available or "gpu" in available else None


def _attempt(fn: Callable[[], None]) -> dict[str, Any]:
    """Run one check; its entry for the result file (status, error, traceback, seconds)."""
    t0 = time.perf_counter()
    try:
        fn()
        entry: dict[str, Any] = {"status": "done"}
    except NotImplementedError as e:
        entry = {"status": "unsupported", "error": f"NotImplementedError: {e}"}
    except Exception as e:  # noqa: BLE001 - every failure is reported, the rest still runs
        entry = {"status": "error", "error": f"{type(e).__name__}: {e}",
                 "traceback": traceback.format_exc()[-4000:]}
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry


# ---------------------------------------------------------------------- phase main
class _CaseRun:
    """One backend on one case on one device: every check, results in ``arrays``/``report``."""

    def __init__(self, be: Any, name: str, folder: CaseFolder, device: str) -> None:
        self.be, self.name, self.folder, self.device = be, name, folder, device
        self.case = folder.read_case()
        self.spec = self.case.build_spec()
        self.params = folder.read_weights(self.case)
        self.inputs = folder.read_inputs()
        self.arrays: dict[str, np.ndarray] = {}
        self.report: dict[str, Any] = {"backend": name, "device": device, "case": self.case.name,
                                       "checks": {}, "notes": [], "versions": _versions()}
        self.notes: list[str] = self.report["notes"]
        self.bdev: str | None = None
        self._model: Any = None

    def checks(self) -> list[str]:
        """The case's checks this device runs (shapes and copying don't depend on it)."""
        skip = ("device",) if self.device == "cpu" else ("device", "shapes", "copy")
        return [c for c in CHECKS if self.case.has(c) and c not in skip]

    def build(self) -> Any:
        return self.be.build(self.spec, device=self.bdev, seed=self.case.seed,
                             dtype=self.case.dtype)

    def loaded(self) -> Any:
        """The model with the case's weights (built once, reloaded for every check)."""
        if self._model is None:
            self._model = self.build()
        self.be.load_canonical(self._model, self.params)
        return self._model

    def put(self, check: str, kind: str, name: str, value: Any, what: str) -> None:
        self.arrays[key(check, kind, name)] = _np(value, what, self.notes)

    def shapes(self) -> None:
        # The model as built, not loaded: a wrong width shows up here as a shape,
        # not as a load_canonical error. The later checks load the case's weights into
        # this same model (one build per case, not two: seconds for the big nets).
        self._model = self.build()
        out = self.be.run(self._model, self.inputs["x"], train=False)
        shapes = {k: list(np.shape(v)) for k, v in out.stages.items()}
        shapes["@logits"] = list(np.shape(out.logits))
        self.report["shapes"] = shapes

    def forward(self, check: str) -> None:
        train = check == "train"
        out = self.be.run(self.loaded(), self.inputs["x"], train=train)
        for k, v in out.stages.items():
            self.put(check, "stage", k, v, f"run(train={train}).stages[{k!r}]")
        self.put(check, "output", "logits", out.logits, "run().logits")
        if train and out.running is None:
            self.notes.append("run(train=True) returned running=None")
        for k, v in (out.running or {}).items() if train else ():
            self.put(check, "running", k, v, f"running[{k!r}]")

    def grad(self) -> None:
        g = self.be.gradients(self.loaded(), self.inputs["x"], self.inputs["labels"])
        self.arrays[key("grad", "value", "loss")] = np.asarray(float(g.loss))
        self.put("grad", "value", "input", g.input, "GradOutput.input")
        for k, v in g.params.items():
            self.put("grad", "param", k, v, f"GradOutput.params[{k!r}]")

    def trajectory(self) -> None:
        m = self.loaded()
        tx, tl = self.inputs["traj_x"], self.inputs["traj_labels"]
        losses = self.be.train_steps(m, [(tx[i], tl[i]) for i in range(tx.shape[0])],
                                     **SGD_DEFAULTS)
        self.arrays[key("trajectory", "value", "losses")] = np.asarray([float(v) for v in losses])
        trainable = {p.name for p in param_table(self.spec) if p.trainable}
        for k, v in self.be.export_canonical(m).items():
            if k in trainable:
                self.put("trajectory", "param", k, v, f"export_canonical()[{k!r}]")

    def copy(self) -> None:
        exported = self.be.export_canonical(self.loaded())
        self.report["export_order"] = list(exported)
        self.folder.write_export(self.name, {
            str(k): _np(v, f"export_canonical()[{k!r}]", self.notes) for k, v in exported.items()})

    def steps(self) -> dict[str, Callable[[], None]]:
        return {"shapes": self.shapes, "eval": lambda: self.forward("eval"),
                "train": lambda: self.forward("train"), "grad": self.grad,
                "trajectory": self.trajectory, "copy": self.copy}


def run_case(be: Any, name: str, folder: CaseFolder, device: str, events: _Events) -> None:
    """Every check of one case on one device; writes ``<backend>/<device>.json|.npz``."""
    r = _CaseRun(be, name, folder, device)
    if device != "cpu" and r.case.device != device:
        return  # this case runs on the CPU only
    r.report["backend_devices"] = [str(d) for d in be.devices()]
    r.bdev = _backend_device(be, device)
    steps = r.steps()
    for c in r.checks():
        if r.bdev is None:
            entry = {"status": "not available",
                     "error": f"backend offers devices {r.report['backend_devices']}"}
        else:
            events(case=r.case.name, device=device, check=c, status="running")
            entry = _attempt(steps[c])
            if entry["status"] == "error":
                r._model = None  # a failed check may leave the model half-updated: rebuild
        r.report["checks"][c] = entry
        events(case=r.case.name, device=device, check=c, status=entry["status"],
               seconds=entry.get("seconds"))
    folder.write_result(name, device, r.report, r.arrays)


# ---------------------------------------------------------------------- phase copy
def copy_case(be: Any, name: str, folder: CaseFolder, sources: Sequence[str],
              events: _Events) -> None:
    """canonical -> A -> canonical (A's export) -> this backend -> canonical, for every A."""
    case = folder.read_case()
    report: dict[str, Any] = {"backend": name, "case": case.name, "sources": {}, "notes": []}
    model: list[Any] = []  # built on first use

    def load_and_export(exported: dict[str, np.ndarray], src: str) -> None:
        if not model:
            model.append(be.build(case.build_spec(), device="cpu", seed=case.seed,
                                  dtype=case.dtype))
        be.load_canonical(model[0], exported)
        arr = {str(k): _np(v, f"export_canonical()[{k!r}]", report["notes"])
               for k, v in be.export_canonical(model[0]).items()}
        folder.write_copy(name, src, arr)

    for src in sources:
        exported = None if src == name else folder.read_export(src)
        if exported is None:
            continue
        events(case=case.name, device="cpu", check=f"copy<-{src}", status="running")
        entry = _attempt(lambda e=exported, s=src: load_and_export(e, s))
        if entry["status"] == "error":
            model.clear()
        report["sources"][src] = entry
        events(case=case.name, device="cpu", check=f"copy<-{src}", status=entry["status"])
    folder.write_copy_phase(name, report)


# ---------------------------------------------------------------------- entry point
def _parser() -> argparse.ArgumentParser:
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = RunFolder(args.run_dir)
    events = _Events(args.events)
    try:
        be = load_target(args.backend, args.target)
    except Exception as e:  # noqa: BLE001 - any import failure makes the backend MISSING
        reason = f"{type(e).__name__}: {e}"
        run.write_missing(args.backend, {"backend": args.backend, "reason": reason,
                                         "traceback": traceback.format_exc()[-4000:]})
        print(f"backend {args.backend} cannot be imported: {reason}", file=sys.stderr)
        return EXIT_MISSING
    events(status="imported", versions=_versions())
    folders = [run.case(c) for c in args.cases.split(",") if c]
    if args.phase == "copy":
        for f in folders:
            copy_case(be, args.backend, f, [s for s in args.sources.split(",") if s], events)
        return 0
    for device in [d for d in args.devices.split(",") if d]:
        if device != "cpu":
            _configure_precision(device, args.allow_tf32)
        for f in folders:
            run_case(be, args.backend, f, device, events)
    events(status="finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
