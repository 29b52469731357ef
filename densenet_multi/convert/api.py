"""``convert(src, dst)``: any framework's DenseNet file to any other's, verified before it is written.

1. **Detect** the source: its format from its content, then (in its framework's worker)
   the flavour, the network, the dtype and the BN epsilon (:mod:`.detect`); read it the
   native way into canonical parameters.
2. **Write** the target format and flavour (in the target framework's worker) to a
   temporary path beside ``dst``.
3. **Verify** (unless ``verify=False``): the source file, in its framework's worker,
   and the written file, in the target's, are each loaded the native way into this
   project's model of that framework (a canonical file: the NumPy reference) and run
   in eval mode on one seeded input; every stage of ``spec.stage_names`` and the
   logits are compared with the eval tolerance of :mod:`densenet_multi.testing`
   through the parity harness's comparison. The written file is detected afresh
   there, so a target that implies its own epsilon (keras.applications') runs with it.
4. Only a verified file is **moved into place** (atomically, replacing ``dst`` only
   with ``overwrite=True``); otherwise nothing is written and the
   :class:`VerificationError` names the first diverging stage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint
from ..parity.compare import Item, compare_items
from ..parity.status import Status
from ..spec import PRESETS, DenseNetSpec, get_spec
from .detect import ConvertError, CorruptFileError, Detection, DetectionError, infer_spec, sniff_format
from .formats import FORMATS, Target, target_for
from .worker import Session

__all__ = ["ConversionReport", "VerificationError", "convert", "read_canonical", "resolve_spec",
           "verification_input"]

class VerificationError(ConvertError):
    """The converted file does not compute what the source computes; nothing was written."""

    def __init__(self, message: str, report: ConversionReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    src: str
    dst: str
    target: Target
    source: Detection
    written: Detection | None = None
    verified: bool = False
    items: list[Item] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def first_fail(self) -> Item | None:
        return next((i for i in self.items if i.status != Status.PASS), None)

    @property
    def worst_rel(self) -> float | None:
        rated = [i.rel for i in self.items if i.rel is not None]
        return max(rated) if rated else None

    def to_dict(self) -> dict[str, Any]:
        ff = self.first_fail
        return {"src": self.src, "dst": self.dst, "target": self.target.name,
                "format": self.target.format, "flavour": self.target.flavour,
                "source": self.source.to_dict(),
                "written": None if self.written is None else self.written.to_dict(),
                "verified": self.verified, "worst_rel": self.worst_rel,
                "first_fail": None if ff is None else ff.to_dict(),
                "input_shape": list(self.input_shape), "seconds": dict(self.seconds),
                "notes": list(self.notes), "items": [i.to_dict() for i in self.items]}


def resolve_spec(spec: str | os.PathLike | DenseNetSpec | None) -> DenseNetSpec | None:
    """``--spec``: a preset name, a spec.json file or a :class:`DenseNetSpec`."""
    if spec is None or isinstance(spec, DenseNetSpec):
        return spec
    text = str(spec)
    if text in PRESETS:
        return get_spec(text)
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"--spec expects a preset ({', '.join(PRESETS)}) or a spec.json file; "
                         f"{text!r} is neither")
    return DenseNetSpec.from_json(path.read_text())


def verification_input(spec: DenseNetSpec, dtype: str, seed: int = 0) -> np.ndarray:
    """The seeded eval batch: 2 images, 64x64 for an ImageNet stem, 32x32 for a CIFAR one."""
    size = max(64 if spec.stem == "imagenet" else 32, spec.min_input_size())
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((2, spec.in_channels, size, size)).astype(dtype)


# ---------------------------------------------------------------------- the canonical format
def _load_canonical(path: Path, spec: DenseNetSpec | None
                    ) -> tuple[dict[str, np.ndarray], DenseNetSpec]:
    try:
        return checkpoint.load(path, spec, dtype=None)
    except checkpoint.CheckpointError as e:
        damaged = "not a readable" in str(e) or "could not read" in str(e)
        raise (CorruptFileError if damaged else DetectionError)(
            f"{path} looks like a canonical safetensors file, but: {e}") from None


def _read_canonical(path: Path, spec: DenseNetSpec | None, out: Path) -> Detection:
    params, found = _load_canonical(path, spec)
    dtype = str(next(iter(params.values())).dtype)
    infer_spec({k: v.shape for k, v in params.items()}, where=str(path), spec=found)
    if out != path:
        shutil.copyfile(path, out)
    return Detection(str(path), "canonical", "ours", found, dtype,
                     "--spec" if spec is not None else "the spec in the file's metadata",
                     found.name if found.name in PRESETS else None)


def _run_canonical(path: Path, x: np.ndarray, out: Path) -> Detection:
    from ..reference import forward

    det = _read_canonical(path, None, path)
    params, spec = _load_canonical(path, None)
    result = forward(spec, params, x, dtype="float64")  # the NumPy oracle, in float64
    np.savez(out, **{k: v.astype(det.dtype) for k, v in result.stages.items()})
    return det


# ---------------------------------------------------------------------- steps
def _framework(fmt: str) -> str | None:
    return FORMATS[fmt].framework


def _read(session: Session, path: Path, fmt: str, spec: DenseNetSpec | None, out: Path
          ) -> Detection:
    fw = _framework(fmt)
    if fw is None:
        return _read_canonical(path, spec, out)
    ans = session.worker(fw).request("read", path=str(path), format=fmt,
                                     spec=None if spec is None else spec.to_dict(), out=str(out))
    return Detection.from_dict(ans["detection"])


def _write(session: Session, canonical: Path, path: Path, target: Target) -> None:
    fw = _framework(target.format)
    if fw is None:
        params, spec = checkpoint.load(canonical, dtype=None)
        checkpoint.save(path, params, spec, overwrite=True, dtype=None)
        return
    session.worker(fw).request("write", canonical=str(canonical), path=str(path),
                               format=target.format, flavour=target.flavour)


def _run(session: Session, path: Path, fmt: str, spec: DenseNetSpec | None, x: Path,
         out: Path, *, cache: bool = False) -> tuple[Detection, dict[str, np.ndarray]]:
    """Run a file on the input saved at ``x``; with ``cache``, a file the session already ran
    unchanged (same path, size, modification time, spec and input) is not run again."""
    key = None
    if cache:
        st = path.stat()
        key = ("run", str(path.resolve()), st.st_size, st.st_mtime_ns, fmt,
               None if spec is None else spec.to_json(), x.read_bytes())
        if key in session.cache:
            return session.cache[key]
    fw = _framework(fmt)
    if fw is None:
        det = _run_canonical(path, np.load(x), out)
    else:
        ans = session.worker(fw).request("run", path=str(path), format=fmt, x=str(x), out=str(out),
                                         spec=None if spec is None else spec.to_dict())
        det = Detection.from_dict(ans["detection"])
    with np.load(out) as z:
        result = det, {k: z[k] for k in z.files}
    if key is not None:
        session.cache[key] = result
    return result


def read_canonical(path: str | os.PathLike, *, spec: str | os.PathLike | DenseNetSpec | None = None,
                   session: Session | None = None) -> tuple[dict[str, np.ndarray], Detection]:
    """A file's canonical parameters (read the native way in its framework) and its detection."""
    path = Path(path)
    own = session is None
    session = session or Session()
    with tempfile.TemporaryDirectory(prefix="densenet-convert-") as tmp:
        try:
            det = _read(session, path, sniff_format(path), resolve_spec(spec),
                        Path(tmp) / "c.safetensors")
            params, _ = checkpoint.load(Path(tmp) / "c.safetensors", dtype=None)
        finally:
            if own:
                session.close()
    return params, det


