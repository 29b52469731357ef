"""Generate everything the guide includes: ``python -m densenet_multi.guide.build --out docs/generated``.

Run by the ``docs`` tox env before ``mkdocs build --strict``. Steps, each writing
under ``--out`` (every file atomically):

``figures``      channel growth (from the spec), each backend's error by stage (from
                 the committed parity baseline), and the measured-error tables of the
                 backend pages (``parity/<backend>.md``, from the same baseline);
``conventions``  each part's conventions, read from the models built in each
                 backend's environment (:mod:`.conventions`);
``pitfalls``     the porting pitfalls, each run through the parity harness (:mod:`.pitfalls`);
``textbook``     the textbook's four tabs and the blogs' networks rebuilt and run through the
                 harness with their fix chains: rendered from the committed full run,
                 ``docs/textbook/textbook.json`` (:mod:`densenet_multi.textbook.report`;
                 tests/parity/test_textbook.py re-runs a subset in the suite);
``exercises``    the chapter's exercises: tables and figures from the committed results of
                 their documented runs, ``docs/exercises/*.json``
                 (:mod:`densenet_multi.exercises.render`);
``notebooks``    the four notebooks executed in their backends' environments (reused when
                 the backend's tests already executed the same sources), rendered to
                 Markdown with their outputs, and their training curves overlaid.

A step that fails stops the build with its error (exit 1): the site is never built
from a partial set of pages, because ``mkdocs build --strict`` then fails on the
missing includes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import source_root, write_text_atomic
from ..backend import BACKENDS
from ..spec import get_spec

STEPS = ("figures", "conventions", "pitfalls", "textbook", "exercises", "notebooks")
ROOT = source_root()
BASELINE = ROOT / "parity" / "baseline" / "report.json.gz"
#: The float32 cases whose stages the parity figure shows.
FIGURE_CASES = ("d2l", "densenet121")


def load_report(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parity report {path} not found (expected the committed baseline, "
                                "parity/baseline/report.json.gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------- measured errors
def _worst(items: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    scored = [i for i in items if i.get("error") is not None]
    return max(scored, key=lambda i: i["error"]) if scored else None


def _cell(items: Sequence[Mapping[str, Any]], *, name: bool = True) -> str:
    w = _worst(items)
    if w is None:
        return "not run"
    if w["error"] == 0:
        return "bit-exact"
    text = f"{w['error']:.1e}"
    if name:
        text += f" ({w['name']})"
    return text


def backend_error_table(report: Mapping[str, Any], backend: str) -> str:
    """Markdown: one row per case of the report, the backend's worst error vs the float64
    reference for each check, with the item where it occurs."""
    items = [i for i in report["items"] if i["subject"] == backend]
    cases = list(dict.fromkeys(i["case"] for i in items))
    lines = ["| case | eval: worst stage | train: worst stage | running stats | gradients | "
             "trajectory | copy | status |",
             "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        ci = [i for i in items if i["case"] == case]

        def of(check: str, pred: Callable[[Mapping[str, Any]], bool] = lambda i: True,
               ci: list = ci) -> list:
            return [i for i in ci if i["check"] == check and pred(i)]

        statuses = sorted({i["status"] for i in ci})
        lines.append("| " + " | ".join([
            f"`{case}`",
            _cell(of("eval")),
            _cell(of("train", lambda i: ".running_" not in i["name"])),
            _cell(of("train", lambda i: ".running_" in i["name"]), name=False),
            _cell(of("grad")),
            _cell(of("trajectory")),
            _cell(of("copy"), name=False),
            ", ".join(statuses),
        ]) + " |")
    versions = report.get("versions", {}).get(backend, {})
    tol = report.get("tolerances", {})
    lines += ["", f"From the committed parity baseline (`parity/baseline/report.json.gz`, run "
              f"{report.get('created', '?')}; " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
              + "). Errors are `max|backend - reference| / max|reference|` against the float64 NumPy "
              "reference, the worst item of each check. Tolerances: float32 eval "
              f"{tol.get('eval/float32', '?'):g}, train {tol.get('train/float32', '?'):g}, running "
              f"{tol.get('running/float32', '?'):g}; float64 grad {tol.get('grad/float64', '?'):g}, "
              f"trajectory {tol.get('trajectory/float64', '?'):g}; copies bit-exact. "
              "Regenerated by every docs build."]
    return "\n".join(lines) + "\n"


def step_figures(out: Path, report_path: Path = BASELINE) -> list[Path]:
    from . import figures

    made = [figures.channel_sawtooth([get_spec("d2l"), get_spec("densenet121")],
                                     out / "figures" / "channels.png")]
    report = load_report(report_path)
    stage_names = {c: get_spec(c).stage_names for c in FIGURE_CASES}
    made.append(figures.parity_by_stage(report, FIGURE_CASES, out / "figures" / "parity_stages.png",
                                        stage_names=stage_names))
    for backend in BACKENDS:
        made.append(write_text_atomic(out / "parity" / f"{backend}.md", backend_error_table(report, backend)))
    return made


def step_conventions(out: Path) -> list[Path]:
    from . import conventions

    return list(conventions.generate(out))


def step_pitfalls(out: Path, jobs: int = 2) -> list[Path]:
    from . import pitfalls

    pitfalls.generate(out, jobs=jobs)
    return [out / "pitfalls.md", out / "pitfalls.json"]


def step_textbook(out: Path) -> list[Path]:
    from ..textbook import report

    return report.render_evidence(report.EVIDENCE, out)


def step_exercises(out: Path) -> list[Path]:
    from ..exercises import render

    return list(render.generate(out))


def render_notebook(ipynb: Path, md_path: Path) -> Path:
    """The executed notebook as a Markdown page with its outputs (images as files beside it)."""
    import nbformat
    from nbconvert import MarkdownExporter

    nb = nbformat.read(ipynb, as_version=4)
    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"output_files_dir": f"{md_path.stem}_files"})
    for name, data in resources.get("outputs", {}).items():
        target = md_path.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return write_text_atomic(md_path, body)


def step_notebooks(out: Path) -> list[Path]:
    from . import figures, notebooks

    nb_dir = out / "notebooks"
    made, histories = [], {}
    for backend in BACKENDS:
        ipynb = notebooks.ensure_executed(backend, nb_dir)
        made.append(render_notebook(ipynb, nb_dir / f"{backend}_densenet.md"))
        hist_path = nb_dir / f"{backend}_history.json"
        histories[backend] = json.loads(hist_path.read_text(encoding="utf-8"))
    made.append(figures.training_curves(histories, out / "figures" / "training_curves.png"))
    return made


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.guide.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the generated pages (docs/generated)")
    p.add_argument("--only", default=",".join(STEPS),
                   help=f"comma-separated steps to run (default: all of {', '.join(STEPS)})")
    p.add_argument("--jobs", type=int, default=2,
                   help="parallel workers of the pitfalls' harness run")
    args = p.parse_args(argv)
    steps = [s for s in args.only.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        p.error(f"unknown step(s) {unknown}; expected some of {list(STEPS)}")
    out = Path(args.out).resolve()
    runners: dict[str, Callable[[], list[Path]]] = {
        "figures": lambda: step_figures(out),
        "conventions": lambda: step_conventions(out),
        "pitfalls": lambda: step_pitfalls(out, jobs=args.jobs),
        "textbook": lambda: step_textbook(out),
        "exercises": lambda: step_exercises(out),
        "notebooks": lambda: step_notebooks(out),
    }
    for step in steps:
        t0 = time.perf_counter()
        try:
            made = runners[step]()
        except Exception as exc:  # the step's own error, named; the site is not built
            print(f"guide build: step {step!r} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"guide build: {step}: {len(made)} file(s) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
