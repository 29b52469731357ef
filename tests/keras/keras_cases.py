"""Shared helpers of the Keras backend tests (a uniquely named module: every backend's
test folder has a conftest.py, and ``from conftest import`` would be ambiguous in one run)."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from densenet_multi import keras as dk
from densenet_multi.params import init_params
from densenet_multi.spec import DenseNetSpec, get_spec

BACKEND = keras.backend.backend()

requires_tensorflow = pytest.mark.skipif(BACKEND != "tensorflow",
                                         reason="needs KERAS_BACKEND=tensorflow")

#: preset -> (input size, batch) for the reference tests: small, and large enough
#: that train-mode BN in the last block sees at least 8 values per channel (over
#: 1x1 pixels and a batch of 2 it divides by the variance of two numbers, and
#: float32 rounding alone, even in the NumPy reference, nears the tolerance).
REFERENCE_CASES = {
    "d2l": (64, 2),
    "densenet121": (64, 4),
    "densenet_bc_100_k12": (32, 2),
    "densenet40_k12": (32, 2),
}


def tiny_spec(**changes) -> DenseNetSpec:
    """A DenseNet-BC small enough for tests that build several models."""
    base = dict(growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2,
                num_classes=5, name="tiny")
    return get_spec("densenet_bc_100_k12").replace(**{**base, **changes})


def batch(spec: DenseNetSpec, size: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(
        (n, spec.in_channels, size, size)).astype(np.float32)


@functools.cache
def loaded_model(spec: DenseNetSpec, seed: int = 0, dtype: str = "float32",
                 memory_efficient: bool = False):
    """(model, canonical params) with seeded non-trivial BN statistics, both in ``dtype``;
    cached: tests must not change the model (``run`` and ``gradients`` leave it untouched)."""
    model = dk.build(spec, seed=seed, dtype=dtype, memory_efficient=memory_efficient)
    params = init_params(spec, seed, nontrivial_bn=True, dtype=dtype)
    dk.load_canonical(model, params)
    return model, params
