"""Shared fixtures of the Gluon backend tests (run in the ``mxnet`` tox env).

MXNet 1.9 on Python 3.11 / numpy 1.23 emits DeprecationWarnings from its own
modules; pyproject.toml ignores exactly those (``DeprecationWarning:mxnet.*``).
Nothing else is filtered here: any other warning, and every failure, shows.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from densenet_multi.params import init_params  # noqa: E402
from densenet_multi.spec import get_spec  # noqa: E402

#: preset -> input size used by the tests (small, but every stage keeps >= 2x2 pixels)
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


@pytest.fixture(scope="session")
def case_cache():
    """(preset) -> (spec, canonical params with non-trivial BN); built once per session."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            spec = get_spec(name)
            cache[name] = (spec, init_params(spec, seed=1, nontrivial_bn=True))
        return cache[name]

    return get