def _move_into_place(tmp: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:  # checked again: it may have appeared meanwhile
        raise FileExistsError(f"{dst} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if dst.is_dir():  # a checkpoint folder: the old one moves aside, then goes
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dst)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None,
            spec: str | os.PathLike | DenseNetSpec | None = None, overwrite: bool = False,
            verify: bool = True, session: Session | None = None,
            tamper: Callable[[dict[str, np.ndarray], DenseNetSpec],
                             tuple[Mapping[str, np.ndarray], DenseNetSpec]] | None = None,
            ) -> ConversionReport:
    """Convert the DenseNet file ``src`` to ``dst`` (format and flavour: ``to``, a key of
    :data:`.formats.TARGETS`, or our flavour of the format ``dst``'s extension names).

    ``spec`` (a preset name, a spec.json path or a spec) overrides what is detected.
    ``verify`` runs both files and compares every stage (see the module docs); a
    mismatch raises :class:`VerificationError` and writes nothing. An existing ``dst``
    is replaced only with ``overwrite``. ``session`` keeps the framework workers alive
    across calls (one is made and closed otherwise). ``tamper`` changes the canonical
    parameters or spec between reading and writing: for tests that prove the
    verification catches a wrong conversion.
    """
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    target = target_for(dst, to)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    given = resolve_spec(spec)
    fmt = sniff_format(src)
    own = session is None
    session = session or Session()
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        canonical = work / "source.safetensors"
        source = _read(session, src, fmt, given, canonical)
        seconds["read"] = time.perf_counter() - t
        report = ConversionReport(str(src), str(dst), target, source, notes=list(source.notes))
        if tamper is not None:
            params, tspec = checkpoint.load(canonical, dtype=None)
            params, tspec = tamper(dict(params), tspec)
            checkpoint.save(canonical, params, tspec, overwrite=True, dtype=None)
        t = time.perf_counter()
        written = work / dst.name
        _write(session, canonical, written, target)
        seconds["write"] = time.perf_counter() - t
        if verify:
            t = time.perf_counter()
            x = verification_input(source.spec, source.dtype)
            report.input_shape = x.shape
            np.save(work / "x.npy", x)
            _, expected = _run(session, src, fmt, given, work / "x.npy", work / "source.npz",
                               cache=True)
            report.written, actual = _run(session, written, target.format, given,
                                          work / "x.npy", work / "written.npz")
            seconds["verify"] = time.perf_counter() - t
            order = list(source.spec.stage_names)  # stem, block1, ..., pooled, logits
            report.items = compare_items(actual, expected, order, "eval", source.dtype,
                                         sides=("the converted file", "the source file"))
            if report.written.spec.bn_eps != source.spec.bn_eps:
                report.notes.append(
                    f"BN eps {source.spec.bn_eps:g} -> {report.written.spec.bn_eps:g} "
                    f"({report.written.eps_source}); the verification ran each file with its own")
            ff = report.first_fail
            report.seconds = {k: round(v, 3) for k, v in seconds.items()}
            if ff is not None:
                raise VerificationError(
                    f"{src} -> {dst}: verification failed, nothing written; first diverging "
                    f"stage: {ff.short()}", report)
            report.verified = True
        else:
            report.notes.append("not verified (--no-verify): the converted file was not run")
        _move_into_place(written, dst, overwrite)
        seconds["total"] = time.perf_counter() - t0
        report.seconds = {k: round(v, 3) for k, v in seconds.items()}
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if own:
            session.close()
