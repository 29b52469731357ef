"""DenseNet (Huang et al., CVPR 2017) as Flax NNX modules, built from a :class:`DenseNetSpec`.

The parts follow the paper, in this order: :class:`ConvBlock` (BN-ReLU-conv,
the pre-activation unit everything is made of), :class:`DenseLayer` (H_l:
optional 1x1 bottleneck, 3x3 conv, dropout; returns its ``growth_rate`` new
maps), :class:`DenseBlock` (every layer sees the concatenation of all earlier
maps), :class:`Transition` (BN-ReLU-1x1 conv with compression, 2x2 average
pool) and :class:`DenseNet` (stem, blocks, transitions, final BN-ReLU, global
average pooling, classifier), then :func:`from_spec` and
:func:`densenet121` ... :func:`densenet201`.

Children carry the canonical names, so ``nnx.state(model)`` paths *are*
torchvision's names (``features/denseblock1/denselayer1/norm1/scale`` holds
``features.denseblock1.denselayer1.norm1.weight``). Every width comes from the
spec (``channel_plan``, ``block_plan``) and every kernel, stride and padding
from its :class:`~densenet_multi.spec.ConvGeometry`.

Flax's way throughout: layers are created eagerly, so every constructor takes
Flax's ``dtype`` (computation; None infers it), ``param_dtype`` (None: float32)
and ``rngs`` (keyword-only, last); activations are NHWC, kernels HWIO;
``model.train()`` / ``model.eval()`` switch BatchNorm and dropout. Inputs are
not validated here and JAX's 64-bit mode is not switched here: both happen at
the backend boundary (:mod:`densenet_multi.flax.runtime`). A float64 model
needs JAX's x64 mode when created or called directly (JAX warns and truncates
to float32 without it); the backend's functions turn it on themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype

from ..spec import ConvGeometry, DenseNetSpec, get_spec

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "from_spec",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
]

# --8<-- [start:helpers]
# --8<-- [start:norm_conv]
# torchvision's conv initialisation, Kaiming normal (fan-in, gain sqrt(2)); jax's
# he_normal is a *truncated* normal. build() replaces every initial value with the
# canonical seeded weights; these are for the classes used directly.
_kaiming_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def _dtypes(dtype: Dtype | None, param_dtype: Dtype | None) -> dict[str, Any]:
    """Flax's two precision arguments; None for ``param_dtype`` is Flax's float32."""
    return {"dtype": dtype, "param_dtype": jnp.float32 if param_dtype is None else param_dtype}


def _norm(spec: DenseNetSpec, num_features: int, *, dtype: Dtype | None,
          param_dtype: Dtype | None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    dt = _dtypes(dtype, param_dtype)
    norm = nnx.BatchNorm(
        num_features,
        # Flax's momentum weighs the OLD running value, the spec's (PyTorch's) the new
        # batch statistic: PyTorch's 0.1 is Flax's 0.9 (Flax's own default is 0.99).
        momentum=1.0 - spec.bn_momentum,
        epsilon=spec.bn_eps,  # always the spec's, never a framework default
        # Flax's default fast variance is E[x^2] - E[x]^2: one pass, but in float32 it
        # cancels catastrophically when |mean| >> std (every un-normalised concat input
        # of a dense block can hold such a channel). The two-pass E[(x - E[x])^2] is
        # what PyTorch and the reference compute.
        use_fast_variance=False,
        **dt,
        rngs=rngs,
    )
    # nnx.BatchNorm keeps its running statistics in float32 whatever param_dtype is; a
    # float64 model keeps them in float64, so they load and export bit-exactly.
    stats_dtype = jnp.promote_types(dt["param_dtype"], jnp.float32)
    for stat in (norm.mean, norm.var):
        stat.set_value(stat.get_value().astype(stats_dtype))
    return norm


def _conv(spec: DenseNetSpec, in_channels: int, out_channels: int, geometry: ConvGeometry, *,
          dtype: Dtype | None, param_dtype: Dtype | None, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(geometry.kernel, geometry.kernel),
        strides=(geometry.stride, geometry.stride),
        # Explicit ((top, bottom), (left, right)) from the spec, never "SAME": at stride 2
        # "SAME" pads asymmetrically ((2, 3) for the 7x7/2 stem), another network.
        padding=geometry.pads,
        use_bias=spec.conv_bias,
        kernel_init=_kaiming_normal,
        **_dtypes(dtype, param_dtype),
        rngs=rngs,
    )
# --8<-- [end:norm_conv]


class _Pool(nnx.Module):
    """A max or average pool over the spec's window. Flax has pooling functions but no
    pooling layers; a parameter-free module keeps ``pool0`` and ``Transition.pool``
    children, as in the other frameworks."""

    def __init__(self, reduce: Callable[..., jax.Array], geometry: ConvGeometry) -> None:
        self.reduce = reduce  # nnx.max_pool or nnx.avg_pool: static data, like the geometry
        self.geometry = geometry

    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.geometry
        # Explicit pads are filled with the reduction's identity: -inf for nnx.max_pool
        # (lax.reduce_window), as PyTorch pads a max-pool, so padding never wins.
        return self.reduce(x, (g.kernel, g.kernel), strides=(g.stride, g.stride), padding=g.pads)


def _recomputed(modules: Sequence[nnx.Module], features: Sequence[jax.Array]) -> jax.Array:
    """Concatenation -> BN -> ReLU -> first conv (the 1x1 bottleneck, or the plain 3x3)
    and, with a bottleneck (a third module, norm2), the second BN-ReLU: up to the 3x3
    conv's input. The part ``memory_efficient`` recomputes."""
    norm, conv, *second = modules
    y = conv(nnx.relu(norm(jnp.concatenate(list(features), axis=-1))))
    return nnx.relu(second[0](y)) if second else y


