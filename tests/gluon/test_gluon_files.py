"""Gluon ``.params`` files, ours and the model zoo's, read and written with save/load_parameters.

The zoo test uses a file written by the zoo itself (``vision.densenet121()``,
initialised, ``save_parameters``) and checks the network read from it against the
zoo network's own forward pass.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon.model_zoo import vision

import densenet_multi.gluon as dg
from densenet_multi.convert.detect import CorruptFileError
from densenet_multi.convert.worker import detect_file
from densenet_multi.gluon import files
from densenet_multi.params import init_params, param_table
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_close


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_our_params_file_round_trips_bit_exact(tmp_path, dtype):
    spec = get_spec("d2l")
    params = init_params(spec, 3, nontrivial_bn=True, dtype=dtype)
    files.write(params, spec, tmp_path / "m.params", "gluon", "ours")
    info = files.inspect(tmp_path / "m.params", "gluon")
    assert info["shapes"] == {p.name: p.shape for p in param_table(spec)}
    det = detect_file(files, "gluon", str(tmp_path / "m.params"), "gluon", None)
    assert (det.preset, det.flavour, det.dtype) == ("d2l", "ours", dtype)
    back = dg.export_canonical(files.load_model(tmp_path / "m.params", "gluon", "ours", spec, dtype))
    for k, v in params.items():
        assert back[k].dtype == v.dtype and back[k].tobytes() == v.tobytes(), k


def test_a_truncated_file_is_named(tmp_path):
    spec = get_spec("d2l")
    files.write(init_params(spec, 0), spec, tmp_path / "m.params", "gluon", "ours")
    data = (tmp_path / "m.params").read_bytes()
    (tmp_path / "cut.params").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.params looks like a Gluon \.params file"):
        files.inspect(tmp_path / "cut.params", "gluon")


@pytest.mark.zoo
def test_zoo_file_is_detected_and_runs_as_the_zoo_does(tmp_path):
    mx.random.seed(0)
    zoo = vision.densenet121()
    zoo.initialize(mx.init.Xavier())
    x = np.random.Generator(np.random.PCG64(0)).standard_normal((1, 3, 224, 224)).astype(np.float32)
    zoo(mx.nd.array(x))
    for name, p in zoo.collect_params().items():  # non-trivial running statistics
        if name.endswith("running_mean"):
            p.set_data(mx.nd.random.uniform(-0.2, 0.2, p.shape))
        elif name.endswith("running_var"):
            p.set_data(mx.nd.random.uniform(0.5, 2.0, p.shape))
    zoo.save_parameters(str(tmp_path / "zoo.params"))
    expected = zoo(mx.nd.array(x)).asnumpy()  # the zoo's fixed 7x7 pool: equal to ours at 224
    det = detect_file(files, "gluon", str(tmp_path / "zoo.params"), "gluon", None)
    assert (det.preset, det.flavour, det.spec.num_classes, det.spec.bn_eps) == (
        "densenet121", "gluon-zoo", 1000, 1e-5)
    ours = files.load_model(tmp_path / "zoo.params", "gluon", det.flavour, det.spec, "float32")
    assert_close(dg.run(ours, x).logits, expected, "eval", "float32")
    # written in the zoo's flavour: the zoo's load_parameters takes it
    files.write(dg.export_canonical(ours), det.spec, tmp_path / "out.params", "gluon", "gluon-zoo")
    again = vision.densenet121()
    again.load_parameters(str(tmp_path / "out.params"))
    assert_close(again(mx.nd.array(x)).asnumpy(), expected, "eval", "float32")
