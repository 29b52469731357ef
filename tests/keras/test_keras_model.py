"""Keras-specific behaviour: the parts and their constructors, padding, max-pool
padding, remat, BN conventions, the contract (seeded weights, run leaves the model,
checkpoints), serialisation, input validation, dropout, gradients, SGD, compile/fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops
from keras_cases import BACKEND, batch, loaded_model, requires_tensorflow, tiny_spec

from densenet_multi import keras as dk
from densenet_multi import layouts
from densenet_multi.keras import runtime
from densenet_multi.params import ParameterError, init_params, trainable_names
from densenet_multi.reference import (
    avg_pool,
    batch_norm,
    conv2d,
    forward,
    max_pool,
    relu,
    softmax_cross_entropy,
)
from densenet_multi.spec import InputError, get_spec
from densenet_multi.testing import assert_all_close, assert_close, compare, tolerance


def _np(t) -> np.ndarray:
    return dk.convert.to_numpy(t)


def _pool0(model, x):
    """The stem's max-pool with its explicit zero padding."""
    return model.get_layer("pool0")(model.get_layer("pool0_pad")(x))


# ---------------------------------------------------------------- the parts
def _unit_params(rng, cin: int, cout: int, k: int) -> dict[str, np.ndarray]:
    """Canonical-layout BN (non-trivial statistics) and conv weights of one BN-ReLU-conv unit."""
    p = {"norm.weight": rng.uniform(0.5, 1.5, cin), "norm.bias": rng.normal(0, 0.2, cin),
         "norm.running_mean": rng.normal(0, 0.2, cin), "norm.running_var": rng.uniform(0.5, 2, cin),
         "conv.weight": rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))}
    return {key: v.astype(np.float32) for key, v in p.items()}


def _load_unit(norm, conv, p) -> None:
    for var, key in ((norm.gamma, "norm.weight"), (norm.beta, "norm.bias"),
                     (norm.moving_mean, "norm.running_mean"),
                     (norm.moving_variance, "norm.running_var")):
        var.assign(p[key])
    conv.kernel.assign(layouts.oihw_to_hwio(p["conv.weight"]))


def _reference_unit(spec, x, p, geometry):
    y = relu(batch_norm(x, p, "norm", spec, False, None))
    return conv2d(y, p["conv.weight"], None, geometry)


def test_parts_take_the_spec_like_every_backend():
    """The textbook's transition to 10 channels and its 2-layer block 3 -> 23 channels
    (k = 10): ``Transition(spec, 23, 10)`` and ``DenseBlock(spec, 3, 2)``, the same calls
    in all four backends; built by their first call (Keras infers the input widths),
    then loaded and checked against the NumPy reference."""
    spec = tiny_spec(growth_rate=10, bn_size=None)  # plain BN-ReLU-3x3 layers
    rng = np.random.default_rng(30)
    x = rng.standard_normal((2, 23, 8, 8)).astype(np.float32)

    transition = dk.Transition(spec, 23, 10)
    assert transition(layouts.nchw_to_nhwc(x)).shape == (2, 4, 4, 10)
    p = _unit_params(rng, 23, 10, 1)
    _load_unit(transition.norm, transition.conv, p)
    ref = avg_pool(_reference_unit(spec, x, p, spec.transition_conv), spec.transition_pool)
    assert_close(layouts.nhwc_to_nchw(_np(transition(layouts.nchw_to_nhwc(x)))), ref, "eval")
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 23"):
        transition(np.zeros((2, 8, 8, 22), np.float32))

    block = dk.DenseBlock(spec, 3, 2)
    x3 = x[:, :3]
    assert block(layouts.nchw_to_nhwc(x3)).shape == (2, 8, 8, 23)
    assert [layer.name for layer in block.denselayers] == ["denselayer1", "denselayer2"]
    ps = [_unit_params(rng, cin, 10, 3) for cin in (3, 13)]
    for layer, p in zip(block.denselayers, ps, strict=True):
        _load_unit(layer.norm, layer.conv, p)
    new1 = _reference_unit(spec, x3, ps[0], spec.growth_conv)
    new2 = _reference_unit(spec, np.concatenate([x3, new1], axis=1), ps[1], spec.growth_conv)
    out = layouts.nhwc_to_nchw(_np(block(layouts.nchw_to_nhwc(x3))))
    assert_close(out, np.concatenate([x3, new1, new2], axis=1), "eval")
    # a dense layer returns its k new maps only, from a list or from one tensor
    layer2 = block.denselayers[1]
    pieces = [layouts.nchw_to_nhwc(x3), layouts.nchw_to_nhwc(new1)]
    assert_close(layouts.nhwc_to_nchw(_np(layer2(pieces))), new2, "eval")
    assert_close(layouts.nhwc_to_nchw(_np(layer2(ops.concatenate(pieces, axis=-1)))), new2, "eval")


