"""The backend traces without JAX 0.10's quadratic ``Tracer.sharding`` probe
(densenet_multi/flax/_tracing.py), and gives the same results as without the workaround.

Speed is never asserted: the probe's cost is counted instead, as calls of the
tracer's ``_origin_msg`` (the whole-trace walk that makes tracing quadratic).
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax.nnx")

from flax_cases import make_input, tiny_spec  # noqa: E402
from jax._src import core  # noqa: E402
from jax._src.interpreters import partial_eval as pe  # noqa: E402

from densenet_multi import flax as backend  # noqa: E402
from densenet_multi.flax import _tracing, runtime  # noqa: E402

pytestmark = pytest.mark.skipif(not _tracing.probe_is_quadratic(),
                                reason="this JAX's Tracer.sharding no longer walks the trace")


@pytest.fixture
def origin_walks(monkeypatch):
    """The number of whole-trace walks (``_origin_msg`` calls) so far, as a one-item list."""
    calls = [0]
    original = pe.DynamicJaxprTracer._origin_msg

    def counted(self):
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(pe.DynamicJaxprTracer, "_origin_msg", counted)
    return calls


def _model_and_batch(seed: int):
    # a seed of its own per test: a spec, input and labels no other test traced, so that
    # jit traces here and does not answer from its cache
    spec = tiny_spec(num_classes=3 + seed)
    x = make_input(spec, 32, 2, seed=seed)
    labels = np.arange(2) % spec.num_classes
    return backend.build(spec, seed=seed), x, labels


def test_the_contract_functions_trace_without_walking_the_trace(origin_walks):
    model, x, labels = _model_and_batch(1)
    backend.run(model, x, train=True)
    backend.gradients(model, x, labels)
    backend.train_steps(model, [(x, labels)], lr=0.1, momentum=0.9)
    assert origin_walks[0] == 0


def test_without_the_scope_the_same_trace_walks_it(origin_walks):
    # The failing case of the test above: the same train-mode forward traced outside
    # the backend boundary probes Tracer.sharding once per running-statistic write.
    model, x, _ = _model_and_batch(2)
    graphdef, stats, rest = runtime.nnx.split(model, runtime.nnx.BatchStat, ...)
    xj = runtime._input(model, x)
    runtime._forward_stages.trace(graphdef, stats, rest, xj, True)
    n_bn = sum(isinstance(v, runtime.nnx.BatchNorm) for _, v in runtime.nnx.iter_graph(model))
    assert origin_walks[0] >= 2 * n_bn > 0


def test_the_property_is_put_back_and_still_raises_attribute_error():
    original = core.Tracer.__dict__["sharding"]
    seen = []

    @jax.jit
    def f(x):
        seen.append((hasattr(x, "sharding"), getattr(x, "sharding", "absent")))
        with pytest.raises(AttributeError, match="'sharding' attribute is not available"):
            x.sharding  # noqa: B018 - the probe itself
        return x + 1

    with _tracing.quick_tracer_probes():
        with _tracing.quick_tracer_probes():  # nested: one swap, undone by the outer block
            f(np.ones(3, np.float32))
        assert core.Tracer.__dict__["sharding"] is not original
    assert core.Tracer.__dict__["sharding"] is original
    assert seen == [(False, "absent")]


def test_results_equal_those_traced_without_the_workaround(monkeypatch):
    model, x, labels = _model_and_batch(3)
    with_probes = backend.gradients(model, x, labels)
    # the same program traced again, with JAX's own property
    runtime._loss_and_grads.clear_cache()
    monkeypatch.setattr(_tracing, "probe_is_quadratic", lambda: False)  # the workaround off
    without = backend.gradients(model, x, labels)
    assert with_probes.loss == without.loss
    for name, g in with_probes.params.items():
        np.testing.assert_array_equal(g, without.params[name], err_msg=name)
    np.testing.assert_array_equal(with_probes.input, without.input)
