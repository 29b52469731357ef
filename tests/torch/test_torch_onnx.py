"""The PyTorch model exported to ONNX (torch.onnx.export, dynamo) and run in onnxruntime.

Each network is exported once (module fixture) and held, stage by stage, to the
float64 NumPy reference at the eval tolerance, for two batch sizes and two input
sizes through the one graph. The checks are shared by the four backends
(:mod:`densenet_multi.export.checks`).
"""

from __future__ import annotations

import numpy as np
import pytest

# The torch-zoo env (torchvision) collects this folder too and runs only its `zoo` tests; it
# has no onnx: the torch env, whose extra carries the exporter, runs these.
pytest.importorskip("onnx", reason="the ONNX tests run in the torch env (tox -e torch)")

from densenet_multi.export import checks  # noqa: E402
from densenet_multi.export.faults import wrong_stem_epsilon
from densenet_multi.export.graph import session
from densenet_multi.torch.onnx_export import EXPORTER

BACKEND = "torch"
#: (batch, input size) pairs run through one graph, per network (DenseNet-121 at 32x32
#: ends in a 1x1 map, at 64x64 in 2x2: the pool must not be baked to the export's size)
SIZES = {"d2l": [(3, 96), (1, 128)], "densenet121": [(3, 32), (1, 64)]}


_EXPORTED: dict[str, checks.Exported] = {}


def _exported(preset: str) -> checks.Exported:
    """Each network exported once for the whole module."""
    if preset not in _EXPORTED:
        _EXPORTED[preset] = checks.export(BACKEND, preset)
    return _EXPORTED[preset]


@pytest.fixture(params=sorted(SIZES))
def exported(request) -> checks.Exported:
    return _exported(request.param)


def test_every_stage_matches_the_reference(exported):
    for n, size in SIZES[exported.spec.name]:
        errors = checks.stage_errors(exported.session, exported.spec, exported.params,
                                     checks.batch(exported.spec, n, size))
        bad = [str(c) for c in errors.values() if not c.ok]
        assert not bad, f"{exported.spec.name} at {n}x{size}x{size}: {bad}"


def test_graph_interface_and_metadata(exported):
    meta = checks.check_graph(exported, exporter=EXPORTER, versions=("torch", "onnxscript"))
    assert meta["dtype"] == "float32"
    ops = {n.op_type for n in exported.graph.graph.node}
    # the pool is global (ReduceMean / GlobalAveragePool), never a fixed-size AveragePool
    assert ops & {"ReduceMean", "GlobalAveragePool"}, sorted(ops)


def test_wrong_stem_epsilon_fails_at_the_stem():
    exported = _exported("d2l")
    bad = session(wrong_stem_epsilon(exported.graph, exported.spec, exported.params))
    errors = checks.stage_errors(bad, exported.spec, exported.params, checks.batch(exported.spec, 2, 96))
    assert checks.first_failure(errors) == "stem", {k: c.rel for k, c in errors.items()}
    assert np.isfinite(errors["stem"].rel)