def test_bottleneck_layer_children_are_the_canonical_names():
    spec = tiny_spec(growth_rate=6, bn_size=4)
    layer = dk.DenseLayer(spec, 5)
    assert layer(np.zeros((1, 4, 4, 5), np.float32)).shape == (1, 4, 4, 6)
    assert [v.path.split("/", 1)[1] for v in layer.trainable_variables] == [
        "norm1/gamma", "norm1/beta", "conv1/kernel", "norm2/gamma", "norm2/beta", "conv2/kernel"]
    assert layer.conv1.kernel.shape == (1, 1, 5, 24) and layer.conv2.kernel.shape == (3, 3, 24, 6)


def test_keras_infers_what_the_parts_do_not_write():
    """Keras written the Keras way: the parts holding weights write ``build`` (from the
    spec's widths, see test_keras_build.py; a Transition inherits ConvBlock's: its pool
    has none), none writes ``compute_output_shape`` (Keras traces ``call`` to infer
    shapes), and only the model has a config: the spec, serialised once; the parts are
    rebuilt from it."""
    for cls in (dk.ConvBlock, dk.DenseLayer, dk.DenseBlock, dk.DenseNet):
        assert "build" in vars(cls) and "compute_output_shape" not in vars(cls), cls
    assert not {"build", "compute_output_shape"} & set(vars(dk.Transition))
    for cls in (dk.ConvBlock, dk.DenseLayer, dk.DenseBlock, dk.Transition):
        assert not {"get_config", "from_config"} & set(vars(cls)), cls
    spec = tiny_spec()
    model = dk.from_spec(spec, memory_efficient=True)
    assert not model.built  # Keras builds on the first call (or model.build)
    config = model.get_config()
    assert set(config) == {"name", "trainable", "dtype", "spec", "memory_efficient"}
    assert config["spec"] == spec.to_dict() and config["memory_efficient"] is True
    clone = dk.DenseNet.from_config(config)
    assert clone.spec == spec and clone.memory_efficient
    assert model(keras.KerasTensor((None, 16, 16, 3))).shape == (None, 5)  # builds it
    assert model.built
    assert list(model.forward_stages(keras.KerasTensor((2, 16, 16, 3)))) == list(spec.stage_names)
    assert [part.name for part in model.features] == [
        "pad0", "conv0", "denseblock1", "transition1", "denseblock2", "norm5"]


