"""float64 models through the backend functions: ``build(spec, dtype="float64")``.

Under TensorFlow a float64 model holds its variables (BN moving statistics
included) in float64 and computes in float64, without the global dtype policy:
eval and train forward, running statistics, gradients and an SGD trajectory
against the float64 NumPy reference at the float64 tolerances, bit-exact
canonical export/load, checkpoints, ``.keras`` save/load. Under JAX the runtime (``build``, ``run``...)
refuses float64 with a clear error (64-bit mode off; and Keras's type promotion
under JAX computes BatchNormalization and ``ops.mean`` in float32 even with it on).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_cases import BACKEND, loaded_model, requires_tensorflow, tiny_spec

from densenet_multi import keras as dk
from densenet_multi.backend import SGD_DEFAULTS
from densenet_multi.params import init_params, param_table, running_stat_names, trainable_names
from densenet_multi.reference import forward
from densenet_multi.reference_grad import gradients as ref_gradients
from densenet_multi.reference_grad import train_steps as ref_train_steps
from densenet_multi.spec import DenseNetSpec, get_spec
from densenet_multi.testing import assert_all_close, assert_close, tolerance

requires_jax = pytest.mark.skipif(BACKEND != "jax", reason="needs KERAS_BACKEND=jax")

#: DenseNet-BC with the CIFAR stem; and a d2l-like net: ImageNet stem (BN, max-pool),
#: plain layers, convolutions with bias, one input channel.
TINY_BC = tiny_spec()
TINY_D2L = tiny_spec(stem="imagenet", bn_size=None, conv_bias=True, in_channels=1,
                     name="tiny-d2l")
DEEP = get_spec("densenet40_k12")  # 36 dense layers
#: spec -> input size
SIZES = {TINY_BC: 16, TINY_D2L: 32, DEEP: 16}
SPECS = [TINY_BC, TINY_D2L]


def _ids(spec: DenseNetSpec) -> str:
    return spec.name


def _batch64(spec: DenseNetSpec, n: int, seed: int) -> np.ndarray:
    size = SIZES.get(spec, 16)
    return np.random.default_rng(seed).standard_normal((n, spec.in_channels, size, size))


def _labels(spec: DenseNetSpec, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, spec.num_classes, n)


def _assert_grads_close(got: dict, ref: dict, spec: DenseNetSpec) -> None:
    """The float64 "grad" tolerance per tensor; except conv biases: every conv feeds a
    train-mode BatchNorm, which subtracts the batch mean, so their exact gradient is
    zero and both sides are rounding noise, held to the tolerance of the largest
    gradient in the net."""
    biases = {p.name for p in param_table(spec) if p.kind == "conv_bias"}
    assert_all_close({k: v for k, v in got.items() if k not in biases},
                     {k: v for k, v in ref.items() if k not in biases}, "grad", "float64")
    scale = max(float(np.max(np.abs(v))) for v in ref.values())
    for k in biases:
        assert np.max(np.abs(got[k] - ref[k])) <= tolerance("grad", "float64") * scale, k


def _dtypes(arrays) -> set[np.dtype]:
    return {np.asarray(a).dtype for a in arrays}


F64 = {np.dtype(np.float64)}


# ---------------------------------------------------------------- build
def test_build_refuses_other_dtypes():
    with pytest.raises(ValueError, match=r"one of \('float32', 'float64'\), got 'float16'"):
        dk.build(TINY_BC, dtype="float16")
    with pytest.raises(ValueError, match=r"one of \('float32', 'float64'\), got 'mixed_float16'"):
        dk.build(TINY_BC, dtype="mixed_float16")


def test_build_default_is_float32():
    model = dk.build(TINY_BC)
    assert model.dtype_policy.name == "float32"
    assert {v.dtype for v in model.variables} == {"float32"}
    assert _dtypes(dk.export_canonical(model).values()) == {np.dtype(np.float32)}


@requires_tensorflow
def test_float64_model_everywhere_without_the_global_policy():
    model = dk.build(TINY_D2L, dtype="float64")
    assert keras.config.dtype_policy().name == "float32"  # untouched
    assert model.dtype_policy.name == "float64"
    # every layer and every variable, BN moving statistics included
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"float64"}
    assert {v.dtype for v in model.variables} == {"float64"}
    assert any("moving_variance" in v.path for v in model.non_trainable_variables)
    # the constructors take Keras's dtype argument, a name or a DTypePolicy
    net = dk.from_spec(TINY_BC, dtype=keras.DTypePolicy("float64"))
    assert net(np.zeros((1, 16, 16, 3))).dtype == "float64"
    assert net.classifier.kernel.dtype == "float64"
    block = dk.ConvBlock(TINY_BC, 3, 4, TINY_BC.growth_conv, dtype="float64")
    assert block(np.zeros((1, 4, 4, 3))).dtype == "float64"
    assert {block.norm.moving_variance.dtype, block.conv.kernel.dtype} == {"float64"}


@requires_tensorflow
def test_model_without_dtype_follows_the_global_policy_build_does_not():
    """``dtype=None`` is Keras's default for the model class: the global policy (float32
    unless set); ``build`` says float32 unless told otherwise (the contract)."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        assert dk.DenseNet(TINY_BC).dtype_policy.name == "float64"
        assert dk.build(TINY_BC).dtype_policy.name == "float32"
    finally:
        keras.config.set_dtype_policy(old)


