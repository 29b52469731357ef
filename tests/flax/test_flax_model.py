"""Flax-specific behaviour: the skeleton's parts and canonical child names, explicit
padding vs 'SAME', BatchNorm conventions and train/eval, a model left unchanged by
run/gradients, remat equivalence through a checkpoint, dropout statistics, gradients,
SGD steps, checkpoints, devices, bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax_cases import make_input, tiny_spec

from densenet_multi import checkpoint, reference
from densenet_multi import flax as backend
from densenet_multi.flax import DenseBlock, DenseLayer, DenseNet, Transition
from densenet_multi.flax.convert import ATTRIBUTES
from densenet_multi.layouts import nchw_to_nhwc, nhwc_to_nchw
from densenet_multi.params import (
    ParameterError,
    init_params,
    module_table,
    param_table,
    trainable_names,
)
from densenet_multi.reference import softmax_cross_entropy
from densenet_multi.spec import InputError, get_spec
from densenet_multi.testing import assert_all_close, assert_close, compare


@pytest.fixture(scope="module")
def tiny():
    """A loaded tiny DenseNet-BC (ImageNet stem) and a 16x16 batch."""
    spec = tiny_spec()
    params = init_params(spec, seed=3, nontrivial_bn=True)
    model = backend.build(spec)
    backend.load_canonical(model, params)
    return spec, params, model, make_input(spec, 16, 3, seed=5)


def _batch_stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.array(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))]


def _everything(model: nnx.Module) -> dict:
    """Every array of the model's state (parameters, running statistics, RNG keys and
    counters) by path, as numpy, and its train/eval mode."""
    arrays = {path: np.array(jax.random.key_data(v.get_value())
                             if isinstance(v, nnx.RngKey) else v.get_value())
              for path, v in nnx.to_flat_state(nnx.state(model))}
    modes = [m.use_running_average for _, m in nnx.iter_graph(model)
             if isinstance(m, nnx.BatchNorm)]
    return {"arrays": arrays, "modes": modes}


def _same(a: dict, b: dict) -> bool:
    return a["modes"] == b["modes"] and a["arrays"].keys() == b["arrays"].keys() and all(
        np.array_equal(a["arrays"][k], b["arrays"][k]) for k in a["arrays"])


# ---------------------------------------------------------------------- the skeleton
def test_parts_are_the_textbook_parts():
    """The same calls as in every backend: a 2-layer block 3 -> 23 channels (k = 10) whose
    layers return their 10 new maps only, and a transition to 10 channels that halves
    the size."""
    spec = tiny_spec(growth_rate=10, bn_size=None)
    rngs = nnx.Rngs(0)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    block = DenseBlock(spec, 3, 2, rngs=rngs)
    assert block(x).shape == (2, 8, 8, 23)
    assert DenseLayer(spec, 13, rngs=rngs)([x, jnp.zeros((2, 8, 8, 10))]).shape == (2, 8, 8, 10)
    transition = Transition(spec, 23, 10, rngs=rngs)
    assert transition(block(x)).shape == (2, 4, 4, 10)
    assert {"norm", "conv", "pool"} <= set(vars(transition))
    bottleneck = DenseLayer(tiny_spec(), 8, rngs=rngs)
    assert {"norm1", "conv1", "norm2", "conv2"} <= set(vars(bottleneck))
    assert not {"norm", "conv"} & set(vars(bottleneck))


def test_state_paths_are_the_canonical_names(tiny):
    """The module tree carries torchvision's names: every Param and BatchStat path, with
    its NNX variable name mapped back, is a canonical parameter name, and all are there."""
    spec, _, model, _ = tiny
    back = {(kind, nnx_name): attr for (kind, attr), nnx_name in ATTRIBUTES.items()}
    kind_of = {ref.prefix: ref.kind for ref in module_table(spec)}
    names = []
    for path, _ in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
        prefix = ".".join(str(p) for p in path[:-1])
        names.append(f"{prefix}.{back[(kind_of[prefix], path[-1])]}")
    assert sorted(names) == sorted(p.name for p in param_table(spec))
    order = list(model._order)
    assert order[:4] == ["conv0", "norm0", "relu0", "pool0"] and order[-1] == "norm5"
    assert [n for n in order if n in spec.stage_parts] == list(spec.stage_parts)


def test_build_holds_the_canonical_seeded_weights():
    """build(spec, seed=s) loads params.init_params(spec, s): the same weights as every
    other backend's build, bit for bit, in float32 and float64."""
    spec = tiny_spec()
    for dtype in ("float32", "float64"):
        got = backend.export_canonical(backend.build(spec, seed=3, dtype=dtype))
        want = init_params(spec, 3, dtype=dtype)
        assert list(got) == list(want)
        assert all(got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])
                   for k in want), dtype