# ---------------------------------------------------------------- padding
def test_same_padding_would_not_match_the_reference_but_ours_does():
    """keras "same" at stride 2 pads (2, 3) for the 7x7/2 stem conv on an even input
    and (0, 1) for the 3x3/2 max-pool; PyTorch pads (3, 3) and (1, 1)."""
    spec = get_spec("densenet121")
    model, params = loaded_model(spec)
    x = batch(spec, 64, 2, seed=1)
    xn = layouts.nchw_to_nhwc(x)
    w, geom = params["features.conv0.weight"], spec.stem_conv
    expected = conv2d(x, w, None, geom)

    ours = _np(model.get_layer("conv0")(model.get_layer("pad0")(xn)))
    assert_close(layouts.nhwc_to_nchw(ours), expected, "eval", name="explicit pad + valid")

    same = keras.layers.Conv2D(64, geom.kernel, strides=geom.stride, padding="same",
                               use_bias=False)
    same.build(xn.shape)
    same.kernel.assign(layouts.oihw_to_hwio(w))
    got = layouts.nhwc_to_nchw(_np(same(xn)))
    assert got.shape == expected.shape  # same shape, different numbers
    assert compare("same", got, expected, tolerance("eval")).rel > 1e-2

    # the stem max-pool, on a post-ReLU input
    y = np.maximum(expected, 0).astype(np.float32)
    yn = layouts.nchw_to_nhwc(y)
    pool = spec.stem_pool
    ref_pool = max_pool(y, pool)
    assert_close(layouts.nhwc_to_nchw(_np(_pool0(model, yn))), ref_pool, "eval")
    same_pool = keras.layers.MaxPooling2D(pool.kernel, strides=pool.stride, padding="same")
    got = layouts.nhwc_to_nchw(_np(same_pool(yn)))
    assert got.shape == ref_pool.shape
    assert compare("same pool", got, ref_pool, tolerance("eval")).rel > 1e-2


def test_zero_padded_max_pool_equals_minus_inf_padding_only_after_relu():
    spec = get_spec("densenet121")
    model, _ = loaded_model(spec)
    rng = np.random.default_rng(2)
    pre = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    post_relu = np.maximum(pre, 0)
    ours = layouts.nhwc_to_nchw(_np(_pool0(model, layouts.nchw_to_nhwc(post_relu))))
    np.testing.assert_array_equal(ours, max_pool(post_relu, spec.stem_pool))  # exactly
    # Without the ReLU a border window of negative numbers would take the zero pad as its max.
    negative = -np.abs(pre) - 1.0
    ours = layouts.nhwc_to_nchw(_np(_pool0(model, layouts.nchw_to_nhwc(negative))))
    ref = max_pool(negative, spec.stem_pool)
    assert np.all(ours[:, :, 0, :] == 0) and np.all(ref < 0)


# ---------------------------------------------------------------- the contract
def test_build_holds_the_canonical_seeded_weights():
    """build() loads params.init_params(spec, seed): the same weights as every backend."""
    for spec in (tiny_spec(), get_spec("d2l")):
        exported = dk.export_canonical(dk.build(spec, seed=3))
        expected = init_params(spec, 3)
        assert list(exported) == list(expected)
        assert all(exported[k].dtype == np.float32 and np.array_equal(exported[k], expected[k])
                   for k in expected)


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "remat"])
def test_run_and_gradients_leave_the_model_as_it_was(memory_efficient):
    spec = tiny_spec(drop_rate=0.2)
    model = dk.build(spec, seed=5, memory_efficient=memory_efficient)
    before = [_np(v) for v in model.variables]  # parameters, running statistics, dropout seed
    x, y = batch(spec, 16, 3, seed=31), np.array([0, 1, 2])
    out = dk.run(model, x, train=True)
    dk.gradients(model, x, y)
    dk.run(model, x, train=False)
    assert all(np.array_equal(_np(v), b) for v, b in zip(model.variables, before, strict=True))
    # and the running statistics it reports did move
    exported = dk.export_canonical(model)
    assert not np.array_equal(out.running["features.norm5.running_var"],
                              exported["features.norm5.running_var"])


def test_checkpoint_of_a_plain_model_loads_into_a_memory_efficient_one(tmp_path):
    spec = tiny_spec()
    plain = dk.build(spec, seed=6)
    dk.load_canonical(plain, init_params(spec, 6, nontrivial_bn=True))
    path = dk.save_checkpoint(plain, tmp_path / "tiny.safetensors")
    with pytest.raises(FileExistsError):
        dk.save_checkpoint(plain, path)
    efficient = dk.load_checkpoint(path, memory_efficient=True)
    assert efficient.memory_efficient and efficient.spec == spec
    assert_all_close(dk.export_canonical(efficient), dk.export_canonical(plain), "copy")
    x, y = batch(spec, 16, 3, seed=32), np.array([4, 0, 2])
    assert_all_close(dk.run(efficient, x).stages, dk.run(plain, x).stages, "copy")
    g0, g1 = dk.gradients(plain, x, y), dk.gradients(efficient, x, y)
    assert_close(g1.loss, g0.loss, "grad")
    assert_all_close(g1.params, g0.params, "grad")
    assert_close(g1.input, g0.input, "grad")