# ---------------------------------------------------------------- forward
@requires_tensorflow
@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_float64_eval_and_train_match_float64_reference(spec):
    model, params = loaded_model(spec, 0, "float64")
    x = _batch64(spec, 3, seed=1)
    for train, check in ((False, "eval"), (True, "train")):
        out = dk.run(model, x, train=train)
        ref = forward(spec, params, x, train=train, dtype="float64")
        assert _dtypes(out.stages.values()) == F64
        assert_all_close(out.stages, ref.stages, check, "float64", order=spec.stage_names)
        if train:
            assert sorted(out.running) == sorted(running_stat_names(spec))
            assert _dtypes(out.running.values()) == F64
            assert_all_close(out.running, ref.running, "running", "float64")
    # float32 input is cast to the model's dtype (exactly: float32 -> float64)
    out = dk.run(model, x.astype(np.float32))
    ref = forward(spec, params, x.astype(np.float32), dtype="float64")
    assert out.logits.dtype == np.float64
    assert_all_close(out.stages, ref.stages, "eval", "float64")
    # run() leaves the model as it was
    exported = dk.export_canonical(model)
    assert all(np.array_equal(exported[k], params[k]) for k in params)


# ---------------------------------------------------------------- gradients, SGD
@requires_tensorflow
@pytest.mark.parametrize("spec, memory_efficient", [(TINY_BC, False), (TINY_D2L, False),
                                                    (TINY_BC, True)],
                         ids=["tiny", "tiny-d2l", "tiny-remat"])
def test_float64_gradients_match_float64_reference(spec, memory_efficient):
    model, params = loaded_model(spec, 0, "float64", memory_efficient)
    x, y = _batch64(spec, 3, seed=2), _labels(spec, 3, seed=2)
    got = dk.gradients(model, x, y)
    ref = ref_gradients(spec, params, x, y, dtype="float64")
    assert isinstance(got.loss, float)
    assert_close(got.loss, ref.loss, "grad", "float64")
    assert list(got.params) == trainable_names(spec)
    assert _dtypes(got.params.values()) == F64 and got.input.dtype == np.float64
    _assert_grads_close(got.params, ref.params, spec)
    assert_close(got.input, ref.input, "grad", "float64")


