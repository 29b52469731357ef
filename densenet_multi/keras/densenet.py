"""DenseNet (Huang et al., CVPR 2017) as Keras 3 layers and a ``keras.Model``.

Written against the backend-agnostic ``keras`` API only (``keras.layers``,
``keras.ops``; no ``tf.`` or ``jax.`` call in the computation), channels-last
(NHWC activations, HWIO kernels), so the same code runs under
``KERAS_BACKEND=tensorflow`` and ``KERAS_BACKEND=jax``. The parts are the
paper's, in the same order as in the other backends of densenet_multi:

* :class:`ConvBlock` -- BN -> ReLU -> conv, the pre-activation unit;
* :class:`DenseLayer` -- H_l: optional 1x1 bottleneck block, then the 3x3 block
  that makes ``growth_rate`` new feature maps, then optional dropout;
* :class:`DenseBlock` -- every layer sees the concatenation of all earlier maps;
* :class:`Transition` -- BN-ReLU-1x1 conv (compression) and a 2x2/2 average pool;
* :class:`DenseNet` -- stem, blocks and transitions, final BN-ReLU, global
  average pool, classifier; built from a :class:`~densenet_multi.spec.DenseNetSpec`.

Every width comes from ``spec.channel_plan`` and every kernel/stride/padding from
the spec's :class:`~densenet_multi.spec.ConvGeometry`. Every layer has a
``get_config`` and is registered with ``keras.saving``, so ``model.save("m.keras")``
and ``keras.models.load_model("m.keras")`` round-trip.

**dtype.** Every part takes Keras's ``dtype`` argument (a dtype name such as
``"float64"`` or a ``keras.DTypePolicy``; default: the global policy,
``keras.config.dtype_policy()``, i.e. float32) and passes its own
``dtype_policy`` down to every sublayer (BatchNormalization, Conv2D, Dense, the
paddings and pools), so ``DenseNet(spec, dtype="float64")`` holds every weight
and BN moving statistic in float64 and computes in float64 without touching the
global policy; the policy is in ``get_config``, so a ``.keras`` file keeps it.
Under ``KERAS_BACKEND=jax`` float64 is refused (RuntimeError, see
:func:`check_float64_support`): without JAX's 64-bit mode (``JAX_ENABLE_X64=1``)
JAX truncates every float64 array to float32, and even with it Keras 3.15's type
promotion under JAX computes BatchNormalization and ``ops.mean`` in float32.

Conventions that differ from Keras's defaults, each set explicitly here:

* **Padding.** PyTorch pads symmetrically. Keras ``padding="same"`` at stride 2
  pads asymmetrically (the stem's 7x7/2 conv on an even input gets 2 rows on top
  and 3 at the bottom), which computes a different network. Every padded layer is
  therefore an explicit ``ZeroPadding2D(geometry.pads)`` followed by a
  ``"valid"`` conv or pool.
* **BN epsilon.** Keras's default is 1e-3; the spec's ``bn_eps`` (1e-5, as
  PyTorch; 1.001e-5 for keras.applications weights) is passed explicitly.
* **BN momentum.** Keras's ``momentum`` is the weight of the *old* running value,
  the spec's (PyTorch's) the weight of the *new* batch statistic: translated in
  one line in :class:`DenseNet`. Keras updates the running variance with the
  *biased* batch variance (PyTorch: unbiased); :func:`densenet_multi.keras.run`
  converts it to the canonical convention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import keras
from keras import layers, ops

from ..spec import ConvGeometry, DenseNetSpec, check_input_shape, get_spec

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
    "check_float64_support",
]

_PACKAGE = "densenet_multi"

#: What Keras's ``dtype`` argument takes: a dtype name, a ``keras.DTypePolicy``, its
#: serialised dict (from ``get_config``), or None for the global policy.
DTypeLike: TypeAlias = str | keras.DTypePolicy | Mapping[str, Any] | None


def _geometry(g: ConvGeometry | Mapping[str, int]) -> ConvGeometry:
    """A ConvGeometry from itself or from its ``get_config`` dict form."""
    return g if isinstance(g, ConvGeometry) else ConvGeometry(**g)


def _kaiming_normal() -> keras.initializers.Initializer:
    # torchvision's kaiming_normal_: an untruncated N(0, 2 / fan_in) (Keras's "he_normal"
    # truncates it, and under JAX compiles a slower sampler for every kernel shape).
    return keras.initializers.VarianceScaling(2.0, mode="fan_in", distribution="untruncated_normal")


def _batch_norm(epsilon: float, momentum: float, name: str, dtype: DTypeLike
                ) -> layers.BatchNormalization:
    # epsilon is always passed: Keras's default of 1e-3 would silently change
    # every output by about 1e-3 relative compared with PyTorch's 1e-5.
    return layers.BatchNormalization(axis=-1, epsilon=epsilon, momentum=momentum, name=name,
                                     dtype=dtype)


def _zero_pad(g: ConvGeometry, name: str, dtype: DTypeLike) -> layers.ZeroPadding2D | None:
    # Explicit symmetric padding instead of padding="same": see the module docstring.
    return layers.ZeroPadding2D(padding=g.pads, name=name, dtype=dtype) if g.padding else None


def check_float64_support() -> None:
    """Raise RuntimeError, saying why and what to do, where this Keras backend would not
    compute a float64 model in float64; return quietly where it would (TensorFlow).

    Two things stand in the way under ``KERAS_BACKEND=jax``, both silent:

    * without its 64-bit mode (``JAX_ENABLE_X64=1``) JAX truncates every float64
      array it creates to float32, with a warning: the variables would claim
      float64 and hold float32;
    * even with it, Keras's type promotion under JAX maps float64 to float32
      (``keras.backend.result_type("float64", "float32") == "float32"``, "to be
      aligned with JAX's default behavior"; Keras 3.15), and
      ``BatchNormalization`` and ``ops.mean`` (global average pooling, the loss)
      compute in ``result_type(x.dtype, "float32")``: measured on a small
      DenseNet-BC, the stages are then up to 7e-7 and the gradients 3e-6 away
      from the float64 reference, instead of 1e-15.

    The second is checked through ``keras.backend.result_type`` itself, so a Keras
    that promotes float64 to float64 under JAX passes.
    """
    reasons = []
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            reasons.append("JAX's 64-bit mode is off (jax_enable_x64 is False), so JAX would "
                           "create every float64 array as float32: set JAX_ENABLE_X64=1 in the "
                           "environment (or jax.config.update('jax_enable_x64', True))")
    if keras.backend.result_type("float64", "float32") != "float64":
        reasons.append(
            f"Keras {keras.__version__} promotes float64 to float32 under "
            f"KERAS_BACKEND={keras.backend.backend()} (keras.backend.result_type('float64', "
            "'float32') is float32), so BatchNormalization and ops.mean would compute in "
            "float32 even with 64-bit mode on")
    if reasons:
        raise RuntimeError(
            f"a float64 DenseNet would silently compute in float32 under "
            f"KERAS_BACKEND={keras.backend.backend()}: " + "; and ".join(reasons)
            + ". Use KERAS_BACKEND=tensorflow for float64 models.")


def _channels_last(shape: Sequence[int | None], channels: int) -> tuple[int | None, ...]:
    return (*tuple(shape)[:-1], channels)


# ---------------------------------------------------------------------- conv block
@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBlock(layers.Layer):
    """BN -> ReLU -> conv: the pre-activation unit every DenseNet part is made of.

    Args:
        filters: output channels of the convolution.
        geometry: kernel size, stride and symmetric padding (a ConvGeometry of the spec).
        use_bias: whether the convolution has a bias (the d2l net's do, torchvision's don't).
        epsilon: BatchNorm epsilon.
        momentum: BatchNorm momentum in *Keras's* convention (weight of the old value).
        dtype: Keras's dtype argument (name or ``DTypePolicy``; default the global policy),
            passed to the BN and the conv.
    """

    def __init__(
        self,
        filters: int,
        geometry: ConvGeometry | Mapping[str, int],
        *,
        use_bias: bool = False,
        epsilon: float = 1e-5,
        momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.geometry = _geometry(geometry)
        self.use_bias = bool(use_bias)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        g, dtype = self.geometry, self.dtype_policy
        self.norm = _batch_norm(self.epsilon, self.momentum, name="norm", dtype=dtype)
        self.relu = layers.ReLU(name="relu", dtype=dtype)
        self.pad = _zero_pad(g, name="pad", dtype=dtype)
        self.conv = layers.Conv2D(
            self.filters, g.kernel, strides=g.stride, padding="valid", use_bias=self.use_bias,
            kernel_initializer=_kaiming_normal(), name="conv", dtype=dtype,
        )

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.norm.build(input_shape)
        if self.pad is not None:
            self.pad.build(input_shape)
            input_shape = self.pad.compute_output_shape(input_shape)
        self.conv.build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self._activate_and_convolve(self.norm(x, training=training))

    def _activate_and_convolve(self, y: Any) -> Any:
        y = self.relu(y)
        if self.pad is not None:
            y = self.pad(y)
        return self.conv(y)

    # -- the memory-efficient path (see DenseLayer) --------------------------------
    def call_on_concatenation(self, features: Sequence[Any], training: bool | None = None) -> Any:
        """``self(concatenate(features))``, recomputing concat, BN and ReLU in the backward pass.

        ``keras.remat`` re-runs the wrapped function when gradients are taken, so
        that function must not change state: Keras's BatchNormalization assigns its
        running statistics inside ``call`` -- under ``tf.recompute_grad`` they would
        be updated twice per step, under ``jax.checkpoint`` the assignment leaks a
        tracer. So the batch statistics are computed here, outside, and the running
        averages updated once; the rematerialised function is pure. The statistics
        of a channel concatenation are, channel by channel, the statistics of each
        piece, so the concatenation is never kept for them either.
        """
        norm = self.norm
        if training and norm.trainable:
            moments = [ops.moments(f, axes=(0, 1, 2)) for f in features]
            mean = ops.concatenate([m for m, _ in moments], axis=0)
            variance = ops.concatenate([v for _, v in moments], axis=0)
            # The same update as keras.layers.BatchNormalization.call (Keras convention).
            norm.moving_mean.assign(norm.moving_mean * norm.momentum + mean * (1.0 - norm.momentum))
            norm.moving_variance.assign(
                norm.moving_variance * norm.momentum + variance * (1.0 - norm.momentum)
            )
        else:
            mean = ops.convert_to_tensor(norm.moving_mean)
            variance = ops.convert_to_tensor(norm.moving_variance)
        return keras.remat(self._concat_normalize_activate_convolve)(mean, variance, *features)

    def _concat_normalize_activate_convolve(self, mean: Any, variance: Any, *features: Any) -> Any:
        x = ops.concatenate(list(features), axis=-1)
        y = ops.batch_normalization(
            x, mean, variance, axis=-1, offset=self.norm.beta, scale=self.norm.gamma,
            epsilon=self.norm.epsilon,
        )
        return self._activate_and_convolve(y)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        if self.pad is not None:
            input_shape = self.pad.compute_output_shape(input_shape)
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "geometry": dataclasses.asdict(self.geometry),
            "use_bias": self.use_bias,
            "epsilon": self.epsilon,
            "momentum": self.momentum,
        }


# ---------------------------------------------------------------------- dense layer
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseLayer(layers.Layer):
    """H_l: [BN-ReLU-1x1 conv (bottleneck)] -> BN-ReLU-3x3 conv -> [dropout].

    Called on the *list* of feature maps seen so far (the block input and every
    earlier layer's output, as torchvision's ``_DenseLayer``), it returns the
    ``growth_rate`` new maps. The first unit (the bottleneck, or the 3x3 of a
    plain layer) runs on their concatenation.

    Args:
        in_channels: width of the concatenated input (from the spec's channel plan).
        growth_rate: k, the number of new feature maps.
        bottleneck_channels: ``bn_size * k`` for DenseNet-B, or None for a plain layer.
        bottleneck_geometry, growth_geometry: the 1x1 and 3x3 geometries of the spec.
        drop_rate: dropout on the new maps (0 = none).
        memory_efficient: recompute concat + first BN-ReLU-conv in the backward pass.
        dtype: Keras's dtype argument, passed to both units and the dropout.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bottleneck_channels: int | None,
        *,
        bottleneck_geometry: ConvGeometry | Mapping[str, int],
        growth_geometry: ConvGeometry | Mapping[str, int],
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        use_bias: bool = False,
        epsilon: float = 1e-5,
        momentum: float = 0.9,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.growth_rate = int(growth_rate)
        self.bottleneck_channels = None if bottleneck_channels is None else int(bottleneck_channels)
        self.bottleneck_geometry = _geometry(bottleneck_geometry)
        self.growth_geometry = _geometry(growth_geometry)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = bool(memory_efficient)
        self.use_bias = bool(use_bias)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.seed = seed
        unit = {"use_bias": self.use_bias, "epsilon": self.epsilon, "momentum": self.momentum,
                "dtype": self.dtype_policy}
        # Canonical names: a bottleneck layer's units are norm1/conv1 and norm2/conv2,
        # a plain layer's single unit is norm/conv (see densenet_multi.params).
        self.bottleneck = (
            None if self.bottleneck_channels is None
            else ConvBlock(self.bottleneck_channels, self.bottleneck_geometry, name="bottleneck",
                           **unit)
        )
        self.growth = ConvBlock(self.growth_rate, self.growth_geometry, name="growth", **unit)
        self.dropout = (
            layers.Dropout(self.drop_rate, seed=seed, name="dropout", dtype=self.dtype_policy)
            if self.drop_rate > 0 else None
        )

    @property
    def first_unit(self) -> ConvBlock:
        """The unit that runs on the concatenation: the bottleneck, or the 3x3 of a plain layer."""
        return self.bottleneck if self.bottleneck is not None else self.growth

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        shape = _channels_last(tuple(input_shape[0]), self.in_channels)
        self.first_unit.build(shape)
        if self.bottleneck is not None:
            self.growth.build(self.bottleneck.compute_output_shape(shape))

    def call(self, features: Sequence[Any], training: bool | None = None) -> Any:
        features = list(features)
        if self.memory_efficient:
            # Only concat + the first BN-ReLU-conv is recomputed: its inputs grow with
            # every layer, so storing them costs memory quadratic in the block depth,
            # while the bottleneck output (4k maps) and the 3x3 part grow linearly
            # (efficient_densenet_pytorch, torchvision's memory_efficient).
            y = self.first_unit.call_on_concatenation(features, training=training)
        else:
            y = self.first_unit(ops.concatenate(features, axis=-1), training=training)
        if self.bottleneck is not None:
            y = self.growth(y, training=training)
        if self.dropout is not None:
            y = self.dropout(y, training=training)
        return y

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]):
        return _channels_last(tuple(input_shape[0]), self.growth_rate)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "growth_rate": self.growth_rate,
            "bottleneck_channels": self.bottleneck_channels,
            "bottleneck_geometry": dataclasses.asdict(self.bottleneck_geometry),
            "growth_geometry": dataclasses.asdict(self.growth_geometry),
            "drop_rate": self.drop_rate,
            "memory_efficient": self.memory_efficient,
            "use_bias": self.use_bias,
            "epsilon": self.epsilon,
            "momentum": self.momentum,
            "seed": self.seed,
        }


