"""Fixtures of the Keras backend tests.

tox runs this folder twice: under ``KERAS_BACKEND=tensorflow`` (env
``tensorflow``, everything) and under ``KERAS_BACKEND=jax`` (env ``keras-jax``,
``-m "not zoo"``): the same model code must pass the reference tests on both.
"""

from __future__ import annotations

import functools
import os

if os.environ.get("KERAS_BACKEND") == "jax":
    # Test speed only: XLA compiles every new shape; its cheapest CPU backend
    # optimisation level halves the compile time of these small graphs.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                       "--xla_llvm_disable_expensive_passes=true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from densenet_multi import keras as dk  # noqa: E402
from densenet_multi.params import init_params  # noqa: E402
from densenet_multi.spec import DenseNetSpec, get_spec  # noqa: E402

BACKEND = keras.backend.backend()

requires_tensorflow = pytest.mark.skipif(BACKEND != "tensorflow",
                                         reason="needs KERAS_BACKEND=tensorflow")

#: preset -> (input size, batch) for the reference tests: small, and large enough
#: that the last block still sees 2x2 pixels (train-mode BN over 1x1 pixels and a
#: batch of 2 divides by the variance of two numbers).
REFERENCE_CASES = {
    "d2l": (64, 2),
    "densenet121": (64, 2),
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


@functools.lru_cache(maxsize=None)
def loaded_model(spec: DenseNetSpec, seed: int = 0):
    """(model, canonical params) with seeded non-trivial BN statistics; cached: tests
    must not change the model (``run`` and ``gradients`` leave it untouched)."""
    model = dk.build(spec, seed=seed)
    params = init_params(spec, seed, nontrivial_bn=True)
    dk.load_canonical(model, params)
    return model, params


@pytest.fixture
def float64_policy():
    """Run a test with Keras's float64 dtype policy (TensorFlow only: JAX is float32 here)."""
    if BACKEND != "tensorflow":
        pytest.skip("float64 needs KERAS_BACKEND=tensorflow (JAX runs without x64)")
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)
