"""Execute the four teaching notebooks, each in its backend's environment.

The notebooks are jupytext percent scripts, ``notebooks/<backend>_densenet.py`` (the
source of truth), paired with ``notebooks/<backend>_densenet.ipynb`` (the same cells,
with the outputs of the last ``--sync``). Executing one here:

* reads the ``.py`` with jupytext, runs it with nbclient on the ``python3`` kernel of
  *this* interpreter (so it must be started in the backend's environment), with the
  source tree first on ``PYTHONPATH`` and ``OMP_NUM_THREADS=1`` unless set;
* reads the notebook's ``history`` dict back through a temporary last cell;
* writes, atomically, ``<out>/<backend>_densenet.ipynb`` (executed, with outputs),
  ``<out>/<backend>_history.json`` and, last, ``<out>/<backend>_densenet.fingerprint``.

:func:`ensure_executed` is what the guide's build calls from the ``docs`` environment,
which has no framework: it reuses the outputs when the fingerprint (the notebook and
every source file of the package) still matches, else runs this module in the
backend's tox environment as a subprocess, as the parity harness runs its workers::

    python -m densenet_multi.guide.notebooks torch --out docs/generated/notebooks
    python -m densenet_multi.guide.notebooks --sync --out docs/generated/notebooks

``--sync`` rewrites ``notebooks/*.ipynb`` from the ``.py`` and the executed outputs,
so that the committed notebooks carry outputs (it needs only jupytext and nbformat).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import source_root, write_text_atomic
from ..backend import BACKENDS

__all__ = ["SOURCE_ROOT", "SOURCES", "NotebookError", "NotebookReport", "fingerprint", "execute",
           "ensure_executed", "read_report", "sync", "main"]

#: the repository root: the folder holding ``densenet_multi/`` and ``notebooks/``
SOURCE_ROOT = source_root()
#: backend -> its notebook's jupytext percent script (the source of truth)
SOURCES: dict[str, Path] = {b: SOURCE_ROOT / "notebooks" / f"{b}_densenet.py" for b in BACKENDS}

#: seconds one cell may run (the whole notebook takes well under a minute)
CELL_TIMEOUT_S = 600
#: seconds the subprocess of :func:`ensure_executed` may run
SUBPROCESS_TIMEOUT_S = 1800
_MARK = "__densenet_multi_notebook_result__"
_RESULT_CELL = (
    "import json as _json, sys as _sys\n"
    f"print({_MARK!r} + _json.dumps({{'history': history, 'prefix': _sys.prefix}}))"
)


class NotebookError(RuntimeError):
    """A notebook could not be executed (a failing cell, a missing environment, ...)."""


def _check_backend(backend: str) -> Path:
    if backend not in SOURCES:
        raise ValueError(f"unknown backend {backend!r}; the notebooks are for {sorted(SOURCES)}")
    return SOURCES[backend]


def _paths(backend: str, out_dir: Path) -> tuple[Path, Path, Path]:
    out_dir = Path(out_dir)
    return (out_dir / f"{backend}_densenet.ipynb", out_dir / f"{backend}_history.json",
            out_dir / f"{backend}_densenet.fingerprint")


def fingerprint(backend: str) -> str:
    """sha256 over the backend's notebook script and every ``.py`` under
    ``densenet_multi/`` (sorted paths; each path and its contents)."""
    source = _check_backend(backend)
    files = [source, *sorted((SOURCE_ROOT / "densenet_multi").rglob("*.py"))]
    h = hashlib.sha256()
    for path in files:
        name = path.relative_to(SOURCE_ROOT) if path.is_relative_to(SOURCE_ROOT) else path.name
        h.update(Path(name).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _write_atomic(path: Path, data: str) -> None:
    write_text_atomic(path, data)


def _kernel_env(backend: str) -> dict[str, str]:
    from ..parity.runner import BACKEND_ENV

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    # What the backend's tox env sets: the Keras notebook is Keras on TensorFlow even when
    # called from an environment that chose another Keras backend.
    env.update(BACKEND_ENV.get(backend, {}))
    return env


def _cell_error(backend: str, index: int, cell: Any, err: Exception) -> NotebookError:
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    first = cell.source.strip().splitlines()[:1]
    where = f"cell {index} ({first[0]!r})" if first else f"cell {index}"
    detail = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the traceback's terminal colours
    return NotebookError(f"{SOURCES[backend].name}: {where} failed: {ename}: {evalue}\n{detail}")


def _run_cells(backend: str, nb: Any, cwd: Path) -> None:
    """Execute ``nb`` in place on this interpreter's ``python3`` kernel."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env=_kernel_env(backend))
    except CellExecutionError as err:
        failed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", []))]
        index = failed[-1] if failed else -1
        if index in (-1, len(nb.cells) - 1) and getattr(err, "ename", "") == "NameError":
            raise NotebookError(f"{SOURCES[backend].name} ran, but defines no `history` (a dict "
                                "of per-epoch lists) for the guide to read back") from None
        raise _cell_error(backend, index, nb.cells[index], err) from None


