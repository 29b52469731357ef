"""The training entry point (one-epoch smoke run, checkpoint) and learning above a measured
floor. The teaching notebook's test is test_flax_notebook.py."""

from __future__ import annotations

import pytest

from densenet_multi import checkpoint
from densenet_multi import flax as backend
from densenet_multi.flax import train


def test_training_smoke_saves_a_checkpoint(tmp_path, capsys):
    from densenet_multi.cli import main as cli_main
    from densenet_multi.data import load_digits_dataset

    out = tmp_path / "d2l.safetensors"
    # through the command line: `densenet-multi train --backend flax ...` -> train.main
    rc = cli_main(["train", "--backend", "flax", "--epochs", "1", "--subset", "96",
                   "--batch-size", "32", "--no-progress", "--seed", "0", "--save", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "final test accuracy" in text and "96 train" in text and "saved" in text
    _, spec = checkpoint.load(out)
    assert spec.name == "d2l" and spec.in_channels == 1 and spec.num_classes == 10
    model = backend.load_checkpoint(out)
    assert backend.run(model, load_digits_dataset(32).subset(8).x_test).logits.shape == (8, 10)


def test_fit_learns_digits_above_a_measured_floor():
    """d2l net, 640 training / 128 test digits at 32x32, 3 epochs, batch 32, optax SGD
    lr 0.1 momentum 0.9 (fit's defaults), build(seed=s).
    Measured (jax 0.10.2 / flax 0.12.8, CPU): test accuracy 73.4%, 78.1%, 90.6% and train
    accuracy 94.2%, 90.6%, 92.5% after the third epoch for seeds 0, 1, 2 (the test
    accuracy lags: the running BN statistics, momentum 0.9, are still catching up).
    The floors of 60% test / 85% train leave room for other machines' rounding and fail
    a network or loop that does not learn (chance is 10%)."""
    from densenet_multi.data import load_digits_dataset
    from densenet_multi.spec import get_spec

    data = load_digits_dataset(size=32).subset(640, 128)
    model = backend.build(get_spec("d2l"), seed=0)
    hist = train.fit(model, data, epochs=3, batch_size=32, seed=0, show_progress=False,
                     log=None)
    assert [h.epoch for h in hist] == [1, 2, 3]
    assert hist[0].loss > hist[1].loss > hist[2].loss
    assert hist[-1].train_acc >= 0.85, hist[-1]
    assert hist[-1].test_acc >= 0.60, hist[-1]


def test_fashion_mnist_needs_a_folder():
    with pytest.raises(SystemExit):
        train.main(["--data", "fashion-mnist"])
