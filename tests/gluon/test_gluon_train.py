"""The training entry point. The teaching notebook's test is test_gluon_notebook.py."""

from __future__ import annotations

import re

import pytest

from densenet_multi.checkpoint import load
from densenet_multi.gluon import train as gluon_train


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
