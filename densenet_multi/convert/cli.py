"""``densenet-multi convert SRC DST [--to FORMAT] [--spec PRESET|spec.json] [--overwrite] [--no-verify]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..spec import PRESETS, SpecError
from .api import ConversionReport, VerificationError, convert
from .detect import ConvertError
from .formats import FORMATS, TARGETS
from .worker import Session

__all__ = ["main", "render"]


def _parser() -> argparse.ArgumentParser:
    targets = "\n".join(f"  {t.name:<28}{FORMATS[t.format].description}"
                        f"{'' if t.flavour == 'ours' else f' ({t.flavour} flavour)'}"
                        for t in TARGETS.values())
    p = argparse.ArgumentParser(
        prog="densenet-multi convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a DenseNet file between frameworks. The source's format is detected "
                    "from its content, its network from its tensors (both are printed). Unless "
                    "--no-verify, the source and the converted file are each run in their own "
                    "framework on a seeded input and every stage must agree within the eval "
                    "tolerance, or nothing is written.",
        epilog=f"target formats (--to):\n{targets}\n\nWithout --to the format comes from DST's "
               "extension, in this project's flavour: .safetensors canonical, .pth/.pt torch, "
               ".keras keras, .weights.h5 keras-weights, .params gluon, .orbax flax.")
    p.add_argument("src", help="the file (or Orbax checkpoint folder) to convert")
    p.add_argument("dst", help="where to write the converted file")
    p.add_argument("--to", choices=list(TARGETS), metavar="FORMAT",
                   help="target format and flavour (see below); default: from DST's extension")
    p.add_argument("--spec", help=f"the network, overriding detection: a preset ({', '.join(PRESETS)}) "
                                  "or a spec.json file")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip running both files (the conversion is then not checked)")
    return p


def render(report: ConversionReport, console: object) -> None:
    """Print what was detected and the verification table (rich)."""
    from rich.table import Table

    print_ = console.print  # type: ignore[attr-defined]
    print_(f"[bold]source[/bold]  {report.src}: {report.source.describe()}")
    if report.written is not None:
        print_(f"[bold]written[/bold] {report.dst}: {report.written.describe()}")
    for n in report.notes:
        print_(f"[yellow]note[/yellow]: {n}")
    if report.items:
        t = Table(title=f"verification: eval mode, seeded input {'x'.join(map(str, report.input_shape))}"
                        f", {report.source.dtype}")
        for c in ("stage", "max abs error", "rel. error", "tolerance", "status"):
            t.add_column(c, justify="left" if c == "stage" else "right")
        for i in report.items:
            ok = str(i.status) == "pass"
            t.add_row(i.item, f"{i.max_abs:.2e}" if i.max_abs is not None
                      else "-", f"{i.rel:.2e}" if i.rel is not None else "-", f"{i.tol:g}",
                      "[green]pass[/green]" if ok else f"[red]{i.status}[/red]")
        print_(t)
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    print_(f"{'[green]verified[/green]' if report.verified else '[yellow]not verified[/yellow]'}; "
           f"{secs}")


def main(argv: Sequence[str] | None = None, *, session: Session | None = None) -> int:
    """The command; ``session`` (Python callers, tests) reuses running framework workers."""
    from rich.console import Console

    args = _parser().parse_args(argv)
    console, err = Console(), Console(stderr=True)
    try:
        report = convert(args.src, args.dst, to=args.to, spec=args.spec, overwrite=args.overwrite,
                         verify=args.verify, session=session)
    except VerificationError as e:
        render(e.report, console)
        err.print(f"[red]densenet-multi convert: {e}[/red]")
        return 1
    except (ConvertError, SpecError, FileExistsError, FileNotFoundError, ValueError) as e:
        err.print(f"densenet-multi convert: error: {type(e).__name__}: {e}", markup=False,
                  highlight=False)
        return 2
    render(report, console)
    console.print(f"wrote {args.dst}")
    return 0