# ---------------------------------------------------------------------- dense block
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseBlock(layers.Layer):
    """A dense block: layer l sees the concatenation of the block input and layers 1..l-1.

    Args:
        layer_in_channels: the input width of every layer, from ``BlockPlan.layer_in_channels``.
        growth_rate, bottleneck_channels, ...: passed to each :class:`DenseLayer`.
        dtype: Keras's dtype argument, passed to each :class:`DenseLayer`.
    """

    def __init__(
        self,
        layer_in_channels: Sequence[int],
        growth_rate: int,
        bottleneck_channels: int | None,
        *,
        bottleneck_geometry: ConvGeometry | Mapping[str, int],
        growth_geometry: ConvGeometry | Mapping[str, int],
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        use_bias: bool = False,
        epsilon: float = 1e-5,
        momentum: float = 0.9,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layer_in_channels = tuple(int(c) for c in layer_in_channels)
        self.layer_kwargs = {
            "growth_rate": int(growth_rate),
            "bottleneck_channels": bottleneck_channels,
            "bottleneck_geometry": _geometry(bottleneck_geometry),
            "growth_geometry": _geometry(growth_geometry),
            "drop_rate": float(drop_rate),
            "memory_efficient": bool(memory_efficient),
            "use_bias": bool(use_bias),
            "epsilon": float(epsilon),
            "momentum": float(momentum),
        }
        self.seed = seed
        self.dense_layers = [
            DenseLayer(cin, name=f"denselayer{l + 1}", seed=None if seed is None else seed + l,
                       dtype=self.dtype_policy, **self.layer_kwargs)
            for l, cin in enumerate(self.layer_in_channels)
        ]

    def build(self, input_shape: Sequence[int | None]) -> None:
        for layer in self.dense_layers:
            layer.build([_channels_last(input_shape, layer.in_channels)])

    def call(self, x: Any, training: bool | None = None) -> Any:
        features = [x]
        for layer in self.dense_layers:
            features.append(layer(features, training=training))
        return ops.concatenate(features, axis=-1)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        last = self.dense_layers[-1]
        return _channels_last(input_shape, last.in_channels + last.growth_rate)

    def get_config(self) -> dict[str, Any]:
        kw = dict(self.layer_kwargs)
        kw["bottleneck_geometry"] = dataclasses.asdict(kw["bottleneck_geometry"])
        kw["growth_geometry"] = dataclasses.asdict(kw["growth_geometry"])
        return {**super().get_config(), "layer_in_channels": list(self.layer_in_channels),
                "seed": self.seed, **kw}


# ---------------------------------------------------------------------- transition
@keras.saving.register_keras_serializable(package=_PACKAGE)
class Transition(layers.Layer):
    """BN -> ReLU -> 1x1 conv (compression to ``out_channels``) -> 2x2/2 average pool.

    ``dtype`` (Keras's argument) is passed to the conv block and the pool.
    """

    def __init__(
        self,
        out_channels: int,
        *,
        conv_geometry: ConvGeometry | Mapping[str, int],
        pool_geometry: ConvGeometry | Mapping[str, int],
        use_bias: bool = False,
        epsilon: float = 1e-5,
        momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)
        self.conv_geometry = _geometry(conv_geometry)
        self.pool_geometry = _geometry(pool_geometry)
        self.use_bias = bool(use_bias)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.block = ConvBlock(self.out_channels, self.conv_geometry, use_bias=self.use_bias,
                               epsilon=self.epsilon, momentum=self.momentum, name="block",
                               dtype=self.dtype_policy)
        p = self.pool_geometry
        if p.padding:
            raise ValueError(f"a transition's average pool has no padding, got {p}")
        self.pool = layers.AveragePooling2D(pool_size=p.kernel, strides=p.stride, padding="valid",
                                            name="pool", dtype=self.dtype_policy)

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.block.build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self.pool(self.block(x, training=training))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return self.pool.compute_output_shape(self.block.compute_output_shape(input_shape))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "out_channels": self.out_channels,
            "conv_geometry": dataclasses.asdict(self.conv_geometry),
            "pool_geometry": dataclasses.asdict(self.pool_geometry),
            "use_bias": self.use_bias,
            "epsilon": self.epsilon,
            "momentum": self.momentum,
        }


