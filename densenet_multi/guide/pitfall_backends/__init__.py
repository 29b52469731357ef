"""Deliberately wrong variants of the four real backends: the porting pitfalls.

Each variant is a real backend (``densenet_multi.torch``, ``.flax``, ``.keras``,
``.gluon``) with exactly one thing changed, written in that framework the way the
textbook tab, blog or model zoo that has the pitfall writes it. A variant offers
the whole backend contract (:data:`densenet_multi.backend.CONTRACT`), so the parity
harness runs it in a worker of its framework's environment like any backend:
``BackendTarget("keras_same_padding",
"densenet_multi.guide.pitfall_backends.keras_variants:same_padding")``.

One module per framework; importing one imports that framework (and sets the
environment its tox env would: ``KERAS_BACKEND``, ``JAX_PLATFORMS``), so only the
worker of that framework's environment imports it. This package's ``__init__``
and :mod:`._base` import no framework. The catalog that says which variant shows
which pitfall, and where each appears, is :mod:`densenet_multi.guide.pitfalls`.
"""
