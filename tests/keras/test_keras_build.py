"""``build(input_shape)``: every part creates its weights from the spec's widths.

Keras would otherwise trace ``call`` on a symbolic input to learn the widths (a
TensorFlow scratch graph of every convolution, seconds for a DenseNet-121). Checked
here: the variables are exactly those Keras's own tracing creates (names, paths,
shapes, dtypes, order), building traces nothing, and a wrong width is refused
before any weight is made. The outputs of a built model are checked against the
NumPy reference in test_keras_reference.py (``runtime.build`` builds this way).
"""

from __future__ import annotations

import keras
import pytest
from keras.src import backend as keras_backend
from keras_cases import requires_tensorflow

from densenet_multi import keras as dk
from densenet_multi.keras import convert
from densenet_multi.spec import get_spec

#: small specs of the two shapes: ImageNet stem with bottlenecks and compression, and
#: a CIFAR stem with plain layers and no compression
SPECS = {
    "densenet121_like": get_spec("densenet121").replace(block_config=(2, 3, 2, 2), num_classes=7),
    "densenet40_like": get_spec("densenet40_k12").replace(block_config=(2, 2, 3)),
}
PARTS_WITH_BUILD = (dk.ConvBlock, dk.DenseLayer, dk.DenseBlock, dk.DenseNet)


class Traced(AssertionError):
    pass


def _trace(*args, **kwargs):
    raise Traced("keras.src.backend.compute_output_spec was called: call() was traced")


def _call(self, x, training=None):  # call's signature: Keras reads the input shapes from it
    raise Traced(f"{self.name}.call() was run")


def _signature(model: dk.DenseNet) -> list[tuple]:
    """Every variable of ``model`` in Keras's order, then the canonical table's."""
    weights = [(v.path, tuple(v.shape), v.dtype, v.trainable) for v in model.weights]
    canonical = [(name, v.path, tuple(v.shape), v.dtype)
                 for name, v in convert.canonical_variables(model).items()]
    return weights + canonical


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=requires_tensorflow)])
@pytest.mark.parametrize("name", list(SPECS))
def test_build_creates_the_variables_tracing_call_creates(monkeypatch, name, dtype):
    """Keras's own way, the reference: without any ``build`` of ours, calling the model
    on a symbolic batch traces ``call`` and creates each weight from the shape it sees."""
    spec = SPECS[name]
    with monkeypatch.context() as m:
        for cls in PARTS_WITH_BUILD:
            m.delattr(cls, "build")  # Layer's default: Keras traces call() to build
        traced = dk.from_spec(spec, dtype=dtype)
        traced(keras.KerasTensor((None, None, None, spec.in_channels)))
    built = dk.from_spec(spec, dtype=dtype)
    convert.ensure_built(built)
    assert built.built
    assert _signature(built) == _signature(traced)
    assert {v.dtype for v in built.weights} == {dtype}


def test_building_traces_nothing(monkeypatch):
    """ensure_built (and so runtime.build, load_canonical) never runs call(): neither
    through Keras's symbolic tracing nor directly."""
    spec = SPECS["densenet121_like"]
    monkeypatch.setattr(keras_backend, "compute_output_spec", _trace)
    # the check can fail: calling the model on a symbolic batch (the old ensure_built) traces
    with pytest.raises(Traced):
        dk.from_spec(spec)(keras.KerasTensor((None, None, None, spec.in_channels)))
    for cls in (*PARTS_WITH_BUILD, dk.Transition):
        monkeypatch.setattr(cls, "call", _call)
    model = dk.from_spec(spec)
    convert.ensure_built(model)
    assert model.built and len(convert.canonical_variables(model)) == len(model.weights)


def test_a_wrong_width_is_refused_before_any_weight_is_made():
    spec = SPECS["densenet121_like"]  # in_channels 3, stem 64, block 1 of k=32, bottleneck 128
    model = dk.from_spec(spec)
    with pytest.raises(ValueError, match=r"densenet121 \(DenseNet\) takes NHWC maps of 3 channels, "
                                         r"shape \(batch, height, width, 3\); got input shape "
                                         r"\(None, None, None, 4\)"):
        model.build((None, None, None, 4))
    with pytest.raises(ValueError, match=r"got input shape \(None, 32, 32\)"):
        model.build((None, 32, 32))  # NHW, no channel axis
    assert not model.built and not model.weights

    layer = dk.DenseLayer(spec, 96, name="denselayer2")  # the block input and one new map
    with pytest.raises(ValueError, match=r"denselayer2 \(DenseLayer\) takes NHWC maps of 96 "
                                         r"channels.*got input shape \(None, 8, 8, 95\)"):
        layer.build([(None, 8, 8, 64), (None, 8, 8, 31)])
    assert not layer.weights
    layer.build([(None, 8, 8, 64), (None, 8, 8, 32)])  # the widths of a list add up
    assert layer.conv1.kernel.shape == (1, 1, 96, 128) and layer.conv2.kernel.shape == (3, 3, 128, 32)

    for part, given in ((dk.DenseBlock(spec, 64, 2, name="denseblock1"), 63),
                        (dk.Transition(spec, 128, 64, name="transition1"), 64),
                        (dk.ConvBlock(spec, 8, 4, spec.growth_conv, name="conv_block"), None)):
        with pytest.raises(ValueError, match=rf"{part.name} \({type(part).__name__}\) takes NHWC "
                                             rf"maps of {part.in_channels} channels"):
            part.build((2, 8, 8, given))
        assert not part.weights
