"""float64 models (``build(spec, dtype="float64")``): forward, running statistics,
gradients and an SGD trajectory against the float64 NumPy reference at the float64
tolerances; bit-exact float64 export/load; the x64 handling (the backend enables
JAX's 64-bit mode itself; a direct call without it gets JAX's truncation warning);
float32 models unchanged beside float64 ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax_cases import tiny_spec

from densenet_multi import flax as backend
from densenet_multi import reference, reference_grad
from densenet_multi.backend import SGD_DEFAULTS
from densenet_multi.data import load_digits_dataset
from densenet_multi.flax import DenseNet, train
from densenet_multi.layouts import nchw_to_nhwc
from densenet_multi.params import init_params, module_table, running_stat_names, trainable_names
from densenet_multi.testing import assert_all_close, assert_close, tolerance

#: Two tiny nets between them cover every layer kind: DenseNet-BC with the ImageNet
#: stem (BN + max-pool, 1x1 bottlenecks), and a plain DenseNet with the CIFAR stem and
#: conv biases. At 16x16 the ImageNet stem's last block is 2x2, so train-mode BN there
#: averages N*4 values per channel.
SPECS = {
    "bc-imagenet": tiny_spec(),
    "plain-cifar-bias": tiny_spec(bn_size=None, conv_bias=True, stem="cifar", name="tiny-plain"),
}
#: Compilation dominates on a small CPU: the single-spec tests use this one, at the
#: shapes of test_flax_model's ``tiny`` fixture, so that they share compiled functions.
TINY = SPECS["bc-imagenet"]
SIZE, BATCH = 16, 3


def _x(spec, batch: int = BATCH, seed: int = 0) -> np.ndarray:
    """A float64 batch (not merely float32 values widened)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((batch, spec.in_channels, SIZE, SIZE))


def _labels(spec, batch: int = BATCH, seed: int = 0) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(seed + 100)).integers(0, spec.num_classes, batch)


def _model64(spec, params):
    model = backend.build(spec, dtype="float64")
    backend.load_canonical(model, params)
    return model


_CASES: dict[str, tuple] = {}


def _case(name: str):
    """(spec, float64 canonical parameters, a loaded float64 model), built once per spec."""
    if name not in _CASES:
        spec = SPECS[name]
        params = init_params(spec, seed=11, nontrivial_bn=True, dtype="float64")
        _CASES[name] = spec, params, _model64(spec, params)
    return _CASES[name]


@pytest.fixture(params=sorted(SPECS))
def case64(request):
    return _case(request.param)


@pytest.fixture
def tiny64():
    return _case("bc-imagenet")


def _all_dtypes(tree) -> set[str]:
    return {str(np.asarray(v).dtype) for v in tree.values()}


# ---------------------------------------------------------------------- forward
def test_float64_forward_matches_float64_reference(case64):
    spec, params, model = case64
    x = _x(spec)
    backend.load_canonical(model, params)
    ev = backend.run(model, x, train=False)
    assert _all_dtypes(ev.stages) == {"float64"} and ev.logits.dtype == np.float64
    ref = reference.forward(spec, params, x, train=False, dtype="float64")
    assert_all_close(ev.stages, ref.stages, "eval", "float64", order=spec.stage_names)
    assert_close(ev.logits, ref.logits, "eval", "float64", name="logits")

    tr = backend.run(model, x, train=True)
    ref_tr = reference.forward(spec, params, x, train=True, dtype="float64")
    assert _all_dtypes(tr.stages) == {"float64"}
    assert_all_close(tr.stages, ref_tr.stages, "train", "float64", order=spec.stage_names)
    # running statistics: float64 in the model and converted to the canonical convention
    assert list(tr.running) == running_stat_names(spec)
    assert _all_dtypes(tr.running) == _all_dtypes(tr.extras["flax_running"]) == {"float64"}
    assert_all_close(tr.running, ref_tr.running, "running", "float64")
    backend.load_canonical(model, params)


