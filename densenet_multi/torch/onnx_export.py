"""ONNX export of the PyTorch model through ``torch.onnx.export``.

The exporter is torch's recommended one since 2.9, the ``torch.export``-based
("dynamo") exporter with onnxscript (``dynamo=True``): the model is captured by
``torch.export`` with symbolic batch, height and width, and translated op by op.
There is no silent fall-back to the TorchScript exporter: when the dynamo exporter
fails, the export fails with its message. Float64 models export as float64 graphs.

The graph computes :meth:`DenseNet.forward_stages` in eval mode (running
statistics), one output per stage, NCHW like the model. See
:mod:`densenet_multi.export.graph` for what every exported graph looks like.
"""

from __future__ import annotations

import warnings

import onnx
import onnxscript
import torch
from torch import nn

from ..backend import check_model_dtype
from ..export.graph import INPUT, finish
from .densenet import DenseNet

__all__ = ["EXPORTER", "to_onnx"]

EXPORTER = "torch.onnx.export (dynamo=True: torch.export + onnxscript)"


class _Stages(nn.Module):
    """The network with every stage as an output, in ``spec.stage_names`` order
    (an exported graph's outputs are a flat sequence, not a dict)."""

    def __init__(self, model: DenseNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stages = self.model.forward_stages(x)
        return tuple(stages[k] for k in self.model.spec.stage_names)


def to_onnx(model: DenseNet, *, opset: int | None = None) -> onnx.ModelProto:
    """``model`` (eval mode, its current weights) as a finished ONNX graph.

    ``opset`` None is the exporter's default. The model's mode is put back afterwards.
    """
    spec = model.spec
    p = next(model.parameters())
    dtype = check_model_dtype(str(p.dtype).removeprefix("torch."))
    size = 2 * spec.min_input_size()
    example = torch.zeros((2, spec.in_channels, size, size), dtype=p.dtype, device=p.device)
    # Symbolic batch, height and width. torch.export specialises nothing on them (the
    # global pool is adaptive_avg_pool2d -> ReduceMean, whatever the final map's size).
    dynamic = {INPUT: {0: "batch", 2: "height", 3: "width"}}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # torch.export's notes on the symbolic shapes it derives, not errors
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(
                _Stages(model), (example,), dynamo=True, input_names=[INPUT],
                output_names=list(spec.stage_names), dynamic_shapes=dynamic,
                opset_version=opset, optimize=True, verbose=False)
    finally:
        model.train(was_training)
    versions = {"torch": torch.__version__, "onnxscript": onnxscript.__version__}
    return finish(program.model_proto, spec, backend="torch", exporter=EXPORTER,
                  versions=versions, dtype=dtype)
