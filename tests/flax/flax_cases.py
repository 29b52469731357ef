"""Small specs and inputs shared by the Flax tests (imported by name, like tests/torch)."""

from __future__ import annotations

import numpy as np

from densenet_multi.spec import DenseNetSpec


def tiny_spec(**changes) -> DenseNetSpec:
    """A DenseNet-BC small enough to compile in seconds: ImageNet stem, two blocks."""
    base = dict(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                num_classes=5, in_channels=3, name="tiny")
    return DenseNetSpec(**{**base, **changes})


def make_input(spec: DenseNetSpec, size: int, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((batch, spec.in_channels, size, size)).astype(np.float32)
