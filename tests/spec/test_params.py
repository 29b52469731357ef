"""Canonical parameter names, shapes, kinds and the seeded initializer."""

import math
from pathlib import Path

import numpy as np
import pytest

from densenet_multi.params import (
    ParameterError,
    init_params,
    module_table,
    param_table,
    running_stat_names,
    validate_params,
)
from densenet_multi.spec import PRESETS, get_spec

GOLDEN = Path(__file__).with_name("golden_densenet121_keys.txt")


def _golden():
    rows = [ln.split(" ", 1) for ln in GOLDEN.read_text().splitlines() if not ln.startswith("#")]
    return [(name, tuple(eval(shape))) for name, shape in rows]


def test_densenet121_names_and_shapes_equal_torchvision_golden_list():
    golden = _golden()
    ours = [(p.name, p.shape) for p in param_table(get_spec("densenet121"))]
    assert len(golden) == 606
    assert ours == golden  # same names, same order, same shapes


def test_no_bottleneck_extension_names():
    names = [p.name for p in param_table(get_spec("d2l"))]
    assert "features.denseblock1.denselayer1.norm.weight" in names
    assert "features.denseblock1.denselayer1.conv.weight" in names
    assert "features.denseblock1.denselayer1.conv.bias" in names  # d2l convs have a bias
    assert "features.conv0.bias" in names
    assert not any(".norm1." in n or ".conv2." in n for n in names)
    assert not any(n.endswith("num_batches_tracked") for n in names)


def test_cifar_stem_has_only_conv0():
    names = [p.name for p in param_table(get_spec("densenet40_k12"))]
    assert names[0] == "features.conv0.weight"
    assert not any(n.startswith("features.norm0") for n in names)
    assert names[-6:-2] == ["features.norm5.weight", "features.norm5.bias",
                            "features.norm5.running_mean", "features.norm5.running_var"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_table_is_consistent_with_spec(name):
    spec = get_spec(name)
    table = param_table(spec)
    assert len({p.name for p in table}) == len(table)
    assert sum(math.prod(p.shape) for p in table if p.trainable) == spec.num_params()
    for m in module_table(spec):
        assert all(p.name.startswith(m.prefix + ".") for p in m.params)
        assert m.kind in ("conv", "bn", "linear")


def test_module_parts_are_structural():
    parts = {m.prefix: m.part for m in module_table(get_spec("densenet121"))}
    assert parts["features.conv0"] == ("stem", "conv0")
    assert parts["features.denseblock2.denselayer3.conv1"] == ("block", 1, "layer", 2, "conv1")
    assert parts["features.transition3.norm"] == ("transition", 2, "norm")
    assert parts["features.norm5"] == ("norm5",)
    assert parts["classifier"] == ("classifier",)


def test_init_is_seeded_and_follows_torchvision_scheme():
    spec = get_spec("densenet121")
    a, b = init_params(spec, 3), init_params(spec, 3)
    c = init_params(spec, 4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["features.conv0.weight"], c["features.conv0.weight"])
    w = a["features.denseblock3.denselayer5.conv1.weight"]
    fan_in = w.shape[1]
    assert abs(w.std() - math.sqrt(2 / fan_in)) < 0.02 * math.sqrt(2 / fan_in)
    assert np.all(a["features.norm0.weight"] == 1) and np.all(a["features.norm0.running_var"] == 1)
    assert np.all(a["classifier.bias"] == 0)
    assert np.abs(a["classifier.weight"]).max() <= 1 / math.sqrt(1024)
    assert all(v.dtype == np.float32 for v in a.values())
    assert list(a) == [p.name for p in param_table(spec)]


def test_init_golden_values_are_stable_across_numpy_versions():
    """The same seed gives the same numbers under numpy 1.23 and 2.x (tox runs both)."""
    p = init_params(get_spec("d2l"), 0, nontrivial_bn=True)
    np.testing.assert_allclose(p["features.conv0.weight"].ravel()[:3],
                               [0.02540134, -0.02668921, 0.12938492], rtol=1e-5)
    np.testing.assert_allclose(p["features.norm0.running_var"][:2], [1.4084139, 1.6586652], rtol=1e-4)


def test_nontrivial_bn_draws_statistics():
    p = init_params(get_spec("d2l"), 0, nontrivial_bn=True)
    for n in running_stat_names(get_spec("d2l")):
        assert np.unique(p[n]).size > 1
    assert (p["features.norm5.running_var"] > 0.5).all()


def test_validate_reports_every_problem_at_once():
    spec = get_spec("d2l")
    p = init_params(spec, 0)
    del p["features.norm5.weight"]
    p["features.extra.weight"] = np.zeros(3, np.float32)
    p["classifier.weight"] = p["classifier.weight"].T
    p["classifier.bias"] = p["classifier.bias"].astype(np.float64)
    with pytest.raises(ParameterError) as e:
        validate_params(spec, p)
    msg = str(e.value)
    assert "missing 1 key(s): features.norm5.weight" in msg
    assert "unexpected 1 key(s): features.extra.weight" in msg
    assert "classifier.weight: expected shape (10, 248), got (248, 10)" in msg
    assert "classifier.bias: expected dtype float32, got float64" in msg