# ---------------------------------------------------------------- BatchNorm conventions
def test_bn_epsilon_and_momentum_are_the_specs():
    spec = tiny_spec(bn_eps=1.001e-5, bn_momentum=0.25)
    model = dk.build(spec)
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == sum(1 for name in trainable_names(spec) if "norm" in name) // 2
    assert {n.epsilon for n in norms} == {1.001e-5}  # never Keras's default 1e-3
    assert {n.momentum for n in norms} == {0.75}  # Keras's momentum = 1 - PyTorch's


# ---------------------------------------------------------------- memory-efficient (remat)
def _grads_by_path(model, x, y):
    loss, grads, dx, after = runtime._loss_and_grads(model, layouts.nchw_to_nhwc(x), y)
    return loss, {v.path.split("/", 1)[1]: _np(g) for v, g in
                  zip(model.trainable_variables, grads, strict=True)}, _np(dx), [_np(a) for a in after]


def _remat_pair(spec, x, y, dtype="float32"):
    params = init_params(spec, 4, nontrivial_bn=True, dtype=dtype)
    out = {}
    for me in (False, True):
        model = dk.build(spec, dtype=dtype, memory_efficient=me)
        dk.load_canonical(model, params)
        out[me] = (model, *_grads_by_path(model, x, y))
    return out


def _assert_remat_equal(out, dtype):
    (_, loss0, g0, dx0, after0), (_, loss1, g1, dx1, after1) = out[False], out[True]
    assert sorted(g0) == sorted(g1)
    assert_close(loss1, loss0, "grad", dtype)
    assert_all_close(g1, g0, "grad", dtype)
    assert_close(dx1, dx0, "grad", dtype)
    # every parameter gets a gradient (torchvision #2221: a broken checkpoint path trained
    # silently without some), and the running statistics are updated once, as without remat
    assert all(np.any(g != 0) for g in g1.values())
    assert_all_close(dict(enumerate(after1)), dict(enumerate(after0)), "running", dtype)


@pytest.mark.parametrize("bn_size", [2, None], ids=["bottleneck", "plain"])
def test_memory_efficient_matches_default_float32(bn_size):
    spec = tiny_spec(bn_size=bn_size)
    x, y = batch(spec, 16, 3, seed=5), np.array([0, 1, 4])
    out = _remat_pair(spec, x, y)
    _assert_remat_equal(out, "float32")
    model = out[True][0]
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, dk.DenseLayer)]
    assert len(layers) == sum(spec.block_config) and all(la.memory_efficient for la in layers)
    # and the forward pass is the reference's
    params = dk.export_canonical(out[True][0])
    assert_all_close(dk.run(model, x).stages, forward(spec, params, x).stages, "eval")


@requires_tensorflow
def test_memory_efficient_matches_default_float64():
    """In float64 the two paths agree to rounding (a float32 comparison on a deep net
    can flip a ReLU at an exact tie and differ by more than rounding in one element)."""
    spec = get_spec("densenet_bc_100_k12", block_config=(4, 4), growth_rate=6)
    x, y = batch(spec, 16, 3, seed=6).astype(np.float64), np.array([0, 1, 9])
    out = _remat_pair(spec, x, y, "float64")
    assert all(g.dtype == np.float64 for g in out[True][2].values())
    _assert_remat_equal(out, "float64")


