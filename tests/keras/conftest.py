"""Fixtures of the Keras backend tests.

tox runs this folder twice: under ``KERAS_BACKEND=tensorflow`` (env
``tensorflow``, everything) and under ``KERAS_BACKEND=jax`` (env ``keras-jax``,
``-m "not zoo"``): the same model code must pass the reference tests on both.
float64 models are TensorFlow's here: under JAX, ``build(dtype="float64")`` is
refused (see ``test_keras_float64.py``).
"""

from __future__ import annotations

import os

if os.environ.get("KERAS_BACKEND") == "jax":
    # Test speed only: XLA compiles every new shape; its cheapest CPU backend
    # optimisation level halves the compile time of these small graphs.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                       "--xla_llvm_disable_expensive_passes=true")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _global_dtype_policy_is_left_alone():
    """float64 models come from ``build(spec, dtype="float64")``, never from the global
    policy: every test must leave Keras's global dtype policy as it found it."""
    before = keras.config.dtype_policy().name
    yield
    assert keras.config.dtype_policy().name == before, "a test changed the global dtype policy"


def pytest_configure(config):
    # Keras 3.15's TensorFlow convert_to_numpy calls np.array(tf.Variable), which numpy 2
    # flags (the copy keyword); it comes from inside Keras (model.save, fit), not from us.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.*",
    )
