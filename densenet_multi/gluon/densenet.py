"""DenseNet (Huang et al., CVPR 2017) as MXNet Gluon ``HybridBlock``s, built from a :class:`DenseNetSpec`.

The parts follow the paper, in this order: :class:`ConvBlock` (BN-ReLU-conv,
the pre-activation unit everything is made of), :class:`DenseLayer` (H_l:
optional 1x1 bottleneck, 3x3 conv, dropout; returns its ``growth_rate`` new
maps), :class:`DenseBlock` (every layer sees the concatenation of all earlier
maps), :class:`Transition` (BN-ReLU-1x1 conv with compression, 2x2 average
pool) and :class:`DenseNet` (stem, blocks, transitions, final BN-ReLU, global
average pooling, classifier), then :func:`from_spec` and
:func:`densenet121` ... :func:`densenet201`.

Written for MXNet 1.9 Gluon:

* every layer is built with ``in_channels`` / ``in_units`` from the spec, so all
  parameters have their shapes (and can be initialised and loaded) before the
  first forward pass: no deferred initialisation;
* children are attributes under the canonical names (``features.conv0``,
  ``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv``,
  ``features.norm5``, ``classifier``), which are also the structural keys
  ``save_parameters`` writes. Gluon's own parameter names
  (``densenet0_..._conv0_weight``) carry counters that depend on how many
  networks the program built before; nothing relies on them;
* activations are NCHW and kernels OIHW, the canonical layout;
* the blocks use the legacy ``F`` (``nd`` / ``sym``) API: they run imperatively
  and after ``hybridize()`` with the same numbers. They can be *built* whatever
  MXNet's numpy mode (only the conv layers care, see ``_conv``); initialising and
  calling them needs it off, which the runtime boundary does
  (:func:`densenet_multi.gluon.runtime.legacy_mode`).
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet import gluon, nd
from mxnet.gluon import nn

from ..spec import ConvGeometry, DenseNetSpec, get_spec
from .layers import Recomputed, TwoPassBatchNorm

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
def _norm(spec: DenseNetSpec, num_features: int) -> TwoPassBatchNorm:
    # Gluon's momentum is the weight of the OLD running value, the spec's (PyTorch's)
    # the weight of the new batch statistic: hence 1 - m. eps is always the spec's
    # (Gluon's default is 1e-5 too, but a spec may ask for keras.applications' 1.001e-5).
    # TwoPassBatchNorm: nn.BatchNorm with precise train-mode statistics (see layers.py).
    return TwoPassBatchNorm(axis=1, in_channels=num_features, epsilon=spec.bn_eps,
                            momentum=1.0 - spec.bn_momentum)


def _conv(spec: DenseNetSpec, in_channels: int, out_channels: int,
          geometry: ConvGeometry) -> nn.Conv2D:
    # Explicit symmetric padding from the spec: the canonical network at any input size.
    # in_channels makes the kernel's shape known now, not at the first forward.
    # Built with MXNet's numpy modes off: a Conv2D picks its operator when constructed
    # (npx "convolution" in numpy mode), and these blocks call the legacy F API.
    with mx.util.np_array(False), mx.util.np_shape(False):
        return nn.Conv2D(out_channels, geometry.kernel, strides=geometry.stride,
                         padding=geometry.padding, in_channels=in_channels,
                         use_bias=spec.conv_bias)
# --8<-- [end:norm_conv]


#: oneDNN keeps a blocked layout's channels in groups of 8 (AVX2) or 16 (AVX-512)
_ONEDNN_CHANNEL_BLOCK = 16


def _block_aligned(spec: DenseNetSpec, in_channels: int) -> bool:
    """Whether every map a dense block concatenates (its input, then ``growth_rate``
    new maps per layer) starts at a channel offset that is a multiple of oneDNN's
    channel block, given the input width of the block or of one of its layers."""
    return in_channels % _ONEDNN_CHANNEL_BLOCK == 0 and spec.growth_rate % _ONEDNN_CHANNEL_BLOCK == 0


def _channel_concat(F, *maps, aligned: bool):
    """``concat(maps)`` along the channels of NCHW arrays (one map: itself, no copy).

    ``aligned`` (:func:`_block_aligned`): a plain 4-d concat, oneDNN's, as the Gluon
    model zoo's. Otherwise the maps are concatenated as 5-d arrays (a length-1 axis
    inserted and removed again): MXNet 1.9.1's oneDNN concat fails in the *backward*
    pass of a hybridized graph ("could not construct a sub-memory", e.g.
    densenet40_k12 and densenet_bc_100_k12 in train mode, with 4-d or with the
    zoo's one-map-at-a-time concat alike) when a channel offset is not a multiple
    of its blocked layout; a 5-d concat takes MXNet's plain implementation, at the
    price of two extra copies (measured at DenseNet-121 224: 0.69 of the zoo's
    inference speed with 5-d concats and F.relu). The values are the same copy.
    """
    if len(maps) == 1:
        return maps[0]
    if aligned:
        return F.concat(*maps, dim=1)
    y = F.concat(*(F.expand_dims(m, axis=2) for m in maps), dim=1)
    return F.squeeze(y, axis=2)


def _call(block, x):
    return block(x)


def _relu(F, x):
    # The Activation operator, not F.relu: oneDNN's ReLU works on the blocked layout
    # BatchNorm and Convolution hand over, where the generic relu converts it back and
    # forth (measured: F.relu took 30% of DenseNet-121's inference time, 2.5x BatchNorm).
    return F.Activation(x, act_type="relu")
# --8<-- [end:helpers]


# --8<-- [start:conv_block]
class ConvBlock(gluon.HybridBlock):
    """BN -> ReLU -> conv: the pre-activation unit every DenseNet part is made of."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int,
                 geometry: ConvGeometry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.norm = _norm(spec, in_channels)
            self.conv = _conv(spec, in_channels, out_channels, geometry)

    def hybrid_forward(self, F, x):
        return self.conv(_relu(F, self.norm(x)))
# --8<-- [end:conv_block]


# --8<-- [start:dense_layer]
class DenseLayer(gluon.HybridBlock):
    """H_l: [BN-ReLU-1x1 conv (bottleneck, DenseNet-B)] -> BN-ReLU-3x3 conv -> dropout.

    Called on the block input and every earlier layer's output (``layer(*maps)``),
    it returns only the ``growth_rate`` new maps.

    With ``memory_efficient`` the concatenation and the *first* BN-ReLU-conv (with a
    bottleneck: and the second BN-ReLU) are recomputed in the backward pass instead of
    stored (:class:`~densenet_multi.gluon.layers.Recomputed`). The layer itself then
    runs imperatively; ``hybridize()`` compiles the recomputed part and ``conv2``.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, *, memory_efficient: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        k, width = spec.growth_rate, spec.bottleneck_channels
        self.has_bottleneck = width is not None
        with self.name_scope():
            # Flat children, not nested ConvBlocks: these ARE the canonical names
            # (torchvision's norm1/conv1/norm2/conv2; norm/conv for a plain layer).
            if width is not None:
                self.norm1 = _norm(spec, in_channels)
                self.conv1 = _conv(spec, in_channels, width, spec.bottleneck_conv)
                self.norm2 = _norm(spec, width)
                self.conv2 = _conv(spec, width, k, spec.growth_conv)
            else:
                self.norm = _norm(spec, in_channels)
                self.conv = _conv(spec, in_channels, k, spec.growth_conv)
        self.drop_rate = float(spec.drop_rate)
        self.memory_efficient = memory_efficient
        self.aligned = _block_aligned(spec, in_channels)
        if memory_efficient:  # not a child Block: the parameters stay norm1, conv1, ...
            parts = (self.norm1, self.conv1, self.norm2) if width is not None else (self.norm, self.conv)
            self.recomputed = Recomputed(self._recomputed, parts)

    def _recomputed(self, F, call, *maps):
        """The part ``memory_efficient`` recomputes: concatenation -> BN -> ReLU -> first conv
        (the 1x1 bottleneck, or the plain 3x3) and, with a bottleneck, the second BN-ReLU,
        up to the 3x3 conv's input. ``call(block, x)`` runs each of the blocks."""
        x = _channel_concat(F, *maps, aligned=self.aligned)
        if self.has_bottleneck:
            y = call(self.conv1, _relu(F, call(self.norm1, x)))
            return _relu(F, call(self.norm2, y))
        return call(self.conv, _relu(F, call(self.norm, x)))

    def hybrid_forward(self, F, *maps):
        if self.memory_efficient and F is nd:
            # Recomputed in the backward pass instead of stored: the concatenation (layer
            # l's input has k0 + l*k channels, so storing it, and its BN-ReLU, for every
            # layer costs memory quadratic in the block depth) and, with a bottleneck,
            # everything up to the 3x3 conv's input, so that per layer only that input
            # (4k channels) and the k new maps are kept. MXNet 1.9's autograd has no
            # checkpointing: Recomputed is one (an autograd.Function; layers.py).
            # Measured, DenseNet-121 224x224 batch 16, hybridized, 2 cores (docs/bench/
            # gluon-recompute.md, python -m densenet_multi.bench.gluon_recompute): the arrays
            # alive at the step's peak fall 46%, the process's peak RSS 13-22% (what MXNet's
            # pool and glibc keep of the recomputations' freed buffers, each layer's of its
            # own sizes), at 1.41-1.57x the step time; below the project's target (-40% at
            # <= 1.3x), and no MXNet 1.9 route is estimated to reach its time: the recomputed
            # operators are 23-27% of the default step, leaving the cached graph costs
            # 1.09-1.12x, a custom operator inside it 1.14-1.15x. CachedOp has no mirroring
            # (MXNET_BACKWARD_DO_MIRROR=1: 0% and -3.5% in two runs); the symbolic executor's
            # forced mirroring saves 12%.
            y = self.recomputed(*maps)
        else:
            y = self._recomputed(F, _call, *maps)
        if self.has_bottleneck:
            y = self.conv2(y)
        if self.drop_rate > 0:
            y = F.Dropout(y, p=self.drop_rate)  # identity unless autograd is training
        return y

    def hybridize(self, active: bool = True, **kwargs: Any) -> None:
        if not self.memory_efficient:
            super().hybridize(active, **kwargs)
            return
        # A cached graph cannot hold the recomputation (a Python autograd.Function): the
        # layer runs imperatively, the recomputed part and conv2 as graphs of their own.
        self.recomputed.hybridize(active)
        if self.has_bottleneck:
            self.conv2.hybridize(active)
# --8<-- [end:dense_layer]


# --8<-- [start:dense_block]
class DenseBlock(gluon.HybridBlock):
    """``num_layers`` dense layers on ``in_channels`` inputs (widths from
    ``spec.block_plan``); each sees the channel-wise concatenation of the block
    input and every earlier layer's new maps. Returns that concatenation:
    ``in_channels + num_layers * growth_rate`` channels.
    """

    def __init__(self, spec: DenseNetSpec, in_channels: int, num_layers: int, *,
                 memory_efficient: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        plan = spec.block_plan(in_channels, num_layers)
        with self.name_scope():
            for i, width in enumerate(plan.layer_in_channels, start=1):
                setattr(self, f"denselayer{i}",
                        DenseLayer(spec, width, memory_efficient=memory_efficient))
        self.aligned = _block_aligned(spec, in_channels)
        self.memory_efficient = memory_efficient

    def hybridize(self, active: bool = True, **kwargs: Any) -> None:
        if not self.memory_efficient:
            super().hybridize(active, **kwargs)
            return
        for layer in self._children.values():  # imperative itself, see DenseLayer.hybridize
            layer.hybridize(active, **kwargs)

    def hybrid_forward(self, F, x):
        maps = [x]
        for layer in self._children.values():  # denselayer1, ... in order
            maps.append(layer(*maps))
        return _channel_concat(F, *maps, aligned=self.aligned)
# --8<-- [end:dense_block]


# --8<-- [start:transition]
class Transition(ConvBlock):
    """BN -> ReLU -> 1x1 conv (compression to ``out_channels``) -> 2x2/2 average pool."""

    def __init__(self, spec: DenseNetSpec, in_channels: int, out_channels: int,
                 **kwargs: Any) -> None:
        super().__init__(spec, in_channels, out_channels, spec.transition_conv, **kwargs)
        tp = spec.transition_pool
        with self.name_scope():
            # floor mode ("valid"): an odd size drops its last row/column, as in PyTorch
            self.pool = nn.AvgPool2D(tp.kernel, strides=tp.stride, padding=tp.padding)

    def hybrid_forward(self, F, x):
        return self.pool(super().hybrid_forward(F, x))
# --8<-- [end:transition]


# --8<-- [start:network]
class DenseNet(gluon.HybridBlock):
    """The network: stem, dense blocks with transitions, final BN-ReLU, global average
    pooling and a linear classifier, all read from ``spec``.

    ``features`` is a ``HybridSequential`` (``conv0, norm0, relu0, pool0,
    denseblock1, transition1, ..., norm5``; the CIFAR stem is ``conv0`` alone) and
    ``classifier`` an ``nn.Dense``: torchvision's layout. Inputs are NCHW; pooling
    is global, so any input from ``spec.min_input_size()`` up works (the Gluon
    model zoo's fixed ``AvgPool2D(7)`` equals it only where the final map is 7x7).
    """

    def __init__(self, spec: DenseNetSpec, *, memory_efficient: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.memory_efficient = memory_efficient
        plan = spec.channel_plan
        with self.name_scope():
            # --8<-- [start:stem]
            # A HybridSequential whose children are set as attributes: registered in
            # order under their canonical names (add() would number them 0, 1, ...).
            f = self.features = nn.HybridSequential()
            with f.name_scope():
                f.conv0 = _conv(spec, spec.in_channels, plan.stem_channels, spec.stem_conv)
                if (sp := spec.stem_pool) is not None:  # the CIFAR stem is one conv
                    f.norm0 = _norm(spec, plan.stem_channels)
                    # A child, not F.relu: the sequence applies only its children
                    # (torchvision's relu0).
                    f.relu0 = nn.Activation("relu")
                    # MXNet's max-pool padding never wins a window (and the input
                    # follows a ReLU, so zero padding would be exact too).
                    f.pool0 = nn.MaxPool2D(sp.kernel, strides=sp.stride, padding=sp.padding)
                # --8<-- [end:stem]
                for bp in plan.blocks:
                    setattr(f, f"denseblock{bp.index}", DenseBlock(
                        spec, bp.in_channels, bp.num_layers, memory_efficient=memory_efficient))
                    if bp.index < spec.num_blocks:
                        tp = plan.transitions[bp.index - 1]
                        setattr(f, f"transition{tp.index}",
                                Transition(spec, tp.in_channels, tp.out_channels))
                # --8<-- [start:head]
                f.norm5 = _norm(spec, plan.final_channels)
            self.classifier = nn.Dense(spec.num_classes, in_units=plan.final_channels)

    # Fluent methods (x.relu(), x.mean()) exist on NDArray and Symbol alike, so these
    # work imperatively and inside the cached graph of a hybridized network.
    def forward_features(self, x):
        """Stem, blocks, transitions and the final BN-ReLU: (N, C, h, w)."""
        # torchvision applies the final ReLU after `features`, in forward; here it
        # belongs to the features stage, so forward_head sees post-activation maps.
        return self.features(x).relu()

    def forward_head(self, x, pre_logits: bool = False):
        """Global average pooling (any spatial size, never a fixed 7x7) and the classifier."""
        x = x.mean(axis=(2, 3))
        return x if pre_logits else self.classifier(x)
    # --8<-- [end:head]

    def hybrid_forward(self, F, x):
        return self.forward_head(self.forward_features(x))

    def hybridize(self, active: bool = True, **kwargs: Any) -> None:
        """Gluon's ``hybridize``; with ``memory_efficient``, each part of ``features`` and the
        classifier get a cached graph of their own (the dense blocks: their layers'
        recomputed parts, see :meth:`DenseLayer.hybridize`), which the network and
        ``features`` run imperatively. ``static_alloc`` / ``static_shape`` are not passed
        on then: each of these many graphs would keep its buffers allocated between
        calls (measured: 30-100 MiB more at DenseNet-121 224, batch 16)."""
        if not self.memory_efficient:
            super().hybridize(active, **kwargs)
            return
        for part in (*self.features._children.values(), self.classifier):
            part.hybridize(active)

    def forward_stages(self, x) -> dict[str, Any]:
        """Every stage of ``spec.stage_names`` for an NCHW ``NDArray`` batch: stem, block1,
        transition1, ..., blockN, features (after the final BN-ReLU), pooled, logits.

        Runs the children of ``features`` one after another (each one's cached graph
        after ``hybridize()``); the numbers are those of ``self(x)``.
        """
        stage_parts = self.spec.stage_parts
        stages: dict[str, Any] = {}
        for name, part in self.features._children.items():
            x = part(x)
            if name in stage_parts:
                stages[stage_parts[name]] = x
        stages["features"] = x = x.relu()
        stages["pooled"] = x = self.forward_head(x, pre_logits=True)
        stages["logits"] = self.classifier(x)
        return stages
# --8<-- [end:network]


# ---------------------------------------------------------------------- constructors
def from_spec(spec: DenseNetSpec | str, *, memory_efficient: bool = False,
              **changes: Any) -> DenseNet:
    """A :class:`DenseNet` for a spec or a preset name, with spec fields changed (its
    parameters exist but are not initialised: call ``initialize()``, or use
    :func:`densenet_multi.gluon.build`)."""
    if isinstance(spec, str):
        spec = get_spec(spec, **changes)
    elif changes:
        spec = spec.replace(**changes)
    return DenseNet(spec, memory_efficient=memory_efficient)


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
