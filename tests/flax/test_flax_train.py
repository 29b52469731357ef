"""The training entry point (one-epoch smoke run) and the teaching notebook."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from densenet_multi.flax import train

ROOT = Path(__file__).resolve().parents[2]


def test_training_smoke(capsys):
    from densenet_multi.cli import main as cli_main

    # through the command line: `densenet-multi train --backend flax ...` -> train.main
    rc = cli_main(["train", "--backend", "flax", "--epochs", "1", "--subset", "96",
                   "--batch-size", "32", "--no-progress", "--seed", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and "96 train" in out


def test_fit_learns_on_a_digits_subset():
    from densenet_multi.data import load_digits_dataset
    from densenet_multi.flax import build
    from densenet_multi.spec import get_spec

    data = load_digits_dataset(size=32).subset(96)  # the smoke run's shapes: no new compile
    model = build(get_spec("d2l"), seed=0)
    history = train.fit(model, data, epochs=2, batch_size=32, show_progress=False, log=None)
    assert len(history) == 2
    assert history[-1].loss < history[0].loss
    assert 0.0 <= history[-1].test_acc <= 1.0


def test_fashion_mnist_needs_a_folder():
    with pytest.raises(SystemExit):
        train.main(["--data", "fashion-mnist"])


def test_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "notebooks" / "flax_densenet.ipynb"
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=env)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "round trip bit-exact: True" in text
    assert "FAIL" not in text and "test accuracy after 2 epochs" in text
