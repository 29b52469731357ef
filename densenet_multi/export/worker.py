"""The framework side of ``export``: runs in the backend's environment.

Started by :func:`densenet_multi.export.api.export_onnx` as ``python -m
densenet_multi.export.worker ...`` with the interpreter of the backend's tox env
(found by the parity harness's :func:`~densenet_multi.parity.runner.resolve_python`).
It loads the checkpoint into the backend's model, exports it with the backend's
exporter, **verifies** the graph in onnxruntime against the float64 NumPy reference
and against the model it was exported from (every stage, eval tolerance, one seeded
batch), and only then writes the file, atomically. The outcome goes to a JSON report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..backend import BACKENDS, load_backend

__all__ = ["main"]


def _export(args: argparse.Namespace) -> dict:
    from . import checks
    from .graph import ExportError, metadata, run_stages, save, session

    t0 = time.perf_counter()
    be = load_backend(args.backend)
    exporter = importlib.import_module(f"{BACKENDS[args.backend][0]}.onnx_export")
    model = be.load_checkpoint(args.src, dtype=args.dtype)
    spec = model.spec
    params = be.export_canonical(model)
    dtype = str(next(iter(params.values())).dtype)
    graph = exporter.to_onnx(model, opset=args.opset)
    seconds = {"export": time.perf_counter() - t0}
    meta = metadata(graph)
    size = max(64, 2 * spec.min_input_size())
    x = checks.batch(spec, 2, size, dtype=dtype)
    report = {"backend": args.backend, "src": args.src, "out": args.out, "spec": spec.name,
              "dtype": dtype, "opset": meta["opset"], "exporter": meta["exporter"],
              "versions": meta["versions"], "input": list(x.shape), "verified": False,
              "errors": {}, "note": "", "runtime": f"onnxruntime {_ort_version()}"}
    t1 = time.perf_counter()
    try:
        sess = session(graph)
    except Exception as e:  # noqa: BLE001 - onnxruntime's NotImplemented has no Python class
        if "NOT_IMPLEMENTED" not in str(e):
            raise
        sess = None
        report["note"] = (f"not verified: onnxruntime's CPU execution provider cannot run this "
                          f"{dtype} graph ({str(e).splitlines()[0]})")
    if sess is not None:
        vs_reference = checks.stage_errors(sess, spec, params, x)
        got = run_stages(sess, spec, x)
        native = be.run(model, x).stages
        from ..testing import compare, tolerance

        tol = tolerance("eval", dtype)
        vs_native = {k: compare(k, got[k], native[k], tol) for k in spec.stage_names}
        report["errors"] = {k: {"reference": vs_reference[k].rel, "native": vs_native[k].rel}
                            for k in spec.stage_names}
        report["tolerance"] = tol
        bad = [f"{c} (vs {side})" for side, errs in (("the float64 reference", vs_reference),
                                                     (f"the {args.backend} model", vs_native))
               for c in errs.values() if not c.ok]
        if bad:
            raise ExportError("the exported graph does not compute the model; nothing was written. "
                              "First diverging: " + "; ".join(bad[:3]))
        report["verified"] = True
    seconds["verify"] = time.perf_counter() - t1
    save(graph, args.out, overwrite=args.overwrite)
    report["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return report


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.export.worker")
    p.add_argument("--backend", required=True, choices=sorted(BACKENDS))
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True, type=Path)
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--opset", type=int)
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = _export(args)
        code = 0
    except Exception as e:  # noqa: BLE001 - every failure goes back to the caller with its message
        report = {"error": f"{type(e).__name__}: {e}", "type": type(e).__name__,
                  "traceback": traceback.format_exc()[-4000:]}
        code = 1
    args.report.write_text(json.dumps(report, default=_plain))
    return code


def _plain(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


if __name__ == "__main__":
    sys.exit(main())
