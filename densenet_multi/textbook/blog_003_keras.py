"""The Keras blog's "DenseNet121" (seed 003), rebuilt as the blog writes it, under the harness.

Seed ``003`` is a blog post (a facial-expression series) that ends with a
functional ``tensorflow.keras`` model: ``DenseLayer`` (BN, ReLU, 1x1 conv of
``4 * growthRate`` maps, BN, ReLU, 3x3 conv of ``growthRate`` maps, dropout),
``DenseBlock`` (layers concatenated onto their input), ``TransitionLayer`` (BN,
ReLU, 1x1 conv of ``int(channels * ratio)`` maps at stride 2, 2x2/2 average pool)
and ``DenseNet121`` (a 3x3 conv of ``2 * growthRate`` maps and a 2x2/2 max-pool,
blocks of 6, 12, 24 and 16 layers with ``growthRate=12`` and ``dropRate=0.2``,
global average pooling, a softmax ``Dense``). The code is rebuilt here line by line,
Keras's defaults included (``BatchNormalization(axis=3)``: epsilon 1e-3, momentum
0.99; ``Conv2D`` with a bias). ``tf.keras`` is Keras 3 here (see
:mod:`densenet_multi.textbook.d2l_tensorflow`).

**As written it does not build**, under any Keras: four calls are wrong, and each
raises a TypeError in turn:

* ``x = ReLU(x)`` constructs a ReLU layer whose ``max_value`` is the tensor
  (``ReLU()(x)`` was meant); Keras 3 raises on ``max_value < 0`` of a symbolic tensor;
* ``Concatenate([x, featureMap], axis=3)`` passes the tensors as the layer's ``axis``
  and then ``axis`` again (``Concatenate(axis=3)([x, featureMap])``);
* ``TransitionLayer(DenseBlock(...))`` omits the required ``ratio`` (the paper's
  DenseNet-121 compresses by 0.5, the fix passes that);
* ``Dense(numClass=1000, activation='softmax')`` has no ``units``.

**Fixed so that it builds, it is not DenseNet-121**, and cannot take DenseNet-121's
canonical weights. Read from its code (and measured from the built network by
:func:`structure`, which ``load_canonical``'s error quotes):

* stem: one 3x3/1 conv of ``2 * growthRate = 24`` maps and a 2x2/2 max-pool, no
  BatchNorm or ReLU, 112x112 at 224 (DenseNet-121: 7x7/2 conv of 64 maps, BN, ReLU,
  3x3/2 max-pool padded 1: 56x56);
* growth rate 12 in every block (DenseNet-121: 32), so bottlenecks of 48 maps (128)
  and blocks 24 + 6*12 = 96 wide after the first block (256); the layer counts,
  6/12/24/16, are DenseNet-121's;
* transitions: the 1x1 conv has stride 2 *and* the 2x2 average pool halves again,
  so each transition divides the map by 4 (by 2): 224 -> 112 -> 28 -> 7 -> 1;
* no BatchNorm-ReLU after the last block (``features.norm5``);
* every convolution has a bias (DenseNet-121's have none);
* the classifier ends in a softmax (probabilities, not logits);
* dropout 0.2 after every dense layer (the harness's DenseNet-121 case: 0);
* Keras's BatchNormalization defaults, epsilon 1e-3 and momentum 0.99 (1e-5, and
  PyTorch's 0.1 = Keras's 0.9).

The chain, :data:`CHAIN`, goes all the way: the four call fixes, then one
structural change at a time in the order the harness meets them (shapes, the
canonical weights, eval, train), to a network that passes every check on the
``densenet121`` case (224x224, batch 2). The network takes only the blog's
``Input((224, 224, 3))``; the adapter is
:class:`densenet_multi.textbook.d2l_tensorflow.KerasAdapter`, with the stages read
from the functional graph (the outputs of the stem's max-pool, each block's last
concatenation, each transition's pool, the global pool's input and output, and the
model's output).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import dataclasses  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.keras.layers import (  # noqa: E402
    AveragePooling2D,
    BatchNormalization,
    Concatenate,
    Conv2D,
    Dense,
    Dropout,
    GlobalAveragePooling2D,
    Input,
    MaxPooling2D,
    ReLU,
    ZeroPadding2D,
)
from tensorflow.keras.models import Model  # noqa: E402

from ..spec import DenseNetSpec, InputError, get_spec  # noqa: E402
from ._common import expect_spec  # noqa: E402
from .d2l_tensorflow import KerasAdapter, KerasModel, KerasNative, keras_version, short_error  # noqa: E402

__all__ = ["CHAIN", "BlogBackend", "DenseBlock", "DenseLayer", "DenseNet121", "Fixes",
           "TransitionLayer", "differences", "structure"]


@dataclasses.dataclass(frozen=True)
class Fixes:
    """Which changes are applied to the blog's code as written (all False: the blog)."""

    relu: bool = False  # ReLU()(x), not ReLU(x)
    concat: bool = False  # Concatenate(axis=3)([x, featureMap])
    ratio: bool = False  # TransitionLayer(x, 0.5)
    dense: bool = False  # Dense(numClass, activation='softmax')
    stem: bool = False  # DenseNet-121's stem
    growth: bool = False  # growthRate=32 in the blocks
    transition_stride: bool = False  # the transition's 1x1 conv at stride 1
    bias: bool = False  # Conv2D(..., use_bias=False)
    head: bool = False  # BatchNormalization + ReLU before the global pool
    eps: bool = False  # BatchNormalization(epsilon=1e-5)
    softmax: bool = False  # the Dense without softmax: logits
    dropout: bool = False  # dropRate=0
    momentum: bool = False  # BatchNormalization(momentum=0.9)