# ---------------------------------------------------------------------- network
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseNet(keras.Model):
    """The network of a :class:`~densenet_multi.spec.DenseNetSpec`, channels-last.

    ``model(x)`` maps an NHWC batch to logits (no softmax: compile with
    ``from_logits=True``). :meth:`forward_stages` returns every stage of
    ``spec.stage_names`` (stem, block1, transition1, ..., features, pooled,
    logits), :meth:`forward_features` the features after the final BN-ReLU and
    :meth:`forward_head` the pooled features or logits from them.

    Layer attributes follow the canonical (torchvision) parts: ``conv0``,
    ``norm0``, ``pool0`` (stem), ``blocks[b]`` (``denseblock{b+1}``),
    ``transitions[t]``, ``norm5``, ``classifier``.

    ``dtype`` is Keras's layer argument: a dtype name (``"float64"``) or a
    ``keras.DTypePolicy``; None (the default) takes the global policy, as every
    Keras layer does. It is passed down to every sublayer, so the weights, the BN
    moving statistics and the computation are all in it, and saved with the
    model. A float64 model raises RuntimeError where the Keras backend would compute
    it in float32 (under ``KERAS_BACKEND=jax``: :func:`check_float64_support`).
    """

    def __init__(self, spec: DenseNetSpec | Mapping[str, Any] | str = "densenet121",
                 *, seed: int | None = None, dtype: DTypeLike = None, **kwargs: Any) -> None:
        if isinstance(spec, str):
            spec = get_spec(spec)
        elif isinstance(spec, Mapping):
            spec = DenseNetSpec.from_dict(spec)
        kwargs.setdefault("name", spec.name)
        super().__init__(dtype=dtype, **kwargs)
        if "float64" in (self.variable_dtype, self.compute_dtype):
            check_float64_support()
        self.spec = spec
        self.seed = seed
        plan = spec.channel_plan
        eps = spec.bn_eps
        # PyTorch's momentum (the spec's, 0.1) weighs the new batch statistic; Keras's weighs the old value.
        momentum = 1.0 - spec.bn_momentum
        dtype = self.dtype_policy  # every sublayer computes and keeps its weights in it
        unit = {"use_bias": spec.conv_bias, "epsilon": eps, "momentum": momentum, "dtype": dtype}

        # Stem: conv0 [-> norm0 -> ReLU -> max-pool] (the CIFAR stem is conv0 alone).
        sc = spec.stem_conv
        self.pad0 = _zero_pad(sc, name="pad0", dtype=dtype)
        self.conv0 = layers.Conv2D(plan.stem_channels, sc.kernel, strides=sc.stride,
                                   padding="valid", use_bias=spec.conv_bias,
                                   kernel_initializer=_kaiming_normal(), name="conv0", dtype=dtype)
        self.norm0 = (_batch_norm(eps, momentum, name="norm0", dtype=dtype)
                      if spec.stem_has_norm else None)
        self.relu0 = layers.ReLU(name="relu0", dtype=dtype) if spec.stem_has_norm else None
        sp = spec.stem_pool
        # Zero padding before the max-pool equals PyTorch's -inf padding only because
        # the pool's input comes out of a ReLU and is >= 0: a zero never beats the
        # window's real maximum. (keras.applications pads with zeros here too.)
        self.pool0_pad = _zero_pad(sp, name="pool0_pad", dtype=dtype) if sp is not None else None
        self.pool0 = (layers.MaxPooling2D(pool_size=sp.kernel, strides=sp.stride, padding="valid",
                                          name="pool0", dtype=dtype) if sp is not None else None)

        self.blocks: list[DenseBlock] = []
        self.transitions: list[Transition] = []
        for bp in plan.blocks:
            self.blocks.append(DenseBlock(
                bp.layer_in_channels, spec.growth_rate, bp.bottleneck_channels,
                bottleneck_geometry=spec.bottleneck_conv, growth_geometry=spec.growth_conv,
                drop_rate=spec.drop_rate, memory_efficient=spec.memory_efficient,
                seed=None if seed is None else seed + 1000 * bp.index,
                name=f"denseblock{bp.index}", **unit,
            ))
            if bp.index < spec.num_blocks:
                tp = plan.transitions[bp.index - 1]
                self.transitions.append(Transition(
                    tp.out_channels, conv_geometry=spec.transition_conv,
                    pool_geometry=spec.transition_pool, name=f"transition{tp.index}", **unit,
                ))
        # The final BN-ReLU belongs to the features (torchvision applies that ReLU in
        # forward(), after features.norm5); pooling is global, never a fixed 7x7.
        self.norm5 = _batch_norm(eps, momentum, name="norm5", dtype=dtype)
        self.relu5 = layers.ReLU(name="relu5", dtype=dtype)
        self.pool = layers.GlobalAveragePooling2D(name="pool", dtype=dtype)
        self.classifier = layers.Dense(spec.num_classes, name="classifier", dtype=dtype)

    # -- building -----------------------------------------------------------------
    def build(self, input_shape: Sequence[int | None] | None = None) -> None:
        """Create every weight; widths come from the channel plan, so spatial sizes may be None."""
        spec, plan = self.spec, self.spec.channel_plan
        shape = (None, None, None, spec.in_channels) if input_shape is None else tuple(input_shape)
        self._check_input_shape(shape)
        if self.pad0 is not None:
            self.pad0.build(shape)
            shape = self.pad0.compute_output_shape(shape)
        self.conv0.build(shape)
        shape = self.conv0.compute_output_shape(shape)
        if self.norm0 is not None:
            self.norm0.build(shape)
        for i, block in enumerate(self.blocks):
            block.build(_channels_last(shape, plan.blocks[i].in_channels))
            if i < len(self.transitions):
                self.transitions[i].build(_channels_last(shape, plan.transitions[i].in_channels))
        final = (None, None, None, plan.final_channels)
        self.norm5.build(final)
        self.classifier.build((None, plan.final_channels))

    def _check_input_shape(self, shape: Sequence[int | None]) -> None:
        """Raise InputError for an NHWC shape this network cannot take (None dims are unknown)."""
        shape = tuple(shape)
        if len(shape) == 4 and shape[-1] == self.spec.in_channels and None in shape:
            if shape[1] is None or shape[2] is None:
                # unknown spatial size: rank and channels are all that can be checked now
                return
            shape = (1, *shape[1:])
        check_input_shape(self.spec, tuple(-1 if s is None else s for s in shape), "NHWC")

    # -- forward ------------------------------------------------------------------
    def forward_stages(self, x: Any, training: bool | None = None) -> dict[str, Any]:
        """Every stage output of ``spec.stage_names``, NHWC (pooled and logits: (N, C))."""
        self._check_input_shape(tuple(x.shape))
        stages: dict[str, Any] = {}
        y = self.pad0(x) if self.pad0 is not None else x
        y = self.conv0(y)
        if self.norm0 is not None:
            y = self.relu0(self.norm0(y, training=training))
        if self.pool0 is not None:
            y = self.pool0(self.pool0_pad(y) if self.pool0_pad is not None else y)
        stages["stem"] = y
        for i, block in enumerate(self.blocks):
            y = block(y, training=training)
            stages[f"block{i + 1}"] = y
            if i < len(self.transitions):
                y = self.transitions[i](y, training=training)
                stages[f"transition{i + 1}"] = y
        y = self.relu5(self.norm5(y, training=training))
        stages["features"] = y
        stages["pooled"] = self.pool(y)
        stages["logits"] = self.classifier(stages["pooled"])
        return stages

    def forward_features(self, x: Any, training: bool | None = None) -> Any:
        """The features after the final BN-ReLU, (N, H', W', C) -- for feature extraction."""
        return self.forward_stages(x, training=training)["features"]

    def forward_head(self, features: Any, pre_logits: bool = False) -> Any:
        """Global average pool (and, unless ``pre_logits``, the classifier) of the features."""
        pooled = self.pool(features)
        return pooled if pre_logits else self.classifier(pooled)

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self.forward_stages(x, training=training)["logits"]

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return (input_shape[0], self.spec.num_classes)

    # -- serialisation ------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable, "spec": self.spec.to_dict(),
                "seed": self.seed, "dtype": keras.dtype_policies.serialize(self.dtype_policy)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DenseNet:
        config = dict(config)
        spec = DenseNetSpec.from_dict(config.pop("spec"))
        return cls(spec, **config)