# ---------------------------------------------------------------------- padding
def test_explicit_padding_matches_reference_where_same_does_not():
    """Flax/XLA 'SAME' pads the 7x7/2 stem conv (2, 3) and the 3x3/2 max-pool (0, 1) on
    an even input; the spec's symmetric (3, 3) and (1, 1) are the reference network."""
    spec = get_spec("d2l")
    params = init_params(spec, seed=0, nontrivial_bn=True)
    model = backend.build(spec)
    backend.load_canonical(model, params)
    x = make_input(spec, 32, 2)
    xj = jnp.asarray(nchw_to_nhwc(x))
    want_conv = reference.conv2d(x, params["features.conv0.weight"], params["features.conv0.bias"],
                                 spec.stem_conv)

    conv0 = model.features["conv0"]
    ours = nhwc_to_nchw(np.asarray(conv0(xj)))
    assert_close(ours, want_conv, "eval", name="stem conv, explicit padding")

    same = nnx.clone(conv0)
    same.padding = "SAME"
    theirs = nhwc_to_nchw(np.asarray(same(xj)))
    assert theirs.shape == want_conv.shape  # same shape, different network
    assert compare("SAME", theirs, want_conv, 0).rel > 0.1

    # max-pool: explicit -inf padding vs 'SAME', on signed input (where zero padding
    # would also be wrong); the reference pads with -inf like PyTorch.
    pool = spec.stem_pool
    want_pool = reference.max_pool(want_conv, pool)
    window, strides = (pool.kernel, pool.kernel), (pool.stride, pool.stride)
    ours_pool = nnx.max_pool(jnp.asarray(nchw_to_nhwc(want_conv)), window, strides, pool.pads)
    assert_close(nhwc_to_nchw(np.asarray(ours_pool)), want_pool, "eval", name="max-pool")
    same_pool = nnx.max_pool(jnp.asarray(nchw_to_nhwc(want_conv)), window, strides, "SAME")
    assert compare("SAME pool", nhwc_to_nchw(np.asarray(same_pool)), want_pool, 0).rel > 0.1
    assert np.min(want_conv) < 0 and np.max(want_pool) > 0


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - jnp.arange(16.0).reshape(1, 4, 4, 1)  # all negative
    y = nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    assert float(jnp.max(y)) == -1.0  # a zero pad would have won every border window


# ---------------------------------------------------------------------- BatchNorm
def test_batch_norm_conventions(tiny):
    spec, _, model, _ = tiny
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    assert len(norms) == sum(1 for p in trainable_names(spec) if p.endswith("norm5.weight")
                             or ".norm" in p and p.endswith(".weight"))
    for bn in norms:
        assert bn.momentum == pytest.approx(0.9)  # PyTorch's 0.1
        assert bn.epsilon == spec.bn_eps
        assert bn.use_fast_variance is False
    model.eval()
    assert all(bn.use_running_average for bn in norms)
    model.train()
    assert not any(bn.use_running_average for bn in norms)
    model.eval()


def test_fast_variance_would_lose_precision():
    """Why use_fast_variance=False: E[x^2] - E[x]^2 cancels in float32 when |mean| >> std."""
    x = (1000.0 + jax.random.normal(jax.random.key(0), (64, 4, 4, 3))).astype(jnp.float32)
    want = np.var(np.asarray(x, np.float64), axis=(0, 1, 2))
    errs = {}
    for fast in (True, False):
        bn = nnx.BatchNorm(3, use_fast_variance=fast, momentum=0.0, rngs=nnx.Rngs(0))
        bn(x)  # momentum 0: the running variance becomes the batch variance
        errs[fast] = np.max(np.abs(np.asarray(bn.var.get_value()) - want) / want)
    assert errs[False] < 1e-4 < errs[True]