@requires_tensorflow
def test_float64_gradients_of_a_deep_net_match_float64_reference():
    """DenseNet-BC-100 (48 dense layers), where float32 gradients are not determined
    to the float32 tolerance by the weights: in float64 they are, to 1e-10."""
    spec = get_spec("densenet_bc_100_k12")
    model, params = loaded_model(spec, 0, "float64")
    x, y = _batch64(spec, 2, seed=3), _labels(spec, 2, seed=3)
    got = dk.gradients(model, x, y)
    ref = ref_gradients(spec, params, x, y, dtype="float64")
    assert_close(got.loss, ref.loss, "grad", "float64")
    _assert_grads_close(got.params, ref.params, spec)
    assert_close(got.input, ref.input, "grad", "float64")


#: Not representable in float32 (SGD_DEFAULTS are powers of two, which are): a learning
#: rate or momentum rounded to float32 on its way into Keras's SGD shows up here.
INEXACT_SGD = {"lr": 0.01, "momentum": 0.9}


@requires_tensorflow
@pytest.mark.parametrize("spec, sgd", [(TINY_BC, INEXACT_SGD), (TINY_D2L, INEXACT_SGD),
                                       (DEEP, SGD_DEFAULTS)], ids=["tiny", "tiny-d2l", "deep"])
def test_float64_train_steps_follow_float64_reference_trajectory(spec, sgd):
    """Three SGD steps; on DenseNet-40 the float32 trajectory is ill-conditioned
    (docs/parity.md), the float64 one agrees to rounding."""
    params = init_params(spec, 5, nontrivial_bn=True, dtype="float64")
    n = 2 if spec is DEEP else 4
    batches = [(_batch64(spec, n, seed=10 + i), _labels(spec, n, seed=10 + i)) for i in range(3)]
    model = dk.build(spec, dtype="float64")
    dk.load_canonical(model, params)
    losses = dk.train_steps(model, batches, **sgd)
    ref_losses, ref_params = ref_train_steps(spec, params, batches, dtype="float64", **sgd)
    assert all(isinstance(loss, float) for loss in losses)
    assert_close(np.array(losses), np.array(ref_losses), "trajectory", "float64")
    # every parameter and running statistic, in the canonical (PyTorch) convention
    exported = dk.export_canonical(model)
    assert _dtypes(exported.values()) == F64
    assert_all_close(exported, ref_params, "trajectory", "float64")
    # and the updates themselves, relative to their own size: INEXACT_SGD rounded to
    # float32 moves them by 2e-8 (conv biases: zero gradient, no update, see
    # _assert_grads_close)
    biases = {p.name for p in param_table(spec) if p.kind == "conv_bias"}
    moved = [k for k in trainable_names(spec) if k not in biases]
    assert_all_close({k: exported[k] - params[k] for k in moved},
                     {k: ref_params[k] - params[k] for k in moved}, "trajectory", "float64")


# ---------------------------------------------------------------- export / load / save
@requires_tensorflow
def test_float64_export_load_is_bit_exact_and_casts():
    spec = TINY_D2L
    p64 = init_params(spec, 7, nontrivial_bn=True, dtype="float64")
    model = dk.build(spec, dtype="float64")
    dk.load_canonical(model, p64)
    exported = dk.export_canonical(model)
    assert list(exported) == [p.name for p in param_table(spec)]
    assert _dtypes(exported.values()) == F64
    assert_all_close(exported, p64, "copy", "float64")
    assert all(np.array_equal(exported[k], p64[k]) for k in p64)  # bit for bit
    # float32 parameters into a float64 model: exactly widened, exported as float64
    p32 = init_params(spec, 8, nontrivial_bn=True)
    dk.load_canonical(model, p32)
    exported = dk.export_canonical(model)
    assert _dtypes(exported.values()) == F64
    assert all(np.array_equal(exported[k], p32[k].astype(np.float64)) for k in p32)
    # float64 parameters into a float32 model: rounded, exported as float32
    model32 = dk.build(spec)
    dk.load_canonical(model32, p64)
    exported = dk.export_canonical(model32)
    assert _dtypes(exported.values()) == {np.dtype(np.float32)}
    assert all(np.array_equal(exported[k], p64[k].astype(np.float32)) for k in p64)