# ---------------------------------------------------------------------- constructors
def from_spec(spec: DenseNetSpec, *, input_shape: Sequence[int | None] | None = None,
              seed: int | None = None, dtype: DTypeLike = None, **kwargs: Any) -> DenseNet:
    """A built :class:`DenseNet` for ``spec`` (every weight created, Keras initialisation),
    in ``dtype`` (default: Keras's global dtype policy)."""
    model = DenseNet(spec, seed=seed, dtype=dtype, **kwargs)
    model.build(input_shape)
    return model


def densenet121(*, dtype: DTypeLike = None, **changes: Any) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16); ``changes`` override spec fields, ``dtype`` is
    Keras's (default: the global policy)."""
    return from_spec(get_spec("densenet121", **changes), dtype=dtype)


def densenet161(*, dtype: DTypeLike = None, **changes: Any) -> DenseNet:
    """DenseNet-161 (k=48, blocks 6-12-36-24, 96 stem channels)."""
    return from_spec(get_spec("densenet161", **changes), dtype=dtype)


def densenet169(*, dtype: DTypeLike = None, **changes: Any) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32)."""
    return from_spec(get_spec("densenet169", **changes), dtype=dtype)


def densenet201(*, dtype: DTypeLike = None, **changes: Any) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32)."""
    return from_spec(get_spec("densenet201", **changes), dtype=dtype)
