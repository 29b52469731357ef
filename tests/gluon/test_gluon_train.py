"""The training entry point and the teaching notebook."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from densenet_multi.checkpoint import load
from densenet_multi.gluon import train as gluon_train
from densenet_multi.testing import tolerance

ROOT = Path(__file__).resolve().parents[2]


def test_training_reaches_the_measured_accuracy(tmp_path, capsys):
    """d2l on the first 400 digits (32x32), 3 epochs, batch 16, lr 0.05, hybridized, from
    build()'s canonical seeded weights; evaluated on 359 held-out digits in eval mode.
    Measured: 94.2% (seed 1, this test's); seeds 0 and 2 gave 95.8% and 91.1%; about 16 s on
    two shared CPU cores. The floor of 80% leaves that spread a wide margin and is far
    above chance (10%)."""
    ckpt = tmp_path / "d2l.safetensors"
    rc = gluon_train.main(["--epochs", "3", "--subset", "400", "--batch-size", "16",
                           "--lr", "0.05", "--seed", "1", "--save", str(ckpt)])
    assert rc == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"final test accuracy ([\d.]+)%", out).group(1)) / 100
    assert acc >= 0.80, out
    params, spec = load(ckpt)
    assert spec.name == "d2l" and len(params) > 0


def test_training_needs_data_dir_for_fashion_mnist():
    with pytest.raises(SystemExit):
        gluon_train.main(["--data", "fashion-mnist"])


def test_notebook_executes_and_asserts_its_parity_errors(tmp_path, monkeypatch):
    """The notebook runs top to bottom; its parity cell asserts each error against the
    tolerance table (an assertion failure would fail the execution), and the errors it
    prints are checked here against the same table."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "notebooks" / "gluon_densenet.ipynb"
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for check in ("assert worst <= tolerance(check)", 'assert rel <= tolerance("running")'):
        assert check in source
    # the kernel must import this working tree, not an installed copy
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
        "PYTHONPATH")])))
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    errors = dict(re.findall(r"^(eval|train|running) worst (?:stage )?rel error (\S+)", text,
                             re.MULTILINE))
    assert sorted(errors) == ["eval", "running", "train"], text
    for check, value in errors.items():
        assert float(value) <= tolerance(check), (check, value)
    assert "round trip bit-exact: True" in text
    acc = float(re.search(r"test accuracy after 3 epochs: ([\d.]+)", text).group(1))
    assert acc >= 0.80, text  # measured 0.958 (seed 0; the CLI test measures 0.91-0.96)