AS_WRITTEN = Fixes()


# --8<-- [start:blog]
def _bn(f: Fixes) -> BatchNormalization:
    """The blog's ``BatchNormalization(axis=3)``: Keras's defaults unless a fix says."""
    changes: dict[str, Any] = {}
    if f.eps:
        changes["epsilon"] = 1e-5
    if f.momentum:
        changes["momentum"] = 0.9
    return BatchNormalization(axis=3, **changes)


def _relu(x: Any, f: Fixes) -> Any:
    if f.relu:
        return ReLU()(x)
    return ReLU(x)  # as written: a ReLU layer whose max_value is the tensor


def _conv(filters: int, kernel_size: Any, f: Fixes, **kwargs: Any) -> Conv2D:
    if f.bias:
        kwargs["use_bias"] = False
    return Conv2D(filters, kernel_size=kernel_size, **kwargs)


def DenseLayer(x, growthRate, dropRate=0, f=AS_WRITTEN):

    # bottleneck
    x = _bn(f)(x)
    x = _relu(x, f)
    x = _conv(4*growthRate, (1, 1), f, padding='same')(x)

    # composition
    x = _bn(f)(x)
    x = _relu(x, f)
    x = _conv(growthRate, (3, 3), f, padding='same')(x)

    # dropout
    x = Dropout(dropRate)(x)

    return x


def DenseBlock(x, num_layers, growthRate, dropRate=0, f=AS_WRITTEN):

    for _ in range(num_layers):
        featureMap = DenseLayer(x, growthRate, dropRate, f)
        if f.concat:
            x = Concatenate(axis=3)([x, featureMap])
        else:  # as written: the tensors passed as the layer's axis
            x = Concatenate([x, featureMap], axis=3)

    return x


def TransitionLayer(x, ratio, f=AS_WRITTEN):

    growthRate = int(x.shape[-1]*ratio)
    x = _bn(f)(x)
    x = _relu(x, f)
    x = _conv(growthRate, (1, 1), f,
              strides=(1, 1) if f.transition_stride else (2, 2), padding='same')(x)
    x = AveragePooling2D(pool_size=(2, 2), strides=(2, 2))(x)

    return x


