"""The framework side of ``convert``: one long-lived worker process per framework.

A worker is started with the framework env's interpreter, found and set up by the
parity harness's own machinery (:func:`densenet_multi.parity.runner.resolve_python`,
:func:`~densenet_multi.parity.runner.worker_env`), and answers JSON requests, one per
line on stdin, with one JSON line on stdout (everything the frameworks print goes to
stderr, kept in a log whose tail a failure quotes):

* ``read``: detect a file (format, flavour, spec, dtype, BN epsilon), load it the
  native way and write its canonical parameters to a safetensors file;
* ``write``: a canonical safetensors file -> a file of a format and flavour;
* ``run``: load a file the native way into this project's model and run it in eval
  mode on a given input, writing every stage of ``spec.stage_names`` to an ``.npz``.

:class:`Session` keeps one worker per framework alive across many conversions.
The canonical format needs no framework: the core reads and writes it, and runs it
with the NumPy reference (:mod:`densenet_multi.reference`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import PRESETS, DenseNetSpec
from .detect import ConvertError, CorruptFileError, Detection, DetectionError, infer_spec

__all__ = ["Session", "Worker", "WorkerError", "detect_file", "main"]

#: framework -> the backend subpackage holding its files.py
PACKAGES = {"torch": "densenet_multi.torch", "keras": "densenet_multi.keras",
            "gluon": "densenet_multi.gluon", "flax": "densenet_multi.flax"}
#: exception names a worker may answer with -> the class raised on this side
ERRORS: dict[str, type[Exception]] = {c.__name__: c for c in (
    ConvertError, CorruptFileError, DetectionError, FileNotFoundError, FileExistsError,
    ValueError)}


class WorkerError(ConvertError):
    """A worker that could not start, died, or failed in an unexpected way (with its log's tail)."""


# ---------------------------------------------------------------------- the framework side
def _spec_arg(value: Any) -> DenseNetSpec | None:
    return None if value is None else DenseNetSpec.from_dict(value)


def detect_file(files: Any, framework: str, path: str, fmt: str,
                spec: DenseNetSpec | None) -> Detection:
    """What ``files.inspect`` (the ``files`` module of ``framework``) finds in ``path``, with
    the spec inferred (or ``spec`` checked)."""
    info = files.inspect(path, fmt)
    dtypes = info["dtypes"]
    if len(dtypes) != 1 or dtypes[0] not in ("float32", "float64"):
        raise DetectionError(f"{path}: expected one dtype, float32 or float64, for every tensor; "
                             f"found {dtypes}")
    stored = info.get("stored_spec")
    override = spec if spec is not None else (
        DenseNetSpec.from_dict(stored) if stored is not None else None)
    notes = []
    eps_source = info["eps_source"]
    if spec is not None:
        eps_source = "--spec"
        if info["bn_eps"] is not None and info["bn_eps"] != spec.bn_eps:
            notes.append(f"the file implies BN eps {info['bn_eps']:g} ({info['eps_source']}); "
                         f"--spec sets {spec.bn_eps:g}")
    found, preset = infer_spec(info["shapes"], where=f"{path} ({fmt})", bn_eps=info["bn_eps"],
                               spec=override)
    if override is not None and override.name in PRESETS:
        preset = override.name
    flavour = info["flavour"]
    if flavour is None and framework == "torch":  # same keys: torchvision's if it builds it
        from ..torch.files import torchvision_arch

        flavour = "torchvision" if torchvision_arch(found) else "ours"
    return Detection(str(path), fmt, flavour, found, dtypes[0], eps_source, preset, notes)


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's (an Orbax checkpoint) names and files' bytes."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            h.update(f"{f.relative_to(path)}\0".encode())
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


class _Server:
    def __init__(self, framework: str) -> None:
        self.framework = framework
        self.files = importlib.import_module(f"{PACKAGES[framework]}.files")
        from ..backend import load_backend

        self.backend = load_backend(framework)
        #: the last file loaded: (its identity, detection, model); a conversion reads its
        #: source and then runs it, and ``run`` leaves a model as it was (backend contract)
        self.last: tuple[tuple, Detection, Any] | None = None

    def load(self, path: str, format: str, spec: Any) -> tuple[Detection, Any]:
        """Detect ``path`` and load it the native way into this project's model."""
        # the file's content, not its name: a verified file moved into place and then read
        # back (the round trip's next step) is not loaded again
        ident = (_digest(Path(path)), format, json.dumps(spec))
        if self.last is not None and self.last[0] == ident:
            return dataclasses.replace(self.last[1], path=path), self.last[2]
        det = detect_file(self.files, self.framework, path, format, _spec_arg(spec))
        model = self.files.load_model(path, format, det.flavour, det.spec, det.dtype)
        self.last = (ident, det, model)
        return det, model

    def read(self, path: str, format: str, spec: Any, out: str) -> dict[str, Any]:
        from .. import checkpoint

        det, model = self.load(path, format, spec)
        params = self.backend.export_canonical(model)
        checkpoint.save(out, params, det.spec, overwrite=True, dtype=det.dtype)
        return {"detection": det.to_dict()}

    def write(self, canonical: str, path: str, format: str, flavour: str) -> dict[str, Any]:
        from .. import checkpoint

        params, spec = checkpoint.load(canonical, dtype=None)
        self.last = None  # a writer may reuse (and overwrite) the model it holds
        self.files.write(params, spec, path, format, flavour)
        return {}

    def run(self, path: str, format: str, spec: Any, x: str, out: str) -> dict[str, Any]:
        det, model = self.load(path, format, spec)
        result = self.backend.run(model, np.load(x), train=False)
        np.savez(out, **result.stages)  # spec.stage_names: stem, ..., pooled, logits
        return {"detection": det.to_dict()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.convert.serve")
    p.add_argument("--framework", required=True, choices=sorted(PACKAGES))
    args = p.parse_args(argv)
    # Answers go to the real stdout; anything a framework prints (Python or C) to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        server = _Server(args.framework)
    except Exception as e:  # noqa: BLE001 - reported to the client, which raises it
        answers.write(json.dumps({"ok": False, "type": "WorkerError",
                                  "message": f"cannot import the {args.framework} side: "
                                             f"{type(e).__name__}: {e}"}) + "\n")
        return 3
    answers.write(json.dumps({"ok": True, "ready": args.framework}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        try:
            ans = getattr(server, req.pop("op"))(**req)
            ans.update(ok=True)
        except Exception as e:  # noqa: BLE001 - every failure goes back to the client
            ans = {"ok": False, "type": type(e).__name__, "message": str(e),
                   "traceback": traceback.format_exc()[-3000:]}
        ans["seconds"] = round(time.perf_counter() - t0, 3)
        answers.write(json.dumps(ans) + "\n")
    return 0


# ---------------------------------------------------------------------- the core side
class Worker:
    """One framework's worker process, started on first use; :meth:`request` sends one request."""

    def __init__(self, framework: str, *, pythons: Mapping[str, str] | None = None) -> None:
        from ..parity.runner import find_project_root, resolve_python, worker_env

        self.framework = framework
        root = find_project_root()
        self.python, self.origin = resolve_python(framework, pythons, root)
        self.env = worker_env(framework, ["cpu"], False, root)
        self.cwd = str(root or Path.cwd())
        self.proc: subprocess.Popen | None = None
        fd, log = tempfile.mkstemp(prefix=f"densenet-convert-{framework}-", suffix=".log")
        os.close(fd)
        self.log = Path(log)

    def _tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").rstrip().splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.python or not Path(self.python).exists():
            from ..backend import BACKENDS

            env = BACKENDS[self.framework][2]
            raise WorkerError(f"no {self.framework} interpreter at {self.python or '(none)'} "
                              f"({self.origin}): build it with `tox -e {env} --notest`, or set "
                              f"DENSENET_MULTI_PYTHON_{self.framework.upper()}")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "densenet_multi.convert.serve", "--framework", self.framework],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                env=self.env, cwd=self.cwd, start_new_session=True)
        self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(f"the {self.framework} worker ({self.python}) exited with status "
                              f"{self.proc.returncode}; its log ends:\n{self._tail()}")
        ans = json.loads(line)
        if not ans.get("ok"):
            cls = ERRORS.get(ans.get("type", ""), WorkerError)
            msg = ans.get("message", "")
            if cls is WorkerError:
                msg = f"{ans.get('type')}: {msg}\n{ans.get('traceback', '')}"
            raise cls(msg)
        return ans

    def request(self, op: str, **kw: Any) -> dict[str, Any]:
        self.start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"the {self.framework} worker died; its log ends:\n{self._tail()}") \
                from None
        return self._answer()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.unlink(missing_ok=True)


class Session:
    """Keeps one worker per framework alive across conversions (``with Session() as s:``)."""

    def __init__(self, *, pythons: Mapping[str, str] | None = None) -> None:
        self.pythons = dict(pythons or {})
        self.workers: dict[str, Worker] = {}
        #: the source files' verification runs, reused while a file is unchanged
        self.cache: dict[tuple, Any] = {}

    def worker(self, framework: str) -> Worker:
        if framework not in PACKAGES:
            raise ValueError(f"no worker for {framework!r}; frameworks: {sorted(PACKAGES)}")
        if framework not in self.workers:
            self.workers[framework] = Worker(framework, pythons=self.pythons)
        return self.workers[framework]

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    raise SystemExit(main())

