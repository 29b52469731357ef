"""Flax NNX checkpoints: Orbax ``StandardCheckpointer`` folders of ``nnx.state(model)``.

The checkpoint is written by Flax's and Orbax's own API (the way Flax documents saving
an NNX model), then detected, restored and compared bit for bit.
"""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import densenet_multi.flax as df
from densenet_multi.convert.detect import CorruptFileError, sniff_format
from densenet_multi.convert.worker import detect_file
from densenet_multi.flax import files
from densenet_multi.flax._x64 import x64_scope
from densenet_multi.params import init_params, param_table
from densenet_multi.spec import get_spec


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_orbax_checkpoint_of_nnx_state_is_detected_and_restored_bit_exact(tmp_path, dtype):
    spec = get_spec("d2l")
    params = init_params(spec, 3, nontrivial_bn=True, dtype=dtype)
    model = df.build(spec, dtype=dtype)
    df.load_canonical(model, params)
    with x64_scope(dtype == "float64"):  # Flax's documented way to save NNX state
        ckpt = ocp.StandardCheckpointer()
        ckpt.save((tmp_path / "ckpt").resolve(), nnx.state(model))
        ckpt.wait_until_finished()
    assert sniff_format(tmp_path / "ckpt") == "flax"
    info = files.inspect(tmp_path / "ckpt", "flax")
    assert info["shapes"] == {p.name: p.shape for p in param_table(spec)}
    det = detect_file(files, "flax", str(tmp_path / "ckpt"), "flax", None)
    assert (det.preset, det.dtype) == ("d2l", dtype)
    back = df.export_canonical(files.load_model(tmp_path / "ckpt", "flax", "ours", spec, dtype))
    for k, v in params.items():
        assert back[k].dtype == v.dtype and back[k].tobytes() == v.tobytes(), k


def test_what_we_write_restores_with_orbax_itself(tmp_path):
    spec = get_spec("d2l")
    params = init_params(spec, 5, nontrivial_bn=True)
    files.write(params, spec, tmp_path / "out.orbax", "flax", "ours")
    target = df.build(spec)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(target))
    nnx.update(target, ocp.StandardCheckpointer().restore((tmp_path / "out.orbax").resolve(), abstract))
    back = df.export_canonical(target)
    assert all(np.array_equal(back[k], v) for k, v in params.items())


def test_an_incomplete_checkpoint_is_named(tmp_path):
    spec = get_spec("d2l")
    files.write(init_params(spec, 0), spec, tmp_path / "c.orbax", "flax", "ours")
    (tmp_path / "c.orbax" / "_METADATA").unlink()
    with pytest.raises(CorruptFileError, match=r"c\.orbax looks like an Orbax checkpoint"):
        files.inspect(tmp_path / "c.orbax", "flax")
