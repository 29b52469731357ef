"""Exported graphs as parity-harness backends: onnxruntime as a fifth runtime.

``densenet-multi parity --backends torch,onnx-torch=densenet_multi.export.ort_backend:torch``
runs the harness's worker for ``onnx-torch`` in the torch environment (the runner
maps ``onnx-<backend>`` to that backend's environment) with the contract object
:data:`torch` below. Every backend has one: :data:`torch`, :data:`flax`,
:data:`keras`, :data:`gluon` (:data:`TARGETS` lists the four ``--backends`` items).

The contract object builds the backend's native model; ``run(train=False)`` exports
it with that backend's exporter (``densenet_multi/<framework>/onnx_export.py``),
opens an ``onnxruntime.InferenceSession`` on the CPU execution provider and answers
with the graph's stage outputs (the graph is exported once per set of weights and
reused). So the harness holds the exported graph to the float64 reference and to
the backend that exported it (a pair), stage by stage, at the eval tolerance.

What a graph cannot do is said, never passed: a train-mode forward, gradients and
training steps raise :class:`NotImplementedError` (the harness reports
"unsupported", which ``--require-all`` counts as a failure: run ONNX targets with
``--checks shapes,eval``); so does a graph onnxruntime's CPU provider cannot run
(float64 convolutions).
An exporter that fails raises its own error, which the harness reports as
"error" with the message. ``load_canonical`` / ``export_canonical`` go through the
native model (the next ``run`` exports again).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import BACKENDS, load_backend
from ..outputs import ForwardOutput
from ..spec import DenseNetSpec

__all__ = ["OnnxModel", "OnnxRuntimeBackend", "TARGETS", "flax", "gluon", "keras", "torch"]

#: What a graph receives besides the model: a function of (graph, spec, canonical
#: parameters) returning the graph to run (the harness's fault demonstrations use it).
Edit = Callable[[Any, DenseNetSpec, Mapping[str, np.ndarray]], Any]


@dataclass
class OnnxModel:
    """A native model and the ONNX graph exported from its current weights."""

    native: Any
    spec: DenseNetSpec
    graph: Any = None
    session: Any = field(default=None, repr=False)


class OnnxRuntimeBackend:
    """The backend contract (:mod:`densenet_multi.backend`) for ``backend``'s exported graph."""

    def __init__(self, backend: str, *, edit: Edit | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known backends are {sorted(BACKENDS)}")
        self.backend, self.edit = backend, edit
        self.__name__ = f"onnx-{backend}"

    @property
    def native(self) -> Any:
        return load_backend(self.backend)

    @property
    def exporter(self) -> Any:
        return importlib.import_module(f"{BACKENDS[self.backend][0]}.onnx_export")

    # -------------------------------------------------------------- the model
    def build(self, spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
              dtype: str = "float32", memory_efficient: bool = False) -> OnnxModel:
        if device not in (None, "cpu"):
            raise ValueError(f"onnxruntime runs here on the CPU execution provider; got device {device!r}")
        native = self.native.build(spec, device="cpu", seed=seed, dtype=dtype,
                                   memory_efficient=memory_efficient)
        return OnnxModel(native, spec)

    def load_canonical(self, model: OnnxModel, params: Mapping[str, np.ndarray]) -> None:
        self.native.load_canonical(model.native, params)
        model.graph = model.session = None  # new weights: export again

    def export_canonical(self, model: OnnxModel) -> dict[str, np.ndarray]:
        return self.native.export_canonical(model.native)

    def session(self, model: OnnxModel) -> Any:
        """The onnxruntime session of ``model``'s current weights (exported on first use)."""
        if model.session is None:
            from .graph import session

            graph = self.exporter.to_onnx(model.native)
            if self.edit is not None:
                graph = self.edit(graph, model.spec, self.export_canonical(model))
            try:
                model.session = session(graph)
            except Exception as e:  # noqa: BLE001 - onnxruntime's NotImplemented has no Python class
                if "NOT_IMPLEMENTED" in str(e):
                    import onnxruntime

                    raise NotImplementedError(
                        f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider) cannot run "
                        f"this graph: {e}") from e
                raise
            model.graph = graph
        return model.session

    # -------------------------------------------------------------- the contract
    def run(self, model: OnnxModel, x: np.ndarray, *, train: bool = False) -> ForwardOutput:
        if train:
            raise NotImplementedError("an exported ONNX graph is an inference graph: eval mode only "
                                      "(batch statistics and running-statistics updates are not in it)")
        from .graph import run_stages

        stages = run_stages(self.session(model), model.spec, x)
        return ForwardOutput(logits=stages["logits"], stages=stages)

    def gradients(self, model: OnnxModel, x: np.ndarray, labels: np.ndarray) -> Any:
        raise NotImplementedError("an exported ONNX inference graph has no gradients")

    def train_steps(self, model: OnnxModel, batches: Any, *, lr: float, momentum: float) -> Any:
        raise NotImplementedError("an exported ONNX inference graph cannot be trained")

    def devices(self) -> list[str]:
        return ["cpu"]

    def save_checkpoint(self, model: OnnxModel, path: str | os.PathLike, *,
                        overwrite: bool = False) -> Path:
        return self.native.save_checkpoint(model.native, path, overwrite=overwrite)

    def load_checkpoint(self, path: str | os.PathLike, spec: DenseNetSpec | None = None,
                        **kw: Any) -> OnnxModel:
        native = self.native.load_checkpoint(path, spec, **kw)
        return OnnxModel(native, native.spec)

    def resolve(self, model: OnnxModel, part: tuple) -> Any:
        return self.native.resolve(model.native, part)


torch = OnnxRuntimeBackend("torch")
flax = OnnxRuntimeBackend("flax")
keras = OnnxRuntimeBackend("keras")
gluon = OnnxRuntimeBackend("gluon")

#: ``--backends`` items for the four exported graphs.
TARGETS = tuple(f"onnx-{b}={__name__}:{b}" for b in BACKENDS)
