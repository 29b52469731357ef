"""The porting pitfalls, measured: each one run through the parity harness, never typed.

Every pitfall is a deliberately wrong variant of a real backend
(:mod:`densenet_multi.guide.pitfall_backends`): the real model with one thing
changed, written in the framework where a textbook tab, blog or model zoo has it.
:func:`generate` runs them all in **one** harness run
(:func:`densenet_multi.parity.runner.run_parity`, compared by
:func:`densenet_multi.parity.compare.compare_run`), together with the four real
backends, on the d2l case of the main job (4x1x96x96 float32: shapes, eval,
train) and on the few extra cases some pitfalls need (a compression where
``int(n * theta)`` and the spec's floor differ, 224x224, a square classifier).
What it writes, ``pitfalls.md`` (the table the guide includes) and
``pitfalls.json``, is read from the comparison: the check and stage that catch
each pitfall (the first failing item, in network order), its error and the
tolerance, or the error message where the variant cannot even run.

One measurement is not a harness run: Flax's fast variance on an input with a
large mean (the harness's inputs are zero-mean), one ``nnx.BatchNorm`` in the jax
environment against float64 NumPy (:func:`fast_variance_offset`); the table says so.

This module imports no framework: the variants run in worker processes of their
frameworks' environments (``pythons`` maps each variant to its framework's
interpreter, :func:`densenet_multi.parity.runner.resolve_python`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..backend import BACKENDS
from ..parity.cases import CHECKS, Case, get_cases
from ..parity.compare import CaseComparison, Cell, compare_run
from ..parity.runner import BackendTarget, find_project_root, resolve_python, run_parity, worker_env
from ..parity.status import Status
from ..spec import get_spec
from ..testing import tolerance
from .pitfall_backends._base import IntWidthSpec

__all__ = ["CATALOG", "REAL_BACKENDS", "Pitfall", "cases", "fast_variance_offset", "generate",
           "PitfallRun", "render_table", "rows", "run", "theta_where_int_differs", "variant_python"]

#: The four real backends, run in the same harness run as the variants.
REAL_BACKENDS = ("torch", "flax", "keras", "gluon")
_VARIANTS = "densenet_multi.guide.pitfall_backends"
_MODULES = {"torch": "torch_variants", "flax": "flax_variants", "keras": "keras_variants",
            "gluon": "gluon_variants"}
#: The checks run on the main job's float32 d2l case. Not ``copy``: its phase starts
#: every worker a second time and loads every other backend's export (20 targets:
#: 380 loads), which doubled the run; the copy mistakes (a converter that reshapes
#: both ways, an export without biases) are held by tests/parity/test_faults.py.
D2L_CHECKS = ("shapes", "eval", "train")


@dataclass(frozen=True)
class Pitfall:
    """One row (or sub-row) of the pitfalls table: which variant shows it, where it appears."""

    label: str  # "1", "2a": the pitfall number, a letter per variant
    key: str  # the variant's attribute in pitfall_backends/<framework>_variants.py
    backend: str  # the real backend it is a variant of
    pitfall: str  # what is wrong, in a few words
    source: str  # where it appears (short, for the table)
    change: str  # the one line changed, as the framework writes it
    #: cases it is reported on (besides "d2l", its own row first); see :func:`cases`
    extra_cases: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The harness's name for the variant (a file-system-safe label)."""
        return f"{self.backend}_{self.key}"

    @property
    def target(self) -> str:
        return f"{_VARIANTS}.{_MODULES[self.backend]}:{self.key}"

    @property
    def cases(self) -> tuple[str, ...]:
        return ("d2l", *self.extra_cases)


