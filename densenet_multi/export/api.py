"""``export_onnx(src, out)``: a canonical checkpoint to a verified ONNX graph, through a backend's exporter.

The core side. It validates the request first (the checkpoint, read completely by
:func:`densenet_multi.checkpoint.load`; the output path; the backend), then runs
:mod:`densenet_multi.export.worker` in the backend's environment with the parity
harness's interpreter lookup (:func:`~densenet_multi.parity.runner.resolve_python`,
:func:`~densenet_multi.parity.runner.worker_env`). The worker exports, verifies the
graph in onnxruntime against the float64 reference and the model, and writes the
file atomically; a failure anywhere leaves nothing at ``out``. SRC is a canonical
checkpoint (safetensors with the spec in its metadata) or any file the converters
read (:func:`densenet_multi.convert.api.read_canonical`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..backend import BACKENDS, DTYPES
from ..parity.runner import find_project_root, resolve_python, worker_env
from ..spec import DenseNetSpec

__all__ = ["EXPORTERS", "ExportFailed", "ExportReport", "export_onnx"]

#: backend -> the exporter its onnx_export module uses
EXPORTERS = {
    "torch": "torch.onnx.export (dynamo=True: torch.export + onnxscript)",
    "flax": "jax2onnx.to_onnx",
    "keras": "keras.Model.export(format='onnx') (tf2onnx)",
    "gluon": "mxnet.onnx.export_model (mx2onnx)",
}
DEFAULT_TIMEOUT_S = 1800.0


class ExportFailed(RuntimeError):
    """The backend's exporter (or the verification of its graph) failed; nothing was written."""


@dataclass
class ExportReport:
    backend: str
    src: str
    out: str
    spec: str
    dtype: str
    opset: int
    exporter: str
    versions: dict[str, str]
    verified: bool
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    tolerance: float | None = None
    input: list[int] = field(default_factory=list)
    note: str = ""
    runtime: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportReport:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def export_onnx(src: str | os.PathLike, out: str | os.PathLike, *, backend: str = "torch",
                dtype: str | None = None, opset: int | None = None, overwrite: bool = False,
                spec: str | os.PathLike | DenseNetSpec | None = None, python: str | None = None,
                timeout: float = DEFAULT_TIMEOUT_S) -> ExportReport:
    """Export ``src`` (a canonical checkpoint or any file the converters read) to the ONNX
    file ``out`` through ``backend``'s exporter, verified (module docstring). ``dtype`` None
    keeps the file's; ``spec`` is for a file that does not say its network (as for
    ``convert``); ``python`` overrides the backend environment's interpreter."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends are {sorted(BACKENDS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if opset is not None and opset < 7:
        raise ValueError(f"opset must be an ONNX opset number (7 or newer), got {opset}")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint at {src}")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give the path of the .onnx file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    with tempfile.TemporaryDirectory() as tmp:
        return _export(_canonical(src, spec, Path(tmp)), src, out, backend=backend, dtype=dtype,
                       opset=opset, overwrite=overwrite, python=python, timeout=timeout)


def _canonical(src: Path, spec: str | os.PathLike | DenseNetSpec | None, tmp: Path) -> Path:
    """``src`` as a canonical checkpoint: itself (read and validated completely), or any
    other file the converters read (:func:`densenet_multi.convert.api.read_canonical`:
    torchvision, keras.applications, Gluon zoo, the backends' native files), written to
    ``tmp``."""
    from ..convert.detect import sniff_format

    if sniff_format(src) == "canonical":
        checkpoint.load(src, spec if isinstance(spec, DenseNetSpec) else None, dtype=None)
        return src
    from ..convert.api import read_canonical

    params, found = read_canonical(src, spec=spec)
    return checkpoint.save(tmp / "canonical.safetensors", params, found.spec)


def _export(canonical: Path, src: Path, out: Path, *, backend: str, dtype: str | None,
            opset: int | None, overwrite: bool, python: str | None, timeout: float) -> ExportReport:
    root = find_project_root()
    exe, origin = resolve_python(backend, {backend: python} if python else None, root)
    if not exe or not Path(exe).exists():
        env = BACKENDS[backend][2]
        raise ExportFailed(f"no interpreter for {backend} at {exe or '(none)'} ({origin}): build "
                           f"its env with `tox -e {env} --notest`, or pass --python PATH")
    with tempfile.TemporaryDirectory() as tmp:
        report_path, log = Path(tmp) / "report.json", Path(tmp) / "worker.log"
        cmd = [exe, "-m", "densenet_multi.export.worker", "--backend", backend, "--src",
               str(canonical.resolve()), "--out", str(out.resolve()), "--report", str(report_path)]
        cmd += ["--dtype", dtype] if dtype else []
        cmd += ["--opset", str(opset)] if opset is not None else []
        cmd += ["--overwrite"] if overwrite else []
        with open(log, "w") as logf:
            try:
                proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=timeout,
                                      env=worker_env(backend, ["cpu"], False, root),
                                      cwd=str(root or Path.cwd()))
            except subprocess.TimeoutExpired:
                raise ExportFailed(f"{backend}'s export ran past {timeout:g} s") from None
        tail = "\n".join(log.read_text(errors="replace").rstrip().splitlines()[-20:])
        if not report_path.exists():
            raise ExportFailed(f"{backend}'s export worker exited with status {proc.returncode} "
                               f"and no report:\n{tail}")
        data = json.loads(report_path.read_text())
    if proc.returncode != 0 or "error" in data:
        if data.get("type") == "FileExistsError":
            raise FileExistsError(data["error"].partition(": ")[2])
        raise ExportFailed(f"{backend} ({EXPORTERS[backend]}) failed: {data.get('error')}\n"
                           f"{data.get('traceback', tail)}")
    data["src"] = str(src)
    return ExportReport.from_dict(data)
