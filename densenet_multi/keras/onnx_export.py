"""ONNX export of the Keras model through Keras 3's own ``Model.export(format="onnx")``.

On the TensorFlow backend Keras traces the model to a ``tf.function`` and hands it
to tf2onnx (``tf2onnx.convert.from_function``, patched by Keras); measured here,
tf2onnx 1.17 works with TensorFlow 2.21 and protobuf 7. tf2onnx folds each eval-mode
BatchNorm into a per-channel ``Mul`` and the preceding convolution's bias, so the
graph has no ``BatchNormalization`` node (the epsilon is inside those constants).

The exported model is a functional ``keras.Model`` around the network's own
layers (no copy of a weight): NCHW input ``x``, transposed to the model's NHWC
inside the graph, :meth:`DenseNet.forward_stages` in inference mode, and each 4-d
stage transposed back to NCHW, one output per stage. Keras 3.15's documentation
says the dtype policy must be float32; measured with tf2onnx 1.17, a float64 model
exports to a float64 graph all the same (which onnxruntime's CPU provider cannot
run: it has no float64 Conv).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import onnx
from keras import ops

from ..export.graph import INPUT, finish
from .densenet import DenseNet

__all__ = ["EXPORTER", "to_onnx"]

EXPORTER = "keras.Model.export(format='onnx') (tf2onnx)"


def _stages_model(model: DenseNet, dtype: str) -> keras.Model:
    """A functional model sharing ``model``'s layers: NCHW ``x`` in, every stage (NCHW) out."""
    spec = model.spec
    x = keras.Input((spec.in_channels, None, None), name=INPUT, dtype=dtype)
    stages = model.forward_stages(ops.transpose(x, (0, 2, 3, 1)), training=False)
    outputs = [ops.transpose(stages[k], (0, 3, 1, 2)) if len(stages[k].shape) == 4
               else stages[k] for k in spec.stage_names]
    return keras.Model(x, outputs, name=f"{spec.name}_stages")


def to_onnx(model: DenseNet, *, opset: int | None = None) -> onnx.ModelProto:
    """``model`` (inference mode, its current weights) as a finished ONNX graph."""
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            f"the Keras ONNX export here runs on the TensorFlow backend (tf2onnx); this process "
            f"runs Keras on {keras.backend.backend()!r}")
    spec = model.spec
    dtype = keras.backend.standardize_dtype(model.trainable_variables[0].dtype)
    signature = [keras.InputSpec(shape=(None, spec.in_channels, None, None), dtype=dtype)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        _stages_model(model, dtype).export(str(path), format="onnx", verbose=False,
                                           input_signature=signature, opset_version=opset)
        proto = onnx.load(str(path))
    import tensorflow as tf
    import tf2onnx

    versions = {"keras": keras.__version__, "tensorflow": tf.__version__,
                "tf2onnx": tf2onnx.__version__}
    return finish(proto, spec, backend="keras", exporter=EXPORTER, versions=versions,
                  dtype=dtype)
