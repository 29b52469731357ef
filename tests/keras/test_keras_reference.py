"""The Keras model against the NumPy reference, for the four presets of issue 6.

The oracle is the reference computed in float64 (its own float32 rounding would
otherwise add to ours). Eval mode: logits and every stage. Train mode: every stage and the updated
running statistics (converted to the canonical, PyTorch convention). Canonical
round trip bit for bit, parameter counts, stage shapes.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_cases import REFERENCE_CASES, batch, loaded_model

from densenet_multi import keras as dk
from densenet_multi.params import param_table, running_stat_names
from densenet_multi.reference import forward
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_all_close, compare, tolerance

PRESETS = list(REFERENCE_CASES)


def _case(preset: str):
    size, n = REFERENCE_CASES[preset]
    spec = get_spec(preset)
    model, params = loaded_model(spec)
    return spec, model, params, batch(spec, size, n)


@pytest.mark.parametrize("preset", PRESETS)
def test_eval_logits_and_every_stage_match_reference(preset):
    spec, model, params, x = _case(preset)
    out = dk.run(model, x, train=False)
    ref = forward(spec, params, x, train=False, dtype="float64")
    assert list(out.stages) == list(spec.stage_names)
    assert out.running is None
    assert_all_close(out.stages, ref.stages, "eval", order=spec.stage_names)
    np.testing.assert_array_equal(out.logits, out.stages["logits"])


@pytest.mark.parametrize("preset", PRESETS)
def test_train_mode_outputs_and_running_stats_match_reference(preset):
    spec, model, params, x = _case(preset)
    out = dk.run(model, x, train=True)
    ref = forward(spec, params, x, train=True, dtype="float64")
    assert_all_close(out.stages, ref.stages, "train", order=spec.stage_names)
    assert sorted(out.running) == sorted(running_stat_names(spec))
    assert_all_close(out.running, ref.running, "running")
    # run() is a pure query: the model keeps its running statistics.
    exported = dk.export_canonical(model)
    assert all(np.array_equal(exported[k], params[k]) for k in running_stat_names(spec))


@pytest.mark.parametrize("preset", ["d2l", "densenet40_k12"])
def test_keras_native_running_variance_is_the_biased_convention(preset):
    """Why run() converts: Keras's own running variance (biased batch variance)
    misses the reference by far more than the tolerance; the means agree."""
    spec, model, params, x = _case(preset)
    out = dk.run(model, x, train=True)
    ref = forward(spec, params, x, train=True)
    native = out.extras["keras_running"]
    tol = tolerance("running")
    var_errors = [compare(k, native[k], ref.running[k], tol).rel
                  for k in native if k.endswith("running_var")]
    assert max(var_errors) > 10 * tol
    assert_all_close({k: v for k, v in native.items() if k.endswith("running_mean")},
                     {k: v for k, v in ref.running.items() if k.endswith("running_mean")},
                     "running")


@pytest.mark.parametrize("preset", PRESETS)
def test_canonical_round_trip_is_bit_exact(preset):
    spec, model, params, _ = _case(preset)
    exported = dk.export_canonical(model)
    assert list(exported) == [p.name for p in param_table(spec)]
    assert all(a.dtype == np.float32 for a in exported.values())
    assert_all_close(exported, params, "copy")


@pytest.mark.parametrize("preset", PRESETS)
def test_trainable_parameter_count_equals_spec(preset):
    spec, model, _, _ = _case(preset)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == spec.num_params()
    bn_buffers = spec.num_params(trainable_only=False) - spec.num_params()
    moving = sum(int(np.prod(v.shape)) for v in model.non_trainable_variables
                 if "moving_" in v.path)
    assert moving == bn_buffers


def test_densenet121_trainable_parameters_are_torchvisions():
    spec = get_spec("densenet121")
    model, _ = loaded_model(spec)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 7_978_856


def test_densenet121_stage_shapes_at_224_symbolically():
    """112 -> 56 -> 28 -> 14 -> 7, from a symbolic 224x224 input (no computation)."""
    spec = get_spec("densenet121")
    model, _ = loaded_model(spec)
    stages = model.forward_stages(keras.KerasTensor((1, 224, 224, 3)))
    expected = spec.stage_shapes(224, 224)
    for name, shape in expected.items():
        got = tuple(stages[name].shape[1:])
        want = shape if len(shape) == 1 else (*shape[1:], shape[0])  # NHWC
        assert got == want, name
    assert tuple(stages["stem"].shape) == (1, 56, 56, 64)
    assert tuple(stages["features"].shape) == (1, 7, 7, 1024)


def test_other_input_sizes_use_global_pooling():
    spec = get_spec("densenet40_k12")
    model, params = loaded_model(spec)
    x = batch(spec, 24, 2, seed=3)  # not the 32x32 the CIFAR nets were made for
    assert_all_close(dk.run(model, x).stages, forward(spec, params, x, dtype="float64").stages,
                     "eval")
