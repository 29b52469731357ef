"""Shared fixtures of the Gluon backend tests (run in the ``mxnet`` tox env).

MXNet 1.9 on Python 3.11 / numpy 1.23 emits DeprecationWarnings from its own
modules; pyproject.toml ignores exactly those (``DeprecationWarning:mxnet.*``).
Nothing else is filtered here: any other warning, and every failure, shows.
"""

from __future__ import annotations

import importlib.util

import pytest

from densenet_multi.params import init_params
from densenet_multi.spec import get_spec

if importlib.util.find_spec("mxnet") is None:  # outside the mxnet env: nothing to collect
    collect_ignore_glob = ["test_*.py"]


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
