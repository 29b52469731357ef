"""DenseNet (Huang et al., CVPR 2017) as Flax NNX modules.

The parts of the paper, in the order they compose: :class:`ConvBlock`
(BN-ReLU-Conv, the pre-activation unit), :class:`DenseLayer` (an optional 1x1
bottleneck block, then a 3x3 block giving ``growth_rate`` new maps, then
dropout), :class:`DenseBlock`, :class:`Transition`, :class:`DenseNet`, then the
constructors :func:`densenet121` ... :func:`densenet201` and :func:`from_spec`.

Conventions (all read from :class:`~densenet_multi.spec.DenseNetSpec`):

* Activations are NHWC inside (natural for Flax/XLA); kernels HWIO. The
  canonical NCHW/OIHW boundary is crossed in :mod:`densenet_multi.flax.convert`
  and :mod:`densenet_multi.flax.runtime`, never here.
* Every width comes from ``spec.channel_plan``; every padding from the spec's
  :class:`~densenet_multi.spec.ConvGeometry` as explicit ``(low, high)`` pairs.
  Flax/XLA ``"SAME"`` pads a stride-2 layer asymmetrically -- (2, 3) for the
  7x7/2 stem on an even input, (0, 1) for the 3x3/2 max-pool -- which is a
  different network from the paper's and torchvision's symmetric (3, 3) and
  (1, 1); ``tests/flax/test_flax_model.py`` shows the difference.
* BatchNorm uses ``nnx.BatchNorm`` with Flax's momentum (the weight of the *old*
  running value, ``1 - spec.bn_momentum``), ``epsilon=spec.bn_eps`` and the
  two-pass variance (see :class:`ConvBlock`). Train/eval is switched with
  ``model.train()`` / ``model.eval()`` only.
* Precision follows Flax's layers: every part takes ``dtype`` (the computation
  dtype; None infers it from the inputs and parameters) and ``param_dtype``
  (float32 by default) and hands both to every ``nnx.Conv``, ``nnx.BatchNorm``
  and ``nnx.Linear``. The BN running statistics are kept in ``param_dtype`` too,
  but never narrower than float32 (``nnx.BatchNorm`` itself always makes them
  float32).
* **float64 needs JAX's 64-bit mode.** JAX computes in float32 unless x64 is on,
  so creating or calling a float64 :class:`DenseNet` (``dtype`` or
  ``param_dtype`` float64) raises a RuntimeError saying so while it is off:
  set ``JAX_ENABLE_X64=1``, call ``jax.config.update("jax_enable_x64", True)``,
  or work inside ``with jax.enable_x64(True):``. The contract functions of
  :mod:`densenet_multi.flax` (``build(..., dtype="float64")``, ``run``, ...)
  do the last themselves, so they work in any process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.typing import Dtype

from ..spec import ConvGeometry, DenseNetSpec, check_input_dtype, check_input_shape, get_spec

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "from_spec",
    "batch_norm",
    "conv",
    "needs_x64",
    "x64_scope",
    "check_x64",
]

# torchvision's initialisation: Kaiming normal (fan-in, gain sqrt(2)) for conv
# kernels. jax's he_normal is a *truncated* normal, so spell it out.
_kaiming_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


# ---------------------------------------------------------------------- precision
def needs_x64(*dtypes: Dtype | None) -> bool:
    """Whether any of ``dtypes`` (None: unspecified) is float64, which JAX only
    computes in with its 64-bit mode on."""
    return any(d is not None and np.dtype(d) == np.float64 for d in dtypes)


def x64_scope(enabled: bool) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(True)`` when ``enabled`` (a float64 model), else a no-op context:
    float32 models run exactly as they would without it."""
    return jax.enable_x64(True) if enabled else contextlib.nullcontext()


def check_x64(dtype: Dtype | None, param_dtype: Dtype | None) -> None:
    """Raise a clear RuntimeError when a float64 model meets JAX with x64 off, where JAX
    would create float32 parameters or compute in float32 instead."""
    if needs_x64(dtype, param_dtype) and not jax.config.jax_enable_x64:
        raise RuntimeError(
            f"this DenseNet is float64 (dtype={dtype}, param_dtype={param_dtype}) but JAX's "
            "64-bit mode is off, so JAX would compute in float32: set JAX_ENABLE_X64=1, call "
            "jax.config.update('jax_enable_x64', True), or work inside "
            "`with jax.enable_x64(True):` (densenet_multi.flax's build/run/gradients/"
            "train_steps do that themselves)"
        )


