"""keras.applications DenseNet121/169/201 <-> our Keras DenseNet, both ways.

Their layer names are fixed (conv1_conv, conv2_block1_0_bn, pool2_conv, bn,
predictions) and their BN epsilon is 1.001e-5: our model is built from a spec
that says so. Their stem pads with zeros before the max-pool, as ours does; it
equals PyTorch's -inf padding because the pool follows a ReLU.
"""

from __future__ import annotations

import functools

import keras
import pytest
from keras_cases import batch

from densenet_multi import keras as dk
from densenet_multi import layouts
from densenet_multi.params import init_params
from densenet_multi.reference import forward
from densenet_multi.testing import assert_all_close, assert_close

pytestmark = pytest.mark.zoo

APPLICATIONS = {
    "densenet121": keras.applications.DenseNet121,
    "densenet169": keras.applications.DenseNet169,
    "densenet201": keras.applications.DenseNet201,
}

# Their layers at the end of each of our stages (DenseNet-121).
STAGE_LAYERS_121 = {
    "stem": "pool1", "block1": "conv2_block6_concat", "transition1": "pool2_pool",
    "block2": "conv3_block12_concat", "transition2": "pool3_pool",
    "block3": "conv4_block24_concat", "transition3": "pool4_pool",
    "block4": "conv5_block16_concat", "features": "relu", "pooled": "avg_pool",
    "logits": "predictions",
}


@functools.cache
def _application(preset: str, size: int):
    keras.utils.set_random_seed(0)
    return APPLICATIONS[preset](weights=None, classifier_activation=None,
                                input_shape=(size, size, 3))


def test_densenet121_every_stage_both_ways():
    spec = dk.keras_applications_spec("densenet121")
    assert spec.bn_eps == 1.001e-5
    app = _application("densenet121", 64)
    x = batch(spec, 64, 2, seed=20)

    # theirs (their own random init) -> canonical -> ours
    theirs_params = dk.keras_applications_to_canonical(app, spec)
    ours = dk.build(spec)
    dk.load_canonical(ours, theirs_params)
    taps = keras.Model(app.input, {k: app.get_layer(v).output for k, v in STAGE_LAYERS_121.items()})
    theirs = {k: dk.convert.to_numpy(v) for k, v in taps(layouts.nchw_to_nhwc(x)).items()}
    theirs = {k: layouts.nhwc_to_nchw(v) if v.ndim == 4 else v for k, v in theirs.items()}
    out = dk.run(ours, x)
    assert_all_close(out.stages, theirs, "eval", order=spec.stage_names)
    assert_all_close(out.stages, forward(spec, theirs_params, x).stages, "eval",
                     order=spec.stage_names)

    # ours (seeded canonical weights with non-trivial BN) -> theirs
    params = init_params(spec, 21, nontrivial_bn=True)
    dk.load_canonical(ours, params)
    dk.canonical_to_keras_applications(dk.export_canonical(ours), app, spec)
    assert_all_close(dk.keras_applications_to_canonical(app, spec), params, "copy")
    logits = dk.convert.to_numpy(app(layouts.nchw_to_nhwc(x), training=False))
    assert_close(logits, forward(spec, params, x).logits, "eval", name="theirs vs reference")
    assert_close(dk.run(ours, x).logits, logits, "eval", name="ours vs theirs")


@pytest.mark.parametrize("preset", ["densenet169", "densenet201"])
def test_deeper_applications_both_ways(preset):
    spec = dk.keras_applications_spec(preset)
    app = _application(preset, 32)
    x = batch(spec, 32, 2, seed=22)
    params = init_params(spec, 23, nontrivial_bn=True)
    dk.canonical_to_keras_applications(params, app, spec)
    theirs = dk.convert.to_numpy(app(layouts.nchw_to_nhwc(x), training=False))
    ours = dk.build(spec)
    dk.load_canonical(ours, dk.keras_applications_to_canonical(app, spec))
    assert_close(dk.run(ours, x).logits, theirs, "eval")
    assert_all_close(dk.export_canonical(ours), params, "copy")


def test_applications_mapping_rejects_a_spec_it_cannot_describe():
    app = _application("densenet169", 32)
    with pytest.raises(ValueError, match="no layer for|do not match"):
        dk.keras_applications_to_canonical(app, dk.keras_applications_spec("densenet121"))
    with pytest.raises(ValueError, match="cannot describe a keras.applications DenseNet"):
        dk.keras_applications_to_canonical(app, dk.keras_applications_spec("d2l"))


def test_applications_layer_names():
    spec = dk.keras_applications_spec("densenet121")
    app = _application("densenet121", 64)
    names = {layer.name for layer in app.layers}
    from densenet_multi.params import module_table

    table = module_table(spec)
    mapped = [dk.keras_applications_layer_name(ref.part) for ref in table]
    assert set(mapped) <= names and len(set(mapped)) == len(table)
    assert mapped[:3] == ["conv1_conv", "conv1_bn", "conv2_block1_0_bn"]
    assert mapped[-2:] == ["bn", "predictions"]