def _recomputed_pure(graphdef: nnx.GraphDef, state: nnx.State, features: Sequence[jax.Array]
                     ) -> tuple[jax.Array, nnx.State]:
    """:func:`_recomputed` as a function of its modules' state: output, new state."""
    modules = nnx.merge(graphdef, state)
    return _recomputed(modules, features), nnx.state(modules)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recompute_in_backward(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, whose backward pass recomputes ``fn`` from ``args`` instead of
    keeping its intermediate arrays (``jax.checkpoint`` with no residuals, built so that
    XLA cannot undo it)."""
    return fn(*args)


def _recompute_fwd(fn: Callable[..., Any], *args: Any) -> tuple[Any, tuple[Any, ...]]:
    return fn(*args), args  # the residuals: the inputs only


def _recompute_bwd(fn: Callable[..., Any], args: tuple[Any, ...], cotangent: Any) -> tuple[Any, ...]:
    # The recomputation reads its inputs through an exact +0 that depends on the incoming
    # cotangent, so it can neither start before the backward pass reaches it nor be merged
    # with the forward pass. jax.checkpoint / nnx.remat rely on optimisation barriers,
    # which XLA's CPU pipeline drops: there the rematerialised program compiles to the
    # very same buffers as the plain one and saves nothing (compiled.memory_analysis():
    # 2963 MiB of temporaries either way for DenseNet-121's step at 224x224, batch 16).
    zero = 0 * jax.tree.leaves(cotangent)[0].ravel()[0]
    args = jax.tree.map(lambda a: a + zero.astype(a.dtype)
                        if jnp.issubdtype(a.dtype, jnp.inexact) else a, args)
    return jax.vjp(fn, *args)[1](cotangent)


_recompute_in_backward.defvjp(_recompute_fwd, _recompute_bwd)
# --8<-- [end:helpers]


# --8<-- [start:conv_block]
class ConvBlock(nnx.Module):
    """BN -> ReLU -> conv: the pre-activation unit every DenseNet part is made of."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int,
                 geometry: ConvGeometry, *, dtype: Dtype | None = None,
                 param_dtype: Dtype | None = None, rngs: nnx.Rngs) -> None:
        dt = {"dtype": dtype, "param_dtype": param_dtype}
        self.norm = _norm(spec, in_channels, **dt, rngs=rngs)
        self.conv = _conv(spec, in_channels, out_channels, geometry, **dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(nnx.relu(self.norm(x)))
# --8<-- [end:conv_block]


# --8<-- [start:dense_layer]
class DenseLayer(nnx.Module):
    """H_l: [BN-ReLU-1x1 conv (bottleneck, DenseNet-B)] -> BN-ReLU-3x3 conv -> dropout.

    Called on the block input and every earlier layer's output (a list, or one
    array), it returns only the ``growth_rate`` new maps.

    With ``memory_efficient`` the concatenation and the *first* BN-ReLU-conv (with a
    bottleneck: and the second BN-ReLU) are recomputed in the backward pass instead of stored.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, *, memory_efficient: bool = False,
                 dtype: Dtype | None = None, param_dtype: Dtype | None = None,
                 rngs: nnx.Rngs) -> None:
        dt = {"dtype": dtype, "param_dtype": param_dtype}
        k, width = spec.growth_rate, spec.bottleneck_channels
        # Flat children, not nested ConvBlocks: these ARE the canonical names
        # (torchvision's norm1/conv1/norm2/conv2; norm/conv for a plain layer).
        self.has_bottleneck = width is not None
        if width is not None:
            self.norm1 = _norm(spec, in_channels, **dt, rngs=rngs)
            self.conv1 = _conv(spec, in_channels, width, spec.bottleneck_conv, **dt, rngs=rngs)
            self.norm2 = _norm(spec, width, **dt, rngs=rngs)
            self.conv2 = _conv(spec, width, k, spec.growth_conv, **dt, rngs=rngs)
        else:
            self.norm = _norm(spec, in_channels, **dt, rngs=rngs)
            self.conv = _conv(spec, in_channels, k, spec.growth_conv, **dt, rngs=rngs)
        # A child, not a function: nnx.Dropout holds its RNG stream ("dropout" of rngs)
        # and follows model.train() / model.eval().
        self.dropout = nnx.Dropout(spec.drop_rate, rngs=rngs)
        self.memory_efficient = memory_efficient

    def __call__(self, features: jax.Array | Sequence[jax.Array]) -> jax.Array:
        # A list, so that the concatenation happens inside the rematerialised part.
        features = [features] if isinstance(features, jax.Array) else list(features)
        part = ((self.norm1, self.conv1, self.norm2) if self.has_bottleneck
                else (self.norm, self.conv))
        if self.memory_efficient:
            # Recomputed in the backward pass instead of stored: the concatenation (layer
            # l's input has k0 + l*k channels, so storing it, and its BN-ReLU, for every
            # layer costs memory quadratic in the block depth) and, with a bottleneck,
            # everything up to the 3x3 conv's input, so that per layer only that input
            # (4k channels) and the k new maps are kept. The whole part is recomputed,
            # not single ops (as nnx.remat would wrap it, flax #3703); being functional,
            # its recomputation updates no running statistic a second time.
            graphdef, state = nnx.split(part)
            y, state = _recompute_in_backward(functools.partial(_recomputed_pure, graphdef),
                                              state, features)
            nnx.update(part, state)  # the running statistics of the forward pass
        else:
            y = _recomputed(part, features)
        if self.has_bottleneck:
            y = self.conv2(y)
        return self.dropout(y)
# --8<-- [end:dense_layer]


# --8<-- [start:dense_block]
class DenseBlock(nnx.Module):
    """``num_layers`` dense layers on ``in_channels`` inputs (widths from
    ``spec.block_plan``); each sees the channel-wise concatenation of the block
    input and every earlier layer's new maps. Returns that concatenation:
    ``in_channels + num_layers * growth_rate`` channels.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, num_layers: int, *,
                 memory_efficient: bool = False, dtype: Dtype | None = None,
                 param_dtype: Dtype | None = None, rngs: nnx.Rngs) -> None:
        plan = spec.block_plan(in_channels, num_layers)
        # Children denselayer1, ... (the canonical names). NNX orders a module's
        # attributes by name when it splits one (denselayer10 before denselayer2),
        # so the order is kept as well, as static data.
        self._order = tuple(f"denselayer{i}" for i in range(1, num_layers + 1))
        for name, width in zip(self._order, plan.layer_in_channels, strict=True):
            setattr(self, name, DenseLayer(spec, width, memory_efficient=memory_efficient,
                                           dtype=dtype, param_dtype=param_dtype, rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        features = [x]
        for name in self._order:
            features.append(getattr(self, name)(features))
        return jnp.concatenate(features, axis=-1)
# --8<-- [end:dense_block]


# --8<-- [start:transition]
class Transition(ConvBlock):
    """BN -> ReLU -> 1x1 conv (compression to ``out_channels``) -> 2x2/2 average pool."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int, *,
                 dtype: Dtype | None = None, param_dtype: Dtype | None = None,
                 rngs: nnx.Rngs) -> None:
        super().__init__(spec, in_channels, out_channels, spec.transition_conv, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.pool = _Pool(nnx.avg_pool, spec.transition_pool)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pool(super().__call__(x))
# --8<-- [end:transition]


# --8<-- [start:network]
class DenseNet(nnx.Module):
    """The network: stem, dense blocks with transitions, final BN-ReLU, global average
    pooling and a linear classifier, all read from ``spec``.

    ``features`` is an ``nnx.Dict`` of torchvision's parts (``conv0, norm0, relu0,
    pool0, denseblock1, transition1, ..., norm5``; the CIFAR stem is ``conv0``
    alone) and ``classifier`` an ``nnx.Linear``: torchvision's layout. Inputs are
    NHWC; pooling is global, so any input from ``spec.min_input_size()`` up works.
    """

    def __init__(self, spec: DenseNetSpec, *, memory_efficient: bool = False,
                 dtype: Dtype | None = None, param_dtype: Dtype | None = None,
                 rngs: nnx.Rngs) -> None:
        self.spec = spec
        self.dtype, self.param_dtype = dtype, param_dtype  # the runtime computes in these
        dt = {"dtype": dtype, "param_dtype": param_dtype}
        plan = spec.channel_plan
        # --8<-- [start:stem]
        parts: dict[str, Callable[[jax.Array], jax.Array]] = {
            "conv0": _conv(spec, spec.in_channels, plan.stem_channels, spec.stem_conv, **dt,
                           rngs=rngs)}
        if (sp := spec.stem_pool) is not None:  # the CIFAR stem is one conv, no BN/ReLU/pool
            parts["norm0"] = _norm(spec, plan.stem_channels, **dt, rngs=rngs)
            parts["relu0"] = nnx.relu  # a function: static data of the dict, like torchvision's relu0
            parts["pool0"] = _Pool(nnx.max_pool, sp)
        # --8<-- [end:stem]
        for bp in plan.blocks:
            parts[f"denseblock{bp.index}"] = DenseBlock(
                spec, bp.in_channels, bp.num_layers, memory_efficient=memory_efficient, **dt,
                rngs=rngs)
            if bp.index < spec.num_blocks:
                tp = plan.transitions[bp.index - 1]
                parts[f"transition{tp.index}"] = Transition(spec, tp.in_channels, tp.out_channels,
                                                            **dt, rngs=rngs)
        # --8<-- [start:head]
        parts["norm5"] = _norm(spec, plan.final_channels, **dt, rngs=rngs)
        self.features = nnx.Dict(parts)
        self._order = tuple(parts)  # nnx.Dict comes back sorted by name after a split
        self.classifier = nnx.Linear(plan.final_channels, spec.num_classes,
                                     **_dtypes(dtype, param_dtype), rngs=rngs)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Stem, blocks, transitions and the final BN-ReLU: (N, h, w, C)."""
        for name in self._order:
            x = self.features[name](x)
        # torchvision applies the final ReLU after `features`, in forward; here it
        # belongs to the features stage, so forward_head sees post-activation maps.
        return nnx.relu(x)

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        """Global average pooling (any spatial size, never a fixed 7x7) and the classifier."""
        x = jnp.mean(x, axis=(1, 2))
        return x if pre_logits else self.classifier(x)
    # --8<-- [end:head]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward_head(self.forward_features(x))

    def forward_stages(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every stage of ``spec.stage_names`` (NHWC for the 4-d ones): stem, block1,
        transition1, ..., blockN, features (after the final BN-ReLU), pooled, logits."""
        stage_parts = self.spec.stage_parts
        stages: dict[str, jax.Array] = {}
        for name in self._order:
            x = self.features[name](x)
            if name in stage_parts:
                stages[stage_parts[name]] = x
        stages["features"] = x = nnx.relu(x)
        stages["pooled"] = x = self.forward_head(x, pre_logits=True)
        stages["logits"] = self.classifier(x)
        return stages
# --8<-- [end:network]


# ---------------------------------------------------------------------- constructors
def from_spec(spec: DenseNetSpec | str, *, memory_efficient: bool = False,
              dtype: Dtype | None = None, param_dtype: Dtype | None = None,
              rngs: nnx.Rngs | None = None, **changes: Any) -> DenseNet:
    """A :class:`DenseNet` for a spec or a preset name, with spec fields changed;
    ``rngs`` defaults to ``nnx.Rngs(0)`` (parameters and dropout)."""
    if isinstance(spec, str):
        spec = get_spec(spec, **changes)
    elif changes:
        spec = spec.replace(**changes)
    return DenseNet(spec, memory_efficient=memory_efficient, dtype=dtype,
                    param_dtype=param_dtype, rngs=nnx.Rngs(0) if rngs is None else rngs)


def densenet121(**changes: Any) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16): 7,978,856 parameters with 1000 classes."""
    return from_spec("densenet121", **changes)


def densenet161(**changes: Any) -> DenseNet:
    """DenseNet-161 (k=48, blocks 6-12-36-24, 96 initial features)."""
    return from_spec("densenet161", **changes)


def densenet169(**changes: Any) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32)."""
    return from_spec("densenet169", **changes)


def densenet201(**changes: Any) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32)."""
    return from_spec("densenet201", **changes)
