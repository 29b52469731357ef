"""The oracle: a case's float64 NumPy reference, with its conditioning probes.

Computed in the harness (a background process of it, :func:`reference_job`),
never in a worker: numpy and densenet_multi only. It covers

* ``eval`` and ``train`` (every stage, the logits, the updated running
  statistics), always;
* ``grad`` (loss, every trainable parameter, the input) through
  :mod:`densenet_multi.reference_grad`, the same network code run on a tape,
  when the case lists ``grad`` in ``Case.reference``; the loss always;
* ``trajectory`` (the K losses, the final trainable weights) when the case lists
  it in ``Case.reference``; the first loss always.

**Conditioning probes.** The gradient and the trajectory are computed a second
time from weights (and, for the gradient, the input) perturbed by
``PROBE_REL[case.dtype]`` of their size: about how far a backend computing in
that dtype is from the float64 reference. How far the reference itself moves,
``max|probe - reference|`` per item, is stored as that item's *spread*
(absolute; the comparison divides it by the same scale it divides the
backend's error by, so the two are comparable for every item, the
convolution biases included), and the probe size with it. See
compare.mark_ill for what the comparison does with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import reference_grad
from ..backend import SGD_DEFAULTS
from ..params import param_table
from ..reference import forward, softmax_cross_entropy
from .cases import Case
from .runfolder import CaseFolder, key

__all__ = ["PROBE_REL", "compute_reference", "reference_job"]

#: Relative size of the conditioning probes' perturbation, per case dtype: about
#: how far a backend computing in that dtype is from the float64 reference
#: (float32, measured: 4e-7 to 1.5e-6 in eval mode on the default cases; float64:
#: 1e-15 .. 1e-14). Measured on densenet40_k12's float32 gradients: at 1e-7 the
#: reference moves 5e-7 (linear, no ReLU flips), at 1e-6 already 6e-3 (flips);
#: on densenet_bc_100_k12 and densenet121 it moves 5e-3..1e-2 even at 1e-7.
PROBE_REL = {"float32": 1e-6, "float64": 1e-13}


def compute_reference(case: Case, params: Mapping[str, np.ndarray],
                      inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every reference array of ``case``, keyed as in :mod:`.runfolder`."""
    arrays: dict[str, np.ndarray] = {}
    if case.has("eval") or case.has("shapes"):
        arrays.update(_forward(case, params, inputs, "eval"))
    if case.has("train") or case.has("grad"):
        arrays.update(_forward(case, params, inputs, "train"))
    if case.has("grad"):
        arrays.update(_grad(case, params, inputs))
    if case.has("trajectory"):
        arrays.update(_trajectory(case, params, inputs))
    return arrays


def _forward(case: Case, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
             check: str) -> dict[str, np.ndarray]:
    train = check == "train"
    out = forward(case.build_spec(), params, inputs["x"], train=train, dtype="float64")
    arrays = {key(check, "stage", k): v for k, v in out.stages.items()}
    arrays[key(check, "output", "logits")] = out.logits
    for k, v in (out.running or {}).items():
        arrays[key(check, "running", k)] = v
    if train:  # the loss, for cases that do not reference the whole gradient
        arrays[key("grad", "value", "loss")] = np.asarray(
            softmax_cross_entropy(out.logits, inputs["labels"]))
    return arrays


def _grad(case: Case, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
          ) -> dict[str, np.ndarray]:
    if "grad" not in case.reference:
        return {}
    spec = case.build_spec()
    g = reference_grad.gradients(spec, params, inputs["x"], inputs["labels"], dtype="float64")
    values = {"loss": np.asarray(g.loss), "input": g.input}
    arrays = {key("grad", "value", k): v for k, v in values.items()}
    arrays.update({key("grad", "param", k): v for k, v in g.params.items()})
    # The probe: weights and input perturbed. Millions of ReLU inputs sit within
    # float32 rounding of 0 somewhere in a deep net; where one of them feeds few
    # positions (a late block at a small input), rounding flips its gradient term.
    rel = PROBE_REL[case.dtype]
    rng = np.random.Generator(np.random.PCG64([case.seed, 3]))
    p2 = _perturbed(params, rng, rel)
    x2 = _perturbed({"x": inputs["x"]}, rng, rel)["x"]
    g2 = reference_grad.gradients(spec, p2, x2, inputs["labels"], dtype="float64")
    moved = {"loss": (np.asarray(g2.loss), values["loss"]), "input": (g2.input, g.input)}
    moved.update({k: (g2.params[k], v) for k, v in g.params.items()})
    arrays.update({key("grad", "spread", k): _max_abs(a, b) for k, (a, b) in moved.items()})
    arrays[key("grad", "probe", "rel")] = np.asarray(rel)
    return arrays


def _trajectory(case: Case, params: Mapping[str, np.ndarray],
                inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    spec = case.build_spec()
    # The first loss is a forward at the initial weights: always referenced.
    out0 = forward(spec, params, inputs["traj_x"][0], train=True, dtype="float64")
    arrays = {key("trajectory", "value", "loss0"): np.asarray(
        softmax_cross_entropy(out0.logits, inputs["traj_labels"][0]))}
    if "trajectory" not in case.reference:
        return arrays
    batches = [(inputs["traj_x"][i], inputs["traj_labels"][i])
               for i in range(inputs["traj_x"].shape[0])]
    losses, final = reference_grad.train_steps(spec, params, batches, dtype="float64",
                                               **SGD_DEFAULTS)
    trainable = [p.name for p in param_table(spec) if p.trainable]
    arrays[key("trajectory", "value", "losses")] = np.asarray(losses)
    arrays.update({key("trajectory", "param", k): final[k] for k in trainable})
    # The probe: the same K steps from perturbed weights. A ReLU input within
    # rounding of 0 switches its gradient on or off, and the steps can amplify it.
    rel = PROBE_REL[case.dtype]
    rng = np.random.Generator(np.random.PCG64([case.seed, 2]))
    losses2, final2 = reference_grad.train_steps(spec, _perturbed(params, rng, rel), batches,
                                                 dtype="float64", **SGD_DEFAULTS)
    arrays[key("trajectory", "spread", "losses")] = _max_abs(np.asarray(losses2),
                                                             np.asarray(losses))
    arrays.update({key("trajectory", "spread", k): _max_abs(final2[k], final[k])
                   for k in trainable})
    arrays[key("trajectory", "probe", "rel")] = np.asarray(rel)
    return arrays


def reference_job(case_dir: str | Path) -> str:
    """Compute a prepared case's reference into its folder (run in a process of its own)."""
    folder = CaseFolder(case_dir)
    case = folder.read_case()
    arrays = compute_reference(case, folder.read_weights(case), folder.read_inputs())
    folder.write_reference(arrays)
    return case.name


def _perturbed(arrays: Mapping[str, np.ndarray], rng: np.random.Generator, rel: float
               ) -> dict[str, np.ndarray]:
    """float64 copies, each element scaled by (1 + rel * N(0, 1))."""
    return {k: np.asarray(v, np.float64) * (1 + rel * rng.standard_normal(np.shape(v)))
            for k, v in arrays.items()}


def _max_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max|a - b| (0 for empty arrays)."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return np.asarray(float(np.max(d)) if d.size else 0.0)