CATALOG: tuple[Pitfall, ...] = (
    Pitfall("1", "same_padding", "keras",
            "asymmetric 'same' padding at stride 2 (stem conv and max-pool)",
            "d2l TensorFlow and JAX tabs (000)",
            "Conv2D(64, 7, strides=2, padding='same'); MaxPool2D(3, strides=2, padding='same')"),
    Pitfall("2a", "momentum_keras", "torch",
            "BN momentum 0.9 in PyTorch (Keras's/Gluon's number, PyTorch's convention)",
            "a number carried across conventions (tab defaults, 000)",
            "nn.BatchNorm2d(n, momentum=0.9)"),
    Pitfall("2b", "momentum_torch", "gluon",
            "BN momentum 0.1 in Gluon (PyTorch's number, Gluon's convention)",
            "a number carried across conventions (tab defaults, 000)",
            "nn.BatchNorm(momentum=0.1)"),
    Pitfall("2c", "momentum_default", "flax",
            "BN momentum left at the framework default 0.99",
            "d2l JAX and TensorFlow tabs (000), Keras blog (003)",
            "nnx.BatchNorm(n, rngs=rngs)  # momentum=0.99"),
    Pitfall("3a", "eps_default", "keras",
            "BN epsilon left at Keras's default 1e-3",
            "d2l TensorFlow tab (000), Keras blog (003)",
            "layers.BatchNormalization()  # epsilon=1e-3"),
    Pitfall("3b", "eps_applications", "keras",
            "BN epsilon 1.001e-5 (keras.applications) instead of 1e-5",
            "keras.applications DenseNet",
            "layers.BatchNormalization(epsilon=1.001e-5)"),
    Pitfall("4a", "kernel_reshape", "flax",
            "conv kernels reshaped OIHW -> HWIO instead of transposed",
            "hand-written converters (no seed converts weights)",
            "w.reshape(kh, kw, i, o)  # not w.transpose(2, 3, 1, 0)"),
    Pitfall("4b", "dense_untransposed", "flax",
            "classifier weight (out, in) put into an (in, out) kernel untransposed",
            "hand-written converters (no seed converts weights)",
            "linear.kernel.value = w  # not w.T", extra_cases=("d2l-square",)),
    Pitfall("5", "int_width", "keras",
            "transition width int(n * theta) instead of a float-robust floor",
            "keras.applications, Keras blog (003)",
            "Conv2D(int(x.shape[-1] * theta), 1)", extra_cases=("d2l-theta",)),
    Pitfall("6", "initial_width", "flax",
            "transition widths from the initial width, not the running one",
            "d2l JAX tab (000)",
            "num_channels = self.num_channels + num_convs * self.growth_rate"),
    Pitfall("7", "zero_pool_padding", "torch",
            "zero instead of -inf padding before the stem max-pool",
            "keras.applications; this project's Keras backend",
            "nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2)"),
    Pitfall("8", "fixed_pool7", "gluon",
            "fixed 7x7 average pool instead of a global one",
            "Gluon model zoo DenseNet",
            "nn.AvgPool2D(pool_size=7), nn.Flatten()", extra_cases=("d2l-224",)),
    Pitfall("9", "no_conv_bias", "torch",
            "conv bias dropped (torchvision style) on the d2l net, loaded with strict=False",
            "torchvision (004)",
            "nn.Conv2d(..., bias=False); load_state_dict(sd, strict=False)"),
    Pitfall("10a", "eval_forgotten", "torch",
            "eval mode never switched on: batch statistics in inference",
            "every tab has the switch; the JAX tab's modules default to training=True (000)",
            "(no net.eval())"),
    Pitfall("10b", "biased_running_var", "gluon",
            "running variance updated with the biased batch variance, taken for PyTorch's",
            "Gluon, Flax and Keras vs PyTorch (the frameworks' own rules)",
            "running_var of nn.BatchNorm used as is"),
    Pitfall("11", "fast_variance", "flax",
            "Flax's fast variance E[x^2] - E[x]^2 in float32",
            "Flax's default (the JAX tab's linen BatchNorm, 000)",
            "nnx.BatchNorm(n, use_fast_variance=True)  # the default"),
)


# ---------------------------------------------------------------------- cases
def theta_where_int_differs(spec_name: str = "d2l", max_denominator: int = 200) -> Fraction:
    """The simplest compression p/q (smallest q, then p) for which ``int(n * theta)`` and the
    spec's float-robust floor give a different transition width somewhere in ``spec_name``.

    On d2l no compression written with up to four decimals does (wherever such a product
    is an integer on paper, the float lands on it or above it); the fraction is found,
    not chosen."""
    base = get_spec(spec_name)
    for q in range(2, max_denominator + 1):
        for p in range(1, q):
            if Fraction(p, q).denominator != q:
                continue
            try:
                spec = base.replace(compression=p / q)
            except ValueError:  # too small to keep a channel
                continue
            widths = [t.out_channels for t in spec.channel_plan.transitions]
            if widths != [t.out_channels for t in IntWidthSpec.of(spec).channel_plan.transitions]:
                return Fraction(p, q)
    raise ValueError(f"no compression p/q with q <= {max_denominator} makes int(n * theta) "
                     f"differ from the spec's floor on {spec_name}")


