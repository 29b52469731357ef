"""The run folder: its file names, the keys of its result arrays, reading and writing.

This module is the one place that knows the format. The harness (runner,
comparison, report) and the workers (in every backend's interpreter, MXNet's
numpy 1.23 included: numpy, json and safetensors only) read and write the
run folder through it.

Layout::

    <run>/
      report.json  report.md                     the reports (schema below)
      _workers/<backend>.<phase>.log              each worker's stdout and stderr
      _workers/<backend>.<phase>.events.jsonl     its progress events, one JSON object a line
      _workers/<backend>.missing.json             why a backend could not be imported
      <case>/
        case.json                                 the case (Case.to_dict)
        weights.safetensors                       its canonical weights (a checkpoint)
        inputs.npz                                x, labels, traj_x (K, N, C, H, W), traj_labels (K, N)
        reference.npz                             the float64 NumPy reference (oracle.py)
        <backend>/<device>.json                   per-check status, error, seconds, notes, shapes
        <backend>/<device>.npz                    the backend's results
        <backend>/export.safetensors              the copy check's export (phase main)
        <backend>/copy_from_<A>.npz               phase copy: this backend's export of A's export
        <backend>/copy_phase.json                 phase copy: per-source status

**Result keys.** Every array in a result or reference ``.npz`` is named
``check::kind::name`` (:func:`key`, read back by :func:`split_key` and
:func:`select`): ``eval::stage::block1``, ``eval::output::logits``,
``train::running::features.norm0.running_mean``, ``grad::value::loss``,
``grad::param::features.conv0.weight``, ``grad::value::input``,
``trajectory::value::losses``, ``trajectory::param::classifier.bias``. The
reference adds ``trajectory::value::loss0`` (the first loss, always computed),
``<check>::spread::<item>`` (the conditioning probe: how far the reference
itself moves, ``max|probe - reference|``, absolute) and
``<check>::probe::rel`` (the probe's relative size).

**report.json** (``FORMAT``), the keys another program may rely on::

    format        "densenet_multi.parity/2"
    created       UTC time, ISO 8601
    argv          the command line
    exit_status   0 or 1
    require_all   bool
    machine       {"platform", "machine", "processor", "cpu_count", "python"}
    versions      {backend: {package: version}}   (python, numpy, the framework(s))
    tolerances    {"check/dtype": tolerance}
    items         one entry per compared item, flat, in report order:
                  {"case", "check", "subject", "against", "name", "error", "tolerance",
                   "status"}
                  subject: a backend ("torch"), a pair ("torch~flax") or a copy chain
                  ("torch->flax"); against: "reference", "spec", "canonical", "cpu" or the
                  pair's second backend; name: the stage, parameter or statistic; error:
                  max|a - b| / max|b| (float; null when not computed: a missing or misshapen
                  item, or a NaN / inf, which is always FAIL); status: a Status value
    cells         one entry per (case, check, subject): its status and message, also
                  those with no items (a crashed worker, a missing backend)
    cases         per case: the case, its folder, contract notes, and the full comparisons
    baseline      (with --baseline) the baseline comparison, see baseline.py
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EXIT_MISSING",
    "FORMAT",
    "CaseFolder",
    "RunFolder",
    "key",
    "kinds",
    "select",
    "split_key",
    "write_atomic",
]

FORMAT = "densenet_multi.parity/2"
#: Exit status of a worker whose backend cannot be imported (reported as missing).
EXIT_MISSING = 3
SEP = "::"


# ---------------------------------------------------------------------- result keys
def key(check: str, kind: str, name: str) -> str:
    """The array name of item ``name`` of ``kind`` in ``check``."""
    for part in (check, kind):
        if SEP in part or not part:
            raise ValueError(f"bad key part {part!r}")
    return f"{check}{SEP}{kind}{SEP}{name}"


def split_key(k: str) -> tuple[str, str, str]:
    """``"grad::param::features.conv0.weight"`` -> ``("grad", "param", "features.conv0.weight")``."""
    parts = k.split(SEP, 2)
    if len(parts) != 3:
        raise ValueError(f"not a result key: {k!r}")
    return parts[0], parts[1], parts[2]


def select(arrays: Mapping[str, np.ndarray], check: str, kind: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of the items of ``kind`` in ``check``."""
    out = {}
    for k, v in arrays.items():
        c, kd, name = split_key(k)
        if c == check and kd == kind:
            out[name] = v
    return out


def kinds(arrays: Mapping[str, np.ndarray], check: str) -> set[tuple[str, str]]:
    """Every ``(kind, name)`` of ``check`` present in ``arrays``."""
    return {split_key(k)[1:] for k in arrays if split_key(k)[0] == check}


# ---------------------------------------------------------------------- files
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it: whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str))


