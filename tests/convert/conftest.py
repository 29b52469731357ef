"""Fixtures of the cross-framework converter tests (run by the ``parity`` env, which builds
the framework envs: every framework is read and written in its own worker)."""

from __future__ import annotations

import pytest

from densenet_multi import checkpoint
from densenet_multi.convert import Session
from densenet_multi.convert.matrix import make_sources
from densenet_multi.convert.official import make_official


@pytest.fixture(scope="session")
def session():
    """One worker per framework for the whole test run."""
    with Session() as s:
        yield s


@pytest.fixture(scope="session")
def sources(session, tmp_path_factory):
    """A seeded d2l network (non-trivial BN statistics) in each of our seven formats (written
    unverified: canonical -> each format is verified as a pair of the matrix test)."""
    return make_sources(tmp_path_factory.mktemp("sources"), session, verify=False)


@pytest.fixture(scope="session")
def original(sources):
    """The canonical parameters every source was converted from."""
    return checkpoint.load(sources["canonical"], dtype=None)[0]


@pytest.fixture(scope="session")
def official(tmp_path_factory):
    """Files written by the official libraries themselves (made on first use)."""
    folder = tmp_path_factory.mktemp("official")
    return lambda kind: make_official(kind, folder)
