"""Deliberate faults edited into exported graphs with the ``onnx`` API.

The tests and the harness's demonstration use them to show that a wrong constant
in an exported graph is caught, and at which stage. A BatchNorm's epsilon is the
kind of constant an export gets wrong (Keras's default is 1e-3, the spec's 1e-5;
tf2onnx folds it into other constants).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ..spec import DenseNetSpec

__all__ = ["wrong_stem_epsilon"]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # Constant nodes (some exporters write weights this way)
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _set_constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    for t in graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), name))
            return
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(
                        value.astype(numpy_helper.to_array(a.t).dtype), name))
            return
    raise KeyError(name)


def wrong_stem_epsilon(model: onnx.ModelProto, spec: DenseNetSpec,
                       params: Mapping[str, np.ndarray], eps: float = 1e-3) -> onnx.ModelProto:
    """A copy of ``model`` whose stem BatchNorm (``features.norm0``) uses ``eps``.

    The stem's BatchNorm is found by its constants, not by its position: the
    ``BatchNormalization`` node whose scale is ``params["features.norm0.weight"]``
    gets ``epsilon = eps``. Where the exporter folded the BatchNorm, the folded
    constants are changed as the wrong epsilon would make them (each channel's
    scale gamma / sqrt(var + eps) times sqrt((var + eps_spec) / (var + eps))):
    tf2onnx's per-channel ``Mul``, or the stem convolution's weight and bias where the
    BatchNorm was fused into it (the torch exporter's optimizer does that to
    conv0 -> norm0). A graph with none of these raises ValueError.
    """
    if spec.stem_pool is None:
        raise ValueError(f"{spec.name} has a CIFAR stem (one conv): no stem BatchNorm")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    consts = _constants(g)
    gamma = np.asarray(params["features.norm0.weight"], np.float64)
    var = np.asarray(params["features.norm0.running_var"], np.float64)

    def same(name: str, want: np.ndarray) -> bool:
        c = consts.get(name)
        return c is not None and c.size == want.size and np.allclose(
            np.ravel(c), want, rtol=1e-5, atol=0)

    for node in g.node:
        if node.op_type == "BatchNormalization" and same(node.input[1], gamma):
            for a in node.attribute:
                if a.name == "epsilon":
                    a.f = eps
                    return out
            node.attribute.append(onnx.helper.make_attribute("epsilon", eps))
            return out
    scale = gamma / np.sqrt(var + spec.bn_eps)
    factor = np.sqrt((var + spec.bn_eps) / (var + eps))
    for node in g.node:
        if node.op_type == "Mul":
            for name in node.input:
                if same(name, scale):
                    _set_constant(g, name, consts[name] * factor.reshape(consts[name].shape))
                    return out
    # folded into the stem convolution (the torch exporter's Conv-BN fusion):
    # W' = W * scale, b' = beta + (b - mean) * scale, per output channel
    fused = np.asarray(params["features.conv0.weight"], np.float64) * scale[:, None, None, None]
    beta = np.asarray(params["features.norm0.bias"], np.float64)
    for node in g.node:
        if node.op_type == "Conv" and same(node.input[1], np.ravel(fused)):
            _set_constant(g, node.input[1], consts[node.input[1]] * factor[:, None, None, None])
            if len(node.input) > 2 and node.input[2] in consts:
                b = consts[node.input[2]]
                _set_constant(g, node.input[2], beta + (b - beta) * factor)
            return out
    raise ValueError("found neither the stem's BatchNormalization node nor its folded scale "
                     "(a Mul by gamma / sqrt(var + eps), or the stem conv fused with it)")


def _failing_export(model: onnx.ModelProto, spec: DenseNetSpec,
                    params: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Stands for an exporter that fails: raises what :func:`.graph.finish` raises for a
    graph that lost its stage outputs."""
    from .graph import ExportError

    raise ExportError(f"the exporter's graph has 1 outputs ['logits']; expected one per stage "
                      f"of the spec: {list(spec.stage_names)}")


def _targets(edit):  # noqa: ANN001, ANN202 - module-level harness targets, below
    from .ort_backend import OnnxRuntimeBackend

    return [OnnxRuntimeBackend(b, edit=edit) for b in ("torch", "flax", "keras", "gluon")]


# Harness targets (``--backends bad=densenet_multi.export.faults:wrong_epsilon_gluon``, run
# with ``--python bad=<the backend env's python>``): an exported graph with a fault.
wrong_epsilon_torch, wrong_epsilon_flax, wrong_epsilon_keras, wrong_epsilon_gluon = _targets(
    wrong_stem_epsilon)
failing_export_torch, failing_export_flax, failing_export_keras, failing_export_gluon = _targets(
    _failing_export)