def load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``path``, or None when there is no such file (never ``{}`` for a missing one)."""
    if not path.exists():
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


class CaseFolder:
    """One case's folder: its inputs, its reference and every backend's results."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.case_json = self.path / "case.json"
        self.weights = self.path / "weights.safetensors"
        self.inputs = self.path / "inputs.npz"
        self.reference = self.path / "reference.npz"

    def __repr__(self) -> str:
        return f"CaseFolder({str(self.path)!r})"

    # -- the case: written by the harness, read by the workers and the comparison
    def write_case(self, case: Any, params: Mapping[str, np.ndarray],
                   inputs: Mapping[str, np.ndarray]) -> None:
        from .. import checkpoint

        self.path.mkdir(parents=True, exist_ok=True)
        checkpoint.save(self.weights, dict(params), case.build_spec(), dtype=case.dtype,
                        overwrite=True)
        np.savez(self.inputs, **inputs)
        save_json(self.case_json, case.to_dict())

    def read_case(self) -> Any:
        from .cases import Case

        return Case.from_dict(json.loads(self.case_json.read_text()))

    def read_weights(self, case: Any) -> dict[str, np.ndarray]:
        from .. import checkpoint

        params, _ = checkpoint.load(self.weights, case.build_spec(), dtype=case.dtype)
        return params

    def read_inputs(self) -> dict[str, np.ndarray]:
        arrays = load_npz(self.inputs)
        if arrays is None:
            raise FileNotFoundError(self.inputs)
        return arrays

    def write_reference(self, arrays: Mapping[str, np.ndarray]) -> None:
        save_npz(self.reference, arrays)

    def read_reference(self) -> dict[str, np.ndarray] | None:
        return load_npz(self.reference)

    # -- one backend's results
    def backend_dir(self, backend: str) -> Path:
        return self.path / backend

    def result_files(self, backend: str, device: str) -> tuple[Path, Path]:
        d = self.backend_dir(backend)
        return d / f"{device}.json", d / f"{device}.npz"

    def write_result(self, backend: str, device: str, report: Mapping[str, Any],
                     arrays: Mapping[str, np.ndarray]) -> None:
        self.backend_dir(backend).mkdir(parents=True, exist_ok=True)
        js, npz = self.result_files(backend, device)
        save_npz(npz, arrays)
        save_json(js, report)  # last: its presence says the result is complete

    def read_result(self, backend: str, device: str
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        js, npz = self.result_files(backend, device)
        report = load_json(js)
        if report is None:
            return None
        return report, load_npz(npz) or {}

    def export_file(self, backend: str) -> Path:
        return self.backend_dir(backend) / "export.safetensors"

    def write_export(self, backend: str, arrays: Mapping[str, np.ndarray]) -> None:
        from safetensors.numpy import save_file

        self.backend_dir(backend).mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                  str(self.export_file(backend)))

    def read_export(self, backend: str) -> dict[str, np.ndarray] | None:
        path = self.export_file(backend)
        if not path.exists():
            return None
        from safetensors.numpy import load_file

        return load_file(str(path))

    def copy_file(self, backend: str, source: str) -> Path:
        return self.backend_dir(backend) / f"copy_from_{source}.npz"

    def write_copy(self, backend: str, source: str, arrays: Mapping[str, np.ndarray]) -> None:
        save_npz(self.copy_file(backend, source), arrays)

    def read_copy(self, backend: str, source: str) -> dict[str, np.ndarray] | None:
        return load_npz(self.copy_file(backend, source))

    def write_copy_phase(self, backend: str, report: Mapping[str, Any]) -> None:
        self.backend_dir(backend).mkdir(parents=True, exist_ok=True)
        save_json(self.backend_dir(backend) / "copy_phase.json", report)

    def read_copy_phase(self, backend: str) -> dict[str, Any]:
        return load_json(self.backend_dir(backend) / "copy_phase.json") or {}


class RunFolder:
    """The run folder: the cases, the workers' logs and events, the reports."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.workers = self.path / "_workers"
        self.report_json = self.path / "report.json"
        self.report_md = self.path / "report.md"

    def create(self) -> None:
        self.workers.mkdir(parents=True, exist_ok=True)

    def clear_workers(self) -> None:
        """Remove an earlier run's worker logs and events (another run's plan names its
        workers differently: ``flax.main`` or ``flax.main-1``, ``flax.main-2``)."""
        if self.workers.is_dir():
            shutil.rmtree(self.workers)
        self.create()

    def case(self, dirname: str) -> CaseFolder:
        return CaseFolder(self.path / dirname)

    def new_cases(self, names: Iterable[str]) -> list[CaseFolder]:
        """Empty folders for cases ``names``, in order (unique, file-system safe names)."""
        taken: set[str] = set()
        out = []
        for name in names:
            base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "case"
            dirname, i = base, 2
            while dirname in taken:
                dirname, i = f"{base}-{i}", i + 1
            taken.add(dirname)
            d = self.path / dirname
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            out.append(CaseFolder(d))
        return out

    def worker_log(self, backend: str, phase: str) -> Path:
        return self.workers / f"{backend}.{phase}.log"

    def worker_events(self, backend: str, phase: str) -> Path:
        return self.workers / f"{backend}.{phase}.events.jsonl"

    def worker_missing(self, backend: str) -> Path:
        return self.workers / f"{backend}.missing.json"

    def write_missing(self, backend: str, info: Mapping[str, Any]) -> None:
        self.workers.mkdir(parents=True, exist_ok=True)
        save_json(self.worker_missing(backend), info)

    def write_reports(self, data: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
        """report.json and report.md, both texts made first, then each file atomically: a
        failure (a full disk) leaves the previous reports or none, never a truncated one."""
        texts = {self.report_json: json.dumps(data, indent=1, default=str),
                 self.report_md: markdown}
        for path, text in texts.items():
            write_atomic(path, text)
        return self.report_json, self.report_md

    def drop_copies(self) -> None:
        """The second-phase copies are compared already; they'd be most of the folder's size."""
        for f in self.path.glob("*/*/copy_from_*.npz"):
            f.unlink()
