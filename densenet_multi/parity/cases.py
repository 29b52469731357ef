"""Parity cases: which network, which input, which checks.

A :class:`Case` is everything a worker needs to reproduce one comparison: a
spec (a preset name, optionally with changed fields, or a full spec dict), an
input size and batch, a seed (weights, inputs, labels and training batches
all derive from it), a dtype, a device and the list of checks.

Weights are ``params.init_params(spec, seed, nontrivial_bn=True)``: BN scale,
shift and running statistics are drawn, not 1/0/0/1, so that an eval-mode
forward exercises every one of them (a backend that ignored the running
statistics, or swapped mean and variance, fails).

This module imports only numpy and densenet_multi: the worker imports it in
every backend's interpreter, MXNet's numpy 1.23 included.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..params import init_params
from ..spec import DenseNetSpec, get_spec

__all__ = ["CHECKS", "VALUE_CHECKS", "Case", "DEFAULT_CASES", "DEVICES", "check_unique_names", "get_cases",
           "make_inputs"]

#: Every check, in the order the report lists them.
#: ``device`` (GPU vs CPU) runs only for cases whose device is "cuda".
CHECKS: tuple[str, ...] = ("shapes", "eval", "train", "grad", "trajectory", "copy", "device")
#: The checks that compare computed values (with the reference, pairwise, GPU vs CPU), in that order.
VALUE_CHECKS: tuple[str, ...] = tuple(c for c in CHECKS if c in ("eval", "train", "grad",
                                                                 "trajectory"))

#: What each check compares, for ``--help``, the report and docs/parity.md.
CHECK_DOC: dict[str, str] = {
    "shapes": "every stage's output shape vs spec.stage_shapes (model as built, before loading)",
    "eval": "eval-mode forward: every stage and the logits vs the float64 reference and pairwise",
    "train": "train-mode forward (batch statistics): every stage, then the updated running stats",
    "grad": "loss and its gradient w.r.t. every canonical parameter (depth order) and the input",
    "trajectory": "K SGD-momentum steps on K different batches: the K losses and the final "
                  "trainable weights",
    "copy": "canonical -> A -> canonical (and -> B -> canonical for every pair) is bit-exact",
    "device": "the same backend on the GPU vs on the CPU (TF32 off unless --allow-tf32)",
}

DEVICES = ("cpu", "cuda")
_DEVICE_ALIASES = {"cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}


def normalize_device(device: str) -> str:
    try:
        return _DEVICE_ALIASES[device.lower()]
    except KeyError:
        raise ValueError(f"unknown device {device!r}; use one of cpu, cuda (alias gpu)") from None


@dataclass(frozen=True)
class Case:
    """One parity case.

    ``spec`` is a preset name (with ``changes`` applied) or a full spec dict
    (:meth:`DenseNetSpec.to_dict`). ``input_size`` is (H, W). ``steps`` is K,
    the number of SGD steps of the trajectory check.
    """

    name: str
    spec: str | Mapping[str, Any]
    input_size: tuple[int, int]
    changes: Mapping[str, Any] = field(default_factory=dict)
    batch: int = 2
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    checks: tuple[str, ...] = CHECKS[:-1]
    steps: int = 3
    #: checks whose float64 NumPy reference is computed (the forward checks always are;
    #: the reference gradient and trajectory cost about 3x and 3Kx a forward)
    reference: tuple[str, ...] = ("grad", "trajectory")

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        object.__setattr__(self, "checks", tuple(self.checks))
        object.__setattr__(self, "reference", tuple(self.reference))
        object.__setattr__(self, "changes", dict(self.changes))
        object.__setattr__(self, "device", normalize_device(self.device))
        unknown = [c for c in self.checks if c not in CHECKS]
        if unknown:
            raise ValueError(f"case {self.name!r}: unknown check(s) {unknown}; known: {CHECKS}")
        if not self.checks:
            raise ValueError(f"case {self.name!r} has no checks: it would compare nothing")
        if "device" in self.checks and self.device != "cuda":
            raise ValueError(f"case {self.name!r}: the device check compares a GPU run with the "
                             "CPU run and needs device cuda (--device cuda)")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"case {self.name!r}: dtype must be float32 or float64")
        if self.batch < 2 and "train" in self.checks:
            raise ValueError(f"case {self.name!r}: train mode needs a batch of at least 2")
        # Fail early on a bad spec or an input too small for it.
        self.build_spec().stage_shapes(*self.input_size)

    def build_spec(self) -> DenseNetSpec:
        if isinstance(self.spec, str):
            return get_spec(self.spec, **self.changes)
        spec = DenseNetSpec.from_dict(self.spec)
        return spec.replace(**self.changes) if self.changes else spec

    def with_(self, **changes: Any) -> Case:
        return replace(self, **changes)

    def has(self, check: str) -> bool:
        return check in self.checks

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec if isinstance(self.spec, str) else dict(self.spec),
            "changes": dict(self.changes),
            "input_size": list(self.input_size),
            "batch": self.batch,
            "seed": self.seed,
            "dtype": self.dtype,
            "device": self.device,
            "checks": list(self.checks),
            "steps": self.steps,
            "reference": list(self.reference),
            "resolved_spec": self.build_spec().to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Case:
        d = {k: v for k, v in d.items() if k != "resolved_spec"}
        return cls(**d)

    def describe(self) -> str:
        h, w = self.input_size
        return (f"{self.name}: {self.build_spec().describe()} @ {self.batch}x{h}x{w} "
                f"{self.dtype}, seed {self.seed}, {self.device}")


# The shipped cases. All have drop_rate 0 (dropout cannot agree across
# frameworks), seed 0 and K = 3 trajectory steps. Each network runs twice:
#
# * in float32 (what users train in): shapes, eval- and train-mode forward,
#   weight copying. Batches are chosen for conditioning, measured with the
#   float32 NumPy reference against its float64 run: a BatchNorm in train mode
#   normalises over batch x H x W values, and in a late block at a small input
#   (1x1 to 8x8 positions) a batch of 2 leaves it so few that float32 rounding
#   is amplified past the tolerances *in any implementation* (the float32
#   reference itself is 2.5e-5 off in train mode on densenet121 at batch 2).
#   So: d2l batch 4, densenet121 batch 4, the CIFAR nets batch 8.
# * in float64: forward, gradients, the SGD trajectory (K different seeded
#   batches, one per step: make_inputs) and copying, to 1e-10.
#   Gradients and trajectories are checked in float64 because in float32 they
#   are not determined to the tolerance by the weights at all: a ReLU input
#   within rounding of 0 switches its gradient term on or off, and the float64
#   reference's own gradients move by 5e-3..1e-1 under a 1e-6 perturbation of
#   its weights on these nets (docs/parity.md, "Conditioning"). In float64 a
#   1e-13 probe moves them by ~1e-13 (the trajectory with K different batches:
#   at most 5e-13 on d2l, densenet40_k12 and densenet_bc_100_k12), so the check
#   sees any real bug. (float32 gradients can still be requested:
#   ``--cases d2l --checks grad``.)
#
# DenseNet-121's float64 case runs every check but the trajectory: measured on
# the (shared) 2-core machine, Flax's jitted training step takes minutes to
# compile, and the float64 reference trajectory (run twice for the conditioning
# probe) about 3 minutes more. The trajectory runs on the three other nets,
# through the same SGD code.
_FORWARD = ("shapes", "eval", "train", "copy")
_FLOAT64 = ("eval", "train", "grad", "trajectory", "copy")
_NO_DROPOUT = {"drop_rate": 0.0}
DEFAULT_CASES: tuple[Case, ...] = (
    Case("d2l", "d2l", (96, 96), changes=_NO_DROPOUT, batch=4, checks=_FORWARD),
    Case("densenet121", "densenet121", (224, 224), changes=_NO_DROPOUT, batch=4,
         checks=_FORWARD),
    Case("densenet_bc_100_k12", "densenet_bc_100_k12", (32, 32), changes=_NO_DROPOUT, batch=8,
         checks=_FORWARD),
    Case("densenet40_k12", "densenet40_k12", (32, 32), changes=_NO_DROPOUT, batch=8,
         checks=_FORWARD),
    Case("d2l-float64", "d2l", (96, 96), changes=_NO_DROPOUT, batch=4, dtype="float64",
         checks=_FLOAT64),
    Case("densenet121-float64", "densenet121", (224, 224), changes=_NO_DROPOUT, batch=2,
         dtype="float64", checks=tuple(c for c in _FLOAT64 if c != "trajectory"),
         reference=("grad",)),
    Case("densenet_bc_100_k12-float64", "densenet_bc_100_k12", (32, 32), changes=_NO_DROPOUT,
         batch=4, dtype="float64", checks=_FLOAT64),
    Case("densenet40_k12-float64", "densenet40_k12", (32, 32), changes=_NO_DROPOUT, batch=4,
         dtype="float64", checks=_FLOAT64),
)


def get_cases(names: Sequence[str] | None = None) -> list[Case]:
    """The shipped cases, optionally only ``names`` (in the order given)."""
    by_name = {c.name: c for c in DEFAULT_CASES}
    if not names:
        return list(DEFAULT_CASES)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; shipped cases are {sorted(by_name)}")
    return [by_name[n] for n in names]


def check_unique_names(cases: Sequence[Case]) -> None:
    """Raise ValueError if two cases share a name (results and reports are keyed by it)."""
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"more than one case named {dup[0]!r}: results are found by case name")


def load_case_file(path: str) -> list[Case]:
    """Cases from a JSON file: a list of :meth:`Case.to_dict`-style objects."""
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = [data]
    return [Case.from_dict(d) for d in data]


def make_weights(case: Case) -> dict[str, np.ndarray]:
    return init_params(case.build_spec(), case.seed, nontrivial_bn=True, dtype=case.dtype)


def make_inputs(case: Case) -> dict[str, np.ndarray]:
    """Seeded inputs: ``x`` (N, C, H, W), integer ``labels`` (N,), and for the
    trajectory check ``traj_x`` (K, N, C, H, W) and ``traj_labels`` (K, N).

    The trajectory's K batches are K *different* seeded batches, one per step,
    so that a backend that reuses its first batch, or ignores later ones, fails
    the check. (Measured with the NumPy reference at ``backend.SGD_DEFAULTS``:
    see docs/parity.md, "Trajectory batches".)
    """
    spec = case.build_spec()
    h, w = case.input_size
    n, k = case.batch, case.steps
    # A stream of its own, so the inputs don't depend on how many weights the spec has.
    rng = np.random.Generator(np.random.PCG64([case.seed, 1]))
    shape = (n, spec.in_channels, h, w)
    x = rng.standard_normal(shape).astype(case.dtype)
    labels = rng.integers(0, spec.num_classes, size=n).astype(np.int64)
    traj_x = np.empty((k, *shape), dtype=case.dtype)
    traj_labels = np.empty((k, n), dtype=np.int64)
    for i in range(k):
        traj_x[i] = rng.standard_normal(shape)
        traj_labels[i] = rng.integers(0, spec.num_classes, size=n)
    return {"x": x, "labels": labels, "traj_x": traj_x, "traj_labels": traj_labels}
