"""DenseNet (Huang et al., CVPR 2017) as MXNet Gluon ``HybridBlock``s.

The parts follow the paper and the other backends one for one:
:class:`ConvBlock` (BN-ReLU-Conv), :class:`DenseLayer` (optional 1x1
bottleneck, then a 3x3 conv giving ``k`` new maps, optional dropout; the layer
*is* ``x -> concat([x, f(x)])``), :class:`DenseBlock`, :class:`Transition`,
:class:`Stem` and :class:`DenseNet`, then the constructors
:func:`densenet121` ... :func:`densenet201` and :func:`from_spec`.

Written for MXNet 1.9 Gluon:

* every layer is built with ``in_channels`` / ``in_units`` taken from the
  spec's channel plan, so all parameters have their shapes (and can be
  initialised and loaded) before the first forward pass -- no deferred
  initialisation;
* every child block is an attribute with a structural name (``stem.conv0``,
  ``blocks[2].layers[5].bottleneck.norm``, ``transitions[0].compress.conv``,
  ``norm5``, ``classifier``). Gluon also gives each parameter a counter-based
  name (``densenet0_...``) that depends on how many networks were built before;
  nothing here relies on it (see :mod:`densenet_multi.gluon.convert`);
* activations are NCHW and kernels OIHW, the canonical layout, so loading
  canonical weights needs no transposes;
* the blocks only use the legacy ``F`` (``nd`` / ``sym``) API and never touch
  MXNet's global numpy-mode switches. They work imperatively and after
  ``hybridize()`` with the same numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from ..spec import PRESETS, BlockPlan, ConvGeometry, DenseNetSpec, TransitionPlan

__all__ = [
    "BatchNorm",
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "Stem",
    "DenseNet",
    "batch_norm",
    "legacy_mode",
    "from_spec",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
]


@contextmanager
def legacy_mode() -> Iterator[None]:
    """Run a block of code with MXNet's numpy-compatible modes *off*, restoring the
    caller's settings afterwards.

    ``npx.set_np()`` is process-wide; a user program that turned it on would
    otherwise make these legacy-API blocks fail (``nd`` vs ``mx.np`` arrays).
    Every public function of this backend runs inside this scope; it never
    switches the modes for the rest of the program.
    """
    # array semantics off first: MXNet refuses np_shape(False) while np_array is on
    with mx.util.np_array(False), mx.util.np_shape(False):
        yield


_F = TypeVar("_F", bound=Callable)


def in_legacy_mode(fn: _F) -> _F:
    """Decorator: call ``fn`` inside :func:`legacy_mode`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with legacy_mode():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` whose train-mode batch statistics are computed in two passes
    when the block runs imperatively.

    MXNet 1.9's CPU BatchNorm kernel sums each channel's values (and squared
    deviations) in one float32 loop. Measured on a 4x64x56x56 batch (DenseNet-121's
    first block at 224x224, batch 4), its train-mode output is 1.8e-6 (relative to
    the output's magnitude) from float64, against 1.1e-7 for the same formula
    written with ``F.mean`` reductions (1.5e-5 vs 3.3e-7 for inputs of mean 30);
    through DenseNet-121 that puts block4 7e-5 from the float64 reference, beyond
    the parity harness's float32 train tolerance (5e-5), where PyTorch is at 1.4e-5.

    So, imperatively (the default; what the backend functions and the harness
    run) and in train mode, this layer normalises with ``F.mean`` statistics,
    autograd differentiating the formula, and updates the running statistics
    *in the forward pass*, by MXNet's rule (``momentum`` = weight of the old
    value, biased batch variance). In eval mode, and once the network is
    hybridized (one cached graph serves both modes, so the layer cannot switch
    on the mode there), it is MXNet's ``BatchNorm`` operator, which updates the
    running statistics in the backward pass.
    """

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        if (F is not nd or not autograd.is_training() or kw["use_global_stats"]
                or kw["fix_gamma"] or kw["axis"] != 1 or x.ndim != 4):
            return super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)
        mean = F.mean(x, axis=(0, 2, 3), keepdims=True)
        centered = F.broadcast_sub(x, mean)
        var = F.mean(F.square(centered), axis=(0, 2, 3), keepdims=True)  # biased, two-pass
        scale = F.broadcast_mul(F.rsqrt(var + kw["eps"]), gamma.reshape((1, -1, 1, 1)))
        y = F.broadcast_add(F.broadcast_mul(centered, scale), beta.reshape((1, -1, 1, 1)))
        with autograd.pause():
            m = kw["momentum"]
            running_mean[:] = m * running_mean + (1 - m) * mean.reshape((-1,))
            running_var[:] = m * running_var + (1 - m) * var.reshape((-1,))
        return y


def batch_norm(channels: int, spec: DenseNetSpec) -> BatchNorm:
    """A :class:`BatchNorm` over ``channels`` NCHW channels with the spec's epsilon and
    momentum.

    The epsilon is passed explicitly (Gluon's default happens to be 1e-5 too,
    but a spec that wants keras.applications' 1.001e-5 must get it).
    """
    return BatchNorm(
        axis=1,
        in_channels=channels,
        epsilon=spec.bn_eps,
        # Gluon's momentum is the weight of the OLD running value; the spec's
        # (PyTorch's) bn_momentum is the weight of the NEW batch statistic.
        momentum=1.0 - spec.bn_momentum,
    )


def _conv(in_channels: int, out_channels: int, geometry: ConvGeometry, use_bias: bool) -> nn.Conv2D:
    # Explicit symmetric padding from the spec's geometry (NCHW, OIHW kernels):
    # the same network as PyTorch's, whatever the input size.
    return nn.Conv2D(
        out_channels,
        kernel_size=geometry.kernel,
        strides=geometry.stride,
        padding=geometry.padding,
        in_channels=in_channels,
        use_bias=use_bias,
    )


def _channel_concat(F, a, b):
    """``concat([a, b])`` along the channels of NCHW arrays.

    Concatenated as 5-d arrays (a length-1 axis inserted and removed again):
    MXNet 1.9.1's oneDNN concat, used for 2-d and 4-d float32 arrays, fails in
    the *backward* pass of some hybridized graphs ("could not construct a
    sub-memory", e.g. densenet40_k12 in train mode) when a channel offset is not
    a multiple of its blocked layout. A 5-d concat takes MXNet's plain
    implementation; the values are the same copy either way.
    """
    y = F.concat(F.expand_dims(a, axis=2), F.expand_dims(b, axis=2), dim=1)
    return F.squeeze(y, axis=2)


class ConvBlock(gluon.HybridBlock):
    """BN -> ReLU -> Conv: the pre-activation unit every DenseNet part is made of."""

    def __init__(self, in_channels: int, out_channels: int, geometry: ConvGeometry,
                 spec: DenseNetSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.norm = batch_norm(in_channels, spec)
            self.conv = _conv(in_channels, out_channels, geometry, spec.conv_bias)

    def hybrid_forward(self, F, x):
        return self.conv(F.relu(self.norm(x)))


class DenseLayer(gluon.HybridBlock):
    """H_l of the paper: ``x -> concat([x, f(x)])`` along the channels.

    ``f`` is an optional 1x1 bottleneck ConvBlock (DenseNet-B: ``bn_size * k``
    maps), then a 3x3 ConvBlock giving ``k = growth_rate`` new maps, then
    dropout (active only in train mode) on those new maps, as in torchvision.
    """

    def __init__(self, in_channels: int, bottleneck_channels: int | None,
                 spec: DenseNetSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.drop_rate = float(spec.drop_rate)
        with self.name_scope():
            if bottleneck_channels is not None:
                self.bottleneck = ConvBlock(in_channels, bottleneck_channels,
                                            spec.bottleneck_conv, spec)
                growth_in = bottleneck_channels
            else:
                self.bottleneck = None
                growth_in = in_channels
            self.growth = ConvBlock(growth_in, spec.growth_rate, spec.growth_conv, spec)

    def hybrid_forward(self, F, x):
        h = x if self.bottleneck is None else self.bottleneck(x)
        new = self.growth(h)
        if self.drop_rate > 0:
            new = F.Dropout(new, p=self.drop_rate)  # identity unless autograd is training
        return _channel_concat(F, x, new)


class DenseBlock(gluon.HybridBlock):
    """``num_layers`` dense layers; layer ``l`` sees the block input and every earlier layer's
    output (``plan.layer_in_channels[l]`` channels)."""

    def __init__(self, plan: BlockPlan, spec: DenseNetSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.layers = nn.HybridSequential()
            for cin in plan.layer_in_channels:
                self.layers.add(DenseLayer(cin, plan.bottleneck_channels, spec))

    def hybrid_forward(self, F, x):
        return self.layers(x)


class Transition(gluon.HybridBlock):
    """BN -> ReLU -> 1x1 conv (compression theta) -> 2x2/2 average pool."""

    def __init__(self, plan: TransitionPlan, spec: DenseNetSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        g = spec.transition_pool
        with self.name_scope():
            self.compress = ConvBlock(plan.in_channels, plan.out_channels,
                                      spec.transition_conv, spec)
            # floor mode ("valid"): an odd size drops its last row/column, as in PyTorch.
            self.pool = nn.AvgPool2D(pool_size=g.kernel, strides=g.stride, padding=g.padding)

    def hybrid_forward(self, F, x):
        return self.pool(self.compress(x))


class Stem(gluon.HybridBlock):
    """ImageNet stem: 7x7/2 conv -> BN -> ReLU -> 3x3/2 max-pool; CIFAR stem: one 3x3 conv."""

    def __init__(self, spec: DenseNetSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv0 = _conv(spec.in_channels, spec.channel_plan.stem_channels,
                               spec.stem_conv, spec.conv_bias)
            self.norm0 = batch_norm(spec.channel_plan.stem_channels, spec) \
                if spec.stem_has_norm else None
            pool = spec.stem_pool
            # MXNet's max-pool padding never wins a window; it follows a ReLU
            # anyway, so zero and -inf padding give the same result.
            self.pool0 = None if pool is None else nn.MaxPool2D(
                pool_size=pool.kernel, strides=pool.stride, padding=pool.padding)

    def hybrid_forward(self, F, x):
        y = self.conv0(x)
        if self.norm0 is not None:
            y = F.relu(self.norm0(y))
        if self.pool0 is not None:
            y = self.pool0(y)
        return y


class DenseNet(gluon.HybridBlock):
    """The network of a :class:`~densenet_multi.spec.DenseNetSpec`, NCHW in, logits out.

    Children: ``stem``, ``blocks`` (one :class:`DenseBlock` per stage),
    ``transitions`` (one fewer), ``norm5`` (final BN; its ReLU is applied in
    :meth:`hybrid_forward`, so the ``features`` stage is *after* BN-ReLU, as
    in torchvision), ``classifier``. The head is **global** average pooling,
    so any input size the spec allows works (the Gluon model zoo's fixed
    ``AvgPool2D(7)`` equals it only where the final map is 7x7).
    """

    def __init__(self, spec: DenseNetSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        if spec.memory_efficient:
            # Gluon 1.9 has no per-block rematerialisation (only the global
            # MXNET_BACKWARD_DO_MIRROR switch): refuse rather than ignore the flag.
            raise NotImplementedError(
                "memory_efficient=True is not supported by the Gluon backend (MXNet 1.9 has no "
                "per-block checkpointing); use spec.replace(memory_efficient=False)"
            )
        self.spec = spec
        plan = spec.channel_plan
        with self.name_scope():
            self.stem = Stem(spec)
            self.blocks = nn.HybridSequential()
            self.transitions = nn.HybridSequential()
            for bp in plan.blocks:
                self.blocks.add(DenseBlock(bp, spec))
            for tp in plan.transitions:
                self.transitions.add(Transition(tp, spec))
            self.norm5 = batch_norm(plan.final_channels, spec)
            self.classifier = nn.Dense(spec.num_classes, in_units=plan.final_channels)

    def _body(self, F, x):
        """Yield ``(stage name, output)`` in ``spec.stage_names`` order."""
        names = iter(self.spec.stage_names)
        y = self.stem(x)
        yield next(names), y
        for b in range(len(self.blocks)):
            y = self.blocks[b](y)
            yield next(names), y
            if b < len(self.transitions):
                y = self.transitions[b](y)
                yield next(names), y
        # The final ReLU belongs to the features (torchvision applies it after norm5).
        y = F.relu(self.norm5(y))
        yield next(names), y
        pooled = F.mean(y, axis=(2, 3))  # global average pooling: any input size
        yield next(names), pooled
        yield next(names), self.classifier(pooled)

    def hybrid_forward(self, F, x):
        return dict(self._body(F, x))["logits"]

    def forward_stages(self, x):
        """Every stage output (``spec.stage_names``: stem, block1, ..., features, pooled,
        logits) of an NCHW ``NDArray`` batch, as an ordered dict of ``NDArray``s.

        Runs the children one after another (each one's cached graph after
        ``hybridize()``); the numbers are those of ``self(x)``.
        """
        return dict(self._body(nd, x))


@in_legacy_mode
def from_spec(spec: DenseNetSpec) -> DenseNet:
    """An uninitialised :class:`DenseNet` for ``spec`` (call ``initialize()`` or
    :func:`densenet_multi.gluon.build`)."""
    return DenseNet(spec)


@in_legacy_mode
def densenet121(**changes) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16); keyword arguments change spec fields."""
    return DenseNet(PRESETS["densenet121"].replace(**changes))


@in_legacy_mode
def densenet161(**changes) -> DenseNet:
    """DenseNet-161 (k=48, blocks 6-12-36-24, 96 stem channels)."""
    return DenseNet(PRESETS["densenet161"].replace(**changes))


@in_legacy_mode
def densenet169(**changes) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32)."""
    return DenseNet(PRESETS["densenet169"].replace(**changes))


@in_legacy_mode
def densenet201(**changes) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32)."""
    return DenseNet(PRESETS["densenet201"].replace(**changes))
