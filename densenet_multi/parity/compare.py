"""Comparison: every backend against the NumPy reference, and every pair of backends.

Every number here comes from :mod:`densenet_multi.testing`: the error of a
tensor is ``max|actual - expected| / max|expected|`` and its tolerance is
``testing.tolerance(check, dtype)`` -- one table, no second one here.

Items are compared in network order, so that the first failing item is where
a bug *starts* (everything after it inherits the error):

* ``shapes``, ``eval``, ``train``: ``spec.stage_names`` (stem, block1,
  transition1, ..., features, pooled, logits); ``train`` then the updated
  running statistics in ``params.param_table`` order (``running`` tolerance);
* ``grad``: the loss, the parameters in ``param_table`` order (network depth),
  then the input;
* ``trajectory``: the K losses, then the final trainable weights;
* ``copy``: every canonical tensor, bit for bit (tolerance 0, dtype included).

The reference (float64, computed by the harness) covers shapes, eval, train
and running statistics, and -- through :mod:`densenet_multi.reference_grad`,
the same network code run on a tape -- the gradients and the K-step
trajectory (a case can leave the last two out: ``Case.reference``; then only
the loss is referenced). Every pair of backends is compared as well, so that
two backends that agree with each other but not with the reference, or a
check without a reference, still show.

One documented exception to "relative to its own magnitude": the gradient of
a **convolution bias** is exactly zero in a DenseNet trained with batch
statistics (every conv output only ever reaches BatchNorms, and a BN in train
mode subtracts any per-channel constant), so what a backend computes there is
pure rounding noise, and noise relative to noise is meaningless. It is measured
relative to the magnitude of the gradient of that convolution's *kernel*
(the same module), the scale its rounding error comes from; the tolerance is
the same ``grad`` one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations, permutations
from pathlib import Path
from typing import Any

import numpy as np

from ..params import module_table, param_table
from ..spec import DenseNetSpec
from ..testing import Comparison, compare, tolerance
from .cases import CHECKS, Case
from .worker import SEP

PROBE_NOTE = ("1e-6 of their size (about the float32 backends' distance from the reference; "
              "the input too, for gradients)")

__all__ = [
    "Cell",
    "Item",
    "PASS",
    "FAIL",
    "compare_run",
    "compare_items",
]

PASS, FAIL, ERROR, UNSUPPORTED = "pass", "FAIL", "error", "unsupported"
MISSING, CRASHED, TIMEOUT, NOT_AVAILABLE = "missing", "crashed", "timeout", "not available"
SKIPPED, UNPAIRED, NA = "skipped", "unpaired", "n/a"
#: a gradient or trajectory item that fails where the reference itself, started
#: from weights perturbed by runner.PROBE_REL, moves further than the tolerance
ILL = "ill-conditioned"
#: statuses that make the run fail whatever the flags
FAILING = (FAIL, ERROR, CRASHED, TIMEOUT)
#: statuses that make the run fail only with --require-all
INCOMPLETE = (MISSING, UNSUPPORTED)
_RANK = {PASS: 0, NA: 0, SKIPPED: 0, UNPAIRED: 1, ILL: 1, NOT_AVAILABLE: 1, MISSING: 2, UNSUPPORTED: 2,
         TIMEOUT: 3, CRASHED: 3, ERROR: 3, FAIL: 4}


@dataclass
class Item:
    """One tensor compared: a stage, a parameter, a running statistic, a loss."""

    item: str
    status: str
    max_abs: float | None = None
    scale: float | None = None
    rel: float | None = None
    tol: float | None = None
    actual_shape: list[int] | None = None
    expected_shape: list[int] | None = None
    note: str = ""

    @classmethod
    def from_comparison(cls, c: Comparison, note: str = "") -> Item:
        return cls(c.name, PASS if c.ok else FAIL, _f(c.max_abs), _f(c.scale), _f(c.rel),
                   c.tol, list(c.actual_shape), list(c.expected_shape), note)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def short(self) -> str:
        if self.note and self.rel is None:
            return f"{self.item}: {self.note}"
        if self.actual_shape != self.expected_shape and self.expected_shape is not None:
            return f"{self.item}: shape {tuple(self.actual_shape or ())} != " \
                   f"{tuple(self.expected_shape)}"
        return f"{self.item}: max abs {_g(self.max_abs)}, rel {_g(self.rel)} (tol {_g(self.tol)})"


def _f(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else (float("inf") if v > 0 else None)


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.2g}"


@dataclass
class Cell:
    """The result of one check for one subject in one case.

    ``subject`` is a backend (``torch``), a pair (``torch~flax``) or a copy
    chain (``torch->flax``); ``against`` what it was compared with
    (``reference``, ``spec``, ``canonical``, another backend, ``cpu``).
    """

    case: str
    check: str
    subject: str
    against: str
    status: str
    items: list[Item] = field(default_factory=list)
    message: str = ""
    detail: str = ""  # error tail / traceback

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


def _status_of(items: Sequence[Item]) -> str:
    return worst_status([PASS, *(i.status for i in items)])


def worst_status(statuses: Iterable[str]) -> str:
    s = list(statuses)
    return max(s, key=lambda x: _RANK.get(x, 0)) if s else NA


# ---------------------------------------------------------------------- primitives
def compare_items(
    actual: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    order: Sequence[str],
    check: str,
    dtype: str,
    *,
    label: dict[str, str] | None = None,
    scales: dict[str, float] | None = None,
) -> list[Item]:
    """Compare ``actual[k]`` with ``expected[k]`` for every ``k`` in ``order``,
    plus items present on one side only (reported as failures)."""
    tol = tolerance(check, dtype)
    out: list[Item] = []
    for k in order:
        name = (label or {}).get(k, k)
        if expected.get(k) is None:
            continue
        if actual.get(k) is None:
            out.append(Item(name, FAIL, note="missing from the backend's output"))
            continue
        a, e = np.asarray(actual[k]), np.asarray(expected[k])
        if not np.issubdtype(a.dtype, np.number) or a.dtype == bool:
            out.append(Item(name, FAIL, note=f"dtype {a.dtype} is not a number"))
            continue
        c = compare(name, a, e, tol)
        note = ""
        if scales and k in scales and c.shape_ok:
            scale = max(c.scale, scales[k])
            rel = c.max_abs / scale if scale > 0 else c.max_abs
            note = f"relative to the kernel gradient's magnitude {scale:.3g} (bias gradient is 0)"
            c = Comparison(c.name, True, c.actual_shape, c.expected_shape, c.max_abs, scale, rel,
                           tol)
        out.append(Item.from_comparison(c, note))
    extra = [k for k in actual if k not in expected and k not in order and actual[k] is not None]
    for k in extra:
        out.append(Item((label or {}).get(k, k), FAIL, note="unexpected in the backend's output"))
    return out


def compare_exact(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                  order: Sequence[str], dtype: str) -> list[Item]:
    """Bit-exact comparison (the ``copy`` check): keys, shapes, dtype and every bit."""
    items = compare_items(actual, expected, order, "copy", dtype)
    for it in items:
        a = actual.get(it.item)
        if a is not None and it.status == PASS and np.asarray(a).dtype != np.dtype(dtype):
            it.status, it.note = FAIL, f"dtype {np.asarray(a).dtype}, expected {dtype}"
        elif a is not None and it.status == PASS and not np.array_equal(
                np.asarray(a).view(np.uint8), np.asarray(expected[it.item]).view(np.uint8)):
            it.status, it.note = FAIL, "values equal but bits differ (e.g. -0.0 vs 0.0)"
    return items


# ---------------------------------------------------------------------- loading results
def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _sub(arrays: dict[str, np.ndarray], *prefix: str) -> dict[str, np.ndarray]:
    p = SEP.join(prefix) + SEP
    return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


@dataclass
class BackendCase:
    """What one backend's worker produced for one case on one device."""

    status: str  # ok, missing, crashed, timeout, not run
    reason: str = ""
    detail: str = ""
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def check_status(self, check: str) -> tuple[str, str, str]:
        """(status, message, traceback) of ``check`` in the worker."""
        if self.status != "ok":
            return self.status, self.reason, self.detail
        c = self.checks.get(check)
        if c is None:
            return SKIPPED, "not run", ""
        st = {"done": PASS, "unsupported": UNSUPPORTED, "error": ERROR,
              "not available": NOT_AVAILABLE}.get(c["status"], ERROR)
        return st, c.get("error", ""), c.get("traceback", "")