def DenseNet121(numClass=1000, inputShape=(224, 224, 3), growthRate=12,
                f=AS_WRITTEN):
    x_in = Input(inputShape)
    if f.stem:  # DenseNet-121's: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool, padded symmetrically
        x = ZeroPadding2D(3)(x_in)
        x = _conv(64, (7, 7), f, strides=(2, 2))(x)
        x = _bn(f)(x)
        x = _relu(x, f)
        x = ZeroPadding2D(1)(x)
        x = MaxPooling2D(pool_size=(3, 3), strides=(2, 2))(x)
    else:
        x = _conv(growthRate*2, (3, 3), f, padding='same')(x_in)
        x = MaxPooling2D(pool_size=(2, 2), strides=(2, 2))(x)

    k = 32 if f.growth else 12
    drop = 0.0 if f.dropout else 0.2
    if f.ratio:
        def transition(t):
            return TransitionLayer(t, 0.5, f)
    else:  # as written: TransitionLayer(x) without its ratio
        def transition(t):
            return TransitionLayer(t, f=f)

    x = transition(DenseBlock(
        x, num_layers=6, growthRate=k, dropRate=drop, f=f))
    x = transition(DenseBlock(
        x, num_layers=12, growthRate=k, dropRate=drop, f=f))
    x = transition(DenseBlock(
        x, num_layers=24, growthRate=k, dropRate=drop, f=f))

    x = DenseBlock(x, num_layers=16, growthRate=k, dropRate=drop, f=f)
    if f.head:
        x = _bn(f)(x)
        x = _relu(x, f)
    x = GlobalAveragePooling2D()(x)
    if f.dense:
        x_out = Dense(numClass, activation=None if f.softmax else 'softmax')(x)
    else:  # as written: no units
        x_out = Dense(numClass=1000, activation='softmax')(x)

    model = Model(x_in, x_out)
    model.compile(optimizer=tf.keras.optimizers.Adam(),
                  loss=tf.keras.losses.CategoricalCrossentropy(), metrics=['accuracy'])
    model.summary(print_fn=lambda *args, **kwargs: None)  # the blog prints it; the harness's log need not
    return model
# --8<-- [end:blog]


# ====================================================================== what it builds
def _layers(net: Any) -> list[Any]:
    return [layer for layer in net.layers if not isinstance(layer, tf.keras.layers.InputLayer)]


def structure(net: Any) -> dict[str, Any]:
    """The built network's structure, read from its layers, in DenseNet terms."""
    layers = _layers(net)
    first_pool = next(i for i, layer in enumerate(layers) if isinstance(layer, MaxPooling2D))
    stem_conv = next(layer for layer in layers if isinstance(layer, Conv2D))
    pool = layers[first_pool]
    avg = [i for i, layer in enumerate(layers) if isinstance(layer, AveragePooling2D)]
    concats = [i for i, layer in enumerate(layers) if isinstance(layer, Concatenate)]
    bounds = [first_pool, *avg, len(layers)]
    block_layers = tuple(sum(lo < i < hi for i in concats) for lo, hi in zip(bounds, bounds[1:],
                                                                            strict=False))
    trans_convs = [layers[i - 1] for i in avg]
    block_convs = [layer for layer in layers[first_pool:] if isinstance(layer, Conv2D)
                   and all(layer is not t for t in trans_convs)]
    dense = next(layer for layer in reversed(layers) if isinstance(layer, Dense))
    bns = [layer for layer in layers if isinstance(layer, BatchNormalization)]
    return {
        "stem": (f"{stem_conv.kernel_size[0]}x{stem_conv.kernel_size[1]}/{stem_conv.strides[0]} "
                 f"conv of {stem_conv.filters}, "
                 + ("BN-ReLU, " if any(isinstance(x, BatchNormalization)
                                       for x in layers[:first_pool]) else "no BN-ReLU, ")
                 + f"{pool.pool_size[0]}x{pool.pool_size[1]}/{pool.strides[0]} max-pool"
                 + (" padded 1" if isinstance(layers[first_pool - 1], ZeroPadding2D)
                    else f" ({pool.padding})")),
        "block_layers": block_layers,
        "growth_rate": sorted({c.filters for c in block_convs if c.kernel_size == (3, 3)}),
        "bottleneck": sorted({c.filters for c in block_convs if c.kernel_size == (1, 1)}),
        "transitions": [f"1x1/{c.strides[0]} conv of {c.filters}, 2x2/2 avg-pool"
                        for c in trans_convs],
        "norm5": isinstance(layers[concats[-1] + 1], BatchNormalization),
        "conv_bias": any(layer.use_bias for layer in layers if isinstance(layer, Conv2D)),
        "classifier": f"Dense({dense.units}"
                      + (f", {dense.activation.__name__})" if dense.activation.__name__ != "linear"
                         else ")"),
        "dropout": sorted({layer.rate for layer in layers if isinstance(layer, Dropout)}),
        "bn_epsilon": sorted({float(b.epsilon) for b in bns}),
        "bn_momentum": sorted({float(b.momentum) for b in bns}),
    }


