"""DenseNet (Huang et al., CVPR 2017) as Keras 3 layers, built from a :class:`DenseNetSpec`.

The parts follow the paper, in this order: :class:`ConvBlock` (BN-ReLU-conv,
the pre-activation unit everything is made of), :class:`DenseLayer` (H_l:
optional 1x1 bottleneck, 3x3 conv, dropout; returns its ``growth_rate`` new
maps), :class:`DenseBlock` (every layer sees the concatenation of all earlier
maps), :class:`Transition` (BN-ReLU-1x1 conv with compression, 2x2 average
pool) and :class:`DenseNet` (stem, blocks, transitions, final BN-ReLU, global
average pooling, classifier), then :func:`from_spec` and
:func:`densenet121` ... :func:`densenet201`.

Written against the backend-agnostic ``keras`` API only (``keras.layers``,
``keras.ops``), channels-last (NHWC activations, HWIO kernels), so the same
code runs under ``KERAS_BACKEND=tensorflow`` and ``KERAS_BACKEND=jax``. Layer
names are the canonical (torchvision) ones, so variable paths read
``densenet121/denseblock1/denselayer1/norm1/gamma``. Every width comes from
the spec (``channel_plan``, ``block_plan``) and every kernel, stride and
padding from its :class:`~densenet_multi.spec.ConvGeometry`. Keras creates a
layer's weights in ``build(input_shape)``, before its first call: each part
builds its children with the widths it was made for (``in_channels``, what it
must be called with), so ``model.build((None, None, None, 3))`` creates every
weight without tracing ``call`` (a DenseNet-121 is 120 convolutions: tracing it
takes seconds), and a wrong width is refused with a ValueError instead.

Every part takes Keras's own keyword arguments (``name``, ``dtype``: a dtype
name or a ``keras.DTypePolicy``, default the global policy) and passes its
``dtype_policy`` to every layer it creates, so ``DenseNet(spec,
dtype="float64")`` keeps its weights, its BN moving statistics and its
computation in float64 (under ``KERAS_BACKEND=jax`` the runtime refuses float64,
see ``runtime.check_float64_support``). The spec is serialised once, by
:meth:`DenseNet.get_config`: the parts are rebuilt from it by the constructor,
so a ``.keras`` file round-trips. Inputs are not validated here:
``runtime.run`` checks numpy batches at the backend boundary, and a layer
call gets Keras's own errors.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

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
def _batch_norm(spec: DenseNetSpec, name: str, dtype: Any) -> layers.BatchNormalization:
    # Keras's momentum weighs the old running value, the spec's (PyTorch's 0.1) the
    # new batch statistic; epsilon is always passed (Keras's default is 1e-3, not 1e-5).
    return layers.BatchNormalization(momentum=1.0 - spec.bn_momentum, epsilon=spec.bn_eps,
                                     name=name, dtype=dtype)


def _conv(spec: DenseNetSpec, filters: int, geometry: ConvGeometry, name: str,
          dtype: Any) -> layers.Conv2D:
    # "same" at stride 1 pads (k - 1) / 2 on every side: PyTorch's symmetric padding,
    # identical (the 3x3 convs). At stride 2 it would not be: see DenseNet's stem.
    g = geometry
    if g.padding and (g.stride != 1 or 2 * g.padding != g.kernel - 1):
        raise ValueError(f"padding='same' is not PyTorch's symmetric padding for {g}")
    return layers.Conv2D(filters, g.kernel, strides=g.stride,
                         padding="same" if g.padding else "valid",
                         use_bias=spec.conv_bias, name=name, dtype=dtype)
# --8<-- [end:norm_conv]


def _check_width(layer: layers.Layer, shape: tuple[int | None, ...], in_channels: int) -> None:
    # Weights built for another width would only fail later, in a matmul or a checkpoint.
    if len(shape) != 4 or shape[-1] != in_channels:
        raise ValueError(f"{layer.name} ({type(layer).__name__}) takes NHWC maps of "
                         f"{in_channels} channels, shape (batch, height, width, {in_channels}); "
                         f"got input shape {tuple(shape)}")


def _is_shape(shape: Any) -> bool:
    """A shape (a tuple of ints and Nones), not a list of shapes."""
    return all(d is None or isinstance(d, int) for d in shape)


def _recomputed_unit(units: list[tuple[layers.BatchNormalization, layers.Conv2D]],
                     features: list[Any]) -> Any:
    """Concatenation -> every BN (batch statistics) -> ReLU -> conv of a dense layer,
    recomputed in the backward pass: only the layer's inputs (the block's maps, kept
    anyway) and its ``growth_rate`` new maps are stored.

    ``keras.remat`` runs the function again for the gradient, so it must not change
    state, but Keras's BatchNormalization assigns its running statistics in ``call``
    (twice per step under ``tf.recompute_grad``, a leaked tracer under
    ``jax.checkpoint``). So the function normalises with ``ops.moments`` and
    ``ops.batch_normalization`` itself (what BatchNormalization.call computes in
    training), returns each unit's batch statistics beside its output, and the
    running averages are updated once, out here.
    """
    def layer(*features: Any) -> tuple[Any, ...]:
        x, stats = ops.concatenate(features, axis=-1), []
        for norm, conv in units:
            mean, variance = ops.moments(x, axes=(0, 1, 2))
            x = ops.batch_normalization(x, mean, variance, axis=-1, offset=norm.beta,
                                        scale=norm.gamma, epsilon=norm.epsilon)
            x = conv(ops.relu(x))
            stats += [mean, variance]
        return (x, *stats)

    y, *stats = keras.remat(layer)(*features)
    for (norm, _), mean, variance in zip(units, stats[0::2], stats[1::2], strict=True):
        m = norm.momentum  # Keras's convention, the update of BatchNormalization.call
        norm.moving_mean.assign(norm.moving_mean * m + ops.stop_gradient(mean) * (1.0 - m))
        norm.moving_variance.assign(norm.moving_variance * m
                                    + ops.stop_gradient(variance) * (1.0 - m))
    return y
# --8<-- [end:helpers]


# --8<-- [start:conv_block]
class ConvBlock(layers.Layer):
    """BN -> ReLU -> conv: the pre-activation unit every DenseNet part is made of."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int,
                 geometry: ConvGeometry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Checked at every call, as build checks the shape it is given.
        self.input_spec = layers.InputSpec(ndim=4, axes={-1: in_channels})
        self.in_channels = in_channels
        self.norm = _batch_norm(spec, "norm", self.dtype_policy)
        self.conv = _conv(spec, out_channels, geometry, "conv", self.dtype_policy)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_width(self, input_shape, self.in_channels)
        self.norm.build(input_shape)
        self.conv.build(input_shape)  # BN keeps the shape

    def call(self, x: Any, training: bool | None = None) -> Any:
        # ops.relu, not a ReLU child: no weights, nothing to name.
        return self.conv(ops.relu(self.norm(x, training=training)))