@requires_tensorflow
def test_float64_checkpoint_loads_as_a_float64_model(tmp_path):
    spec = TINY_D2L
    params = init_params(spec, 12, nontrivial_bn=True, dtype="float64")
    model = dk.build(spec, dtype="float64")
    dk.load_canonical(model, params)
    path = dk.save_checkpoint(model, tmp_path / "tiny64.safetensors")
    loaded = dk.load_checkpoint(path)
    assert loaded.dtype_policy.name == "float64"
    exported = dk.export_canonical(loaded)
    assert all(exported[k].dtype == np.float64 and np.array_equal(exported[k], params[k])
               for k in params)
    assert dk.load_checkpoint(path, dtype="float32").dtype_policy.name == "float32"


@requires_tensorflow
def test_float64_model_saved_as_keras_stays_float64(tmp_path):
    spec = TINY_BC
    model = dk.build(spec, dtype="float64", memory_efficient=True)
    params = init_params(spec, 9, nontrivial_bn=True, dtype="float64")
    dk.load_canonical(model, params)
    path = tmp_path / "tiny64.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, dk.DenseNet) and loaded.spec == spec
    assert loaded.dtype_policy.name == "float64"
    assert {layer.dtype_policy.name for layer in loaded._flatten_layers()} == {"float64"}
    assert {v.dtype for v in loaded.variables} == {"float64"}
    exported = dk.export_canonical(loaded)
    assert all(exported[k].dtype == np.float64 and np.array_equal(exported[k], params[k])
               for k in params)
    x = _batch64(spec, 2, seed=11)
    a, b = dk.run(loaded, x).logits, dk.run(model, x).logits
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    # and the config itself carries the policy
    assert dk.DenseNet.from_config(model.get_config()).dtype_policy.name == "float64"


# ---------------------------------------------------------------- JAX
@requires_jax
def test_float64_is_refused_under_jax_without_x64():
    import jax

    if jax.config.jax_enable_x64:
        pytest.skip("JAX's 64-bit mode is on in this process")
    with pytest.raises(RuntimeError, match=r"JAX_ENABLE_X64=1.*KERAS_BACKEND=tensorflow"):
        dk.build(TINY_BC, dtype="float64")
    # a float64 model made with the class itself is refused at the runtime boundary
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(RuntimeError, match="JAX_ENABLE_X64=1"):
        dk.run(dk.DenseNet(TINY_BC, dtype="float64"), x)
    assert dk.run(dk.build(TINY_BC, dtype="float32"), x).logits.dtype == np.float32


@requires_jax
def test_float64_is_refused_under_jax_even_with_x64_while_keras_promotes_to_float32():
    """Why 64-bit mode is not enough with Keras 3.15: under JAX its type promotion maps
    float64 to float32, and a float64 BatchNormalization then computes in float32."""
    import jax

    with jax.enable_x64(True):
        if keras.backend.result_type("float64", "float32") == "float64":
            pytest.skip("this Keras promotes float64 to float64 under JAX")
        with pytest.raises(RuntimeError, match=r"promotes float64 to float32.*BatchNormalization"):
            dk.build(TINY_BC, dtype="float64")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 4, 4, 3))
        bn = keras.layers.BatchNormalization(epsilon=1e-5, dtype="float64")
        bn.build(x.shape)
        variance = rng.uniform(0.5, 2.0, 3)
        bn.moving_variance.assign(variance)
        y = np.asarray(bn(x, training=False))
        assert y.dtype == np.float64 and bn.moving_variance.value.dtype == np.float64
        error = np.max(np.abs(y - x / np.sqrt(variance + 1e-5))) / np.max(np.abs(y))
        assert error > 1e-9  # float32 arithmetic behind float64 arrays