@requires_tensorflow
def test_naive_remat_of_keras_batchnorm_updates_running_stats_twice():
    """Why DenseLayer does not simply wrap Keras's BatchNormalization in keras.remat:
    tf.recompute_grad re-runs its assignment of the running statistics in the
    backward pass."""
    import tensorflow as tf

    bn = keras.layers.BatchNormalization(momentum=0.5)
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 3, 3, 2)).astype(np.float32))
    bn.build(x.shape)
    f = keras.remat(lambda t: bn(t, training=True))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(f(x) ** 2)
    after_forward = bn.moving_mean.numpy().copy()
    tape.gradient(loss, x)
    assert not np.allclose(bn.moving_mean.numpy(), after_forward)  # updated again


def _train_graph_op_counts(model, x, y) -> dict[str, int]:
    """Op types of the traced graph of one gradient step (forward and backward)."""
    import collections

    import tensorflow as tf

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = runtime.loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    graph = tf.function(step).get_concrete_function(tf.constant(x), tf.constant(y)).graph
    return collections.Counter(op.type for op in graph.get_operations())


@requires_tensorflow
def test_memory_efficient_recomputes_both_convs_of_every_dense_layer():
    """What the mode stores is what it does not recompute: the traced gradient graph
    runs both convolutions of every bottleneck layer a second time, and nothing else
    (the stem's and the transitions' convs are stored)."""
    spec = tiny_spec()
    x, y = layouts.nchw_to_nhwc(batch(spec, 16, 2)), np.array([0, 3])
    default, efficient = (_train_graph_op_counts(dk.build(spec, memory_efficient=me), x, y)
                          for me in (False, True))
    assert efficient["Conv2D"] - default["Conv2D"] == 2 * sum(spec.block_config)
    for op in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):  # the backward itself is as before
        assert efficient[op] == default[op] > 0


def _saved_residual_elements(model, x, y) -> int:
    """How many numbers JAX's autodiff stores for the backward pass of the training loss,
    besides its arguments (the weights and the input), as jax.ad_checkpoint reports them."""
    import contextlib
    import io
    import re

    import jax

    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable, x):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return runtime.loss_fn(y, logits)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(loss, [v.value for v in model.trainable_variables], x)
    lines = [ln for ln in out.getvalue().splitlines() if "from the argument" not in ln]
    shapes = [re.match(r"\w+\[([\d,]*)\]", ln).group(1) for ln in lines]
    return sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)


@pytest.mark.skipif(BACKEND != "jax", reason="needs KERAS_BACKEND=jax")
def test_memory_efficient_stores_a_third_of_the_activations_under_jax():
    """jax.checkpoint keeps only the dense layers' inputs: on the tiny net the saved
    activations drop from 184,584 to 61,620 numbers (recomputing only the concatenation
    and the first unit, as this mode once did, kept 133,224: 72%)."""
    spec = tiny_spec()
    x, y = layouts.nchw_to_nhwc(batch(spec, 16, 2)), np.array([0, 3])
    default, efficient = (_saved_residual_elements(dk.build(spec, memory_efficient=me), x, y)
                          for me in (False, True))
    assert efficient < 0.5 * default


# ---------------------------------------------------------------- gradients and SGD
def test_gradients_structure_and_loss():
    spec = tiny_spec()
    model, params = loaded_model(spec)
    x, y = batch(spec, 16, 3, seed=7), np.array([1, 2, 3])
    g = dk.gradients(model, x, y)
    assert list(g.params) == trainable_names(spec)
    for name, grad in g.params.items():
        assert grad.shape == params[name].shape and grad.dtype == np.float32, name
    assert g.input.shape == x.shape
    ref = forward(spec, params, x, train=True)
    assert_close(g.loss, softmax_cross_entropy(ref.logits, y), "train")
    assert_all_close(dk.export_canonical(model), params, "copy")  # model untouched


@requires_tensorflow
def test_gradients_float32_vs_float64():
    spec = tiny_spec()
    x, y = batch(spec, 16, 3, seed=8), np.array([0, 2, 4])
    params = init_params(spec, 8, nontrivial_bn=True)
    model64 = dk.build(spec, dtype="float64")
    dk.load_canonical(model64, params)
    _, g64, dx64, _ = _grads_by_path(model64, x.astype(np.float64), y)
    model32 = dk.build(spec)
    dk.load_canonical(model32, params)
    _, g32, dx32, _ = _grads_by_path(model32, x, y)
    assert_all_close(g32, g64, "grad")
    assert_close(dx32, dx64, "grad")