def test_run_and_gradients_leave_the_model_unchanged(tiny):
    """run (eval and train mode) and gradients work on a split copy of the state: every
    parameter, running statistic, RNG key and counter, and the mode stay as they were,
    while the train-mode pass does report changed statistics."""
    spec, params, model, x = tiny
    backend.load_canonical(model, params)
    dropout = backend.build(tiny_spec(drop_rate=0.2))  # RNG counters that would advance
    for m, mode in ((model, "eval"), (model, "train"), (dropout, "eval")):
        getattr(m, mode)()
        before = _everything(m)
        backend.run(m, x, train=False)
        out = backend.run(m, x, train=True)
        backend.gradients(m, x, np.array([0, 1, 2]))
        assert _same(before, _everything(m)), mode
        stats = [p.name for p in param_table(spec) if not p.trainable]
        assert not any(np.array_equal(out.extras["flax_running"][k], v)
                       for k, v in zip(stats, _batch_stats(m), strict=True))
    model.eval()


def test_train_steps_update_the_model_and_keep_its_mode(tiny):
    spec, params, model, x = tiny
    backend.load_canonical(model, params)
    model.eval()
    before = _batch_stats(model)
    backend.train_steps(model, [(x, np.array([0, 1, 2]))], lr=0.01, momentum=0.9)
    assert all(bn.use_running_average for _, bn in nnx.iter_graph(model)
               if isinstance(bn, nnx.BatchNorm))
    assert not any(np.array_equal(a, b) for a, b in zip(before, _batch_stats(model), strict=True))
    backend.load_canonical(model, params)


def test_gradients_and_train_steps_compile_the_backward_once(tiny):
    """The parity harness asks a network for its gradients and then for a trajectory at
    the same shapes: one compiled backward pass (most of a network's compile time)
    serves both, whatever mode the model is in when it is asked."""
    from densenet_multi.flax import runtime

    spec, params, model, x = tiny
    labels = np.array([1, 0, 2])
    backend.load_canonical(model, params)
    model.eval()
    backend.gradients(model, x, labels)
    compiled = runtime._loss_and_grads._cache_size()
    backend.train_steps(model, [(x, labels)], lr=0.01, momentum=0.9)
    model.train()
    backend.gradients(model, x, labels)
    model.eval()
    assert runtime._loss_and_grads._cache_size() == compiled
    backend.load_canonical(model, params)


def test_memory_efficient_step_needs_less_memory_by_xlas_own_count():
    """XLA's buffer assignment for the compiled training step (memory_analysis, the same
    on every machine): a memory-efficient model's temporaries are at least 30% smaller
    on a 12-layer block at 32x32, batch 8. (jax.checkpoint / nnx.remat of the same
    sub-block compiled to exactly the plain step's buffers on the CPU.)"""
    from densenet_multi.flax import runtime

    spec = tiny_spec(block_config=(12,), growth_rate=8, num_init_features=16, bn_size=4)
    x, y = jnp.zeros((8, 32, 32, 3)), jnp.zeros((8,), jnp.int32)
    temp = {}
    for me in (False, True):
        model = backend.build(spec, memory_efficient=me)
        model.train()
        graphdef, state = nnx.split((model, runtime.make_optimizer(model, 0.01, 0.9)))
        compiled = runtime._fused_step.lower(graphdef, state, x, y).compile()
        temp[me] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[True] <= 0.7 * temp[False], temp


def test_fused_train_step_equals_train_steps(tiny):
    """The fused, donating step (the benchmark's and fit's fast path) and the contract's
    train_steps (gradients' program + the optax update) take the same two steps:
    same losses, parameters and running statistics."""
    from densenet_multi.flax import runtime

    spec, params, model, x = tiny
    labels = np.array([2, 1, 0])
    lr, mu = 0.05, 0.9
    backend.load_canonical(model, params)
    losses = backend.train_steps(model, [(x, labels), (x, labels)], lr=lr, momentum=mu)
    fused = backend.build(spec)
    backend.load_canonical(fused, params)
    fused.train()
    optimizer = runtime.make_optimizer(fused, lr, mu)
    xj, yj = jnp.asarray(nchw_to_nhwc(x)), jnp.asarray(labels, jnp.int32)
    with jax.default_matmul_precision("highest"):
        fused_losses = [float(runtime._train_step(fused, optimizer, xj, yj)) for _ in range(2)]
    fused.eval()
    assert fused_losses == pytest.approx(losses, rel=1e-6)
    assert_all_close(backend.export_canonical(fused), backend.export_canonical(model),
                     "trajectory")
    backend.load_canonical(model, params)


