"""ONNX export of the Gluon model through MXNet 1.9's ``mxnet.onnx.export_model``.

MXNet's exporter converts a symbol graph: the network is wrapped in a
``HybridBlock`` whose output is every stage (:meth:`DenseNet.forward_stages`,
whose fluent ``relu`` / ``mean`` work on symbols too), hybridized, run once, and
exported with ``HybridBlock.export`` to a symbol file and a parameter file, which
``export_model`` converts with dynamic batch, height and width. The graph is NCHW
like the model. Float64 models export as float64 graphs.

MXNet 1.9.1's exporter imports ``onnx.mapping``, which onnx removed in 1.16: this
backend's environment pins onnx 1.15 (and a protobuf that onnx 1.15's generated
code loads with: 4.25), see pyproject.toml's ``mxnet`` extra.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mxnet as mx
import numpy as np
import onnx
from mxnet import gluon, nd

from ..export.graph import finish
from .densenet import DenseNet
from .runtime import legacy_mode

__all__ = ["EXPORTER", "to_onnx"]

EXPORTER = "mxnet.onnx.export_model (mx2onnx)"
#: MXNet 1.9's translations target opsets 12 and 13. Its exporter takes no opset
#: argument: it writes onnx's newest (``onnx.defs.onnx_opset_version()``, 20 for onnx
#: 1.15), where ReduceMean takes its axes as an input, not an attribute, and the graph
#: it writes is invalid. :func:`_opset` makes it (and the graph check it runs, whose
#: default context is onnx's newest opset) see this one while it exports.
DEFAULT_OPSET = 13


@contextlib.contextmanager
def _opset(version: int) -> Iterator[None]:
    """Make MXNet's exporter target ``version`` (it reads ``onnx.defs.onnx_opset_version``)."""
    if not 12 <= version <= DEFAULT_OPSET:
        raise ValueError(f"MXNet 1.9's ONNX exporter writes opsets 12..{DEFAULT_OPSET}; got {version}")
    newest, ctx = onnx.defs.onnx_opset_version, onnx.checker.DEFAULT_CONTEXT
    imports = dict(ctx.opset_imports)
    onnx.defs.onnx_opset_version = lambda: version
    ctx.opset_imports = {**imports, "": version}
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = newest
        ctx.opset_imports = imports


class _Stages(gluon.HybridBlock):
    """The network with every stage as an output, in ``spec.stage_names`` order."""

    def __init__(self, net: DenseNet) -> None:
        super().__init__(prefix="")
        self.net = net

    def hybrid_forward(self, F, x):
        stages = self.net.forward_stages(x)
        return tuple(stages[k] for k in self.net.spec.stage_names)


def to_onnx(model: DenseNet, *, opset: int | None = None) -> onnx.ModelProto:
    """``model`` (eval mode, its current weights) as a finished ONNX graph.

    ``opset`` None is :data:`DEFAULT_OPSET`. Hybridizing the wrapper compiles the
    network's blocks; they are put back to imperative afterwards unless the network
    was hybridized before.
    """
    from mxnet import onnx as mx_onnx

    spec = model.spec
    dtype = np.dtype(model.classifier.weight.dtype).name
    size = 2 * spec.min_input_size()
    was_hybrid = bool(model._active)
    with legacy_mode(), tempfile.TemporaryDirectory() as tmp:
        wrapper = _Stages(model)
        wrapper.hybridize()
        try:
            wrapper(nd.zeros((1, spec.in_channels, size, size), dtype=dtype))  # builds the graph
            prefix = str(Path(tmp) / "densenet")
            wrapper.export(prefix)
        finally:
            model.hybridize(was_hybrid)
        path = Path(tmp) / "model.onnx"
        with _opset(opset or DEFAULT_OPSET):
            mx_onnx.export_model(
                f"{prefix}-symbol.json", f"{prefix}-0000.params",
                in_shapes=[(1, spec.in_channels, size, size)], in_types=[np.dtype(dtype)],
                onnx_file_path=str(path), dynamic=True,
                dynamic_input_shapes=[(None, spec.in_channels, None, None)])
        proto = onnx.load(str(path))
    versions = {"mxnet": mx.__version__}
    return finish(proto, spec, backend="gluon", exporter=EXPORTER, versions=versions,
                  dtype=dtype)