def test_float64_model_casts_float32_input_up(case64):
    spec, params, model = case64
    x32 = _x(spec).astype(np.float32)
    backend.load_canonical(model, params)
    a = backend.run(model, x32).logits
    b = backend.run(model, x32.astype(np.float64)).logits
    assert a.dtype == b.dtype == np.float64
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------- gradients
def test_float64_gradients_match_float64_reference(case64):
    spec, params, model = case64
    x, y = _x(spec, seed=1), _labels(spec, seed=1)
    backend.load_canonical(model, params)
    got = backend.gradients(model, x, y)
    ref = reference_grad.gradients(spec, params, x, y, dtype="float64")
    assert list(got.params) == trainable_names(spec)
    assert _all_dtypes(got.params) == {"float64"} and got.input.dtype == np.float64
    assert isinstance(got.loss, float)
    assert got.loss == pytest.approx(ref.loss, rel=tolerance("train", "float64"))
    # A conv bias feeding a train-mode BN has an exactly zero gradient: both sides hold
    # rounding noise there, so it is held to the float64 tolerance of the global scale.
    bias = [k for k in got.params if ".conv" in k and k.endswith(".bias")]
    assert bool(bias) == spec.conv_bias
    scale = max(float(np.max(np.abs(g))) for g in ref.params.values())
    for k in bias:
        assert np.max(np.abs(got.params[k])) <= tolerance("grad", "float64") * scale, k
    rest = [k for k in got.params if k not in bias]
    assert_all_close({k: got.params[k] for k in rest}, {k: ref.params[k] for k in rest},
                     "grad", "float64")
    assert_close(got.input, ref.input, "grad", "float64", name="input")


# ---------------------------------------------------------------------- training
def test_float64_train_steps_follow_reference_trajectory(tiny64):
    spec, params, model = tiny64
    batches = [(_x(spec, seed=20 + i), _labels(spec, seed=20 + i)) for i in range(3)]
    backend.load_canonical(model, params)
    losses = backend.train_steps(model, batches, **SGD_DEFAULTS)
    ref_losses, ref_params = reference_grad.train_steps(spec, params, batches, dtype="float64",
                                                        **SGD_DEFAULTS)
    assert all(isinstance(v, float) for v in losses)
    assert_close(np.array(losses), np.array(ref_losses), "trajectory", "float64", name="losses")
    got = backend.export_canonical(model)
    assert _all_dtypes(got) == {"float64"}
    # The trainable parameters and running means follow the reference; the model keeps
    # Flax's (biased) running variance, converted only by run(train=True).
    names = [k for k in got if not k.endswith(".running_var")]
    assert_all_close({k: got[k] for k in names}, {k: ref_params[k] for k in names},
                     "trajectory", "float64")
    backend.load_canonical(model, params)


def test_fit_trains_a_float64_model():
    spec = tiny_spec(in_channels=1, num_classes=10, stem="cifar", block_config=(1, 1))
    data = load_digits_dataset(size=SIZE).subset(48, 16)
    model = backend.build(spec, dtype="float64")
    history = train.fit(model, data, epochs=2, batch_size=16, lr=0.05, show_progress=False,
                        log=None)
    assert len(history) == 2 and history[-1].loss < history[0].loss
    assert _all_dtypes(backend.export_canonical(model)) == {"float64"}


# ---------------------------------------------------------------------- copy
def test_float64_export_load_round_trip_is_bit_exact(case64):
    spec, params, model = case64
    backend.load_canonical(model, params)
    out = backend.export_canonical(model)
    assert list(out) == list(params)
    for k, a in params.items():
        assert out[k].dtype == np.float64 and np.array_equal(out[k], a), k
    # float64 values that float32 cannot hold survive (no float32 detour)
    assert any(not np.array_equal(a.astype(np.float32).astype(np.float64), a)
               for a in params.values())
    assert_all_close(out, params, "copy", "float64")
    # float32 parameters are widened exactly
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    backend.load_canonical(model, p32)
    out = backend.export_canonical(model)
    assert all(out[k].dtype == np.float64 and np.array_equal(out[k], p32[k]) for k in p32)
    backend.load_canonical(model, params)


def test_float32_model_still_exports_float32():
    spec = TINY
    params = init_params(spec, seed=11, nontrivial_bn=True, dtype="float64")
    model = backend.build(spec)
    assert _all_dtypes(backend.export_canonical(model)) == {"float32"}
    backend.load_canonical(model, params)  # float64 parameters are rounded to float32
    out = backend.export_canonical(model)
    assert all(out[k].dtype == np.float32 and np.array_equal(out[k], v.astype(np.float32))
               for k, v in params.items())


