"""Fixtures of the Keras backend tests.

tox runs this folder twice: under ``KERAS_BACKEND=tensorflow`` (env
``tensorflow``, everything) and under ``KERAS_BACKEND=jax`` (env ``keras-jax``,
``-m "not zoo"``): the same model code must pass the reference tests on both.
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

BACKEND = keras.backend.backend()


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


def pytest_configure(config):
    # Keras 3.15's TensorFlow convert_to_numpy calls np.array(tf.Variable), which numpy 2
    # flags (the copy keyword); it comes from inside Keras (model.save, fit), not from us.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.*",
    )
