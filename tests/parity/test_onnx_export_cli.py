"""``densenet-multi export --format onnx``: the core side and one export through Gluon's worker.

The export itself runs in the mxnet env (MXNet's exporter takes under a second);
what the core checks before starting it (the checkpoint, the output path, the
backend) is tested without one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densenet_multi import checkpoint
from densenet_multi.checkpoint import CheckpointError
from densenet_multi.cli import main as cli
from densenet_multi.export.api import export_onnx
from densenet_multi.params import init_params
from densenet_multi.parity.runner import find_project_root
from densenet_multi.spec import get_spec

MXNET = (find_project_root() or Path.cwd()) / ".tox" / "mxnet" / "bin" / "python"
TINY = get_spec("d2l", growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=5)


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return checkpoint.save(tmp_path / "tiny.safetensors", init_params(TINY, 0, nontrivial_bn=True), TINY)


@pytest.mark.skipif(not MXNET.exists(), reason="needs the mxnet env (tox -e mxnet --notest)")
def test_export_writes_a_verified_graph(ckpt, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert cli(["export", "--format", "onnx", str(ckpt), str(out), "--backend", "gluon"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "mxnet.onnx.export_model" in printed and "opset 13" in printed
    report = export_onnx(ckpt, out, backend="gluon", overwrite=True)
    assert report.verified and report.opset == 13 and report.versions["mxnet"] == "1.9.1"
    assert list(report.errors) == list(TINY.stage_names)
    worst = max(max(e.values()) for e in report.errors.values())
    assert worst <= report.tolerance == 1e-5, json.dumps(report.errors)
    # an existing file is kept unless --overwrite
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(ckpt, out, backend="gluon")


def test_bad_requests_fail_before_any_worker(ckpt, tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        export_onnx(ckpt, tmp_path / "a.onnx", backend="onnx")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_onnx(tmp_path / "missing.safetensors", tmp_path / "a.onnx")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises((CheckpointError, ValueError)):
        export_onnx(broken, tmp_path / "a.onnx")
    with pytest.raises(IsADirectoryError):
        export_onnx(ckpt, tmp_path)
    assert not (tmp_path / "a.onnx").exists()
    assert cli(["export", "--format", "onnx", str(ckpt), str(tmp_path), "--backend", "gluon"]) == 2
