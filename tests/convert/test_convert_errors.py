"""Detection said out loud, damaged and mismatched files, --overwrite, a wrong conversion caught."""

from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from densenet_multi import checkpoint
from densenet_multi.convert import ConvertError, CorruptFileError, DetectionError, VerificationError, convert
from densenet_multi.convert.api import read_canonical
from densenet_multi.convert.cli import main as cli_main
from densenet_multi.convert.detect import infer_spec, sniff_format
from densenet_multi.convert.matrix import bit_exact
from densenet_multi.params import param_table
from densenet_multi.spec import get_spec


def _cut(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("fmt", ["canonical", "torch", "keras", "keras-weights", "gluon"])
def test_a_truncated_file_names_itself_and_the_format_it_looked_like(fmt, sources, session,
                                                                     tmp_path):
    src = sources[fmt]
    bad = _cut(src, tmp_path / f"cut_{src.name}")
    with pytest.raises(CorruptFileError) as e:
        convert(bad, tmp_path / "out.pth", session=session)
    assert str(bad) in str(e.value)
    assert {"canonical": "safetensors", "torch": "zip", "keras": "zip",
            "keras-weights": "keras-weights", "gluon": "Gluon"}[fmt] in str(e.value)
    assert not (tmp_path / "out.pth").exists()


def test_unknown_content_is_refused(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a model file at all")
    with pytest.raises(ConvertError, match=r"x\.pth: unknown content"):
        sniff_format(tmp_path / "x.pth")


def test_every_missing_extra_and_misshapen_tensor_in_one_error(original, session, tmp_path):
    doctored = dict(original)
    del doctored["features.denseblock2.denselayer3.norm.running_var"]
    doctored["features.denseblock2.denselayer3.conv.weight"] = np.zeros((32, 7, 3, 3), np.float32)
    doctored["head.weight"] = np.zeros((3,), np.float32)
    save_file(doctored, str(tmp_path / "doctored.safetensors"))  # a state_dict: torch-safetensors
    with pytest.raises(DetectionError) as e:
        convert(tmp_path / "doctored.safetensors", tmp_path / "out.params", session=session)
    msg = str(e.value)
    assert "3 tensor problem(s)" in msg
    for line in ("missing features.denseblock2.denselayer3.norm.running_var",
                 "extra head.weight", "misshapen features.denseblock2.denselayer3.conv.weight: "
                 "expected (32, 160, 3, 3), file has (32, 7, 3, 3)"):
        assert line in msg
    assert not (tmp_path / "out.params").exists()


def test_a_network_matching_no_preset_names_the_closest_and_what_differs():
    spec = get_spec("densenet121", block_config=(6, 12, 24, 15))
    shapes = {p.name: p.shape for p in param_table(spec)}
    with pytest.raises(DetectionError) as e:
        infer_spec(shapes, where="f.pth")
    assert ("closest is densenet121, which differs in block_config: (6, 12, 24, 16) in "
            "densenet121, (6, 12, 24, 15) in the file") in str(e.value)
    # --spec converts it as the given network
    found, preset = infer_spec(shapes, where="f.pth", spec=spec)
    assert found == spec and preset == "densenet121"


def test_detection_reads_classes_channels_and_eps():
    spec = get_spec("densenet169", num_classes=10, in_channels=1)
    found, preset = infer_spec({p.name: p.shape for p in param_table(spec)}, where="f",
                               bn_eps=1.001e-5)
    assert preset == "densenet169" and found == spec.replace(bn_eps=1.001e-5)


def test_an_existing_destination_needs_overwrite(sources, session, tmp_path):
    dst = tmp_path / "taken.params"
    dst.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"taken\.params exists; pass overwrite=True"):
        convert(sources["torch"], dst, session=session)
    assert dst.read_bytes() == b"keep me"
    report = convert(sources["torch"], dst, session=session, overwrite=True)
    assert report.verified and dst.read_bytes()[:8] == b"\x12\x01\x00\x00\x00\x00\x00\x00"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.params"]  # no temporary left behind


def _swap_transition2_stats(params, spec):
    params = dict(params)
    a, b = "features.transition2.norm.running_mean", "features.transition2.norm.running_var"
    params[a], params[b] = params[b], params[a]
    return params, spec


def test_a_wrong_conversion_fails_verification_at_its_stage_and_writes_nothing(sources, session,
                                                                               tmp_path):
    with pytest.raises(VerificationError) as e:
        convert(sources["torch"], tmp_path / "out.params", session=session,
                tamper=_swap_transition2_stats)
    ff = e.value.report.first_fail
    assert ff.item == "transition2" and "first diverging stage: transition2" in str(e.value)
    assert all(i.status == "pass" for i in e.value.report.items[:3])  # stem, block1, transition1
    assert list(tmp_path.iterdir()) == []
    # a doctored epsilon, which a .keras stores: wrong from the stem on
    with pytest.raises(VerificationError) as e:
        convert(sources["gluon"], tmp_path / "out.keras", session=session,
                tamper=lambda p, s: (p, s.replace(bn_eps=0.1)))
    assert e.value.report.first_fail.item == "stem"
    assert list(tmp_path.iterdir()) == []


def test_the_cli_says_what_it_detected_and_prints_the_verification(sources, session, tmp_path,
                                                                   capsys):
    dst = tmp_path / "out.weights.h5"
    assert cli_main([str(sources["gluon"]), str(dst)], session=session) == 0
    out = capsys.readouterr().out
    assert "densenet_multi MXNet Gluon save_parameters" in out and "d2l, 10 classes" in out
    assert "transition3" in out and "verified" in out and dst.exists()
    assert cli_main([str(sources["gluon"]), str(dst)], session=session) == 2
    assert "FileExistsError" in capsys.readouterr().err
    assert cli_main([str(sources["gluon"]), str(dst), "--overwrite", "--no-verify"],
                    session=session) == 0
    assert "not verified (--no-verify)" in capsys.readouterr().out
    assert checkpoint.read_spec(sources["canonical"]) == get_spec("d2l")


def test_a_worker_reads_a_file_rewritten_in_place_afresh(original, session, tmp_path):
    # a worker keeps the model of the last file it loaded, keyed by the file's content: the
    # same name, size and modification time with other bytes is another file
    path = tmp_path / "sd.safetensors"  # a state_dict: the torch worker reads it
    save_file(original, str(path))
    first, _ = read_canonical(path, session=session)
    assert bit_exact(first, original) == []
    st = path.stat()
    changed = {k: (v + 1).astype(v.dtype) if k == "classifier.bias" else v for k, v in original.items()}
    save_file(changed, str(path))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    again, _ = read_canonical(path, session=session)
    assert bit_exact(again, changed) == []