def _history(backend: str, cell: Any) -> dict[str, Any]:
    text = "".join(o.get("text", "") for o in cell.get("outputs", []))
    lines = [line for line in text.splitlines() if line.startswith(_MARK)]
    if len(lines) != 1:
        raise NotebookError(f"{SOURCES[backend].name}: could not read `history` back: {text!r}")
    result = json.loads(lines[0][len(_MARK):])
    if Path(result["prefix"]).resolve() != Path(sys.prefix).resolve():
        raise NotebookError(f"{SOURCES[backend].name} ran in {result['prefix']}, not in this "
                            f"environment ({sys.prefix}): a 'python3' kernelspec installed "
                            "elsewhere shadows this interpreter's")
    history = result["history"]
    keys = ("epoch", "train_loss", "train_acc", "test_acc")
    if not isinstance(history, dict) or any(not isinstance(history.get(k), list) for k in keys):
        raise NotebookError(f"{SOURCES[backend].name}: `history` must be a dict of lists "
                            f"{list(keys)}, got {history!r}")
    lengths = {k: len(history[k]) for k in keys}
    if len(set(lengths.values())) != 1 or not lengths["epoch"]:
        raise NotebookError(f"{SOURCES[backend].name}: `history` needs one entry per epoch in "
                            f"each list, got lengths {lengths}")
    return {"backend": backend, **{k: history[k] for k in keys}}


def execute(backend: str, out_dir: Path) -> Path:
    """Run ``backend``'s notebook here (this interpreter must be the backend's environment)
    and write its executed ``.ipynb``, ``history.json`` and, last, its fingerprint.

    Returns the executed notebook's path. A failing cell raises :class:`NotebookError`
    naming the notebook and the cell, with the cell's error.
    """
    import jupytext
    import nbformat

    source = _check_backend(backend)
    nb_path, history_path, fp_path = _paths(backend, Path(out_dir))
    fp_path.unlink(missing_ok=True)  # a failure must not leave old outputs looking current
    digest = fingerprint(backend)
    nb = jupytext.read(source)
    kernelspec = copy.deepcopy(nb.metadata.get("kernelspec"))
    nb.cells.append(nbformat.v4.new_code_cell(_RESULT_CELL))
    start = time.perf_counter()
    _run_cells(backend, nb, source.parent)
    seconds = time.perf_counter() - start
    history = _history(backend, nb.cells.pop())
    if kernelspec is not None:
        nb.metadata["kernelspec"] = kernelspec
    _stable_ids(backend, nb)
    nb.metadata["densenet_multi"] = {"backend": backend, "fingerprint": digest,
                                     "seconds": round(seconds, 1)}
    _write_atomic(nb_path, nbformat.writes(nb))
    _write_atomic(history_path, json.dumps(history, indent=1) + "\n")
    _write_atomic(fp_path, digest + "\n")
    return nb_path


def _stable_ids(backend: str, nb: Any) -> None:
    """Cell ids by position, so that a re-run or a re-sync does not rewrite them all."""
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"{backend}-{index:02d}"