def load_backend_case(case_dir: Path, backend: str, device: str, outcome: Any) -> BackendCase:
    d = case_dir / backend
    js = d / f"{device}.json"
    if outcome is not None and outcome.status == "missing":
        return BackendCase(MISSING, outcome.reason)
    if not js.exists():
        if outcome is None:
            return BackendCase("not run", "no worker ran")
        status = {"timeout": TIMEOUT}.get(outcome.status, CRASHED)
        reason = outcome.reason or "the worker wrote no result for this case"
        if outcome.status == "ok":
            reason = "the worker finished without a result for this case"
        return BackendCase(status, reason, outcome.log_tail)
    report = json.loads(js.read_text())
    return BackendCase("ok", checks=report.get("checks", {}),
                       arrays=_load_npz(d / f"{device}.npz"), report=report)


# ---------------------------------------------------------------------- the comparison
@dataclass
class CaseComparison:
    case: Case
    case_dir: Path
    cells: list[Cell]
    notes: dict[str, list[str]]  # backend -> contract notes
    versions: dict[str, dict[str, str]]


def _grad_scales(spec: DenseNetSpec, grads: dict[str, np.ndarray]) -> dict[str, float]:
    """Conv bias -> max |gradient of the same conv's kernel| (see the module docstring)."""
    out = {}
    for m in module_table(spec):
        if m.kind == "conv" and len(m.params) > 1:
            w, b = m.params[0].name, m.params[1].name
            if w in grads:
                out[b] = float(np.max(np.abs(np.asarray(grads[w], dtype=np.float64))))
    return out


