"""One set of checks for an exported graph, shared by the four backends' ONNX tests.

Each backend's test file (``tests/<framework>/test_<framework>_onnx.py``) runs in
its own environment and keeps only what differs (its name, what its exporter
writes); the checks are these, so that the four test the same things:

* every stage of the graph, run in onnxruntime, against the float64 NumPy reference
  (:mod:`densenet_multi.reference`) at the eval tolerance of :mod:`densenet_multi.testing`;
* one graph for several batch sizes and input sizes (dynamic axes, no pool baked
  to one size);
* the graph's shape and metadata (:func:`check_graph`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import reference
from ..backend import BACKENDS, load_backend
from ..params import init_params
from ..spec import DenseNetSpec, get_spec
from ..testing import Comparison, compare, tolerance
from .graph import INPUT, metadata, run_stages, session

__all__ = ["Exported", "check_graph", "export", "first_failure", "stage_errors"]


@dataclass
class Exported:
    """A backend's graph of one network, with what it was exported from."""

    backend: str
    spec: DenseNetSpec
    params: dict[str, np.ndarray]
    graph: Any  # onnx.ModelProto
    session: Any  # onnxruntime.InferenceSession


def export(backend: str, preset: str, *, seed: int = 0, dtype: str = "float32",
           **changes: Any) -> Exported:
    """Build ``preset`` in ``backend`` with seeded non-trivial weights (BN statistics
    drawn, so the eval graph exercises every BN constant), export it, open it."""
    spec = get_spec(preset, **{"drop_rate": 0.0, **changes})
    be = load_backend(backend)
    params = init_params(spec, seed, nontrivial_bn=True, dtype=dtype)
    model = be.build(spec, dtype=dtype)
    be.load_canonical(model, params)
    exporter = importlib.import_module(f"{BACKENDS[backend][0]}.onnx_export")
    graph = exporter.to_onnx(model)
    return Exported(backend, spec, params, graph, session(graph))


def batch(spec: DenseNetSpec, n: int, size: int, *, seed: int = 1,
          dtype: str = "float32") -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((n, spec.in_channels, size, size)).astype(dtype)


def stage_errors(sess: Any, spec: DenseNetSpec, params: Mapping[str, np.ndarray],
                 x: np.ndarray) -> dict[str, Comparison]:
    """Every stage of the graph on ``x`` against the float64 reference, in network order,
    with the eval tolerance of the graph's dtype."""
    got = run_stages(sess, spec, x)
    ref = reference.forward(spec, params, x.astype(np.float64), dtype="float64")
    tol = tolerance("eval", x.dtype)
    return {k: compare(k, got[k], ref.stages[k], tol) for k in spec.stage_names}


def first_failure(errors: Mapping[str, Comparison]) -> str | None:
    """The first stage (network order) beyond its tolerance, or None."""
    return next((k for k, c in errors.items() if not c.ok), None)


def check_graph(exported: Exported, *, exporter: str, versions: Sequence[str]) -> dict[str, Any]:
    """Assert the graph's interface and metadata; returns the metadata.

    Input ``x`` (batch, C, height, width) with batch, height and width symbolic; one
    output per stage, named and ordered as ``spec.stage_names``; metadata with the
    spec, the backend, ``exporter``, the opset the file imports, and a version for
    each of ``versions`` (and onnx)."""
    g, spec = exported.graph, exported.spec
    (inp,) = g.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == (INPUT, ["batch", spec.in_channels, "height", "width"]), dims
    assert [o.name for o in g.graph.output] == list(spec.stage_names)
    assert [o.name for o in exported.session.get_outputs()] == list(spec.stage_names)
    meta = metadata(g)
    assert meta["spec"] == spec, meta["spec"]
    assert (meta["backend"], meta["exporter"], meta["layout"]) == (exported.backend, exporter, "NCHW")
    assert meta["stages"] == list(spec.stage_names)
    assert meta["opset"] == next(o.version for o in g.opset_import if o.domain in ("", "ai.onnx"))
    missing = [v for v in ("onnx", *versions) if not meta["versions"].get(v)]
    assert not missing, f"no version recorded for {missing}: {meta['versions']}"
    return meta