# --8<-- [end:conv_block]


# --8<-- [start:dense_layer]
class DenseLayer(layers.Layer):
    """H_l: [BN-ReLU-1x1 conv (bottleneck, DenseNet-B)] -> BN-ReLU-3x3 conv -> dropout.

    Called on the block input and every earlier layer's output (a list, or one
    tensor) of ``in_channels`` channels together, it returns only the
    ``growth_rate`` new maps.

    With ``memory_efficient`` the whole layer (concatenation, every BN-ReLU-conv) is
    recomputed in the backward pass instead of stored.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, *, memory_efficient: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Checked by build only: an InputSpec cannot describe a list of any length.
        self.in_channels = in_channels
        k, width, dtype = spec.growth_rate, spec.bottleneck_channels, self.dtype_policy
        # Flat children, not nested ConvBlocks: these ARE the canonical names
        # (torchvision's norm1/conv1/norm2/conv2; norm/conv for a plain layer).
        self.has_bottleneck = width is not None
        if width is not None:
            self.norm1 = _batch_norm(spec, "norm1", dtype)
            self.conv1 = _conv(spec, width, spec.bottleneck_conv, "conv1", dtype)
            self.norm2 = _batch_norm(spec, "norm2", dtype)
            self.conv2 = _conv(spec, k, spec.growth_conv, "conv2", dtype)
        else:
            self.norm = _batch_norm(spec, "norm", dtype)
            self.conv = _conv(spec, k, spec.growth_conv, "conv", dtype)
        self.dropout = (layers.Dropout(spec.drop_rate, name="dropout", dtype=dtype)
                        if spec.drop_rate > 0 else None)
        self.memory_efficient = memory_efficient

    def _units(self) -> list[tuple[layers.BatchNormalization, layers.Conv2D]]:
        return ([(self.norm1, self.conv1), (self.norm2, self.conv2)] if self.has_bottleneck
                else [(self.norm, self.conv)])

    def build(self, features_shape: Any) -> None:
        # Keras passes the shape of each map of the list (or of the one tensor); the
        # layer sees their concatenation.
        shapes = [features_shape] if _is_shape(features_shape) else list(features_shape)
        shape = (*shapes[0][:-1], sum(s[-1] for s in shapes))
        _check_width(self, shape, self.in_channels)
        for norm, conv in self._units():
            norm.build(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)  # the bottleneck's width (Keras's formula)

    def call(self, features: Any, training: bool | None = None) -> Any:
        # A list, so that the concatenation happens inside the recomputed part.
        features = list(features) if isinstance(features, (list, tuple)) else [features]
        units = self._units()
        # The whole layer is recomputed, not only the concatenation and the first unit
        # (efficient_densenet_pytorch, torchvision): that still stored 2 x 4k maps per
        # bottleneck layer (the second BN's input, which its non-fused gradient reads,
        # and the ReLU output conv2 reads) and saved 13% of a DenseNet-121 training
        # step's memory under TensorFlow (224x224, batch 16). The whole layer: the step's peak
        # of live tensors drops 73% (2214 -> 606 MiB, BFC allocator counters) and its peak RSS
        # net of import and build 44% (2711 -> 1515 MiB, three interleaved bench probe rounds:
        # -41 to -47%; the rest is memory the allocator holds, not live tensors), at 1.2x the
        # CPU time per step.
        # Only in training: inference stores nothing, and a frozen BN uses its moving
        # statistics. (build() has created the weights it reads: Keras builds a layer
        # before its first call.)
        if self.memory_efficient and training and all(n.trainable for n, _ in units):
            y = _recomputed_unit(units, features)
        else:
            norm, conv = units[0]
            y = conv(ops.relu(norm(ops.concatenate(features, axis=-1), training=training)))
            if self.has_bottleneck:
                y = self.conv2(ops.relu(self.norm2(y, training=training)))
        if self.dropout is not None:
            y = self.dropout(y, training=training)
        return y
# --8<-- [end:dense_layer]


# --8<-- [start:dense_block]
class DenseBlock(layers.Layer):
    """``num_layers`` dense layers on ``in_channels`` inputs (widths from
    ``spec.block_plan``); each sees the channel-wise concatenation of the block
    input and every earlier layer's new maps. Returns that concatenation:
    ``in_channels + num_layers * growth_rate`` channels.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, num_layers: int, *,
                 memory_efficient: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        plan = spec.block_plan(in_channels, num_layers)
        self.in_channels = in_channels
        # A list (a Layer is no dict): the layers are named denselayer1, ... instead.
        self.denselayers = [
            DenseLayer(spec, width, memory_efficient=memory_efficient, name=f"denselayer{i}",
                       dtype=self.dtype_policy)
            for i, width in enumerate(plan.layer_in_channels, start=1)
        ]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_width(self, input_shape, self.in_channels)
        # Layer i sees the block input and i - 1 new maps: one shape of their width will do.
        for layer in self.denselayers:
            layer.build((*input_shape[:-1], layer.in_channels))

    def call(self, x: Any, training: bool | None = None) -> Any:
        features = [x]
        for layer in self.denselayers:
            features.append(layer(features, training=training))
        return ops.concatenate(features, axis=-1)
