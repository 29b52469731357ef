"""The training entry point (smoke) and the teaching notebook."""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet_multi.checkpoint import load
from densenet_multi.gluon import train as gluon_train

ROOT = Path(__file__).resolve().parents[2]


def test_training_smoke(tmp_path, capsys):
    ckpt = tmp_path / "d2l.safetensors"
    rc = gluon_train.main(["--epochs", "1", "--subset", "96", "--batch-size", "32",
                           "--seed", "1", "--save", str(ckpt)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out
    params, spec = load(ckpt)
    assert spec.name == "d2l" and len(params) > 0


def test_training_needs_data_dir_for_fashion_mnist():
    with pytest.raises(SystemExit):
        gluon_train.main(["--data", "fashion-mnist"])


def test_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "notebooks" / "gluon_densenet.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "round trip bit-exact: True" in text
    assert "test accuracy after 2 epochs" in text