def test_train_steps_follow_pytorch_sgd_and_running_stats():
    """Two steps of SGD(momentum): p1 = p0 - lr g0; p2 = p1 - lr (mu g0 + g1) (PyTorch),
    and the running statistics after each step are the canonical train-mode ones."""
    spec = tiny_spec()
    params = init_params(spec, 9, nontrivial_bn=True)
    x0, y0 = batch(spec, 16, 4, seed=9), np.array([0, 1, 2, 3])
    x1, y1 = batch(spec, 16, 4, seed=10), np.array([4, 3, 2, 1])
    lr, mu = 0.05, 0.9

    probe = dk.build(spec)
    dk.load_canonical(probe, params)
    g0 = dk.gradients(probe, x0, y0)
    p1 = {k: params[k] - lr * g0.params[k] if k in g0.params else v for k, v in params.items()}
    p1.update(dk.run(probe, x0, train=True).running)
    dk.load_canonical(probe, {k: v.astype(np.float32) for k, v in p1.items()})
    g1 = dk.gradients(probe, x1, y1)
    p2 = {k: p1[k] - lr * (mu * g0.params[k] + g1.params[k]) if k in g0.params else v
          for k, v in p1.items()}
    p2.update(dk.run(probe, x1, train=True).running)

    model = dk.build(spec)
    dk.load_canonical(model, params)
    losses = dk.train_steps(model, [(x0, y0), (x1, y1)], lr=lr, momentum=mu)
    assert_close(losses[0], g0.loss, "trajectory")
    assert_close(losses[1], g1.loss, "trajectory")
    assert_all_close(dk.export_canonical(model), p2, "trajectory")


def test_train_steps_reduce_the_loss():
    spec = tiny_spec()
    model = dk.build(spec, seed=1)
    x, y = batch(spec, 16, 8, seed=11), np.arange(8) % 5
    losses = dk.train_steps(model, [(x, y)] * 6, lr=0.05, momentum=0.9)
    assert len(losses) == 6 and losses[-1] < losses[0]


# ---------------------------------------------------------------- Keras idioms
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "remat"])
def test_compile_fit_evaluate_predict(memory_efficient):
    """The Keras idiom on an unbuilt model (fit builds it): 16 random images with fixed
    labels begin to be memorised, so every epoch lowers the training loss (measured over
    the 6 epochs: 1.75 -> 1.34 under TensorFlow, 1.62 -> 1.43 under JAX)."""
    spec = tiny_spec(in_channels=1)
    keras.utils.set_random_seed(2)
    model = dk.from_spec(spec, memory_efficient=memory_efficient)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x = layouts.nchw_to_nhwc(batch(spec, 16, 16, seed=12))
    y = np.arange(16) % 5
    history = model.fit(x, y, batch_size=8, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 6 and all(np.diff(losses) < 0), losses
    assert losses[-1] < 0.95 * losses[0], losses
    loss, _ = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss)
    assert model.predict(x, verbose=0).shape == (16, 5)


def test_save_and_load_keras_format(tmp_path):
    spec = tiny_spec(drop_rate=0.1)
    model = dk.build(spec, memory_efficient=True)
    params = init_params(spec, 13, nontrivial_bn=True)
    dk.load_canonical(model, params)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, dk.DenseNet) and loaded.spec == spec and loaded.memory_efficient
    # the same variables in the same order, under the same paths: Keras's
    # build_from_config calls DenseNet.build, in the model's name scope
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    assert loaded.weights[0].path.startswith("tiny/")
    assert_all_close(dk.export_canonical(loaded), params, "copy")
    x = batch(spec, 16, 2, seed=14)
    np.testing.assert_array_equal(dk.run(loaded, x).logits, dk.run(model, x).logits)