def _expected(spec: DenseNetSpec) -> dict[str, Any]:
    """:func:`structure`'s values for the canonical network of ``spec`` (DenseNet-121)."""
    plan = spec.channel_plan
    return {
        "stem": f"7x7/2 conv of {spec.num_init_features}, BN-ReLU, 3x3/2 max-pool padded 1",
        "block_layers": tuple(spec.block_config),
        "growth_rate": [spec.growth_rate],
        "bottleneck": [spec.bottleneck_channels],
        "transitions": [f"1x1/1 conv of {t.out_channels}, 2x2/2 avg-pool"
                        for t in plan.transitions],
        "norm5": True,
        "conv_bias": spec.conv_bias,
        "classifier": f"Dense({spec.num_classes})",
        "dropout": [float(spec.drop_rate)],
        "bn_epsilon": [float(spec.bn_eps)],
        "bn_momentum": [1.0 - spec.bn_momentum],
    }


def differences(net: Any, spec: DenseNetSpec) -> list[str]:
    """Every way the built network differs from the canonical network of ``spec``:
    ``"growth_rate [12] (densenet121: [32])"``, ..."""
    got, want = structure(net), _expected(spec)
    out = []
    for key, value in got.items():
        if not _close(value, want[key]):
            out.append(f"{key} {value} ({spec.name}: {want[key]})")
    return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
            isinstance(v, float) for v in (*a, *b)):
        return bool(np.allclose(a, b, rtol=1e-6, atol=0.0))
    return a == b


# ====================================================================== the adapter
class BlogBackend(KerasAdapter):
    """The backend contract around the blog's network with ``fixes`` applied."""

    what = "the Keras blog's DenseNet121()"
    input_size = (224, 224)  # the blog's Input((224, 224, 3))

    def check_spec(self, spec: DenseNetSpec) -> None:
        expect_spec(self.what, spec, get_spec("densenet121"))

    def construct(self, spec: DenseNetSpec) -> Any:
        try:
            return DenseNet121(numClass=spec.num_classes,
                               inputShape=(*self.input_size, spec.in_channels), f=self.fixes)
        except (TypeError, AttributeError, ValueError) as e:
            raise RuntimeError(f"{self.what} ({self.name}) raises while building (tf.keras = "
                               f"Keras {keras_version()}): {short_error(e)}") from e

    def structure_preface(self, model: KerasModel) -> str:
        diff = differences(model.net, model.spec)
        return f", which differs from {model.spec.name} in: " + "; ".join(diff) if diff else ""

    def native_layers(self, net: Any) -> list[KerasNative]:
        kinds = {Conv2D: "conv", BatchNormalization: "bn", Dense: "linear"}
        return [KerasNative(kind, layer) for layer in _layers(net)
                for cls, kind in kinds.items() if isinstance(layer, cls)]

    def _nhwc(self, model: KerasModel, x: Any) -> Any:
        shape = tuple(np.shape(x))
        if len(shape) == 4 and tuple(shape[2:]) != self.input_size:
            raise InputError(f"{self.what} takes {self.input_size[0]}x{self.input_size[1]} "
                             f"inputs only (its Input((224, 224, 3))), got {shape[2]}x{shape[3]}")
        return super()._nhwc(model, x)

    def _probe(self, model: KerasModel) -> Any:
        """The functional model from the blog's input to every stage's tensor."""
        if "probe" not in model.cache:
            net = model.net
            layers = _layers(net)
            pool = next(layer for layer in layers if isinstance(layer, MaxPooling2D))
            avg = [i for i, layer in enumerate(layers) if isinstance(layer, AveragePooling2D)]
            concats = [i for i, layer in enumerate(layers) if isinstance(layer, Concatenate)]
            gap = next(layer for layer in layers if isinstance(layer, GlobalAveragePooling2D))
            block_ends = [max(i for i in concats if i < hi) for hi in [*avg, len(layers)]]
            outputs = {"stem": pool.output}
            for b, i in enumerate(block_ends, start=1):
                outputs[f"block{b}"] = layers[i].output
                if b <= len(avg):
                    outputs[f"transition{b}"] = layers[avg[b - 1]].output
            outputs.update(features=gap.input, pooled=gap.output, logits=net.output)
            model.cache["probe"] = Model(net.inputs, outputs)
        return model.cache["probe"]

    def forward(self, model: KerasModel, xn: Any, training: bool
                ) -> tuple[dict[str, Any], dict[int, int]]:
        stages = self._probe(model)(xn, training=training)
        n = int(xn.shape[0])
        counts = {id(bn): n * int(bn.input.shape[1]) * int(bn.input.shape[2])
                  for bn in model.bns()}
        return dict(stages), counts


