"""``densenet-multi export``: a checkpoint (canonical, or any file ``convert`` reads) to a
verified ONNX graph.

Examples::

    densenet-multi init d2l d2l.safetensors --nontrivial-bn
    densenet-multi export --format onnx d2l.safetensors d2l.onnx                 # torch's exporter
    densenet-multi export --format onnx d2l.safetensors d2l-keras.onnx --backend keras
    densenet-multi export --format onnx net.safetensors net.onnx --backend gluon --opset 13 --overwrite

The graph has one NCHW input ``x`` (dynamic batch, height and width) and one output
per stage (stem, block1, transition1, ..., features, pooled, logits); its metadata
holds the spec, the exporter and its versions, and the opset. It is verified in
onnxruntime against the float64 NumPy reference and the backend's model before it is
written (see ``docs/onnx.md``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..backend import BACKENDS
from ..checkpoint import CheckpointError
from ..spec import SpecError
from .api import EXPORTERS, ExportFailed, ExportReport, export_onnx

EXIT_USAGE, EXIT_FAILED = 2, 1


def _parser() -> argparse.ArgumentParser:
    backends = "\n".join(f"  {b:<6} {e}" for b, e in EXPORTERS.items())
    p = argparse.ArgumentParser(prog="densenet-multi export", description=__doc__
                                + f"\nexporters:\n{backends}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=("onnx",), help="the output format")
    p.add_argument("src", help="a canonical checkpoint (.safetensors with the spec in its metadata), "
                               "or any file `densenet-multi convert` reads")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--backend", default="torch", choices=sorted(BACKENDS),
                   help="whose exporter writes the graph (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"),
                   help="the graph's dtype (default: the checkpoint's)")
    p.add_argument("--opset", type=int, help="the ONNX opset (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--spec", help="a preset or spec JSON file, for a source file that does not "
                                  "say its network (as for convert)")
    p.add_argument("--python", help="the backend environment's interpreter (default: "
                                    ".tox/<env>/bin/python, or DENSENET_MULTI_PYTHON_<BACKEND>)")
    return p


def render(report: ExportReport, console: object) -> None:
    from rich.table import Table

    console.print(f"wrote {report.out}: {report.spec} ({report.dtype}), {report.exporter}, "
                  f"opset {report.opset}")
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(report.versions.items()))
                  + f"; verified with {report.runtime}")
    if not report.verified:
        console.print(report.note, style="yellow", markup=False)
        return
    t = Table(title=f"onnxruntime vs the float64 reference and the {report.backend} model, "
                    f"input {'x'.join(map(str, report.input))} (error = max|a-b| / max|b|, "
                    f"tolerance {report.tolerance:g})")
    for c in ("stage", "vs reference", f"vs {report.backend}"):
        t.add_column(c, justify="right" if c != "stage" else "left")
    for stage, e in report.errors.items():
        t.add_row(stage, f"{e['reference']:.2g}", f"{e['native']:.2g}")
    console.print(t)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console()
    try:
        report = export_onnx(args.src, args.out, backend=args.backend, dtype=args.dtype,
                             opset=args.opset, overwrite=args.overwrite, spec=args.spec,
                             python=args.python)
    except (ValueError, OSError, SpecError, CheckpointError) as e:
        console.print(f"densenet-multi export: error: {e}", style="red", markup=False)
        return EXIT_USAGE
    except ExportFailed as e:
        console.print(f"densenet-multi export: {e}", style="red", markup=False)
        return EXIT_FAILED
    render(report, console)
    return 0