def cases() -> dict[str, Case]:
    """The cases of the pitfalls run: the main job's d2l case, and the extra ones."""
    (d2l,) = get_cases(["d2l"])  # the main job's float32 d2l case
    if not set(D2L_CHECKS) <= set(d2l.checks):
        raise RuntimeError(f"the shipped d2l case checks {d2l.checks}, the pitfalls table "
                           f"describes {D2L_CHECKS}: update D2L_CHECKS and the page")
    d2l = dataclasses.replace(d2l, checks=D2L_CHECKS)
    theta = theta_where_int_differs()
    square = get_spec("d2l").channel_plan.final_channels
    no_dropout = {"drop_rate": 0.0}
    return {
        "d2l": d2l,
        # a compression where int(n * theta) and the spec's floor differ
        "d2l-theta": Case("d2l-theta", "d2l", (96, 96),
                          changes={**no_dropout, "compression": float(theta)}, batch=2,
                          checks=("shapes",)),
        # 224x224: the final map is 7x7, where a fixed 7x7 pool is global
        "d2l-224": Case("d2l-224", "d2l", (224, 224), changes=no_dropout, batch=2,
                        checks=("eval",)),
        # a square classifier (as many classes as features): (out, in) == (in, out)
        "d2l-square": Case("d2l-square", "d2l", (96, 96),
                           changes={**no_dropout, "num_classes": square}, batch=2,
                           checks=("eval",)),
    }


def _case_text(case: Case) -> str:
    h, w = case.input_size
    spec = case.build_spec()
    text = f"d2l {case.batch}x{spec.in_channels}x{h}x{w} {case.dtype}"
    base = get_spec("d2l")
    changed = [(f, a, b) for f, a, b in base.differences(spec) if f != "drop_rate"]
    for f, _, b in changed:
        if f == "compression":
            theta = Fraction(b).limit_denominator(1000)
            text += f", compression {theta} = {b:.6g}"
        else:
            text += f", {f} {b}"
    return text


# ---------------------------------------------------------------------- the run
def variant_python(backend: str) -> str:
    """The interpreter a variant of ``backend`` runs in: the real backend's (its tox env)."""
    return resolve_python(backend)[0]


@dataclass
class PitfallRun:
    """A harness run of the pitfall variants: the runner's result, its comparison by case
    name, and how long each took (seconds)."""

    result: Any
    ccs: dict[str, CaseComparison]
    seconds_run: float
    seconds_compare: float


def run(out_dir: Path, pitfalls: Sequence[Pitfall] = CATALOG, *, real: bool = True,
        jobs: int = 2, case_names: Sequence[str] | None = None,
        checks: Sequence[str] | None = None) -> PitfallRun:
    """One harness run of ``pitfalls`` (and, with ``real``, the four real backends) in
    ``out_dir/pitfalls-run`` (replaced); returns the run and its comparison by case name.

    ``case_names`` (default: every case a pitfall needs) and ``checks`` (default: each
    case's own) narrow the run, for a quick test."""
    all_cases = cases()
    unknown = [c for c in case_names or () if c not in all_cases]
    if unknown:
        raise ValueError(f"unknown pitfall case(s) {unknown}; the cases are {sorted(all_cases)}")
    wanted = case_names or [c for c in all_cases if any(c in p.cases for p in pitfalls)]
    run_cases = []
    for name in wanted:
        case = all_cases[name]
        if checks is not None:
            keep = tuple(c for c in case.checks if c in checks)
            if not keep:
                continue
            case = case.with_(checks=keep)
        run_cases.append(case)
    backends = [BackendTarget(b) for b in (REAL_BACKENDS if real else ())]
    backends += [BackendTarget(p.name, p.target) for p in pitfalls]
    pythons = {p.name: variant_python(p.backend) for p in pitfalls}
    run_dir = Path(out_dir) / "pitfalls-run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # no worker log of an earlier run's variant stays behind
    t0 = time.perf_counter()
    result = run_parity(run_cases, backends, run_dir, pythons=pythons, jobs=jobs)
    t1 = time.perf_counter()
    ccs = {cc.case.name: cc for cc in compare_run(result)}
    return PitfallRun(result, ccs, round(t1 - t0, 1), round(time.perf_counter() - t1, 1))


# ---------------------------------------------------------------------- reading the cells
def _cell(cc: CaseComparison, check: str, subject: str) -> Cell | None:
    return next((c for c in cc.cells if c.check == check and c.subject == subject), None)


def _pair(cc: CaseComparison, check: str, a: str, b: str) -> Cell | None:
    return _cell(cc, check, f"{a}~{b}") or _cell(cc, check, f"{b}~{a}")