# ---------------------------------------------------------------------- remat
@pytest.mark.parametrize("bottleneck", [True, False], ids=["bottleneck", "plain"])
def test_memory_efficient_loads_a_plain_checkpoint_same_outputs_and_gradients(
        bottleneck, tmp_path):
    """A checkpoint saved from a plain model loads into a memory-efficient one (the option
    is not part of the spec) and gives the same outputs, running statistics and
    gradients; the jaxpr holds one remat per dense layer exactly when asked for."""
    spec = tiny_spec(bn_size=2 if bottleneck else None, conv_bias=not bottleneck)
    params = init_params(spec, seed=4, nontrivial_bn=True)
    x = make_input(spec, 16, 3, seed=1)
    labels = np.array([0, 3, 4])
    plain = backend.build(spec)
    backend.load_canonical(plain, params)
    path = backend.save_checkpoint(plain, tmp_path / "plain.safetensors")
    outs = {}
    for me in (False, True):
        model = plain if not me else backend.load_checkpoint(path, memory_efficient=True)
        outs[me] = (backend.run(model, x, train=True), backend.gradients(model, x, labels))
        model.train()
        graphdef, state = nnx.split(model)
        jaxpr = str(jax.make_jaxpr(lambda s, x, g=graphdef: nnx.merge(g, s)(x))(
            state, jnp.asarray(nchw_to_nhwc(x))))
        # the recomputed sub-block (a custom_vjp, see DenseLayer) is there once per dense
        # layer exactly when asked for
        assert jaxpr.count("custom_vjp_call[") == (sum(spec.block_config) if me else 0)
    (r0, g0), (r1, g1) = outs[False], outs[True]
    assert_all_close(r1.stages, r0.stages, "train")
    assert_all_close(r1.running, r0.running, "running")
    assert g1.loss == pytest.approx(g0.loss, rel=1e-6)
    # A conv bias feeding a train-mode BN has an exactly zero gradient (BN removes any
    # per-channel constant): what is left is rounding noise, compared on the global scale.
    bias = {k for k in g0.params if k.endswith(".bias") and ".conv" in k}
    scale = max(float(np.max(np.abs(g))) for g in g0.params.values())
    for k in bias:
        assert np.max(np.abs(g0.params[k])) < 1e-6 * scale
        assert np.max(np.abs(g1.params[k])) < 1e-6 * scale
    rest = [k for k in g0.params if k not in bias]
    assert_all_close({k: g1.params[k] for k in rest}, {k: g0.params[k] for k in rest}, "grad")
    assert_close(g1.input, g0.input, "grad")
    assert all(np.any(g1.params[k] != 0) for k in rest), "a parameter got no gradient"