# ---------------------------------------------------------------------- dtypes and x64
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int32", None, "double precision"])
def test_build_rejects_other_dtypes(dtype):
    with pytest.raises(ValueError, match=r"model dtype must be one of \('float32', 'float64'\)"):
        backend.build(TINY, dtype=dtype)


def test_build_accepts_numpy_dtypes():
    model = backend.build(TINY, dtype=np.float64)
    assert model.param_dtype == np.float64 and model.dtype == np.float64
    assert backend.build(TINY, dtype=np.dtype("float32")).param_dtype == np.float32


def test_every_layer_gets_dtype_and_param_dtype():
    """The idiomatic Flax way: dtype and param_dtype go to every nnx layer; every Param
    and BatchStat (nnx.BatchNorm alone would keep float32 statistics) is float64."""
    spec = TINY
    with jax.enable_x64(True):
        model = nnx.eval_shape(lambda: backend.from_spec(spec, dtype=jnp.float64,
                                                         param_dtype=jnp.float64))
    layers = [m for _, m in nnx.iter_graph(model)
              if isinstance(m, nnx.Conv | nnx.BatchNorm | nnx.Linear)]
    assert len(layers) == len(module_table(spec))
    assert all(m.dtype == jnp.float64 and m.param_dtype == jnp.float64 for m in layers)
    for kind in (nnx.Param, nnx.BatchStat):
        leaves = [v for _, v in nnx.to_flat_state(nnx.state(model, kind))]
        assert leaves and {str(v.get_value().dtype) for v in leaves} == {"float64"}
    # the defaults are Flax's: float32 parameters and statistics, dtype inferred
    model = nnx.eval_shape(lambda: backend.densenet121(block_config=(1, 1)))
    assert model.dtype is None and model.param_dtype is None
    leaves = [v for _, v in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))]
    assert {str(v.get_value().dtype) for v in leaves} == {"float32"}


def test_direct_use_of_a_float64_model_needs_x64(tiny64):
    """The contract functions turn x64 on themselves; the model file does not (the runtime
    boundary does), so a direct construction or call with it off gets JAX's own warning
    that float64 is truncated to float32, and under ``jax.enable_x64(True)`` a direct call
    gives run's logits."""
    spec, params, model = tiny64
    x = _x(spec)
    backend.load_canonical(model, params)
    xj = nchw_to_nhwc(x)
    model.eval()
    with jax.enable_x64(False):
        with pytest.warns(UserWarning, match="jax_enable_x64"):
            model(jnp.asarray(xj))
        with pytest.warns(UserWarning, match="jax_enable_x64"):
            DenseNet(spec, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        logits = backend.run(model, x).logits  # the contract function needs nothing
        assert not jax.config.jax_enable_x64
    with jax.enable_x64(True):
        direct = np.asarray(model(jnp.asarray(xj)))
    assert direct.dtype == logits.dtype == np.float64
    assert_close(direct, logits, "eval", "float64", name="model(x) vs run")


def test_float32_and_float64_models_side_by_side():
    """Compiled functions traced with and without x64 never serve each other: a float32
    model gives the same bits before and after a float64 one has run, and JAX's global
    config is left alone."""
    spec, p64, m64 = _case("bc-imagenet")
    x64_flag = jax.config.jax_enable_x64
    x, y = _x(spec, seed=3), _labels(spec, seed=3)
    m32 = backend.build(spec)
    backend.load_canonical(m32, p64)
    before = backend.run(m32, x).logits, backend.gradients(m32, x, y).input
    backend.load_canonical(m64, p64)
    out64 = backend.run(m64, x).logits, backend.gradients(m64, x, y).input
    after = backend.run(m32, x).logits, backend.gradients(m32, x, y).input
    assert jax.config.jax_enable_x64 == x64_flag
    for a, b in zip(before, after, strict=True):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert all(a.dtype == np.float64 for a in out64)
    # float32 vs float64 of the same weights: close at float32's tolerance, not equal
    assert_close(after[0], out64[0], "eval", "float32", name="float32 vs float64 logits")
    assert not np.array_equal(after[0], out64[0])
