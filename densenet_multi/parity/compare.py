"""Comparison: every backend against the NumPy reference, and every pair of backends.

Every number here comes from :mod:`densenet_multi.testing`: the error of a
tensor is ``max|actual - expected| / max|expected|`` and its tolerance is
``testing.tolerance(check, dtype)``: one table, no second one here. Any NaN
or inf in a compared tensor is FAIL (also NaN against NaN).

**Completeness.** The items of a check come from the spec (:func:`entries`),
never from what a result happens to contain:

* ``eval``, ``train``: ``spec.stage_names`` (stem, block1, transition1, ...,
  features, pooled, logits), ``ForwardOutput.logits``; ``train`` then the
  updated running statistics in ``params.param_table`` order (``running``
  tolerance);
* ``grad``: the loss, every trainable parameter in ``param_table`` order
  (network depth), the input;
* ``trajectory``: the K losses, then every final trainable weight;
* ``copy``: every canonical tensor, bit for bit (tolerance 0, dtype included).

An item missing from the compared result is FAIL; one missing from the
reference or from a pair's second backend is an ``error`` that names it; an
item outside the spec's list is FAIL ("unexpected"); a comparison of zero
items is an ``error``, never ``pass``; a missing reference file is an
``error`` for every check that needs it. Items are compared in network order,
so that the first failing item is where a bug *starts*.

The reference covers eval, train and running statistics always, and the
gradients and the K-step trajectory when the case lists them in
``Case.reference`` (otherwise only the loss; the cell is then ``unpaired``
unless another backend's values were compared with it). Every pair of
backends is compared as well.

**Convolution biases.** The gradient of a convolution bias is exactly zero in
a DenseNet trained with batch statistics (every conv output reaches only
BatchNorms, and a BN in train mode removes any per-channel constant), so what
a backend computes there is rounding noise, and noise relative to noise is
meaningless. Its error is measured relative to the magnitude of the gradient
of the same convolution's *kernel* (the scale its rounding error comes from),
with the same ``grad`` tolerance; so is the conditioning probe's spread of
that item (see :func:`mark_ill`): error and spread are on one scale.

**ill-conditioned.** See :func:`mark_ill`: a gradient or trajectory item
beyond its tolerance is ``ill-conditioned`` only where the reference itself
moves beyond the tolerance under the conditioning probe *and* the error is
within :data:`ILL_FACTOR` times that spread; otherwise it is FAIL.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import combinations, permutations
from pathlib import Path
from typing import Any

import numpy as np

from ..params import module_table, param_table
from ..spec import DenseNetSpec
from ..testing import compare, tolerance
from .cases import CHECKS, VALUE_CHECKS, Case
from .runfolder import CaseFolder, key, kinds, select
from .status import Status, worst

__all__ = [
    "ILL_FACTOR",
    "CaseComparison",
    "Cell",
    "Entry",
    "Item",
    "compare_case",
    "compare_entries",
    "compare_exact",
    "compare_items",
    "compare_run",
    "entries",
    "mark_ill",
    "status_of",
]

PASS, FAIL, ERROR, ILL, NA = Status.PASS, Status.FAIL, Status.ERROR, Status.ILL, Status.NA
#: An item is ``ill-conditioned`` (not FAIL) only if its error is at most this many
#: times the reference's own spread under the conditioning probe.
ILL_FACTOR = 10.0
REFERENCE = "the reference"
LOGITS_LABEL = "logits (ForwardOutput.logits)"


# ---------------------------------------------------------------------- items and cells
@dataclass
class Item:
    """One tensor compared: a stage, a parameter, a running statistic, a loss."""

    item: str
    status: Status | str
    max_abs: float | None = None
    scale: float | None = None
    rel: float | None = None
    tol: float | None = None
    actual_shape: list[int] | None = None
    expected_shape: list[int] | None = None
    note: str = ""
    #: the conditioning probe's spread of this item, on the scale of ``rel`` (grad, trajectory)
    spread: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def short(self) -> str:
        if self.note and self.rel is None:
            return f"{self.item}: {self.note}"
        if self.actual_shape != self.expected_shape and self.expected_shape is not None:
            return f"{self.item}: shape {tuple(self.actual_shape or ())} != " \
                   f"{tuple(self.expected_shape)}"
        text = f"{self.item}: max abs {_g(self.max_abs)}, rel {_g(self.rel)} (tol {_g(self.tol)})"
        return f"{text}; {self.note}" if self.note and self.status != PASS else text


def _f(v: Any) -> float | None:
    """A finite float, or None."""
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.2g}"


@dataclass
class Cell:
    """The result of one check for one subject in one case.

    ``subject`` is a backend (``torch``), a pair (``torch~flax``) or a copy
    chain (``torch->flax``); ``against`` what it was compared with
    (``reference``, ``spec``, ``canonical``, the pair's second backend, ``cpu``).
    """

    case: str
    check: str
    subject: str
    against: str
    status: Status | str
    items: list[Item] = field(default_factory=list)
    message: str = ""
    detail: str = ""  # error tail / traceback

    @property
    def members(self) -> list[str]:
        """The backends of the subject."""
        return self.subject.replace("->", "~").split("~")

    @property
    def is_pair(self) -> bool:
        return len(self.members) > 1

    @property
    def first_fail(self) -> Item | None:
        return next((i for i in self.items if i.status != PASS), None)

    @property
    def worst(self) -> Item | None:
        rated = [i for i in self.items if i.rel is not None]
        return max(rated, key=lambda i: i.rel) if rated else None

    @property
    def worst_rel(self) -> float | None:
        w = self.worst
        return None if w is None else w.rel

    def to_dict(self) -> dict[str, Any]:
        ff = self.first_fail
        return {
            "case": self.case, "check": self.check, "subject": self.subject,
            "against": self.against, "status": self.status, "message": self.message,
            "worst_rel": self.worst_rel,
            "first_fail": None if ff is None else ff.to_dict(),
            "detail": self.detail,
            "items": [i.to_dict() for i in self.items],
        }


def status_of(items: Sequence[Item]) -> Status | str:
    """The worst status of ``items``; ``error`` when there are none (nothing compared is
    never a pass)."""
    return worst([PASS, *(i.status for i in items)]) if items else ERROR


# ---------------------------------------------------------------------- what is compared
@dataclass(frozen=True)
class Entry:
    """One item the spec says a check has: its result key is ``key(check, kind, name)``."""

    kind: str  # stage, output, running, param, value
    name: str
    tol: str  # the tolerance row: eval, train, running, grad, trajectory

    @property
    def label(self) -> str:
        return LOGITS_LABEL if self.kind == "output" else self.name


def entries(spec: DenseNetSpec, check: str) -> list[Entry]:
    """Every item of ``check`` for ``spec``, in network order: the one list of what is compared."""
    table = param_table(spec)
    trainable = [Entry("param", p.name, check) for p in table if p.trainable]
    if check in ("eval", "train"):
        out = [Entry("stage", s, check) for s in spec.stage_names]
        out.append(Entry("output", "logits", check))
        if check == "train":
            out += [Entry("running", p.name, "running") for p in table if not p.trainable]
        return out
    if check == "grad":
        return [Entry("value", "loss", check), *trainable, Entry("value", "input", check)]
    if check == "trajectory":
        return [Entry("value", "losses", check), *trainable]
    raise ValueError(f"check {check!r} has no value items")


def _numeric(a: np.ndarray) -> bool:
    """Real numbers (a complex array would lose its imaginary part in the comparison)."""
    return np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)


def _item(name: str, actual: Any, expected: Any, tol: float, sides: tuple[str, str],
          floor: float | None = None) -> Item:
    """Compare one tensor; ``floor``: a scale the error is measured against at least
    (a conv bias gradient: its kernel gradient's magnitude)."""
    if expected is None:
        return Item(name, ERROR, tol=tol, note=f"missing from {sides[1]}")
    if actual is None:
        return Item(name, FAIL, tol=tol, note=f"missing from {sides[0]}")
    a, e = np.asarray(actual), np.asarray(expected)
    for arr, side, st in ((e, sides[1], ERROR), (a, sides[0], FAIL)):
        if not _numeric(arr):
            return Item(name, st, tol=tol, note=f"dtype {arr.dtype} in {side} is not a real number")
    c = compare(name, a, e, tol)
    scale, rel, note = c.scale, c.rel, ""
    if c.nonfinite:
        side = {"actual": sides[0], "expected": sides[1]}
        note = "NaN or inf in " + " and ".join(side[s] for s in c.nonfinite.split(" and "))
    elif floor is not None and c.shape_ok:
        scale = max(c.scale, floor)
        rel = c.max_abs / scale if scale > 0 else c.max_abs
        note = f"relative to the kernel gradient's magnitude {scale:.3g} (bias gradient is 0)"
    ok = c.shape_ok and not c.nonfinite and bool(np.isfinite(rel)) and rel <= tol
    return Item(name, PASS if ok else FAIL, _f(c.max_abs), _f(scale), _f(rel), tol,
                list(c.actual_shape), list(c.expected_shape), note)


def compare_items(actual: Mapping[str, Any], expected: Mapping[str, Any], order: Sequence[str],
                  check: str, dtype: str, *, scales: Mapping[str, float] | None = None,
                  sides: tuple[str, str] = ("the backend's output", REFERENCE)) -> list[Item]:
    """Compare ``actual[k]`` with ``expected[k]`` for every ``k`` in ``order``; then every key
    of ``actual`` outside ``order`` (FAIL: unexpected)."""
    tol = tolerance(check, dtype)
    out = [_item(k, actual.get(k), expected.get(k), tol, sides, (scales or {}).get(k))
           for k in order]
    out += [Item(k, FAIL, tol=tol, note=f"unexpected in {sides[0]}")
            for k, v in actual.items() if k not in order and v is not None]
    return out


def compare_entries(A: Mapping[str, np.ndarray], B: Mapping[str, np.ndarray], check: str,
                    ents: Sequence[Entry], dtype: str, *, sides: tuple[str, str],
                    scales: Mapping[str, float] | None = None, full: Sequence[Entry] = (),
                    tol: str | None = None, prefix: str = "") -> list[Item]:
    """Results ``A`` against ``B`` (run-folder arrays) on ``ents`` of ``check``; then, if
    ``full`` is given, every item of ``check`` in ``A`` that is not in ``full`` (FAIL)."""
    items = []
    for e in ents:
        k = key(check, e.kind, e.name)
        floor = (scales or {}).get(e.name) if e.kind == "param" else None
        items.append(_item(prefix + e.label, A.get(k), B.get(k),
                           tolerance(tol or e.tol, dtype), sides, floor))
    known = {(e.kind, e.name) for e in full}
    extra = sorted(kinds(A, check) - known) if full else []
    items += [Item(f"{prefix}{kind} {name}", FAIL, note=f"unexpected in {sides[0]}")
              for kind, name in extra]
    return items


def compare_exact(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                  order: Sequence[str], dtype: str) -> list[Item]:
    """Bit-exact comparison (the ``copy`` check): keys, shapes, dtype and every bit."""
    items = compare_items(actual, expected, order, "copy", dtype, sides=("the export",
                                                                         "the canonical weights"))
    for it in items:
        a = actual.get(it.item)
        if a is None or it.status != PASS:
            continue
        if np.asarray(a).dtype != np.dtype(dtype):
            it.status, it.note = FAIL, f"dtype {np.asarray(a).dtype}, expected {dtype}"
        elif not np.array_equal(np.asarray(a).view(np.uint8),
                                np.asarray(expected[it.item]).view(np.uint8)):
            it.status, it.note = FAIL, "values equal but bits differ (e.g. -0.0 vs 0.0)"
    return items


def bias_scales(spec: DenseNetSpec, arrays: Mapping[str, np.ndarray], check: str = "grad"
                ) -> dict[str, float]:
    """Conv bias -> max |gradient of the same conv's kernel| in ``arrays`` (module docstring)."""
    grads = select(arrays, check, "param")
    out = {}
    for m in module_table(spec):
        if m.kind == "conv" and len(m.params) > 1 and m.params[0].name in grads:
            g = np.asarray(grads[m.params[0].name], dtype=np.float64)
            out[m.params[1].name] = float(np.max(np.abs(g))) if g.size else 0.0
    return out


def mark_ill(items: Sequence[Item], ref: Mapping[str, np.ndarray] | None, check: str) -> None:
    """Relabel a FAIL item ``ill-conditioned`` when the reference cannot be held to the
    tolerance there either, and the error is within ILL_FACTOR of how far it moves.

    The reference stores, per item, ``max|probe - reference|`` (oracle.py): how far
    it moves itself when started from weights perturbed by ``<check>::probe::rel``
    of their size. Divided by the item's own scale (the one its error was divided
    by, the kernel gradient's for a conv bias) that is the item's *spread*, recorded
    on the item. A FAIL item becomes ``ill-conditioned`` only if its spread exceeds
    the tolerance and its error is at most ``ILL_FACTOR`` times the spread; a larger
    error is FAIL whatever the spread (a 1000% error is a bug, not conditioning).
    """
    if ref is None:
        return
    spread = select(ref, check, "spread")
    probe = select(ref, check, "probe").get("rel")
    for it in items:
        sp = spread.get(it.item)
        if sp is None or it.scale is None:
            continue
        it.spread = float(sp) / it.scale if it.scale > 0 else float(sp)
        if it.status != FAIL or it.rel is None or it.tol is None or it.spread <= it.tol:
            continue
        size = f"{float(probe):g}" if probe is not None else "an unknown fraction"
        why = (f"the reference itself moves {it.spread:.2g} (rel) when started from weights "
               f"perturbed by {size} of their size")
        if it.rel <= ILL_FACTOR * it.spread:
            it.status, it.note = ILL, f"{why}; the error is within {ILL_FACTOR:g}x of that"
        else:
            it.note = f"{why}, but the error is {it.rel / it.spread:.3g}x that " \
                      f"(more than {ILL_FACTOR:g}x): FAIL"


# ---------------------------------------------------------------------- loading results
@dataclass
class BackendCase:
    """What one backend's worker produced for one case on one device."""

    status: Status | str  # PASS when the worker wrote a result
    reason: str = ""
    detail: str = ""
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def check_status(self, check: str) -> tuple[Status | str, str, str]:
        """(status, message, traceback) of ``check`` in the worker."""
        if self.status != PASS:
            return self.status, self.reason, self.detail
        c = self.checks.get(check)
        if c is None:
            return Status.SKIPPED, "requested but not run by the worker", ""
        st = {"done": PASS, "unsupported": Status.UNSUPPORTED, "error": ERROR,
              "not available": Status.NOT_AVAILABLE}.get(c["status"], ERROR)
        return st, c.get("error", ""), c.get("traceback", "")


def load_backend_case(folder: CaseFolder, backend: str, device: str, outcome: Any
                      ) -> BackendCase:
    if outcome is not None and outcome.status == "missing":
        return BackendCase(Status.MISSING, outcome.reason)
    found = folder.read_result(backend, device)
    if found is None:
        if outcome is None:
            return BackendCase(ERROR, "no worker ran for this backend")
        status = Status.TIMEOUT if outcome.status == "timeout" else Status.CRASHED
        reason = outcome.reason or "the worker wrote no result for this case"
        if outcome.status == "ok":
            reason = "the worker finished without a result for this case"
        return BackendCase(status, reason, outcome.log_tail)
    report, arrays = found
    return BackendCase(PASS, checks=report.get("checks", {}), arrays=arrays, report=report)


# ---------------------------------------------------------------------- one case
@dataclass
class CaseComparison:
    case: Case
    case_dir: Path
    cells: list[Cell]
    notes: dict[str, list[str]]  # backend -> contract notes
    versions: dict[str, dict[str, str]]


@dataclass
class _Job:
    """What the parts of one case's comparison share."""

    case: Case
    folder: CaseFolder
    backends: list[str]
    outcomes: Mapping[str, Mapping[str, Any]]
    res: dict[str, BackendCase]
    ref: dict[str, np.ndarray] | None
    cells: list[Cell] = field(default_factory=list)
    #: reference cells that cover the loss only (grad, trajectory without Case.reference)
    partial: list[Cell] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.spec = self.case.build_spec()
        self.dtype = self.case.dtype

    def add(self, check: str, subject: str, against: str, status: Status | str | None = None,
            items: Sequence[Item] = (), message: str = "", detail: str = "") -> Cell:
        """A cell; its status is its items' unless given (none compared: error)."""
        if status is None:
            status = status_of(items)
            if not items:
                message = message or "no item was compared"
        c = Cell(self.case.name, check, subject, against, status, list(items), message, detail)
        self.cells.append(c)
        return c

    def produced(self, b: str, check: str, against: str) -> bool:
        """True if ``b`` produced ``check`` (and, against the reference, there is one);
        else adds the cell that says why not."""
        st, msg, tb = self.res[b].check_status(check)
        if st != PASS:
            self.add(check, b, against, st, message=msg, detail=tb)
            return False
        if against == "reference" and self.ref is None:
            self.add(check, b, against, ERROR,
                     message=f"no reference: {self.folder.reference} is missing")
            return False
        return True


def compare_case(case: Case, case_dir: Path, backends: Sequence[str],
                 outcomes: Mapping[str, Mapping[str, Any]]) -> CaseComparison:
    """Every cell of one case: each backend's own checks, every pair, the copy chains
    and (for a cuda case) the GPU against the CPU."""
    folder = CaseFolder(case_dir)
    res = {b: load_backend_case(folder, b, "cpu", outcomes.get(b, {}).get("main"))
           for b in backends}
    job = _Job(case, folder, list(backends), outcomes, res, folder.read_reference())
    for b in backends:
        for check in [c for c in CHECKS if case.has(c) and c in _OWN]:
            _OWN[check](job, b)
    _pairs(job)
    if case.has("copy"):
        _copy_chains(job)
    if case.device == "cuda" and case.has("device"):
        _device(job)
    _mark_unpaired(job)
    _mark_uncompared(job)
    notes = {b: list(r.report.get("notes", [])) for b, r in res.items()}
    versions = {b: r.report.get("versions", {}) for b, r in res.items()}
    return CaseComparison(case, folder.path, job.cells, notes, versions)


def _shapes(job: _Job, b: str) -> None:
    if not job.produced(b, "shapes", "spec"):
        return
    got = job.res[b].report.get("shapes", {})
    want = job.spec.stage_shapes(*job.case.input_size)
    items = []
    for s in job.spec.stage_names:
        exp = [job.case.batch, *want[s]]
        if s not in got:
            items.append(Item(s, FAIL, note="stage missing from run().stages"))
        else:
            st = PASS if list(got[s]) == exp else FAIL
            items.append(Item(s, st, actual_shape=list(got[s]), expected_shape=exp))
    extra = [s for s in got if s not in want and not s.startswith("@")]
    items += [Item(s, FAIL, note="not a stage of the spec") for s in extra]
    job.add("shapes", b, "spec", items=items)


def _forward(job: _Job, b: str, check: str) -> None:
    if job.produced(b, check, "reference"):
        ents = entries(job.spec, check)
        items = compare_entries(job.res[b].arrays, job.ref or {}, check, ents, job.dtype,
                                sides=(f"{b}'s output", REFERENCE), full=ents)
        job.add(check, b, "reference", items=items)


def _grad(job: _Job, b: str) -> None:
    if not job.produced(b, "grad", "reference"):
        return
    full = entries(job.spec, "grad")
    whole = "grad" in job.case.reference
    ents = full if whole else full[:1]
    items = compare_entries(job.res[b].arrays, job.ref or {}, "grad", ents, job.dtype,
                            sides=(f"{b}'s output", REFERENCE), full=full,
                            scales=bias_scales(job.spec, job.ref or {}))
    mark_ill(items, job.ref, "grad")
    msg = "" if whole else "the reference has the loss only here (Case.reference); " \
                           "gradients are compared pairwise"
    cell = job.add("grad", b, "reference", items=items, message=msg)
    if not whole:
        job.partial.append(cell)


def _trajectory(job: _Job, b: str) -> None:
    if not job.produced(b, "trajectory", "reference"):
        return
    A, full = job.res[b].arrays, entries(job.spec, "trajectory")
    if "trajectory" in job.case.reference:
        items = compare_entries(A, job.ref or {}, "trajectory", full, job.dtype,
                                sides=(f"{b}'s output", REFERENCE), full=full)
        mark_ill(items, job.ref, "trajectory")
        job.add("trajectory", b, "reference", items=items)
        return
    losses = A.get(key("trajectory", "value", "losses"))
    first = {} if losses is None or np.size(losses) < 1 else {"loss[0]": np.ravel(losses)[0]}
    loss0 = (job.ref or {}).get(key("trajectory", "value", "loss0"))
    items = compare_items(first, {"loss[0]": loss0}, ["loss[0]"], "trajectory", job.dtype,
                          sides=(f"{b}'s output", REFERENCE))
    if losses is not None and np.size(losses) != job.case.steps:
        items.append(Item("losses", FAIL, note=f"{np.size(losses)} losses for "
                                               f"{job.case.steps} steps"))
    items += compare_entries(A, {}, "trajectory", [], job.dtype,
                             sides=(f"{b}'s output", REFERENCE), full=full)
    job.partial.append(job.add("trajectory", b, "reference", items=items,
                               message="the reference has the first loss only here "
                                       "(Case.reference); trajectories are compared pairwise"))


def _copy(job: _Job, b: str) -> None:
    if not job.produced(b, "copy", "canonical"):
        return
    canonical = job.folder.read_weights(job.case)
    order = [p.name for p in param_table(job.spec)]
    items = compare_exact(job.folder.read_export(b) or {}, canonical, order, job.dtype)
    msg = "" if job.res[b].report.get("export_order", []) == order else \
        "export_canonical() is not in param_table order"
    job.add("copy", b, "canonical", items=items, message=msg)


_OWN = {"shapes": _shapes, "eval": lambda j, b: _forward(j, b, "eval"),
        "train": lambda j, b: _forward(j, b, "train"), "grad": _grad,
        "trajectory": _trajectory, "copy": _copy}


# ---------------------------------------------------------------------- pairs, chains, device
def _pairs(job: _Job) -> None:
    """Every pair of backends, on every value check both produced."""
    for a, b in combinations(job.backends, 2):
        for check in [c for c in VALUE_CHECKS if job.case.has(c)]:
            sa, sb = job.res[a].check_status(check)[0], job.res[b].check_status(check)[0]
            if sa != PASS or sb != PASS:
                job.add(check, f"{a}~{b}", b, NA, message=f"{a}: {sa}, {b}: {sb}")
                continue
            A, B = job.res[a].arrays, job.res[b].arrays
            ents = entries(job.spec, check)
            scales = bias_scales(job.spec, B) if check == "grad" else None
            items = compare_entries(A, B, check, ents, job.dtype, sides=(a, b), full=ents,
                                    scales=scales)
            if check in ("grad", "trajectory"):
                mark_ill(items, job.ref, check)
            job.add(check, f"{a}~{b}", b, items=items)


def _copy_chains(job: _Job) -> None:
    """canonical -> A -> canonical -> B -> canonical, for every ordered pair."""
    canonical = job.folder.read_weights(job.case)
    order = [p.name for p in param_table(job.spec)]
    for a, b in permutations(job.backends, 2):
        subject = f"{a}->{b}"
        copied = job.folder.read_copy(b, a)
        src = job.folder.read_copy_phase(b).get("sources", {}).get(a)
        co = job.outcomes.get(b, {}).get("copy")
        if copied is not None:
            job.add("copy", subject, "canonical",
                    items=compare_exact(copied, canonical, order, job.dtype))
        elif src is not None and src["status"] != "done":
            st = Status.UNSUPPORTED if src["status"] == "unsupported" else ERROR
            job.add("copy", subject, "canonical", st, message=src.get("error", ""),
                    detail=src.get("traceback", ""))
        elif co is not None and co.status != "ok":
            st = Status.TIMEOUT if co.status == "timeout" else Status.CRASHED
            job.add("copy", subject, "canonical", st, message=co.reason, detail=co.log_tail)
        elif all(job.res[x].check_status("copy")[0] == PASS for x in (a, b)):
            # both ran the copy check, yet B's copy phase left nothing for A's export
            job.add("copy", subject, "canonical", ERROR,
                    message=f"{b}'s copy phase left no result for {a}'s export")
        else:
            why = [f"{x}: {job.res[x].check_status('copy')[0]}" for x in (a, b)]
            job.add("copy", subject, "canonical", NA, message=", ".join(why))


def _device(job: _Job) -> None:
    """The GPU run of each backend against its own CPU run."""
    for b in job.backends:
        rg = load_backend_case(job.folder, b, "cuda", job.outcomes.get(b, {}).get("main"))
        if rg.status != PASS:
            job.add("device", b, "cpu", rg.status, message=rg.reason, detail=rg.detail)
            continue
        sts = {c: rg.check_status(c)[0] for c in VALUE_CHECKS if job.case.has(c)}
        if sts and all(s == Status.NOT_AVAILABLE for s in sts.values()):
            job.add("device", b, "cpu", Status.NOT_AVAILABLE,
                    message=f"no GPU for this backend here "
                            f"(its devices(): {rg.report.get('backend_devices')})")
            continue
        items: list[Item] = []
        bad = []
        for c, st in sts.items():
            sc = job.res[b].check_status(c)[0]
            if st != PASS or sc != PASS:
                bad.append(f"{c}: gpu {st}, cpu {sc}")
                continue
            ents = entries(job.spec, c)
            scales = bias_scales(job.spec, job.res[b].arrays) if c == "grad" else None
            items += compare_entries(rg.arrays, job.res[b].arrays, c, ents, job.dtype,
                                     sides=("the GPU run", "the CPU run"), full=ents,
                                     scales=scales, tol="device", prefix=f"{c} ")
        status = worst([status_of(items), ERROR]) if bad else None
        job.add("device", b, "cpu", status, items, message="; ".join(bad))


def _mark_unpaired(job: _Job) -> None:
    """A loss-only reference cell with no compared pair: its gradients (trajectory) were
    compared with nothing, which is not a pass."""
    for cell in job.partial:
        (b,) = cell.members
        paired = [c for c in job.cells if c.check == cell.check and c.is_pair
                  and b in c.members and c.status != NA]
        if not paired:
            cell.status = worst([cell.status, Status.UNPAIRED])
            cell.message += "; no other backend's values were compared with them"


def _mark_uncompared(job: _Job) -> None:
    """A requested check with no cell at all (no backend ran it) is an error, not a pass."""
    for check in job.case.checks:
        if not any(c.check == check for c in job.cells):
            job.add(check, "(no backend)", "-", ERROR,
                    message="requested, but nothing was compared: no backend ran it")


def compare_run(result: Any, jobs: int = 1) -> list[CaseComparison]:
    """Compare everything a :class:`~densenet_multi.parity.runner.RunResult` produced, in
    case order. The cases are independent: with ``jobs`` > 1 they are compared in that
    many processes (the default run's eight cases take ~20 s in one on this machine's
    CPU, reading ~72,000 arrays, which is all the harness does once the workers are done)."""
    names = [b.name for b in result.backends]
    work = [(c, result.case_dirs[c.name], names, result.outcomes) for c in result.cases]
    if jobs > 1 and len(work) > 1:
        try:
            return _compare_in_processes(work, min(jobs, len(work)))
        except (OSError, ImportError, NotImplementedError, BrokenProcessPool):
            pass  # no processes here, or one was killed (memory): compare in this one
    return [compare_case(*w) for w in work]


def _compare_in_processes(work: list[tuple[Any, ...]], jobs: int) -> list[CaseComparison]:
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        return list(pool.map(compare_case, *zip(*work, strict=True)))