def _num(v: float | None) -> float | None:
    return None if v is None else float(v)


def _first_line(text: str, limit: int = 160) -> str:
    """The telling line of an error message: the exception's own line, not a traceback's
    (MXNet puts its C++ traceback inside the message; its last line says what failed)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    told = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "^"))
            and not ln.endswith("Traceback (most recent call last):")]
    if len(told) > 1 and told[0].endswith(":") and all(t.startswith("- ") for t in told[1:]):
        line = told[0] + " " + "; ".join(t[2:] for t in told[1:])  # a message with a list
    else:
        line = told[-1] if told else (lines[0] if lines else "")
    if len(line) > limit and ": " in line:  # keep the end: what failed, not where
        head, tail = line.split(": ", 1)[0], line.rsplit(": ", 1)[-1]
        line = f"{head}: ...: {tail}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_summary(cell: Cell | None) -> dict[str, Any]:
    """What the table and the json say about one cell."""
    if cell is None:
        return {"status": "missing", "message": "no cell: the harness compared nothing here"}
    out: dict[str, Any] = {"status": str(cell.status), "worst_rel": _num(cell.worst_rel)}
    w = cell.worst
    if w is not None:
        out["worst_item"], out["tol"] = w.item, _num(w.tol)
    ff = cell.first_fail
    if ff is not None:
        out["first_fail"] = {"item": ff.item, "status": str(ff.status), "rel": _num(ff.rel),
                             "tol": _num(ff.tol), "actual_shape": ff.actual_shape,
                             "expected_shape": ff.expected_shape, "note": ff.note}
    if cell.message:
        out["message"] = _first_line(cell.message, 300)
    return out


def rows(ccs: Mapping[str, CaseComparison], pitfalls: Sequence[Pitfall] = CATALOG
         ) -> list[dict[str, Any]]:
    """One row per pitfall and case it is reported on, read from the comparison. A row
    whose case was not run says so ("not run"); a row of a run case with no cell for
    its variant is "missing": no pitfall disappears from the table."""
    out = []
    for p in pitfalls:
        for case_name in p.cases:
            cc = ccs.get(case_name)
            row: dict[str, Any] = {
                "label": p.label, "key": p.key, "variant": p.name, "backend": p.backend,
                "framework": BACKENDS[p.backend][1], "pitfall": p.pitfall, "source": p.source,
                "change": p.change, "case": case_name, "checks": {}, "caught": None,
                "vs_real": None,
            }
            if cc is None:
                row.update(status="not run", case_text=case_name)
                out.append(row)
                continue
            row["case_text"] = _case_text(cc.case)
            for check in [c for c in CHECKS if cc.case.has(c)]:
                row["checks"][check] = _check_summary(_cell(cc, check, p.name))
            statuses = [c["status"] for c in row["checks"].values()]
            row["status"] = next((s for s in statuses if s != Status.PASS), str(Status.PASS))
            bad = next(((c, s) for c, s in row["checks"].items() if s["status"] != Status.PASS),
                       None)
            if bad is not None:
                check, s = bad
                row["caught"] = {"check": check, "status": s["status"],
                                 **(s.get("first_fail") or {}), "message": s.get("message", "")}
            # against the real backend it is a variant of, where both ran in this case
            for check in [c for c in ("eval", "train") if cc.case.has(c)]:
                pair = _pair(cc, check, p.backend, p.name)
                if pair is not None:
                    row["vs_real"] = row["vs_real"] or {}
                    row["vs_real"][check] = {
                        "status": str(pair.status), "worst_rel": _num(pair.worst_rel),
                        "worst_item": pair.worst.item if pair.worst else None,
                        "message": _first_line(pair.message, 200)}
            out.append(row)
    return out


def real_backend_errors(cc: CaseComparison) -> tuple[dict[str, dict[str, dict[str, float | None]]],
                                                     dict[str, dict[str, str]]]:
    """Per real backend: per check (eval, train) and stage, the error against the float64
    reference (``{"torch": {"eval": {"stem": 1.2e-7, ...}, "train": {...}}}``), and the
    status of each of those cells."""
    stages = cc.case.build_spec().stage_names
    errors: dict[str, dict[str, dict[str, float | None]]] = {}
    status: dict[str, dict[str, str]] = {}
    for b in REAL_BACKENDS:
        errors[b], status[b] = {}, {}
        for check in ("eval", "train"):
            cell = _cell(cc, check, b)
            if cell is None:
                status[b][check] = "missing"
                continue
            errors[b][check] = {i.item: _num(i.rel) for i in cell.items if i.item in stages}
            status[b][check] = str(cell.status)
    return errors, status


# ---------------------------------------------------------------------- the table
def _g(v: float | None) -> str:
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v:.2g}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _caught_text(row: dict[str, Any]) -> tuple[str, str]:
    """(caught by, error) cells of a row."""
    c = row["caught"]
    if c is None:
        if row["status"] == "not run":
            return "not run", "-"
        # passes every check: the worst error of its value checks
        worst = [(s["worst_rel"], s.get("worst_item"), s.get("tol"), ch)
                 for ch, s in row["checks"].items() if s.get("worst_rel") is not None
                 and ch in ("eval", "train")]
        if not worst:
            return "nothing (passes)", "-"
        rel, item, tol, ch = max(worst, key=lambda t: t[0])
        return "nothing (passes)", f"{_g(rel)} at {ch} `{item}` (tol {_g(tol)})"
    where = f"{c['check']} at `{c['item']}`" if c.get("item") else c["check"]
    if c.get("rel") is not None:
        text = f"{_g(c['rel'])} (tol {_g(c.get('tol'))})"
        s = row["checks"][c["check"]]
        if s.get("worst_item") not in (None, c["item"]) and s.get("worst_rel") is not None:
            text += f"; worst {_g(s['worst_rel'])} at `{s['worst_item']}`"
        return where, text
    if c.get("expected_shape") is not None and c.get("actual_shape") != c.get("expected_shape"):
        return where, (f"shape {tuple(c['actual_shape'] or ())}, spec "
                       f"{tuple(c['expected_shape'])}")
    if c.get("note"):
        return where, _md(c["note"])
    return f"{where}: {c['status']}", _md(_first_line(c.get("message", "")))


def _vs_real_text(row: dict[str, Any]) -> str:
    v = row["vs_real"]
    if not v:
        return "-"
    return "; ".join(f"{check} {_g(p['worst_rel']) if p['worst_rel'] is not None else p['status']}"
                     for check, p in v.items())


def render_table(table_rows: Iterable[dict[str, Any]],
                 offset: dict[str, Any] | None = None) -> str:
    """The markdown table: one line per pitfall row and case."""
    head = ("| # | pitfall | where it appears | run in | the change | case | "
            + " | ".join(D2L_CHECKS) + " | caught by | error (tolerance) | vs the real backend |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table_rows:
        caught, err = _caught_text(r)
        cols = [r["label"], _md(r["pitfall"]), _md(r["source"]), r["framework"],
                f"`{_md(r['change'])}`", _md(r.get("case_text", r["case"]))]
        for check in D2L_CHECKS:
            s = r["checks"].get(check)
            cols.append("-" if s is None else s["status"])
        cols += [caught, err, _vs_real_text(r)]
        lines.append("| " + " | ".join(cols) + " |")
    if offset is not None:
        lines.append(_offset_line(offset))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- fast variance, offset
#: Channel means of the direct fast-variance measurement (the harness's inputs are zero-mean).
OFFSETS = (0.0, 10.0, 100.0)
_OFFSET_SCRIPT = r"""
import json, sys
import numpy as np
import jax.numpy as jnp
from flax import nnx

