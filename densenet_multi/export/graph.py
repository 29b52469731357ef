"""The ONNX side every exporter shares: one graph shape, one set of metadata, one session.

Each backend's exporter (``densenet_multi/<framework>/onnx_export.py``) hands its
framework exporter's ``onnx.ModelProto`` to :func:`finish`, which makes every graph
look alike, whichever exporter wrote it:

* one input, ``x``: an NCHW batch with a dynamic batch axis and dynamic height and
  width (``dim_param`` "batch", "height", "width"): the global pool is not baked to
  one size;
* one output per stage of ``spec.stage_names``, named after it, in that order, NCHW
  for the 4-d stages (channels-last exporters transpose inside the graph);
* ``metadata_props``: the spec (JSON), the backend, the exporter and the versions of
  everything that wrote the file, the opset, the dtype, the stages and the layout
  (:data:`METADATA_KEYS`);
* checked with ``onnx.checker``.

This module imports numpy and ``onnx`` (and ``onnxruntime`` in :func:`session`),
installed in every backend's environment; never a framework.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .._files import atomic_path
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape

__all__ = ["INPUT", "METADATA_KEYS", "ExportError", "finish", "metadata", "save", "session",
           "run_stages"]

#: The graph input's name.
INPUT = "x"
#: The metadata_props every exported graph carries.
METADATA_KEYS = ("densenet_multi.spec", "densenet_multi.backend", "densenet_multi.exporter",
                 "densenet_multi.versions", "densenet_multi.opset", "densenet_multi.dtype",
                 "densenet_multi.stages", "densenet_multi.layout")
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}


class ExportError(RuntimeError):
    """An exporter produced a graph that is not what the project exports (or none)."""


def _dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(value.type.tensor_type.shape.dim)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename the tensor ``old`` to ``new`` everywhere in ``graph`` (a top-level graph)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.name == old:
            vi.name = new


def _name_outputs(graph: onnx.GraphProto, names: Sequence[str]) -> None:
    """Name the graph's outputs after the stages, by position."""
    got = [o.name for o in graph.output]
    if len(got) != len(names):
        raise ExportError(f"the exporter's graph has {len(got)} outputs {got}; expected one per "
                          f"stage of the spec: {list(names)}")
    for o, n in zip(graph.output, names, strict=True):
        if o.name == n:
            continue
        if any(n == other.name for other in graph.output):
            raise ExportError(f"output {n!r} is at the wrong position in {got}")
        if any(o.name == i.name for i in graph.input):  # an input passed through: add an Identity
            graph.node.append(onnx.helper.make_node("Identity", [o.name], [n]))
            o.name = n
        else:
            _rename(graph, o.name, n)


def _input_dims(graph: onnx.GraphProto, spec: DenseNetSpec) -> None:
    """The input ``x``: (batch, C, height, width), all but C dynamic; anything else is an error."""
    # Weights listed as graph inputs too (MXNet's exporter writes the pre-IR-4 form)
    # could be overridden at run time and are not constants to the runtime: drop them.
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(inputs)  # copies: work on the graph's own messages below
        inputs = list(graph.input)
    if len(inputs) != 1:
        raise ExportError(f"expected one graph input, got {[i.name for i in inputs]}")
    if inputs[0].name != INPUT:
        _rename(graph, inputs[0].name, INPUT)
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[1].dim_value != spec.in_channels:
        shape = [d.dim_param or d.dim_value for d in dims]
        raise ExportError(f"the graph input is {shape}; expected NCHW (batch, {spec.in_channels}, "
                          "height, width)")
    for i, name in ((0, "batch"), (2, "height"), (3, "width")):
        if dims[i].HasField("dim_value"):
            raise ExportError(f"the graph input's {name} axis is fixed to {dims[i].dim_value}: "
                              "the exporter baked the example's size into the graph")
        dims[i].dim_param = name