# ---------------------------------------------------------------- input validation
def test_bad_inputs_raise_input_error():
    spec = get_spec("d2l")
    model, _ = loaded_model(spec)
    good = batch(spec, 32, 2)
    with pytest.raises(InputError, match=r"4-d NCHW batch of shape \(N, 1, H, W\).*\(1, 32, 32\)"):
        dk.run(model, good[0])
    with pytest.raises(InputError, match="looks like an NHWC array"):
        dk.run(model, layouts.nchw_to_nhwc(batch(spec, 32, 2)))
    with pytest.raises(InputError, match=r"\(N, 1, H, W\).*got shape \(2, 3, 32, 32\)"):
        dk.run(model, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="dtype float32 or float64, got int64"):
        dk.run(model, good.astype(np.int64))
    with pytest.raises(InputError, match="too small.*smallest size that works is"):
        dk.run(model, batch(spec, 8, 2))
    with pytest.raises(InputError):
        dk.gradients(model, good[:, :, :, :, None], np.array([0, 1]))
    with pytest.raises(InputError, match=r"expected 2 integer labels"):
        dk.gradients(model, good, np.array([0.5, 1.0]))
    with pytest.raises(InputError, match=r"labels must lie in \[0, 10\)"):
        dk.gradients(model, good, np.array([0, 10]))
    # the model itself is not validated here: Keras's own InputSpec of conv0 answers
    with pytest.raises(ValueError, match="conv0.*expected axis -1 of input shape to have value 1"):
        model(np.zeros((2, 32, 32, 3), np.float32))


def test_bad_canonical_params_copy_nothing():
    spec = tiny_spec()
    model = dk.build(spec)
    before = dk.export_canonical(model)
    params = init_params(spec, 15)
    bad = dict(params)
    bad.pop("classifier.bias")
    bad["features.conv0.weight"] = bad["features.conv0.weight"][:, :, :2]
    with pytest.raises(ParameterError, match=r"missing 1 key.*classifier\.bias(.|\n)*conv0"):
        dk.load_canonical(model, bad)
    assert_all_close(dk.export_canonical(model), before, "copy")


# ---------------------------------------------------------------- dropout
def test_dropout_statistics():
    """Dropout can't agree across frameworks; check its statistics: in train mode a
    fraction ~p of each new feature map is zeroed and the rest scaled by 1/(1-p);
    eval mode is deterministic and equals the network without dropout."""
    p = 0.4
    spec = tiny_spec(drop_rate=p, growth_rate=8)
    with_dropout = dk.build(spec, seed=3)
    params = init_params(spec, 16, nontrivial_bn=True)
    dk.load_canonical(with_dropout, params)
    without = dk.build(spec.replace(drop_rate=0.0))
    dk.load_canonical(without, params)
    x = batch(spec, 32, 8, seed=17)
    assert_all_close(dk.run(with_dropout, x).stages, dk.run(without, x).stages, "copy")

    # block1 = [stem, layer1, layer2]: layer1's new maps come from a dropout-free input
    c0, k = spec.channel_plan.stem_channels, spec.growth_rate
    dropped = dk.run(with_dropout, x, train=True).stages["block1"][:, c0:c0 + k]
    clean = dk.run(without, x, train=True).stages["block1"][:, c0:c0 + k]
    zeroed = (dropped == 0) & (clean != 0)
    n = np.count_nonzero(clean)
    rate = zeroed.sum() / n
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n), rate
    kept = ~zeroed & (clean != 0)
    np.testing.assert_allclose(dropped[kept], clean[kept] / (1 - p), rtol=1e-5, atol=1e-6)


def test_devices():
    found = dk.devices()
    assert found[0] == "cpu" and all(d == "cuda" or d.startswith("cuda:") for d in found[1:])
    assert BACKEND in ("tensorflow", "jax")
    if "cuda" in found:
        assert dk.build(tiny_spec(), device="cuda").classifier.kernel.value.device is not None
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
        dk.build(tiny_spec(), device="gpu")