offsets, shape, eps = json.loads(sys.argv[1]), (8, 16, 16, 32), 1e-5
rng = np.random.default_rng(0)
out = []
for offset in offsets:
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(axis=(0, 1, 2))) / np.sqrt(x64.var(axis=(0, 1, 2)) + eps)
    rel = {}
    for fast in (True, False):
        # a fresh layer is in training mode: it normalises with the batch statistics
        bn = nnx.BatchNorm(shape[-1], epsilon=eps, use_fast_variance=fast, rngs=nnx.Rngs(0))
        y = np.asarray(bn(jnp.asarray(x)), dtype=np.float64)
        rel["fast" if fast else "two_pass"] = float(np.abs(y - ref).max() / np.abs(ref).max())
    out.append({"offset": offset, **rel})
print(json.dumps({"shape": list(shape), "results": out}))
"""


def fast_variance_offset(offsets: Sequence[float] = OFFSETS, timeout: float = 300.0
                         ) -> dict[str, Any]:
    """One train-mode ``nnx.BatchNorm`` on a float32 batch whose channels have mean
    ``offset`` and standard deviation 1, with and without Flax's fast variance, against
    the float64 NumPy normalisation: run in the jax environment (not through the harness,
    whose inputs are zero-mean). ``{"status": "missing", ...}`` where that env is absent."""
    python = variant_python("flax")
    if not python or not Path(python).exists():
        return {"status": "missing", "message": f"no jax environment interpreter at {python!r}"}
    env = worker_env("flax", ["cpu"], False, find_project_root())
    proc = subprocess.run([python, "-c", _OFFSET_SCRIPT, json.dumps(list(offsets))],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        return {"status": "error", "message": _first_line(proc.stderr.strip().splitlines()[-1]
                                                          if proc.stderr.strip() else "failed")}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    tol = tolerance("train", "float32")
    for r in data["results"]:
        r["fast_status"] = str(Status.PASS if r["fast"] <= tol else Status.FAIL)
    data.update(status="done", tol=tol)
    return data


def _offset_line(fv: dict[str, Any]) -> str:
    p = next(x for x in CATALOG if x.key == "fast_variance")
    base = [p.label, _md(p.pitfall), _md(p.source), BACKENDS[p.backend][1], f"`{_md(p.change)}`"]
    if fv.get("status") != "done":
        return "| " + " | ".join([*base, "one nnx.BatchNorm, large channel means (not the "
                                  "harness)", "-", "-", "-", "-", fv.get("status", "?"),
                                  _md(fv.get("message", "")), "-"]) + " |"
    worst = max(fv["results"], key=lambda r: r["offset"])
    n = "x".join(map(str, fv["shape"]))
    means = ", ".join(f"{r['offset']:g}" for r in fv["results"])
    case = (f"one nnx.BatchNorm (train mode), {n} float32, channel means {means}, std 1 "
            "(not the harness)")
    per = "; ".join(f"mean {r['offset']:g}: {_g(r['fast'])}" for r in fv["results"])
    caught = "train-mode output" if worst["fast_status"] == Status.FAIL else "nothing (passes)"
    err = f"{per} (tol {_g(fv['tol'])}); two-pass at mean {worst['offset']:g}: " \
          f"{_g(worst['two_pass'])}"
    return "| " + " | ".join([*base, case, "-", "-", worst["fast_status"], "-", caught, err,
                              "-"]) + " |"


# ---------------------------------------------------------------------- generate
def generate(out_dir: Path, *, jobs: int = 2) -> dict[str, Any]:
    """Run every pitfall (and the four real backends) through the harness, measure the
    fast variance on offset inputs, and write ``out_dir/pitfalls.md`` (the table) and
    ``out_dir/pitfalls.json``; returns what the json holds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pr = run(out_dir, jobs=jobs)
    result, ccs = pr.result, pr.ccs
    table_rows = rows(ccs)
    t1 = time.perf_counter()
    fv = fast_variance_offset()
    t_fv = time.perf_counter() - t1
    d2l = ccs["d2l"]
    errors, backend_status = real_backend_errors(d2l)
    versions = {b: {k: v for k, v in d2l.versions.get(b, {}).items()} for b in REAL_BACKENDS}
    data: dict[str, Any] = {
        "case": d2l.case.to_dict(),
        "cases": {name: cc.case.to_dict() for name, cc in ccs.items()},
        "rows": table_rows,
        "backends": errors,
        "backend_status": backend_status,
        "tolerance": {"eval": tolerance("eval", "float32"),
                      "train": tolerance("train", "float32")},
        "fast_variance_offset": fv,
        "workers": {b: {ph: {"status": o.status, "seconds": o.seconds} for ph, o in per.items()}
                    for b, per in result.outcomes.items()},
        "versions": versions,
        "seconds": {"harness_run": pr.seconds_run, "compare": pr.seconds_compare,
                    "fast_variance_offset": round(t_fv, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "run_dir": str(result.run_dir),
    }
    table = render_table(table_rows, offset=fv)
    note = (f"\n*Generated by `densenet_multi.guide.pitfalls.generate`: one parity-harness run "
            f"of {len(CATALOG)} variants and the four real backends on "
            f"{len(ccs)} cases ({len(result.backends)} workers, "
            f"{pr.seconds_run + pr.seconds_compare:.0f} s); "
            + ", ".join(f"{k} {v}" for k, v in _framework_versions(versions).items())
            + ".*\n")
    (out_dir / "pitfalls.md").write_text(table + note)
    (out_dir / "pitfalls.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


def _framework_versions(versions: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for per in versions.values():
        for k in ("torch", "flax", "jax", "keras", "tensorflow", "mxnet"):
            if k in per:
                out.setdefault(k, per[k])
    return out