def compare_case(case: Case, case_dir: Path, backends: Sequence[str],
                 outcomes: dict[str, dict[str, Any]]) -> CaseComparison:
    spec = case.build_spec()
    dt = case.dtype
    stage_order = list(spec.stage_names)
    ptable = param_table(spec)
    porder = [p.name for p in ptable]
    running_order = [p.name for p in ptable if not p.trainable]
    trainable_order = [p.name for p in ptable if p.trainable]
    ref = _load_npz(case_dir / "reference.npz")
    spread = _sub(ref, "trajectory", "spread")
    gspread = _sub(ref, "grad", "spread")
    from .. import checkpoint

    canonical, _ = checkpoint.load(case_dir / "weights.safetensors", spec, dtype=dt)
    res = {b: load_backend_case(case_dir, b, "cpu", outcomes.get(b, {}).get("main"))
           for b in backends}
    cells: list[Cell] = []
    notes = {b: list(r.report.get("notes", [])) for b, r in res.items()}
    versions = {b: r.report.get("versions", {}) for b, r in res.items()}

    def cell(check: str, subject: str, against: str, status: str, items=(), message="",
             detail="") -> Cell:
        c = Cell(case.name, check, subject, against, status, list(items), message, detail)
        cells.append(c)
        return c

    def gate(b: str, check: str, against: str) -> bool:
        """Emit the cell for a check that did not produce data; True if it did."""
        if not case.has(check):
            cell(check, b, against, SKIPPED, message="not in this case's checks")
            return False
        st, msg, tb = res[b].check_status(check)
        if st != PASS:
            cell(check, b, against, st, message=msg, detail=tb)
            return False
        return True

    # -- per backend, against the reference / the spec / the canonical weights
    for b in backends:
        r = res[b]
        if gate(b, "shapes", "spec"):
            got = r.report.get("shapes", {})
            items = []
            want = spec.stage_shapes(*case.input_size)
            for s in stage_order:
                exp = [case.batch, *want[s]]
                if s not in got:
                    items.append(Item(s, FAIL, note="stage missing from run().stages"))
                elif list(got[s]) != exp:
                    items.append(Item(s, FAIL, actual_shape=list(got[s]), expected_shape=exp))
                else:
                    items.append(Item(s, PASS, actual_shape=exp, expected_shape=exp))
            extra = [s for s in got if s not in want and not s.startswith("@")]
            items += [Item(s, FAIL, note="not a stage of the spec") for s in extra]
            cell("shapes", b, "spec", _status_of(items), items)
        for check in ("eval", "train"):
            if gate(b, check, "reference"):
                items = compare_items(_sub(r.arrays, check, "stage"),
                                      _sub(ref, check, "stage"), stage_order, check, dt)
                if SEP.join((check, "logits")) in r.arrays and "logits" in _sub(r.arrays, check,
                                                                                 "stage"):
                    items += compare_items(
                        {"logits (ForwardOutput.logits)": r.arrays[f"{check}{SEP}logits"]},
                        {"logits (ForwardOutput.logits)": ref[f"{check}{SEP}stage{SEP}logits"]},
                        ["logits (ForwardOutput.logits)"], check, dt)
                if check == "train":
                    items += compare_items(_sub(r.arrays, "train", "running"),
                                           _sub(ref, "train", "running"), running_order,
                                           "running", dt)
                cell(check, b, "reference", _status_of(items), items)
        if gate(b, "grad", "reference"):
            items = grad_items(r.arrays, ref, spec, trainable_order, "grad", dt, gspread)
            msg = "" if f"grad{SEP}input" in ref else (
                "the reference has the loss only here; gradients are compared pairwise")
            cell("grad", b, "reference", _status_of(items), items, message=msg)
        if gate(b, "trajectory", "reference"):
            losses = r.arrays.get(f"trajectory{SEP}losses")
            if f"trajectory{SEP}losses" in ref:
                items = trajectory_items(r.arrays, ref, trainable_order, "trajectory", dt,
                                         spread)
                msg = ""
            else:
                a = {} if losses is None or np.size(losses) < 1 else {"loss[0]": losses[0]}
                items = compare_items(a, {"loss[0]": ref[f"trajectory{SEP}loss0"]},
                                      ["loss[0]"], "trajectory", dt)
                msg = ("the reference has the first loss only here; trajectories are compared "
                       "pairwise")
            if losses is not None and np.size(losses) != case.steps:
                items.append(Item("losses", FAIL, note=f"{np.size(losses)} losses for "
                                                       f"{case.steps} steps"))
            cell("trajectory", b, "reference", _status_of(items), items, message=msg)
        if gate(b, "copy", "canonical"):
            exported = _load_safetensors(case_dir / b / "export.safetensors")
            items = compare_exact(exported, canonical, porder, dt)
            order = r.report.get("export_order", [])
            msg = "" if order == porder else "export_canonical() is not in param_table order"
            cell("copy", b, "canonical", _status_of(items), items, message=msg)

    # -- every pair of backends (values that both produced)
    pair_checks = [c for c in ("eval", "train", "grad", "trajectory") if case.has(c)]
    for a, b in combinations(backends, 2):
        for check in pair_checks:
            sa, sb = res[a].check_status(check)[0], res[b].check_status(check)[0]
            subject = f"{a}~{b}"
            if sa != PASS or sb != PASS:
                cell(check, subject, b, NA, message=f"{a}: {sa}, {b}: {sb}")
                continue
            A, B = res[a].arrays, res[b].arrays
            if check in ("eval", "train"):
                items = compare_items(_sub(A, check, "stage"), _sub(B, check, "stage"),
                                      stage_order, check, dt)
                if check == "train":
                    items += compare_items(_sub(A, "train", "running"),
                                           _sub(B, "train", "running"), running_order,
                                           "running", dt)
            elif check == "grad":
                items = grad_items(A, B, spec, trainable_order, "grad", dt, gspread)
            else:
                items = trajectory_items(A, B, trainable_order, "trajectory", dt, spread)
            cell(check, subject, b, _status_of(items), items)

    # -- copying through two backends: canonical -> A -> canonical -> B -> canonical
    if case.has("copy"):
        for a, b in permutations(backends, 2):
            subject = f"{a}->{b}"
            path = case_dir / b / f"copy_from_{a}.npz"
            phase = _load_copy_phase(case_dir / b)
            src = phase.get("sources", {}).get(a)
            if path.exists():
                items = compare_exact(_load_npz(path), canonical, porder, dt)
                cell("copy", subject, "canonical", _status_of(items), items)
            elif src is not None and src["status"] != "done":
                st = {"unsupported": UNSUPPORTED}.get(src["status"], ERROR)
                cell("copy", subject, "canonical", st, message=src.get("error", ""),
                     detail=src.get("traceback", ""))
            else:
                why = [f"{x}: {res[x].check_status('copy')[0]}" for x in (a, b)]
                co = outcomes.get(b, {}).get("copy")
                if co is not None and co.status != "ok":
                    cell("copy", subject, "canonical", CRASHED if co.status != "timeout"
                         else TIMEOUT, message=co.reason, detail=co.log_tail)
                else:
                    cell("copy", subject, "canonical", NA, message=", ".join(why))

    # -- the GPU against the CPU, same backend
    if case.device == "cuda":
        for b in backends:
            outcome = outcomes.get(b, {}).get("main")
            rg = load_backend_case(case_dir, b, "cuda", outcome)
            rc = res[b]
            if rg.status != "ok":
                cell("device", b, "cpu", rg.status, message=rg.reason, detail=rg.detail)
                continue
            sts = {c: rg.check_status(c)[0] for c in ("eval", "train", "grad", "trajectory")
                   if case.has(c)}
            if sts and all(s == NOT_AVAILABLE for s in sts.values()):
                cell("device", b, "cpu", NOT_AVAILABLE,
                     message=f"no GPU for this backend here "
                             f"(its devices(): {rg.report.get('backend_devices')})")
                continue
            items: list[Item] = []
            bad = []
            for c, st in sts.items():
                if st != PASS or rc.check_status(c)[0] != PASS:
                    bad.append(f"{c}: gpu {st}, cpu {rc.check_status(c)[0]}")
                    continue
                G, C = _sub(rg.arrays, c), _sub(rc.arrays, c)
                keys = [k for k in C if k in G] + [k for k in G if k not in C]
                keys = _device_order(keys, stage_order, porder)
                def lab(k: str, c: str = c) -> str:
                    return f"{c} {k.split(SEP)[-1]}"  # "eval stem", "grad features.conv0.weight"

                items += compare_items({lab(k): G[k] for k in G}, {lab(k): C[k] for k in C},
                                       [lab(k) for k in keys], "device", dt)
            status = _status_of(items) if items else ERROR
            if bad:
                status = worst_status([status, ERROR])
            cell("device", b, "cpu", status, items, message="; ".join(bad))
    return CaseComparison(case, case_dir, cells, notes, versions)