def _output_dims(graph: onnx.GraphProto, spec: DenseNetSpec) -> None:
    """Stage outputs: (batch, C[, <stage>_height, <stage>_width]) with the spec's channels.

    Exporters name symbolic sizes their own way (``s77``, ``unk__628``, jax2onnx's
    ``floordiv(...)`` expressions); one naming here. A channel count that differs
    from the spec's is an error (a 4-d stage left NHWC shows up here).
    """
    shapes = spec.stage_shapes(*(2 * (spec.min_input_size(),)))
    for o in graph.output:
        want = shapes[o.name]
        dims = _dims(o)
        if dims and (len(dims) != 1 + len(want) or (dims[1].HasField("dim_value")
                                                     and dims[1].dim_value != want[0])):
            got = [d.dim_param or d.dim_value for d in dims]
            raise ExportError(f"output {o.name!r} has shape {got}; expected (batch, {want[0]}"
                              f"{', height, width' if len(want) == 3 else ''}) in NCHW")
        shape = ["batch", want[0], *(f"{o.name}_{s}" for s in ("height", "width"))][:1 + len(want)]
        o.type.tensor_type.ClearField("shape")
        for s in shape:
            d = o.type.tensor_type.shape.dim.add()
            if isinstance(s, str):
                d.dim_param = s
            else:
                d.dim_value = s


def opset(model: onnx.ModelProto) -> int:
    """The default-domain (ai.onnx) opset of ``model``."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def finish(model: onnx.ModelProto, spec: DenseNetSpec, *, backend: str, exporter: str,
           versions: Mapping[str, str], dtype: str,
           drop_value_info: bool = False) -> onnx.ModelProto:
    """The exporter's ``model`` as the project exports it (module docstring), checked.

    ``drop_value_info`` removes the intermediate shape annotations (onnxruntime infers
    them again) for an exporter that writes wrong ones.
    """
    g = model.graph
    if drop_value_info:
        del g.value_info[:]
    _input_dims(g, spec)
    _name_outputs(g, spec.stage_names)
    _output_dims(g, spec)
    elem = {_ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
            for v in (*g.input, *g.output) if v.name in (INPUT, *spec.stage_names)}
    if elem != {dtype}:
        raise ExportError(f"the graph's input and outputs are {sorted(elem)}; expected {dtype}")
    versions = {"onnx": onnx.__version__, **versions}
    meta = {
        "densenet_multi.spec": spec.to_json(),
        "densenet_multi.backend": backend,
        "densenet_multi.exporter": exporter,
        "densenet_multi.versions": json.dumps(versions, sort_keys=True),
        "densenet_multi.opset": str(opset(model)),
        "densenet_multi.dtype": dtype,
        "densenet_multi.stages": json.dumps(list(spec.stage_names)),
        "densenet_multi.layout": "NCHW",
    }
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, **meta})
    onnx.checker.check_model(model, full_check=False)
    return model


def metadata(model: onnx.ModelProto | str | os.PathLike) -> dict[str, Any]:
    """The project's metadata of an exported graph (a model or a path), decoded:
    ``spec`` (a :class:`DenseNetSpec`), ``versions`` (dict), ``stages`` (list),
    ``opset`` (int), and ``backend``, ``exporter``, ``dtype``, ``layout`` (str)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise ExportError(f"not a densenet_multi export: metadata {missing} missing")
    out: dict[str, Any] = {k.removeprefix("densenet_multi."): props[k] for k in METADATA_KEYS}
    out["spec"] = DenseNetSpec.from_json(out["spec"])
    out["versions"] = json.loads(out["versions"])
    out["stages"] = json.loads(out["stages"])
    out["opset"] = int(out["opset"])
    return out


def save(model: onnx.ModelProto, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (never half a file); refuse to replace a file
    unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save_model(model, str(tmp))
    return path


def session(model: onnx.ModelProto | bytes | str | os.PathLike) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU execution provider."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_stages(sess: Any, spec: DenseNetSpec, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every stage of ``spec.stage_names`` for an NCHW batch ``x``, through ``sess``.

    The batch is checked like every backend's input and cast to the graph's dtype;
    a graph whose outputs are not the spec's stages is an :class:`ExportError`."""
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(spec, x.shape, "NCHW")
    names = [o.name for o in sess.get_outputs()]
    if names != list(spec.stage_names):
        raise ExportError(f"the graph's outputs are {names}; expected {list(spec.stage_names)}")
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64}[sess.get_inputs()[0].type]
    out = sess.run(None, {INPUT: np.ascontiguousarray(x, dtype=dtype)})
    return dict(zip(names, out, strict=True))
