"""Inputs shared by the Gluon tests (a uniquely named module, unlike ``conftest``)."""

from __future__ import annotations

import numpy as np

#: preset -> input size used by the tests (small; the ImageNet-stem nets end in 1x1 (32) and
#: 2x2 (64) maps)
PRESET_SIZES = {
    "d2l": 32,
    "densenet121": 64,
    "densenet_bc_100_k12": 16,
    "densenet40_k12": 16,
}


def batch(spec, size: int, n: int = 2, seed: int = 0) -> np.ndarray:
    """A seeded NCHW float32 batch for ``spec``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((n, spec.in_channels, size, size)).astype(np.float32)
