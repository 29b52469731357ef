"""The Flax NNX DenseNet against the NumPy reference, preset by preset: eval and
train-mode stages, converted running statistics, canonical round trip, counts."""

from __future__ import annotations

import numpy as np
from flax import nnx

from densenet_multi.params import param_table, running_stat_names
from densenet_multi.testing import assert_all_close, assert_close


def test_stage_shapes(preset_case):
    c = preset_case
    n, _, h, w = c.x.shape
    want = {k: (n, *s) for k, s in c.spec.stage_shapes(h, w).items()}
    assert list(c.eval_out.stages) == list(c.spec.stage_names)
    assert {k: v.shape for k, v in c.eval_out.stages.items()} == want


def test_eval_matches_reference(preset_case):
    c = preset_case
    assert_all_close(c.eval_out.stages, c.ref_eval.stages, "eval", order=c.spec.stage_names)
    assert_close(c.eval_out.logits, c.ref_eval.logits, "eval", name="logits")
    assert c.eval_out.running is None


def test_train_mode_matches_reference(preset_case):
    c = preset_case
    assert_all_close(c.train_out.stages, c.ref_train.stages, "train", order=c.spec.stage_names)


def test_train_mode_running_stats_in_canonical_convention(preset_case):
    """Flax updates the running variance with the biased batch variance; run() converts
    to PyTorch's unbiased update, which the reference computes."""
    c = preset_case
    assert list(c.train_out.running) == running_stat_names(c.spec)
    assert_all_close(c.train_out.running, c.ref_train.running, "running")
    # Flax's own (biased) values differ from the canonical ones by the Bessel factor.
    native = c.train_out.extras["flax_running"]
    var = [k for k in native if k.endswith("running_var")]
    assert any(not np.allclose(native[k], c.train_out.running[k], rtol=1e-4) for k in var)
    means = [k for k in native if k.endswith("running_mean")]
    assert all(np.array_equal(native[k], c.train_out.running[k]) for k in means)


def test_canonical_round_trip_is_bit_exact(preset_case):
    c = preset_case
    assert list(c.after_load) == [p.name for p in param_table(c.spec)]
    for name, a in c.params.items():
        out = c.after_load[name]
        assert out.dtype == np.float32 and out.shape == a.shape, name
        assert np.array_equal(out, a), name
    assert_all_close(c.after_load, c.params, "copy")


def test_parameter_count_matches_spec(preset_case):
    c = preset_case
    count = sum(int(np.prod(v.shape)) for _, v in
                nnx.to_flat_state(nnx.state(c.model, nnx.Param)))
    assert count == c.spec.num_params()
    stats = sum(int(np.prod(v.shape)) for _, v in
                nnx.to_flat_state(nnx.state(c.model, nnx.BatchStat)))
    assert count + stats == c.spec.num_params(trainable_only=False)
    if c.spec.name == "densenet121":
        assert count == 7_978_856  # torchvision's weights metadata
