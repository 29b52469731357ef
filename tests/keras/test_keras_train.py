"""The training entry point (one-epoch smoke run) and the teaching notebook."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from densenet_multi.keras import train

ROOT = Path(__file__).resolve().parents[2]


def test_train_smoke_one_epoch(capsys, tmp_path):
    save = tmp_path / "best.keras"
    code = train.main(["--epochs", "1", "--subset", "64", "--batch-size", "32", "--lr", "0.05",
                       "--verbose", "0", "--save", str(save)])
    assert code == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "1 epoch(s)" in out
    assert save.exists()


def test_train_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        train.main(["--data", "fashion-mnist"])  # needs --data-dir
    with pytest.raises(SystemExit):
        train.main(["--epochs", "0"])
    assert "--data-dir" in capsys.readouterr().err


def test_cli_forwards_to_keras_train(monkeypatch):
    from densenet_multi.cli import main

    seen = []
    monkeypatch.setattr(train, "main", lambda argv: seen.append(list(argv)) or 0)
    assert main(["train", "--backend", "keras", "--epochs", "1", "--subset", "32"]) == 0
    assert seen == [["--epochs", "1", "--subset", "32"]]


def test_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "notebooks" / "keras_densenet.ipynb"
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_path) if p)
    try:
        client.execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "max rel error vs reference" in outputs
    assert time.perf_counter() - start < 300