def _is_current(backend: str, out_dir: Path) -> bool:
    nb_path, history_path, fp_path = _paths(backend, out_dir)
    if not (nb_path.is_file() and history_path.is_file() and fp_path.is_file()):
        return False
    return fp_path.read_text().strip() == fingerprint(backend)


def ensure_executed(backend: str, out_dir: Path) -> Path:
    """The executed notebook ``out_dir/<backend>_densenet.ipynb``: reused when its
    fingerprint matches, else executed now in the backend's tox environment (a
    subprocess running this module with that environment's interpreter)."""
    from ..parity.runner import find_project_root, resolve_python, worker_env

    _check_backend(backend)
    out_dir = Path(out_dir).resolve()
    if _is_current(backend, out_dir):
        return _paths(backend, out_dir)[0]
    root = find_project_root() or SOURCE_ROOT
    python, origin = resolve_python(backend, root=root)
    env_name = BACKENDS[backend][2]
    if not python or not Path(python).is_file():
        fix = (f"build it with `.venv/bin/tox -e {env_name} --notest`" if origin.startswith("tox")
               else f"point {origin} at the python of a built {env_name!r} env")
        raise NotebookError(
            f"the {backend} notebook runs in the tox env {env_name!r}, but its interpreter "
            f"{python or '(none)'} ({origin}) does not exist: {fix}")
    env = worker_env(backend, ["cpu"], False, root)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")  # as the tox envs: the notebooks run on the CPU
    cmd = [python, "-m", "densenet_multi.guide.notebooks", backend, "--out", str(out_dir)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise NotebookError(f"the {backend} notebook ran past {SUBPROCESS_TIMEOUT_S} s "
                            f"in tox env {env_name!r}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise NotebookError(f"the {backend} notebook failed in tox env {env_name!r} "
                            f"({python}, exit {proc.returncode}):\n{tail}")
    # The outputs carry the fingerprint of the sources the run started from; sources
    # edited while it ran make the next build execute it again, not this one fail.
    missing = [p.name for p in _paths(backend, out_dir) if not p.is_file()]
    if missing:
        raise NotebookError(f"the {backend} notebook ran but left no {missing} in {out_dir}")
    return _paths(backend, out_dir)[0]


def sync(backend: str, out_dir: Path) -> Path:
    """Rewrite ``notebooks/<backend>_densenet.ipynb`` from the ``.py`` and the outputs
    executed into ``out_dir`` (which must have the same cells; a note says when the
    package sources changed since)."""
    import jupytext
    import nbformat

    source = _check_backend(backend)
    nb_path, _, _ = _paths(backend, Path(out_dir))
    if not nb_path.is_file():
        raise NotebookError(
            f"{nb_path} does not exist: run `python -m densenet_multi.guide.notebooks "
            f"{backend} --out {out_dir}` in the {BACKENDS[backend][2]!r} tox env first")
    if not _is_current(backend, Path(out_dir)):
        print(f"note: {nb_path.name} was executed with older package sources than these",
              file=sys.stderr)
    executed = nbformat.read(nb_path, as_version=4)
    paired = jupytext.read(source)
    theirs = [(c.cell_type, c.source) for c in executed.cells]
    ours = [(c.cell_type, c.source) for c in paired.cells]
    if theirs != ours:
        raise NotebookError(f"{nb_path} does not have the cells of {source}: execute it again")
    for mine, done in zip(paired.cells, executed.cells, strict=True):
        if mine.cell_type == "code":
            mine.outputs = done.outputs
            mine.execution_count = done.execution_count
    paired.metadata["language_info"] = executed.metadata.get("language_info", {})
    _stable_ids(backend, paired)
    target = source.with_suffix(".ipynb")
    _write_atomic(target, jupytext.writes(paired, fmt="ipynb"))
    return target


# ---------------------------------------------------------------------- reading the outputs
_PART = re.compile(r"^(conv block|dense block|transition): \(([\d, ]+)\) -> \(([\d, ]+)\)$", re.M)
_TABLE = re.compile(r"^stage shapes at (\d+)x(\d+) \(N, C, H, W\)\n[^\n]*\n((?:\S+ +\d+ +\S+ +\S+\n?)+)",
                    re.M)
_STAGE = re.compile(r"^(eval|train)\s+(\S+)\s+rel err (\S+)", re.M)
_RUNNING = re.compile(r"^running (\d+) statistics, worst rel err (\S+)", re.M)
_EPOCH = re.compile(r"^epoch (\d+)  train loss (\S+)  train acc (\S+)  test acc (\S+)$", re.M)
_FINAL = re.compile(r"^final test accuracy (\S+) \(floor (\S+)\)$", re.M)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


@dataclass
class NotebookReport:
    """What an executed notebook printed, in the fixed formats of
    :mod:`densenet_multi.guide.notebook_tools` (NCHW shapes)."""

    text: str
    #: "conv block" / "dense block" / "transition" -> (input shape, output shape)
    parts: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    #: input size -> stage -> (C, H, W), or (C,) for pooled and logits
    shape_tables: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    #: (check, stage) -> relative error against the reference
    errors: dict[tuple[str, str], float] = field(default_factory=dict)
    #: (how many running statistics, the worst relative error), or None
    running: tuple[int, float] | None = None
    #: one (epoch, train loss, train acc, test acc) per printed epoch
    epochs: list[tuple[int, float, float, float]] = field(default_factory=list)
    final_accuracy: float | None = None
    #: image/png outputs (the figures)
    images: int = 0
    #: "ename: evalue" of every error output
    errors_raised: list[str] = field(default_factory=list)


def read_report(nb_path: Path) -> NotebookReport:
    """Parse an executed notebook's outputs into a :class:`NotebookReport`."""
    cells = json.loads(Path(nb_path).read_text(encoding="utf-8"))["cells"]
    texts, images, raised = [], 0, []
    for cell in cells:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            text = out.get("text", "")
            texts.append("".join(text) if isinstance(text, list) else text)
            images += "image/png" in out.get("data", {})
            if out.get("output_type") == "error":
                raised.append(f"{out.get('ename')}: {out.get('evalue')}")
    text = "".join(texts)
    report = NotebookReport(text=text, images=images, errors_raised=raised)
    for label, x, y in _PART.findall(text):
        report.parts[label] = (_ints(x), _ints(y))
    for height, _, rows in _TABLE.findall(text):
        table = {}
        for row in rows.strip().splitlines():
            name, c, h, w = row.split()
            table[name] = (int(c),) if h == "-" else (int(c), int(h), int(w))
        report.shape_tables[int(height)] = table
    report.errors = {(check, stage): float(err) for check, stage, err in _STAGE.findall(text)}
    running = _RUNNING.findall(text)
    if running:
        report.running = (int(running[-1][0]), float(running[-1][1]))
    report.epochs = [(int(e), float(a), float(b), float(c)) for e, a, b, c in _EPOCH.findall(text)]
    final = _FINAL.findall(text)
    if final:
        report.final_accuracy = float(final[-1][0])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m densenet_multi.guide.notebooks",
        description="Execute a teaching notebook in this (the backend's) environment, or "
                    "--sync the committed notebooks/*.ipynb with executed outputs.")
    p.add_argument("backends", nargs="*", metavar="BACKEND",
                   help=f"one of {sorted(SOURCES)} (with --sync: default all four)")
    p.add_argument("--out", type=Path, required=True, help="folder of the executed notebooks")
    p.add_argument("--sync", action="store_true",
                   help="rewrite notebooks/<backend>_densenet.ipynb from the .py and the "
                        "executed outputs in --out")
    args = p.parse_args(argv)
    unknown = [b for b in args.backends if b not in SOURCES]
    if unknown:
        p.error(f"unknown backend(s) {unknown}; choose from {sorted(SOURCES)}")
    try:
        if args.sync:
            for backend in args.backends or sorted(SOURCES):
                print(f"synced {sync(backend, args.out)}")
            return 0
        if len(args.backends) != 1:
            p.error("give exactly one BACKEND to execute (it runs in this interpreter)")
        start = time.perf_counter()
        path = execute(args.backends[0], args.out)
        print(f"executed {path} in {time.perf_counter() - start:.1f} s")
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