def grad_items(A: dict[str, np.ndarray], B: dict[str, np.ndarray], spec: DenseNetSpec,
               order: Sequence[str], check: str, dt: str,
               spread: dict[str, np.ndarray] | None = None) -> list[Item]:
    """Loss, then every parameter's gradient in network depth order, then the input's."""
    ga, gb = _sub(A, "grad", "param"), _sub(B, "grad", "param")
    items = compare_items({"loss": A.get(f"grad{SEP}loss")}, {"loss": B.get(f"grad{SEP}loss")},
                          ["loss"], check, dt)
    items += compare_items(ga, gb, order, check, dt, scales=_grad_scales(spec, gb))
    items += compare_items({"input": A.get(f"grad{SEP}input")},
                           {"input": B.get(f"grad{SEP}input")}, ["input"], check, dt)
    _mark_ill(items, spread)
    return items


def _mark_ill(items: list[Item], spread: dict[str, np.ndarray] | None) -> None:
    """Relabel failing items the reference itself can't hold to the tolerance."""
    for it in items:
        sp = (spread or {}).get(it.item)
        if it.status == FAIL and sp is not None and float(sp) > (it.tol or 0.0):
            it.status = ILL
            it.note = (f"the reference itself moves {float(sp):.2g} (rel) when started "
                       f"from weights perturbed by {PROBE_NOTE}")


