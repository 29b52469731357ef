"""Keras files: ``.keras`` and ``.weights.h5``, ours and keras.applications', read and written natively.

The keras.applications tests (mark ``zoo``: TensorFlow env only) use files written by
``keras.applications.DenseNet121(weights=None)`` with its own ``save`` and ``save_weights``,
and check the network read from them against the application's own forward pass.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import densenet_multi.keras as dk
from densenet_multi.convert.detect import CorruptFileError
from densenet_multi.convert.worker import detect_file
from densenet_multi.keras import files
from densenet_multi.params import init_params, param_table
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_close


def _x(spec, size=224, n=1):
    # keras.applications' DenseNet121(include_top=True) takes 224x224 inputs only
    rng = np.random.Generator(np.random.PCG64(0))
    return rng.standard_normal((n, spec.in_channels, size, size)).astype(np.float32)


@pytest.mark.parametrize("fmt,name", [("keras", "m.keras"), ("keras-weights", "m.weights.h5")])
def test_our_model_file_round_trips_bit_exact(tmp_path, fmt, name):
    spec = get_spec("d2l", bn_eps=2e-5)
    params = init_params(spec, 3, nontrivial_bn=True)
    files.write(params, spec, tmp_path / name, fmt, "ours")
    info = files.inspect(tmp_path / name, fmt)
    # the file's own names, mapped to canonical ones: exactly the parameter table
    assert info["shapes"] == {p.name: p.shape for p in param_table(spec)}
    det = detect_file(files, "keras", str(tmp_path / name), fmt, None)
    # a .keras stores the spec (eps included); a .weights.h5 does not: the preset's eps
    assert det.spec.bn_eps == (2e-5 if fmt == "keras" else 1e-5)
    assert (det.preset, det.flavour) == ("d2l", "ours")
    back = dk.export_canonical(files.load_model(tmp_path / name, fmt, "ours", det.spec, "float32"))
    for k, v in params.items():
        assert back[k].dtype == v.dtype and back[k].tobytes() == v.tobytes(), k


def test_a_truncated_file_is_named(tmp_path):
    spec = get_spec("d2l")
    files.write(init_params(spec, 0), spec, tmp_path / "m.weights.h5", "keras-weights", "ours")
    data = (tmp_path / "m.weights.h5").read_bytes()
    (tmp_path / "cut.weights.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptFileError, match=r"cut\.weights\.h5 looks like a keras-weights file"):
        files.inspect(tmp_path / "cut.weights.h5", "keras-weights")


def _pooled(app: keras.Model, x: np.ndarray) -> np.ndarray:
    """keras.applications' own features: the output of its global average pool (before the
    softmax classifier), on an NCHW batch."""
    head = keras.Model(app.inputs, app.get_layer("avg_pool").output)
    return keras.ops.convert_to_numpy(head(np.transpose(x, (0, 2, 3, 1)), training=False))


@pytest.mark.zoo
def test_keras_applications_files_are_detected_and_run_as_keras_applications_does(tmp_path):
    keras.utils.set_random_seed(0)
    app = keras.applications.DenseNet121(weights=None)
    for layer in app.layers:  # non-trivial moving statistics: eval mode uses every tensor
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.2, 0.2, n, dtype=np.float32))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, n, dtype=np.float32))
    app.save(tmp_path / "app.keras")
    app.save_weights(tmp_path / "app.weights.h5")
    x = _x(get_spec("densenet121"))
    expected = _pooled(app, x)
    for name, fmt, eps_from in (("app.keras", "keras", "config"),
                                ("app.weights.h5", "keras-weights", "fixed epsilon")):
        det = detect_file(files, "keras", str(tmp_path / name), fmt, None)
        assert (det.preset, det.flavour, det.spec.num_classes) == (
            "densenet121", "keras-applications", 1000)
        assert det.spec.bn_eps == 1.001e-5 and eps_from in det.eps_source
        ours = files.load_model(tmp_path / name, fmt, det.flavour, det.spec, "float32")
        assert_close(dk.run(ours, x).stages["pooled"], expected, "eval", "float32", name)
    # written in keras.applications' flavour: loads into keras.applications.DenseNet121 (the
    # application above, every weight zeroed first: only the file can give them back)
    files.write(dk.export_canonical(ours), det.spec, tmp_path / "out.weights.h5", "keras-weights",
                "keras-applications")
    for w in app.weights:
        w.assign(np.zeros(w.shape, w.dtype))
    app.load_weights(tmp_path / "out.weights.h5")
    assert_close(_pooled(app, x), expected, "eval", "float32", "written file")
