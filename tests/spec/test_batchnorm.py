"""The BatchNorm bookkeeping every biased-rule backend uses, checked against the NumPy
reference's own train-mode update (which follows PyTorch's unbiased rule)."""

import numpy as np
import pytest

from densenet_multi.batchnorm import canonical_running_var, sample_counts
from densenet_multi.params import init_params, running_stat_names
from densenet_multi.reference import forward
from densenet_multi.spec import get_spec


def test_sample_counts_follow_the_geometry():
    spec = get_spec("d2l")
    counts = sample_counts(spec, 2, 96, 96)
    assert counts["features.norm0"] == 2 * 48 * 48  # after the 7x7/2 conv, before the pool
    assert counts["features.denseblock1.denselayer1.norm"] == 2 * 24 * 24
    assert counts["features.transition1.norm"] == 2 * 24 * 24  # its BN runs before the pool
    assert counts["features.denseblock2.denselayer4.norm"] == 2 * 12 * 12
    assert counts["features.norm5"] == 2 * 3 * 3
    assert {k + ".running_var" for k in counts} == {
        n for n in running_stat_names(spec) if n.endswith("running_var")}


def test_canonical_running_var_recovers_the_unbiased_update():
    """Simulate a biased-rule framework from the reference's own batch statistics and
    convert back: the result equals the reference's unbiased update."""
    spec = get_spec("densenet40_k12", block_config=(2, 2, 2))
    params = init_params(spec, 0, nontrivial_bn=True, dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16))
    out = forward(spec, params, x, train=True)
    m = spec.bn_momentum
    counts = sample_counts(spec, 3, 16, 16)
    for prefix, c in counts.items():
        old = params[prefix + ".running_var"]
        unbiased_new = out.running[prefix + ".running_var"]
        var_b = (unbiased_new - (1 - m) * old) / m * (c - 1) / c
        biased_rule = (1 - m) * old + m * var_b
        got = canonical_running_var(old, biased_rule, c, m)
        np.testing.assert_allclose(got, unbiased_new, rtol=1e-13, err_msg=prefix)
        # a wrong count or the other momentum convention does not pass
        assert not np.allclose(canonical_running_var(old, biased_rule, c, 1 - m), unbiased_new,
                               rtol=1e-6)


def test_canonical_running_var_keeps_dtype_and_single_sample():
    old = np.ones(4, np.float32)
    upd = np.full(4, 0.95, np.float32)
    assert canonical_running_var(old, upd, 10, 0.1).dtype == np.float32
    np.testing.assert_array_equal(canonical_running_var(old, upd, 1, 0.1), upd)
    assert canonical_running_var(old, upd, 10, 0.1) == pytest.approx(
        0.95 + (0.95 - 0.9) / 9, rel=1e-6)
