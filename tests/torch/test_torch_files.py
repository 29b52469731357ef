"""PyTorch files: torch.save'd and safetensors state_dicts read and written the native way.

The torchvision test (mark ``zoo``, env ``torch-zoo``) uses a file written by torchvision
itself, ``torch.save(torchvision.models.densenet121().state_dict())``, and checks the
network read from it against torchvision's own forward pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import densenet_multi.torch as dt
from densenet_multi.convert.detect import CorruptFileError, DetectionError
from densenet_multi.convert.worker import detect_file
from densenet_multi.params import init_params, param_table
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_close
from densenet_multi.torch import files


def _x(spec, size=64):
    rng = np.random.Generator(np.random.PCG64(0))
    return rng.standard_normal((2, spec.in_channels, size, size)).astype(np.float32)


@pytest.mark.parametrize("fmt,name", [("torch", "m.pth"), ("torch-safetensors", "m.safetensors")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_our_state_dict_round_trips_bit_exact(tmp_path, fmt, name, dtype):
    spec = get_spec("d2l")
    params = init_params(spec, 3, nontrivial_bn=True, dtype=dtype)
    files.write(params, spec, tmp_path / name, fmt, "ours")
    if fmt == "torch":  # what torch.load gives back is our model's state_dict, counters included
        sd = torch.load(tmp_path / name, weights_only=True)
        assert [k for k in sd if not k.endswith("num_batches_tracked")] == list(params)
        assert all(int(sd[k]) == 0 for k in sd if k.endswith("num_batches_tracked"))
    det = detect_file(files, "torch", str(tmp_path / name), fmt, None)
    assert (det.preset, det.flavour, det.dtype, det.spec) == ("d2l", "ours", dtype, spec)
    back = dt.export_canonical(files.load_model(tmp_path / name, fmt, "ours", det.spec, dtype))
    assert list(back) == [p.name for p in param_table(spec)]
    for k, v in params.items():
        assert back[k].dtype == v.dtype and back[k].tobytes() == v.tobytes(), k


def test_a_state_dict_without_counters_loads(tmp_path):
    spec = get_spec("d2l")
    params = init_params(spec, 4, nontrivial_bn=True)
    torch.save({k: torch.from_numpy(v) for k, v in params.items()}, tmp_path / "bare.pt")
    model = files.load_model(tmp_path / "bare.pt", "torch", "ours", spec, "float32")
    assert all(np.array_equal(v, params[k]) for k, v in dt.export_canonical(model).items())


def test_damaged_and_wrong_files_are_named(tmp_path):
    spec = get_spec("d2l")
    files.write(init_params(spec, 0), spec, tmp_path / "m.pth", "torch", "ours")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.pth looks like a torch file"):
        files.inspect(tmp_path / "cut.pth", "torch")
    torch.save({"model": 1}, tmp_path / "notsd.pth")
    with pytest.raises(DetectionError, match="not a state_dict"):
        files.inspect(tmp_path / "notsd.pth", "torch")


@pytest.mark.zoo
def test_torchvision_file_is_detected_and_runs_as_torchvision_does(tmp_path):
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    tv = tvm.densenet121()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode uses every tensor
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    det = detect_file(files, "torch", str(tmp_path / "tv.pth"), "torch", None)
    assert "torchvision PyTorch state_dict" in det.describe()
    assert (det.preset, det.flavour, det.spec.num_classes) == ("densenet121", "torchvision", 1000)
    ours = files.load_model(tmp_path / "tv.pth", "torch", det.flavour, det.spec, "float32")
    x = _x(det.spec)
    with torch.no_grad():
        expected = tv.eval()(torch.from_numpy(x)).numpy()
    assert_close(dt.run(ours, x).logits, expected, "eval", "float32")
    # and the way back: what we write in torchvision's flavour loads strictly into torchvision
    files.write(dt.export_canonical(ours), det.spec, tmp_path / "out.pth", "torch", "torchvision")
    again = tvm.densenet121().eval()
    again.load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True), strict=True)
    with torch.no_grad():
        assert_close(again(torch.from_numpy(x)).numpy(), expected, "eval", "float32")
