"""The tolerance policy and the comparison every test and the parity harness use.

Errors are measured relative to the *magnitude* of the expected values:
``max|a - b| / max(|b|)`` per tensor (a float32 network's rounding error
scales with the size of the numbers it carries, not with each element, so an
element-wise relative error is meaningless where values cross zero). Any NaN
or inf in either tensor is a failure, NaN against NaN included.

**Margins, as measured** (the default parity cases, all four backends against
the float64 reference and pairwise; docs/parity.md has the table):

* float32: the three official DenseNet-121s (torchvision, keras.applications,
  Gluon zoo) agree to within 2e-6 of the largest magnitude at every stage
  (design notes); our backends reach 2.3e-6 in eval mode (pairwise; tolerance
  1e-5: a margin of 4.3x) and 2.5e-5 in train mode on densenet121 (tolerance
  5e-5: 2x). These are tight on purpose: a looser float32 tolerance hides real bugs.
* float64: the margins are wide, 90x to 8e4x: eval 4.7e-15 (tolerance
  1e-12: 210x), train 1.1e-13 (1e-11: 90x), gradients 9.1e-13 (1e-10: 110x),
  trajectories 1.2e-15 (1e-10: 8e4x); running statistics 3.3e-15 (1e-12:
  300x; PyTorch and Gluon). They are not tightened to 5x because
  there is nothing between them and the smallest real bug to catch: a
  backend that computes any part in float32 is 1e-8 to 1e-6 off, 10^4x the
  tolerance, and so is a BN epsilon of 1.001e-5 instead of 1e-5 (measured:
  8e-9 at the stem to 8e-8 at the logits of densenet121). That epsilon
  difference is invisible in float32 (it is below float32's rounding) -- which
  is why it is a spec field, not a tolerance, and why the float64 cases exist.

One table, one place: :data:`TOLERANCES` maps (check, dtype) to the allowed
relative error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TOLERANCES", "Comparison", "compare", "assert_close", "assert_all_close", "tolerance",
           "conv_kinds"]

#: (check, dtype) -> max allowed ``max|a-b| / max|b|``.
TOLERANCES: dict[tuple[str, str], float] = {
    # forward in eval mode: logits and every stage output
    ("eval", "float32"): 1e-5,
    ("eval", "float64"): 1e-12,
    # forward in train mode (batch statistics): small batches divide by small
    # variances, which amplifies float32 rounding a little
    ("train", "float32"): 5e-5,
    ("train", "float64"): 1e-11,
    # updated running statistics after one train-mode forward
    ("running", "float32"): 1e-5,
    ("running", "float64"): 1e-12,
    # gradients of the loss w.r.t. every parameter and the input
    ("grad", "float32"): 1e-4,
    ("grad", "float64"): 1e-10,
    # losses and final weights after K SGD steps
    ("trajectory", "float32"): 1e-4,
    ("trajectory", "float64"): 1e-10,
    # weight copying through a backend and back: bit-exact
    ("copy", "float32"): 0.0,
    ("copy", "float64"): 0.0,
    # the same backend on GPU vs CPU (TF32 off)
    ("device", "float32"): 1e-4,
    ("device", "float64"): 1e-10,
}


def tolerance(check: str, dtype: str | np.dtype = "float32") -> float:
    key = (check, str(np.dtype(dtype)))
    if key not in TOLERANCES:
        raise KeyError(f"no tolerance for check {check!r} in {key[1]}; known: {sorted(TOLERANCES)}")
    return TOLERANCES[key]


@dataclass
class Comparison:
    name: str
    shape_ok: bool
    actual_shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    max_abs: float
    scale: float  # max |expected|
    rel: float  # max_abs / scale (max_abs if scale == 0)
    tol: float
    #: which side has a NaN or inf ("actual", "expected", "actual and expected"), else ""
    nonfinite: str = ""

    @property
    def ok(self) -> bool:
        return (self.shape_ok and not self.nonfinite and bool(np.isfinite(self.rel))
                and self.rel <= self.tol)

    def __str__(self) -> str:
        if not self.shape_ok:
            return f"{self.name}: shape {self.actual_shape} != expected {self.expected_shape}"
        if self.nonfinite:
            return f"{self.name}: NaN or inf in the {self.nonfinite} values"
        return (f"{self.name}: max abs err {self.max_abs:.3g}, max |expected| {self.scale:.3g}, "
                f"rel {self.rel:.3g} (tol {self.tol:.1g})")


def compare(name: str, actual, expected, tol: float) -> Comparison:
    """Error of ``actual`` against ``expected``: ``max|a - b| / max|b|``.

    Any NaN or inf in either tensor makes the error infinite (never ok): NaN
    where the other side also has NaN is not agreement, it is two broken results.
    """
    a = np.asarray(actual)
    b = np.asarray(expected)
    if a.shape != b.shape:
        return Comparison(name, False, a.shape, b.shape, np.inf, np.nan, np.inf, tol)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite_a, finite_b = bool(np.all(np.isfinite(a64))), bool(np.all(np.isfinite(b64)))
    if not (finite_a and finite_b):
        scale = float(np.max(np.abs(b64[np.isfinite(b64)]), initial=0.0))
        return Comparison(name, True, a.shape, b.shape, np.inf, scale, np.inf, tol,
                          nonfinite=("actual" if not finite_a else "")
                          + (" and " if not (finite_a or finite_b) else "")
                          + ("expected" if not finite_b else ""))
    max_abs = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
    scale = float(np.max(np.abs(b64))) if b.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    return Comparison(name, True, a.shape, b.shape, max_abs, scale, rel, tol)


def assert_close(actual, expected, check: str = "eval", dtype="float32", name: str = "") -> Comparison:
    """Assert ``actual`` equals ``expected`` within :func:`tolerance` (check, dtype)."""
    c = compare(name or check, actual, expected, tolerance(check, dtype))
    if not c.ok:
        raise AssertionError(str(c))
    return c


def assert_all_close(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                     check: str = "eval", dtype="float32", order=None) -> dict[str, Comparison]:
    """Compare two dicts key by key, in ``order`` (default: expected's); report the *first*
    failing key with its errors, plus missing/extra keys."""
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    if missing or extra:
        raise AssertionError(f"keys differ: missing {missing[:8]}, unexpected {extra[:8]}")
    out = {}
    tol = tolerance(check, dtype)
    failures = []
    for k in order or expected:
        c = compare(k, actual[k], expected[k], tol)
        out[k] = c
        if not c.ok:
            failures.append(c)
    if failures:
        worst = max(failures, key=lambda c: c.rel)
        raise AssertionError(
            f"{len(failures)} of {len(out)} {check} comparisons fail; first: {failures[0]}; "
            f"worst: {worst}")
    return out


def conv_kinds(spec: Any) -> tuple[dict[str, int], list[tuple[int, ...]]]:
    """(count per kind: stem, bottleneck, growth, transition; sorted OIHW kernel shapes) of
    ``spec``'s convolutions, read from the canonical parameter table (its names and
    shapes): an independent count for anything that lists the network's convolutions."""
    from collections import Counter

    from .params import param_table

    kinds: Counter[str] = Counter()
    shapes = []
    for p in param_table(spec):
        if p.kind != "conv_weight":
            continue
        if p.name == "features.conv0.weight":
            kinds["stem"] += 1
        elif p.name.startswith("features.transition"):
            kinds["transition"] += 1
        elif p.name.endswith(".conv1.weight"):  # conv1 is always a bottleneck (params docs)
            kinds["bottleneck"] += 1
        else:  # conv2 of a bottleneck layer, or the conv of a plain layer: the 3x3
            kinds["growth"] += 1
        shapes.append(tuple(p.shape))
    return {k: kinds[k] for k in ("stem", "bottleneck", "growth", "transition")}, sorted(shapes)