def trajectory_items(A: dict[str, np.ndarray], B: dict[str, np.ndarray], order: Sequence[str],
                     check: str, dt: str, spread: dict[str, np.ndarray] | None = None
                     ) -> list[Item]:
    """The K losses, then the final trainable weights in depth order."""
    items = compare_items({"losses": A.get(f"trajectory{SEP}losses")},
                          {"losses": B.get(f"trajectory{SEP}losses")}, ["losses"], check, dt)
    items += compare_items(_sub(A, "trajectory", "param"), _sub(B, "trajectory", "param"),
                           order, check, dt)
    _mark_ill(items, spread)
    return items


def _device_order(keys: list[str], stage_order: list[str], porder: list[str]) -> list[str]:
    rank = {f"stage{SEP}{s}": i for i, s in enumerate(stage_order)}
    base = len(rank)
    for i, p in enumerate(porder):
        rank[f"running{SEP}{p}"] = base + i
        rank[f"param{SEP}{p}"] = base + i
    return sorted(keys, key=lambda k: rank.get(k, -1 if k in ("loss", "losses") else 10**9))


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    from safetensors.numpy import load_file

    return load_file(str(path))


def _load_copy_phase(d: Path) -> dict[str, Any]:
    p = d / "copy_phase.json"
    return json.loads(p.read_text()) if p.exists() else {}


def compare_run(result: Any) -> list[CaseComparison]:
    """Compare everything a :class:`~densenet_multi.parity.runner.RunResult` produced."""
    names = [b.name for b in result.backends]
    return [compare_case(c, result.case_dirs[c.name], names, result.outcomes)
            for c in result.cases]


def check_order() -> tuple[str, ...]:
    return CHECKS