# ---------------------------------------------------------------------- layers
def batch_norm(
    spec: DenseNetSpec,
    num_features: int,
    *,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """The spec's BatchNorm in Flax's conventions, its running statistics in
    ``param_dtype`` (at least float32)."""
    bn = nnx.BatchNorm(
        num_features,
        # Flax's momentum weighs the OLD running value; the spec's (PyTorch's)
        # weighs the NEW batch statistic: PyTorch 0.1 == Flax 0.9.
        momentum=1.0 - spec.bn_momentum,
        epsilon=spec.bn_eps,
        # Flax's default fast variance is E[x^2] - E[x]^2: one pass, but in
        # float32 it cancels catastrophically when |mean| >> std (every
        # un-normalised concat input of a dense block can be such a channel).
        # The two-pass E[(x - E[x])^2] is what PyTorch and the reference compute.
        use_fast_variance=False,
        # Built in training mode; model.eval() flips this to True.
        use_running_average=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
    # nnx.BatchNorm makes its running statistics float32 whatever param_dtype
    # is; a float64 model keeps them in float64, so that they load and export
    # bit-exactly and its eval forward is float64 throughout.
    stats_dtype = jnp.promote_types(param_dtype, jnp.float32)
    for stat in (bn.mean, bn.var):
        stat.set_value(stat.get_value().astype(stats_dtype))
    return bn


def conv(
    spec: DenseNetSpec,
    in_features: int,
    out_features: int,
    geometry: ConvGeometry,
    *,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A convolution with the spec's kernel, stride and *explicit* symmetric padding."""
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(geometry.kernel, geometry.kernel),
        strides=(geometry.stride, geometry.stride),
        # Explicit ((top, bottom), (left, right)) from the spec, never "SAME":
        # "SAME" at stride 2 puts the extra row/column at the bottom/right.
        padding=geometry.pads,
        use_bias=spec.conv_bias,
        kernel_init=_kaiming_normal,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class ConvBlock(nnx.Module):
    """BN -> ReLU -> Conv: the pre-activation unit every DenseNet part is made of."""

    def __init__(
        self,
        spec: DenseNetSpec,
        in_features: int,
        out_features: int,
        geometry: ConvGeometry,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.norm = batch_norm(spec, in_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv = conv(spec, in_features, out_features, geometry, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(nnx.relu(self.norm(x)))


def _concat_and_block(block: ConvBlock, features: Sequence[jax.Array]) -> jax.Array:
    """Concatenate the earlier feature maps and run the layer's first BN-ReLU-conv."""
    return block(jnp.concatenate(list(features), axis=-1))


class DenseLayer(nnx.Module):
    """H_l of the paper: ``[BN-ReLU-1x1 conv] -> BN-ReLU-3x3 conv -> dropout``.

    Takes the list of all earlier feature maps of its block and returns its
    ``growth_rate`` new maps. With a bottleneck (DenseNet-B) ``bottleneck`` is
    the BN-ReLU-1x1 block (canonical ``norm1``/``conv1``) and ``growth`` the
    BN-ReLU-3x3 block (``norm2``/``conv2``); without one ``bottleneck`` is None
    and ``growth`` is the single block (``norm``/``conv``).
    """

    def __init__(
        self,
        spec: DenseNetSpec,
        in_features: int,
        bottleneck_features: int | None,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.memory_efficient = spec.memory_efficient
        self.bottleneck: ConvBlock | None = (
            ConvBlock(spec, in_features, bottleneck_features, spec.bottleneck_conv, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)
            if bottleneck_features is not None
            else None
        )
        growth_in = in_features if bottleneck_features is None else bottleneck_features
        self.growth = ConvBlock(spec, growth_in, spec.growth_rate, spec.growth_conv, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)
        # Dropout draws from the explicit "dropout" stream of the Rngs passed in.
        self.dropout = nnx.Dropout(spec.drop_rate, rngs=rngs)

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        first = self.bottleneck if self.bottleneck is not None else self.growth
        if self.memory_efficient:
            # Rematerialise only concat -> BN -> ReLU -> first conv: its output
            # is as wide as everything before it, so storing it for every layer
            # costs memory quadratic in the block's depth, while the rest of
            # the layer (k or bn_size*k channels) grows linearly. Recomputing it
            # in the backward pass makes the block's memory linear (flax #3703:
            # remat a whole sub-block, not single ops).
            y = nnx.remat(_concat_and_block)(first, features)
        else:
            y = _concat_and_block(first, features)
        if self.bottleneck is not None:
            y = self.growth(y)
        return self.dropout(y)


class DenseBlock(nnx.Module):
    """``num_layers`` dense layers; each sees the concatenation of all earlier maps."""

    def __init__(
        self,
        spec: DenseNetSpec,
        block_index: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        plan = spec.channel_plan.blocks[block_index]
        # nnx.List, not a plain list: NNX treats plain lists as static data.
        self.layers = nnx.List(
            [
                DenseLayer(spec, width, plan.bottleneck_channels, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)
                for width in plan.layer_in_channels
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return jnp.concatenate(features, axis=-1)


class Transition(nnx.Module):
    """BN -> ReLU -> 1x1 conv (compression theta) -> 2x2/2 average pool."""

    def __init__(
        self,
        spec: DenseNetSpec,
        transition_index: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        plan = spec.channel_plan.transitions[transition_index]
        self.block = ConvBlock(
            spec, plan.in_channels, plan.out_channels, spec.transition_conv, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs,
        )
        self.pool_geometry = spec.transition_pool

    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.pool_geometry
        return nnx.avg_pool(
            self.block(x), (g.kernel, g.kernel), strides=(g.stride, g.stride), padding=g.pads
        )


class DenseNet(nnx.Module):
    """The network: stem, dense blocks joined by transitions, final BN-ReLU, global
    average pooling, linear classifier. Takes an NHWC batch.

    ``forward_features`` returns the tensor after the final BN-ReLU (torchvision
    applies that ReLU in ``forward``; here it belongs to the features),
    ``forward_head(x, pre_logits=True)`` the pooled features, and
    ``forward_stages`` every stage of ``spec.stage_names``.

    ``dtype`` (computation; None infers it from inputs and parameters) and
    ``param_dtype`` (parameters and BN running statistics) go to every layer.
    A float64 network needs JAX's 64-bit mode on to be created or called (a
    clear RuntimeError otherwise; see the module docstring).
    """

    def __init__(
        self,
        spec: DenseNetSpec,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        check_x64(dtype, param_dtype)
        self.spec = spec
        self.dtype = dtype
        self.param_dtype = param_dtype
        dt = {"dtype": dtype, "param_dtype": param_dtype}
        plan = spec.channel_plan
        # Stem: 7x7/2 conv + BN-ReLU + 3x3/2 max-pool (ImageNet) or one 3x3 conv (CIFAR).
        self.conv0 = conv(spec, spec.in_channels, plan.stem_channels, spec.stem_conv, **dt,
                          rngs=rngs)
        self.norm0 = (
            batch_norm(spec, plan.stem_channels, **dt, rngs=rngs) if spec.stem_has_norm else None
        )
        self.blocks = nnx.List(
            [DenseBlock(spec, b, **dt, rngs=rngs) for b in range(spec.num_blocks)]
        )
        self.transitions = nnx.List(
            [Transition(spec, t, **dt, rngs=rngs) for t in range(len(plan.transitions))]
        )
        self.norm5 = batch_norm(spec, plan.final_channels, **dt, rngs=rngs)
        self.classifier = nnx.Linear(plan.final_channels, spec.num_classes, **dt, rngs=rngs)

    @property
    def needs_x64(self) -> bool:
        """Whether this network computes or keeps parameters in float64 (JAX's x64 mode)."""
        return needs_x64(self.dtype, self.param_dtype)

    # ---------------------------------------------------------------- parts
    def stem(self, x: jax.Array) -> jax.Array:
        y = self.conv0(x)
        pool = self.spec.stem_pool
        if self.norm0 is not None and pool is not None:
            y = nnx.relu(self.norm0(y))
            # nnx.max_pool (lax.reduce_window with init -inf) pads with -inf when
            # given explicit pads, as PyTorch does. (Keras-style zero padding
            # would be equivalent here only because the input follows a ReLU.)
            y = nnx.max_pool(
                y, (pool.kernel, pool.kernel), strides=(pool.stride, pool.stride),
                padding=pool.pads,
            )
        return y

    def _check(self, x: jax.Array) -> None:
        check_x64(self.dtype, self.param_dtype)
        check_input_dtype(x.dtype, ("float32", "float64", "float16", "bfloat16"))
        check_input_shape(self.spec, x.shape, "NHWC")

    def forward_stages(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every stage of ``spec.stage_names`` (stem, block1, transition1, ..., features,
        pooled, logits), NHWC for the 4-d ones."""
        self._check(x)
        stages: dict[str, jax.Array] = {}
        y = self.stem(x)
        stages["stem"] = y
        for b, block in enumerate(self.blocks):
            y = block(y)
            stages[f"block{b + 1}"] = y
            if b < len(self.transitions):
                y = self.transitions[b](y)
                stages[f"transition{b + 1}"] = y
        # The final ReLU sits inside the features (after norm5), before pooling.
        y = nnx.relu(self.norm5(y))
        stages["features"] = y
        # Global average pooling: any input size works (never a fixed 7x7 window).
        pooled = jnp.mean(y, axis=(1, 2))
        stages["pooled"] = pooled
        stages["logits"] = self.classifier(pooled)
        return stages

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Stem, blocks and transitions, then the final BN-ReLU (NHWC)."""
        self._check(x)
        y = self.stem(x)
        for b, block in enumerate(self.blocks):
            y = block(y)
            if b < len(self.transitions):
                y = self.transitions[b](y)
        return nnx.relu(self.norm5(y))

    def forward_head(self, features: jax.Array, *, pre_logits: bool = False) -> jax.Array:
        pooled = jnp.mean(features, axis=(1, 2))
        return pooled if pre_logits else self.classifier(pooled)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward_head(self.forward_features(x))


# -------------------------------------------------------------------- constructors
def from_spec(
    spec: DenseNetSpec,
    *,
    rngs: nnx.Rngs | None = None,
    seed: int = 0,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
) -> DenseNet:
    """A :class:`DenseNet` for ``spec``; ``rngs`` defaults to streams ``params`` and
    ``dropout`` seeded from ``seed``. ``dtype`` / ``param_dtype`` as in Flax's layers
    (float64 needs JAX's 64-bit mode on)."""
    if rngs is None:
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    return DenseNet(spec, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _preset(name: str, rngs: nnx.Rngs | None, seed: int, dtype: Dtype | None,
            param_dtype: Dtype, changes: dict[str, Any]) -> DenseNet:
    return from_spec(get_spec(name, **changes), rngs=rngs, seed=seed, dtype=dtype,
                     param_dtype=param_dtype)


def densenet121(*, rngs: nnx.Rngs | None = None, seed: int = 0, dtype: Dtype | None = None,
                param_dtype: Dtype = jnp.float32, **changes: Any) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16); ``changes`` are spec fields, ``dtype`` and
    ``param_dtype`` as in :func:`from_spec`."""
    return _preset("densenet121", rngs, seed, dtype, param_dtype, changes)


def densenet161(*, rngs: nnx.Rngs | None = None, seed: int = 0, dtype: Dtype | None = None,
                param_dtype: Dtype = jnp.float32, **changes: Any) -> DenseNet:
    """DenseNet-161 (k=48, blocks 6-12-36-24, 96 stem channels)."""
    return _preset("densenet161", rngs, seed, dtype, param_dtype, changes)


def densenet169(*, rngs: nnx.Rngs | None = None, seed: int = 0, dtype: Dtype | None = None,
                param_dtype: Dtype = jnp.float32, **changes: Any) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32)."""
    return _preset("densenet169", rngs, seed, dtype, param_dtype, changes)


def densenet201(*, rngs: nnx.Rngs | None = None, seed: int = 0, dtype: Dtype | None = None,
                param_dtype: Dtype = jnp.float32, **changes: Any) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32)."""
    return _preset("densenet201", rngs, seed, dtype, param_dtype, changes)