# --8<-- [end:dense_block]


# --8<-- [start:transition]
class Transition(ConvBlock):
    """BN -> ReLU -> 1x1 conv (compression to ``out_channels``) -> 2x2/2 average pool."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int,
                 **kwargs: Any) -> None:
        super().__init__(spec, in_channels, out_channels, spec.transition_conv, **kwargs)
        tp = spec.transition_pool  # unpadded: "valid"
        self.pool = layers.AveragePooling2D(tp.kernel, strides=tp.stride, name="pool",
                                            dtype=self.dtype_policy)

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self.pool(super().call(x, training=training))
# --8<-- [end:transition]


# --8<-- [start:network]
@keras.saving.register_keras_serializable(package="densenet_multi")
class DenseNet(keras.Model):
    """The network: stem, dense blocks with transitions, final BN-ReLU, global average
    pooling and a linear classifier, all read from ``spec``.

    ``features`` is the body, a list of layers under the canonical names (``pad0,
    conv0, norm0, relu0, pool0_pad, pool0, denseblock1, transition1, ..., norm5``;
    the CIFAR stem is ``pad0, conv0`` alone), and ``classifier`` a ``Dense``. The
    final ReLU is applied after ``features`` (as torchvision's ``forward`` does);
    :meth:`forward_features` includes it. Inputs are NHWC; ``model(x)`` returns
    logits (no softmax: compile with ``from_logits=True``). Pooling is global, so
    any input from ``spec.min_input_size()`` up works.
    """

    def __init__(self, spec: DenseNetSpec, *, memory_efficient: bool = False,
                 **kwargs: Any) -> None:
        kwargs.setdefault("name", spec.name)
        super().__init__(**kwargs)
        self.spec = spec
        self.memory_efficient = memory_efficient
        plan, dtype, sc = spec.channel_plan, self.dtype_policy, spec.stem_conv
        # --8<-- [start:stem]
        # Explicit symmetric zero padding + "valid": at stride 2 "same" pads (2, 3)
        # (PyTorch: (3, 3) for the 7x7 stem conv; (1, 1), not (0, 1), for the max-pool).
        features = [
            layers.ZeroPadding2D(sc.pads, name="pad0", dtype=dtype),
            layers.Conv2D(plan.stem_channels, sc.kernel, strides=sc.stride, padding="valid",
                          use_bias=spec.conv_bias, name="conv0", dtype=dtype),
        ]
        if (sp := spec.stem_pool) is not None:  # the CIFAR stem is one conv, no BN/ReLU/pool
            features += [
                _batch_norm(spec, "norm0", dtype),
                # A layer, not ops.relu: the body is a list of layers (torchvision's relu0).
                layers.ReLU(name="relu0", dtype=dtype),
                # Zero padding before the max-pool equals PyTorch's -inf padding only
                # after a ReLU: its input is >= 0, so a zero never beats the window's max.
                layers.ZeroPadding2D(sp.pads, name="pool0_pad", dtype=dtype),
                layers.MaxPooling2D(sp.kernel, strides=sp.stride, name="pool0", dtype=dtype),
            ]
        # --8<-- [end:stem]
        for bp in plan.blocks:
            features.append(DenseBlock(spec, bp.in_channels, bp.num_layers,
                                       memory_efficient=memory_efficient,
                                       name=f"denseblock{bp.index}", dtype=dtype))
            if bp.index < spec.num_blocks:
                tp = plan.transitions[bp.index - 1]
                features.append(Transition(spec, tp.in_channels, tp.out_channels,
                                           name=f"transition{tp.index}", dtype=dtype))
        # --8<-- [start:head]
        features.append(_batch_norm(spec, "norm5", dtype))
        self.features = features
        self.classifier = layers.Dense(spec.num_classes, name="classifier", dtype=dtype)

    def forward_features(self, x: Any, training: bool | None = None) -> Any:
        """Stem, blocks, transitions and the final BN-ReLU: (N, h, w, C)."""
        for part in self.features:
            x = part(x, training=training)
        # torchvision applies the final ReLU outside `features`; it belongs to the
        # features stage here, so forward_head sees post-activation maps.
        return ops.relu(x)

    def forward_head(self, x: Any, pre_logits: bool = False) -> Any:
        """Global average pooling (any spatial size, never a fixed 7x7) and the classifier."""
        x = ops.mean(x, axis=(1, 2))
        return x if pre_logits else self.classifier(x)
    # --8<-- [end:head]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        # Each part with the width the spec gives it; spatial sizes are left unknown (any
        # input size works, and only the channel axis shapes a weight).
        spec, plan = self.spec, self.spec.channel_plan
        _check_width(self, input_shape, spec.in_channels)

        def maps(channels: int) -> tuple[int | None, ...]:
            return (input_shape[0], None, None, channels)

        widths = {"conv0": spec.in_channels, "norm0": plan.stem_channels,
                  "norm5": plan.final_channels}
        widths |= {f"denseblock{bp.index}": bp.in_channels for bp in plan.blocks}
        widths |= {f"transition{tp.index}": tp.in_channels for tp in plan.transitions}
        for part in self.features:
            if part.name in widths:  # the others (padding, ReLU, pooling) have no weights
                part.build(maps(widths[part.name]))
        self.classifier.build((input_shape[0], plan.final_channels))

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self.forward_head(self.forward_features(x, training=training))

    def forward_stages(self, x: Any, training: bool | None = None) -> dict[str, Any]:
        """Every stage output of ``spec.stage_names``: stem, block1, transition1, ...,
        blockN, features (after the final BN-ReLU), pooled, logits."""
        stages: dict[str, Any] = {}
        stage_parts = self.spec.stage_parts
        for part in self.features:
            x = part(x, training=training)
            if part.name in stage_parts:
                stages[stage_parts[part.name]] = x
        x = ops.relu(x)
        stages["features"] = x
        stages["pooled"] = self.forward_head(x, pre_logits=True)
        stages["logits"] = self.classifier(stages["pooled"])
        return stages

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": self.spec.to_dict(),
                "memory_efficient": self.memory_efficient}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DenseNet:
        config = dict(config)
        return cls(DenseNetSpec.from_dict(config.pop("spec")), **config)
# --8<-- [end:network]


# ---------------------------------------------------------------------- constructors
def from_spec(spec: DenseNetSpec | str, *, memory_efficient: bool = False, dtype: Any = None,
              **changes: Any) -> DenseNet:
    """A :class:`DenseNet` for a spec or a preset name (fields may be changed), with
    Keras's own initialisers, in ``dtype`` (default: Keras's global dtype policy)."""
    if isinstance(spec, str):
        spec = get_spec(spec, **changes)
    elif changes:
        spec = spec.replace(**changes)
    return DenseNet(spec, memory_efficient=memory_efficient, dtype=dtype)


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
