"""Every ordered pair of formats converts, verifies and round-trips bit-exact; official files too."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from densenet_multi.convert import convert, read_canonical
from densenet_multi.convert.matrix import OURS, bit_exact, make_sources, round_trip
from densenet_multi.params import init_params
from densenet_multi.spec import get_spec

PAIRS = [(a, b) for a, b in itertools.permutations(OURS, 2)]


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_ordered_pair_converts_verifies_and_round_trips(a, b, sources, original, session,
                                                              tmp_path):
    # A -> B verified stage by stage; B -> A (B -> A from its own source is another pair);
    # A -> B -> A equal to the canonical parameters every source was made from, bit for bit
    row = round_trip(sources[a], a, b, tmp_path, session, original=original, verify_back=False)
    there = row["there"]
    assert there["verified"], there["first_fail"]
    assert there["worst_rel"] <= 1e-5
    assert row["round_trip_differences"] == []


def test_bit_exact_names_what_differs(original):
    # the round-trip check itself, fed a one-ulp change, a dtype change and a missing key
    changed = dict(original)
    k = "features.transition2.norm.running_var"
    changed[k] = np.nextafter(original[k], np.inf)
    changed["classifier.bias"] = original["classifier.bias"].astype(np.float64)
    del changed["features.conv0.bias"]
    diffs = bit_exact(original, changed)
    assert len(diffs) == 3 and any(k in d and "values differ" in d for d in diffs)
    assert any("classifier.bias: float32" in d and "float64" in d for d in diffs)


def test_float64_stays_float64_bit_exact_through_every_format(session, tmp_path):
    sources = make_sources(tmp_path, session, dtype="float64",
                           formats=("canonical", "torch", "keras-weights", "gluon", "flax"))
    expected = init_params(get_spec("d2l"), 1, nontrivial_bn=True, dtype="float64")
    for fmt, path in sources.items():
        params, det = read_canonical(path, session=session)
        assert det.dtype == "float64"
        assert bit_exact(params, expected) == [], fmt
    # and verified in float64 (tolerance 1e-12): gluon -> keras
    report = convert(sources["gluon"], tmp_path / "g.keras", session=session)
    assert report.verified and report.worst_rel <= 1e-12


def test_a_torchvision_file_to_keras_applications_and_back(official, session, tmp_path):
    # the README's example, on a file torchvision wrote itself. Reading every official file
    # (torchvision's, keras.applications' .keras and .weights.h5, the Gluon zoo's) against the
    # official forward pass is tested in each framework's env; every official file to every
    # other framework is the matrix script's --official run
    row = round_trip(official("torchvision"), "torchvision", "keras-applications", tmp_path,
                     session)
    assert row["there"]["verified"] and row["back"]["verified"], row
    assert row["there"]["worst_rel"] <= 1e-5 and row["back"]["worst_rel"] <= 1e-5
    assert row["round_trip_differences"] == []
    assert row["there"]["eps"] == [1e-5, 1.001e-5]  # each file verified with its own epsilon
    assert row["there"]["detected"].startswith("torchvision PyTorch state_dict saved with torch.save: "
                                               "densenet121, 1000 classes, 3 input channels")