# ====================================================================== the chain
#: (object name, the one change it adds to the previous link), in chain order
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "the blog's code as written (it raises while building)"),
    ("fix_relu", "ReLU()(x) instead of ReLU(x), which makes a layer with max_value=x"),
    ("fix_concat", "Concatenate(axis=3)([x, featureMap]) instead of "
                   "Concatenate([x, featureMap], axis=3)"),
    ("fix_ratio", "TransitionLayer(x, 0.5): the ratio the blog leaves out (the paper's "
                  "compression)"),
    ("fix_dense", "Dense(numClass, activation='softmax'): the units the blog leaves out"),
    ("fix_stem", "DenseNet-121's stem: 7x7/2 conv of 64, BN, ReLU, 3x3/2 max-pool padded 1 "
                 "(not a 3x3/1 conv of 24 and a 2x2/2 max-pool)"),
    ("fix_growth", "growthRate=32 in the blocks (not 12): bottlenecks of 128"),
    ("fix_transition_stride", "the transition's 1x1 conv at stride 1: only the average pool "
                              "halves the map"),
    ("fix_bias", "Conv2D(..., use_bias=False) everywhere"),
    ("fix_head", "BatchNormalization and ReLU after the last block (features.norm5)"),
    ("fix_eps", "BatchNormalization(epsilon=1e-5)"),
    ("fix_softmax", "the classifier without softmax: logits"),
    ("fix_dropout", "dropRate=0 (the case's drop rate) instead of 0.2"),
    ("fix_momentum", "BatchNormalization(momentum=0.9): the canonical 0.1 in Keras's "
                     "convention"),
)


def _links() -> list[Fixes]:
    """Link i applies the first i fixes, in the order of :class:`Fixes`' fields (= CHAIN's)."""
    fields = [f.name for f in dataclasses.fields(Fixes)]
    if [f"fix_{name}" for name in fields] != [name for name, _ in CHAIN[1:]]:
        raise AssertionError("CHAIN and the fields of Fixes are not in the same order")
    return [Fixes(**{name: True for name in fields[:i]}) for i in range(len(fields) + 1)]


(backend, fix_relu, fix_concat, fix_ratio, fix_dense, fix_stem, fix_growth,
 fix_transition_stride, fix_bias, fix_head, fix_eps, fix_softmax, fix_dropout,
 fix_momentum) = (BlogBackend(name, fixes, change)
                  for (name, change), fixes in zip(CHAIN, _links(), strict=True))
