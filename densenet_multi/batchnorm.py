"""BatchNorm bookkeeping shared by every backend, in the spec's convention.

Frameworks agree on how a train-mode BatchNorm *normalises* (with the biased
batch variance) but not on how it updates the *running* variance: PyTorch (the
canonical rule) mixes in the unbiased batch variance, Flax NNX, Keras 3 and
MXNet Gluon the biased one. A backend whose framework uses the biased rule
converts its updated running variance with :func:`canonical_running_var`, which
needs how many values each BN layer averaged over (:func:`sample_counts`).
Both are written once, here, in the spec's momentum convention (``m`` = weight
of the new batch statistic, PyTorch's 0.1).
"""

from __future__ import annotations

import numpy as np

from .params import module_table
from .spec import DenseNetSpec

__all__ = ["canonical_running_var", "sample_counts"]


def sample_counts(spec: DenseNetSpec, n: int, h: int, w: int) -> dict[str, int]:
    """Canonical BN prefix (``features.norm0``, ``...denselayer1.norm1``, ``features.norm5``)
    -> the number of values per channel it averages over in a train-mode pass on an
    ``n x C x h x w`` batch: N times the height and width at that layer's input."""
    shapes = spec.stage_shapes(h, w)
    # norm0 sees the stem conv's output, before the max-pool
    stem_hw = spec.stem_conv.out_size(h) * spec.stem_conv.out_size(w)
    counts: dict[str, int] = {}
    for ref in module_table(spec):
        if ref.kind != "bn":
            continue
        head = ref.part[0]
        if head == "stem":
            hw = stem_hw
        else:
            # a block's layers, and the transition after it (its BN runs before the
            # pool), work at the block's size; norm5 at the last block's (= features)
            stage = "features" if head == "norm5" else f"block{ref.part[1] + 1}"
            _, sh, sw = shapes[stage]
            hw = sh * sw
        counts[ref.prefix] = n * hw
    return counts


def canonical_running_var(old: np.ndarray, updated: np.ndarray, count: int,
                          momentum: float) -> np.ndarray:
    """A running variance updated with the *biased* batch variance -> the canonical one.

    With ``m = momentum`` in the spec's convention, a biased-rule framework computes
    ``updated = (1 - m) * old + m * var_b``; PyTorch uses the unbiased
    ``var_b * count / (count - 1)``. Since ``m * var_b = updated - (1 - m) * old``,
    the canonical value is ``updated + (updated - (1 - m) * old) / (count - 1)``,
    computed in float64 (the correction is added, never cancelled) and returned in
    ``updated``'s dtype. ``count <= 1`` is left unscaled, as the NumPy reference does.
    """
    updated = np.asarray(updated)
    new64 = updated.astype(np.float64)
    if count <= 1:
        return new64.astype(updated.dtype)
    m_var_b = new64 - (1.0 - momentum) * np.asarray(old, np.float64)
    return (new64 + m_var_b / (count - 1)).astype(updated.dtype)