# ---------------------------------------------------------------------- dropout
def test_dropout_statistics():
    spec = tiny_spec(drop_rate=0.3, bn_size=None)
    layer = DenseLayer(spec, 16, rngs=nnx.Rngs(params=0, dropout=1))
    x = [jax.random.normal(jax.random.key(2), (8, 8, 8, 16))]
    layer.train()
    call = nnx.jit(lambda layer, x: layer(x))
    # the same BN-ReLU-conv without dropout
    kept = nnx.jit(lambda layer, x: layer.conv(nnx.relu(layer.norm(x))))(layer, x[0])
    y1, y2 = call(layer, x), call(layer, x)
    for y in (y1, y2):
        y = np.asarray(y)
        dropped = y == 0
        frac = dropped.mean()
        n = y.size  # 8*8*8*4 = 2048 draws: 0.3 +- 5 sigma
        assert abs(frac - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
        np.testing.assert_allclose(y[~dropped], np.asarray(kept)[~dropped] / 0.7, rtol=1e-5)
    assert not np.array_equal(np.asarray(y1) == 0, np.asarray(y2) == 0)  # the stream advances
    layer.eval()
    assert not np.any(np.asarray(call(layer, x)) == 0)


def test_dropout_is_seeded():
    spec = tiny_spec(drop_rate=0.5)
    x = make_input(spec, 16, 2)
    outs = []
    for _ in range(2):
        model = backend.build(spec, seed=7)
        outs.append(backend.run(model, x, train=True).logits)
    np.testing.assert_array_equal(outs[0], outs[1])


# ---------------------------------------------------------------------- gradients, SGD
def _loss(spec, params, x, labels):
    out = reference.forward(spec, params, x.astype(np.float64), train=True, dtype="float64")
    return softmax_cross_entropy(out.logits, labels)


def test_gradients_match_finite_differences_of_the_reference(tiny):
    """Directional derivatives of the reference loss (float64, central differences) along
    a random direction in each parameter and in the input: catches a wrong layout or name."""
    spec, params, model, x = tiny
    labels = np.array([1, 0, 4])
    backend.load_canonical(model, params)
    before = backend.export_canonical(model)
    g = backend.gradients(model, x, labels)
    after = backend.export_canonical(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # functional
    assert list(g.params) == trainable_names(spec)
    assert g.loss == pytest.approx(_loss(spec, params, x, labels), rel=1e-5)
    rng = np.random.default_rng(0)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    eps = 1e-5
    fd, ad = {}, {}
    for name in [*g.params, "input"]:
        base = x.astype(np.float64) if name == "input" else p64[name]
        d = rng.standard_normal(base.shape)
        d /= np.linalg.norm(d)

        def at(t, name=name, base=base, d=d):
            if name == "input":
                return _loss(spec, p64, base + t * d, labels)
            return _loss(spec, {**p64, name: base + t * d}, x, labels)

        fd[name] = np.array([(at(eps) - at(-eps)) / (2 * eps)])
        grad = g.input if name == "input" else g.params[name]
        ad[name] = np.array([np.sum(grad.astype(np.float64) * d)])
    # One comparison over all directional derivatives, relative to the largest.
    names = list(fd)
    assert_close(np.concatenate([ad[k] for k in names]), np.concatenate([fd[k] for k in names]),
                 "grad", name="directional derivatives")


def test_train_steps_follow_the_sgd_momentum_update(tiny):
    """Two steps of optax SGD + momentum equal PyTorch's update rule applied by hand
    to our own gradients."""
    spec, params, model, x = tiny
    labels = np.array([2, 2, 0])
    lr, mu = 0.05, 0.9
    backend.load_canonical(model, params)
    g1 = backend.gradients(model, x, labels)
    losses = backend.train_steps(model, [(x, labels), (x, labels)], lr=lr, momentum=mu)
    assert losses[0] == pytest.approx(g1.loss, rel=1e-6)
    # By hand: v1 = g1, p1 = p0 - lr*v1; v2 = mu*v1 + g2, p2 = p1 - lr*v2.
    check = backend.build(spec)
    backend.load_canonical(check, params)
    backend.train_steps(check, [(x, labels)], lr=lr, momentum=mu)
    p1 = backend.export_canonical(check)
    g2 = backend.gradients(check, x, labels)
    assert losses[1] == pytest.approx(g2.loss, rel=1e-5)
    want = {k: p1[k] - lr * (mu * g1.params[k] + g2.params[k]) for k in g1.params}
    got = backend.export_canonical(model)
    assert_all_close({k: got[k] for k in want}, want, "trajectory")
    assert losses[1] < losses[0]
    backend.load_canonical(model, params)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "shape, dtype, match",
    [
        ((3, 16, 16), np.float32, "4-d"),
        ((2, 16, 16, 3), np.float32, "looks like an NHWC"),
        ((2, 1, 16, 16), np.float32, r"\(N, 3, H, W\)"),
        ((2, 3, 16, 16), np.int64, "dtype"),
        ((2, 3, 4, 4), np.float32, "too small"),
        ((0, 3, 16, 16), np.float32, "non-empty"),
    ],
)
def test_bad_inputs_raise_input_error(tiny, shape, dtype, match):
    spec, _, model, _ = tiny
    with pytest.raises(InputError, match=match):
        backend.run(model, np.zeros(shape, dtype))


def test_float64_input_is_computed_in_float32(tiny):
    spec, params, model, x = tiny
    backend.load_canonical(model, params)
    a = backend.run(model, x).logits
    b = backend.run(model, x.astype(np.float64)).logits
    assert b.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_bad_labels_raise_input_error(tiny):
    spec, _, model, x = tiny
    with pytest.raises(InputError, match="labels"):
        backend.gradients(model, x, np.array([0, 1, spec.num_classes]))
    with pytest.raises(InputError, match="integer labels"):
        backend.gradients(model, x, np.array([0.0, 1.0, 2.0]))


def test_load_validates_everything_and_copies_nothing(tiny):
    spec, params, model, _ = tiny
    backend.load_canonical(model, params)
    bad = {k: v + 1 for k, v in params.items()}
    del bad["features.norm5.running_var"]
    bad["classifier.weight"] = np.zeros((3, 3), np.float32)
    bad["features.bogus"] = np.zeros(1, np.float32)
    with pytest.raises(ParameterError) as e:
        backend.load_canonical(model, bad)
    msg = str(e.value)
    assert "norm5.running_var" in msg and "classifier.weight" in msg and "bogus" in msg
    now = backend.export_canonical(model)
    assert all(np.array_equal(now[k], params[k]) for k in params)


def test_builds_are_independent():
    spec = tiny_spec()
    a, b = backend.build(spec, seed=0), backend.build(spec, seed=0)
    pa = backend.export_canonical(a)
    backend.load_canonical(b, init_params(spec, seed=9))
    assert all(np.array_equal(pa[k], v) for k, v in backend.export_canonical(a).items())
    assert a.features["conv0"].kernel is not b.features["conv0"].kernel


def test_devices_and_device_selection():
    assert backend.devices()[0] == "cpu"
    assert all(d == "cpu" or d == "cuda" or d.startswith("cuda:") for d in backend.devices())
    spec = tiny_spec()
    model = backend.build(spec, device="cpu")
    kernel = model.features["conv0"].kernel.get_value()
    assert next(iter(kernel.devices())).platform == "cpu"
    for name in ("tpu", "gpu", "cuda:x"):  # one vocabulary: "gpu" is JAX's word, not ours
        with pytest.raises(ValueError, match="unknown device"):
            backend.build(spec, device=name)
    if "cuda" not in backend.devices():
        with pytest.raises(ValueError, match="not available"):
            backend.build(spec, device="cuda")
    else:  # pragma: no cover - CPU-only CI
        x = make_input(spec, 16, 2)
        p = init_params(spec, seed=0, nontrivial_bn=True)
        outs = []
        for dev in ("cpu", "cuda"):
            m = backend.build(spec, device=dev)
            backend.load_canonical(m, p)
            outs.append(backend.run(m, x).logits)
        assert_close(outs[1], outs[0], "device")


def test_constructors_pass_spec_changes_and_flax_extras():
    import densenet_multi.flax.densenet as mod

    # spec changes and framework extras pass through the constructors (a short net)
    model = nnx.eval_shape(lambda: mod.densenet121(num_classes=7, block_config=(1, 1),
                                                   memory_efficient=True,
                                                   rngs=nnx.Rngs(params=1, dropout=2)))
    assert isinstance(model, DenseNet) and model.spec.num_classes == 7
    assert model.spec.growth_rate == 32 and model.spec.bn_size == 4
    layer = model.features["denseblock1"].denselayer1
    assert layer.memory_efficient and layer.has_bottleneck
    model = nnx.eval_shape(lambda: mod.from_spec("d2l", num_classes=3))
    assert model.spec.in_channels == 1 and model.classifier.out_features == 3


def test_checkpoint_round_trip(tmp_path, tiny):
    spec, params, model, x = tiny
    backend.load_canonical(model, params)
    path = backend.save_checkpoint(model, tmp_path / "tiny.safetensors")
    with pytest.raises(FileExistsError):
        backend.save_checkpoint(model, path)
    loaded = backend.load_checkpoint(path)
    assert loaded.spec == spec
    got = backend.export_canonical(loaded)
    assert all(np.array_equal(got[k], v) for k, v in params.items())
    np.testing.assert_array_equal(backend.run(loaded, x).logits, backend.run(model, x).logits)
    # a float64 model writes a float64 file, which loads as float64 (or as asked)
    m64 = backend.build(spec, dtype="float64", seed=5)
    p64 = backend.save_checkpoint(m64, tmp_path / "tiny64.safetensors")
    assert checkpoint.load(p64, dtype=None)[0]["classifier.weight"].dtype == np.float64
    assert backend.export_canonical(backend.load_checkpoint(p64))["classifier.weight"].dtype \
        == np.float64
    assert backend.load_checkpoint(p64, dtype="float32").param_dtype == np.float32
