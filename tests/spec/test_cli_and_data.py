"""The command line and the data helpers."""

import gzip
import struct

import numpy as np
import pytest

from densenet_multi import checkpoint
from densenet_multi.cli import main
from densenet_multi.data import iterate_minibatches, load_fashion_mnist, read_idx, resize_bilinear


def test_info_prints_plan_shapes_and_counts(capsys):
    assert main(["info", "densenet121"]) == 0
    out = capsys.readouterr().out
    assert "7,978,856" in out
    assert "2,834,161,664" in out
    assert "1x1024x7x7" in out
    assert "denseblock4" in out and "transition3" in out


def test_info_input_size_and_error(capsys):
    assert main(["info", "d2l", "--input-size", "96", "96"]) == 0
    assert "1x248x3x3" in capsys.readouterr().out
    assert main(["info", "d2l", "--input-size", "20", "20"]) == 2
    assert "smallest size that works is 29x29" in capsys.readouterr().err
    assert main(["info", "densenet999"]) == 2
    assert "known presets" in capsys.readouterr().err


def test_init_writes_checkpoint_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert main(["init", "densenet40_k12", str(out), "--seed", "3"]) == 0
    params, spec = checkpoint.load(out)
    assert spec.name == "densenet40_k12" and len(params) == len(list(params))
    assert main(["init", "densenet40_k12", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["init", "densenet40_k12", str(out), "--overwrite", "--seed", "4"]) == 0


def _write_idx(path, arr, code):
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_read_idx_plain_and_gz(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", a, 0x08)
    _write_idx(tmp_path / "b.gz", a, 0x08)
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), a)
    f = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    _write_idx(tmp_path / "f", f, 0x0D)
    assert np.array_equal(read_idx(tmp_path / "f"), f)


def test_read_idx_errors(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "y")


def test_fashion_mnist_loader_on_tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), 0x08)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte",
                   rng.integers(0, 10, n).astype(np.uint8), 0x08)
    ds = load_fashion_mnist(tmp_path, size=32)
    assert ds.x_train.shape == (6, 1, 32, 32) and ds.x_test.shape == (4, 1, 32, 32)
    assert ds.y_train.dtype == np.int64
    assert abs(ds.x_train.mean()) < 1e-5
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
        load_fashion_mnist(tmp_path)


def test_resize_bilinear_preserves_constants_and_range():
    x = np.full((1, 1, 8, 8), 3.0, np.float32)
    assert np.allclose(resize_bilinear(x, 32), 3.0)
    g = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    r = resize_bilinear(g, 32)
    assert r.min() >= 0 and r.max() <= 63 and r.shape == (1, 1, 32, 32)


def test_minibatches_cover_every_index_once():
    idx = np.concatenate(list(iterate_minibatches(10, 3, shuffle=True, seed=1)))
    assert sorted(idx) == list(range(10))


def test_shared_training_arguments():
    import argparse

    from densenet_multi.data import add_training_arguments, dataset_from_args

    p = add_training_arguments(argparse.ArgumentParser(), epochs=8)
    args = p.parse_args([])
    assert (args.preset, args.epochs, args.batch_size, args.data) == ("d2l", 8, 64, "digits")
    with pytest.raises(SystemExit):
        p.parse_args(["--epochs", "0"])
    with pytest.raises(SystemExit):
        dataset_from_args(p.parse_args(["--data", "fashion-mnist"]), p)


def test_train_help_without_a_backend_lists_the_shared_options(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--backend {flax,gluon,keras,torch}" in out and "--epochs" in out
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "1"])
    assert e.value.code == 2
    assert "--backend (one of flax, gluon, keras, torch)" in capsys.readouterr().err
