"""The d2l chapter's TensorFlow tab, rebuilt with ``tf.keras`` as the tab writes it, under the harness.

Seed ``000`` (the chapter "Densely Connected Networks (DenseNet)", TensorFlow
tab). **``tf.keras`` is Keras 3 here**: TensorFlow 2.16 and later resolve
``tf.keras`` to the Keras 3 package (``keras._tf_keras.keras``; Keras 3.15 with
TensorFlow 2.21 in the tensorflow environment), while the tab was written for
Keras 2 (TensorFlow 2.15 and earlier). The tab's own structure: ``ConvBlock``
(a ``tf.keras.layers.Layer``: BN, ReLU, 3x3 conv in ``self.listLayers``, run in
``call`` and concatenated with its input), ``DenseBlock`` (its conv blocks in
``self.listLayers``), ``TransitionBlock`` (BN, ReLU, 1x1 conv, 2x2/2 average
pool), and the network: ``tf.keras.models.Sequential(self.b1())``, then the
blocks and transitions by ``add``, then a head ``Sequential`` (BN, ReLU,
``GlobalAvgPool2D``, ``Flatten``, ``Dense``). Every framework default it relies
on is kept:

* ``tf.keras.layers.BatchNormalization()``: epsilon 1e-3 and momentum 0.99
  (the weight of the *old* running value) where the canonical network has 1e-5
  and PyTorch's 0.1 (0.9 in Keras's convention);
* ``padding='same'`` on the stride-2 stem conv and max-pool: (2, 3) and (0, 1)
  where the canonical network pads 3 and 1 on both sides (the 3x3 convs' 'same'
  at stride 1 is the symmetric 1 of the canonical network);
* ``Conv2D`` and ``Dense`` with their default bias (the d2l spec has
  ``conv_bias=True``).

Two Keras 2 idioms of the tab do not run on Keras 3, and the chain shows both:
``tf.keras.models.Sequential(self.b1())`` hands ``Sequential`` a model where
Keras 3 wants a list of layers (Keras 2 wrapped a single layer in a list), and
``for layer in self.listLayers.layers`` reads the ``.layers`` of the list
wrapper Keras 2 tracked lists in (Keras 3 tracks them in a plain list subclass).

The adapter, :class:`KerasAdapter` (also the base of
:mod:`densenet_multi.textbook.blog_003_keras`), offers the backend contract
(:mod:`densenet_multi.backend`): canonical parameters (torchvision names,
OIHW) onto the network's layers in execution order and back, the stages by
running the tab's layers one by one, and in train mode the running statistics
the tab's BatchNormalization really computed, converted from Keras's
biased-variance rule to the canonical one
(:func:`densenet_multi.batchnorm.canonical_running_var`) with the layer's own
momentum. The layers take Keras's float32 default policy: a float64 build is
unsupported.

The chain of fixes, each link the previous one plus one change, is
:data:`CHAIN`; run it with
``--backends tf_tab=densenet_multi.textbook.d2l_tensorflow:backend,...`` and
``--python tf_tab=.tox/tensorflow/bin/python``.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import re  # noqa: E402
from collections.abc import Iterable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from .. import checkpoint, layouts  # noqa: E402
from ..backend import check_model_dtype  # noqa: E402
from ..batchnorm import canonical_running_var  # noqa: E402
from ..outputs import ForwardOutput, GradOutput  # noqa: E402
from ..params import ModuleRef, init_params, validate_params  # noqa: E402
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape, check_labels  # noqa: E402
from ._common import Layer, SourceMismatch, pair_layers  # noqa: E402

__all__ = ["CHAIN", "ConvBlock", "DenseBlock", "DenseNet", "Fixes", "KerasAdapter", "KerasModel",
           "KerasNative", "TabBackend", "TransitionBlock", "backend", "fix_keras3",
           "fix_keras3_padding", "fix_keras3_padding_eps", "fix_keras3_padding_eps_momentum",
           "fix_sequential", "keras_version", "short_error"]


def keras_version() -> str:
    """The version of the Keras that ``tf.keras`` is here."""
    return str(getattr(tf.keras, "__version__", None) or __import__("keras").__version__)


@dataclasses.dataclass(frozen=True)
class Fixes:
    """Which changes are applied to the tab as written (all False: the tab itself)."""

    #: ``Sequential([self.b1()])``: Keras 3 takes a list of layers
    sequential: bool = False
    #: ``for layer in self.listLayers``: Keras 3's tracked list has no ``.layers``
    listlayers: bool = False
    #: the stem pads explicitly and symmetrically: ``ZeroPadding2D(3)`` + 'valid' conv,
    #: ``ZeroPadding2D(1)`` + 'valid' max-pool (zeros equal -inf after the ReLU)
    padding: bool = False
    #: ``BatchNormalization(epsilon=1e-5)``
    eps: bool = False
    #: ``BatchNormalization(momentum=0.9)``: the canonical 0.1 in Keras's convention
    momentum: bool = False


AS_WRITTEN = Fixes()


# --8<-- [start:tab]
def _batch_norm(fixes: Fixes) -> tf.keras.layers.BatchNormalization:
    """The tab's ``tf.keras.layers.BatchNormalization()``: Keras's defaults unless a fix says."""
    changes: dict[str, Any] = {}
    if fixes.eps:
        changes["epsilon"] = 1e-5
    if fixes.momentum:
        changes["momentum"] = 0.9
    return tf.keras.layers.BatchNormalization(**changes)


class ConvBlock(tf.keras.layers.Layer):
    def __init__(self, num_channels, fixes=AS_WRITTEN):
        super(ConvBlock, self).__init__()  # noqa: UP008 - as the tab writes it
        self.fixes = fixes
        self.bn = _batch_norm(fixes)
        self.relu = tf.keras.layers.ReLU()
        self.conv = tf.keras.layers.Conv2D(
            filters=num_channels, kernel_size=(3, 3), padding='same')
        self.listLayers = [self.bn, self.relu, self.conv]

    def call(self, x):
        y = x
        # as written: self.listLayers.layers (Keras 2's ListWrapper)
        for layer in (self.listLayers if self.fixes.listlayers else self.listLayers.layers):
            y = layer(y)
        y = tf.keras.layers.concatenate([x, y], axis=-1)
        return y


class DenseBlock(tf.keras.layers.Layer):
    def __init__(self, num_convs, num_channels, fixes=AS_WRITTEN):
        super(DenseBlock, self).__init__()  # noqa: UP008
        self.fixes = fixes
        self.listLayers = []
        for _ in range(num_convs):
            self.listLayers.append(ConvBlock(num_channels, fixes))

    def call(self, x):
        for layer in (self.listLayers if self.fixes.listlayers else self.listLayers.layers):
            x = layer(x)
        return x


class TransitionBlock(tf.keras.layers.Layer):
    def __init__(self, num_channels, fixes=AS_WRITTEN, **kwargs):
        super(TransitionBlock, self).__init__(**kwargs)  # noqa: UP008
        self.batch_norm = _batch_norm(fixes)
        self.relu = tf.keras.layers.ReLU()
        self.conv = tf.keras.layers.Conv2D(num_channels, kernel_size=1)
        self.avg_pool = tf.keras.layers.AvgPool2D(pool_size=2, strides=2)

    def call(self, x):
        x = self.batch_norm(x)
        x = self.relu(x)
        x = self.conv(x)
        return self.avg_pool(x)


class DenseNet(tf.keras.Model):
    def b1(self):
        if self.fixes.padding:
            return tf.keras.models.Sequential([
                tf.keras.layers.ZeroPadding2D(3),
                tf.keras.layers.Conv2D(64, kernel_size=7, strides=2),
                _batch_norm(self.fixes),
                tf.keras.layers.ReLU(),
                tf.keras.layers.ZeroPadding2D(1),
                tf.keras.layers.MaxPool2D(pool_size=3, strides=2)])
        return tf.keras.models.Sequential([
            tf.keras.layers.Conv2D(
                64, kernel_size=7, strides=2, padding='same'),
            _batch_norm(self.fixes),
            tf.keras.layers.ReLU(),
            tf.keras.layers.MaxPool2D(
                pool_size=3, strides=2, padding='same')])

    def __init__(self, num_channels=64, growth_rate=32, arch=(4, 4, 4, 4),
                 lr=0.1, num_classes=10, fixes=AS_WRITTEN):
        super(DenseNet, self).__init__()  # noqa: UP008
        self.fixes = fixes
        if fixes.sequential:
            self.net = tf.keras.models.Sequential([self.b1()])
        else:  # as written: a model where Keras 3 wants a list of layers
            self.net = tf.keras.models.Sequential(self.b1())
        for i, num_convs in enumerate(arch):
            self.net.add(DenseBlock(num_convs, growth_rate, fixes))
            # The number of output channels in the previous dense block
            num_channels += num_convs * growth_rate
            # A transition layer that halves the number of channels is added
            # between the dense blocks
            if i != len(arch) - 1:
                num_channels //= 2
                self.net.add(TransitionBlock(num_channels, fixes))
        self.net.add(tf.keras.models.Sequential([
            _batch_norm(self.fixes),
            tf.keras.layers.ReLU(),
            tf.keras.layers.GlobalAvgPool2D(),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(num_classes)]))

    def call(self, X, training=None):  # d2l's Module.call -> forward: self.net(X)
        return self.net(X)
# --8<-- [end:tab]


# ====================================================================== the adapter
class KerasNative(NamedTuple):
    """One parameterised layer of the network, in execution order."""

    kind: str  # "conv", "bn" or "linear" (params.ModuleRef.kind)
    layer: Any  # the Keras layer


#: canonical attribute -> the Keras layer's attribute, per kind
_SLOTS: dict[str, dict[str, str]] = {
    "conv": {"weight": "kernel", "bias": "bias"},
    "bn": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
           "running_var": "moving_variance"},
    "linear": {"weight": "kernel", "bias": "bias"},
}


def _native_shapes(n: KerasNative) -> dict[str, tuple[int, ...]]:
    """The layer's tensors as canonical attribute -> shape, in the canonical layout."""
    out = {}
    for attr, name in _SLOTS[n.kind].items():
        var = getattr(n.layer, name, None)
        if var is None:
            continue
        shape = tuple(int(s) for s in var.shape)
        if attr == "weight" and n.kind == "conv":  # HWIO -> OIHW
            shape = tuple(shape[i] for i in layouts.HWIO_TO_OIHW)
        elif attr == "weight" and n.kind == "linear":  # (in, out) -> (out, in)
            shape = shape[::-1]
        out[attr] = shape
    return out


class KerasModel:
    """A built Keras network and what the adapter knows about it."""

    def __init__(self, spec: DenseNetSpec, fixes: Any, net: Any, layers: list[KerasNative],
                 device: str | None) -> None:
        self.spec, self.fixes, self.net, self.layers, self.device = spec, fixes, net, layers, device
        #: why the canonical seeded weights could not be loaded at build (None: they were)
        self.build_note: str | None = None
        self.cache: dict[str, Any] = {}

    def bns(self) -> list[Any]:
        return [n.layer for n in self.layers if n.kind == "bn"]


class KerasAdapter:
    """The backend contract around a Keras network written by someone else.

    A subclass says how to build the network (:meth:`construct`, which may raise the
    source's own errors), which layers hold parameters (:meth:`native_layers`) and how
    to run it stage by stage (:meth:`forward`)."""

    what = "a Keras network"

    def __init__(self, name: str, fixes: Any, change: str) -> None:
        self.name, self.fixes, self.change = name, fixes, change

    def __repr__(self) -> str:
        return f"<{self.what} {self.name}: {self.change}>"

    # ------------------------------------------------------------------ to override
    def check_spec(self, spec: DenseNetSpec) -> None:
        """NotImplementedError for a network the source's code cannot express at all."""

    def construct(self, spec: DenseNetSpec) -> Any:
        """The source's network for ``spec``, built (variables created)."""
        raise NotImplementedError

    def native_layers(self, net: Any) -> list[KerasNative]:
        raise NotImplementedError

    def forward(self, model: KerasModel, xn: Any, training: bool
                ) -> tuple[dict[str, Any], dict[int, int]]:
        """(stage name -> NHWC output, id(BN layer) -> values per channel it averaged)."""
        raise NotImplementedError

    def structure_preface(self, model: KerasModel) -> str:
        """Said of the network, after its name, when the canonical weights do not fit it."""
        return ""

    # ------------------------------------------------------------------ build
    def build(self, spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
              dtype: str = "float32", memory_efficient: bool = False) -> KerasModel:
        """The source's network for ``spec``, holding the canonical seeded weights
        ``init_params(spec, seed)`` where its structure takes them (otherwise Keras's own
        initialisation, and ``model.build_note`` says why)."""
        if check_model_dtype(dtype) != "float32":
            raise NotImplementedError(f"{self.what} takes Keras's float32 default dtype policy; "
                                      "a float64 build is not the source's network")
        if memory_efficient:
            raise NotImplementedError(f"{self.what} has no memory-efficient mode")
        self.check_spec(spec)
        with _device_scope(device):
            net = self.construct(spec)
        model = KerasModel(spec, self.fixes, net, self.native_layers(net), device)
        try:
            self.load_canonical(model, init_params(spec, seed, dtype="float32"))
        except SourceMismatch as e:
            model.build_note = str(e)
        return model

    # ------------------------------------------------------------------ weights
    def _mapping(self, model: KerasModel) -> list[tuple[ModuleRef, KerasNative]]:
        """The canonical layers paired with the network's, in order; SourceMismatch naming
        every disagreement when its structure does not take the canonical parameters."""
        layers = [Layer(n.kind, n.layer.name, type(n.layer).__name__, _native_shapes(n), n)
                  for n in model.layers]
        source = f"{self.what} ({self.name}){self.structure_preface(model)}"
        return [(ref, layer.native) for ref, layer in pair_layers(source, model.spec, layers)]

    def load_canonical(self, model: KerasModel, params: Mapping[str, np.ndarray]) -> None:
        """Copy canonical parameters and running statistics onto the network's layers, in
        execution order; :class:`~densenet_multi.textbook._common.SourceMismatch` naming
        the misfits, and nothing copied, when its structure does not take them."""
        validate_params(model.spec, params, dtype="float32")
        for ref, n in self._mapping(model):
            for p in ref.params:
                getattr(n.layer, _SLOTS[ref.kind][p.attr]).assign(
                    layouts.param_to_channels_last(p.kind, params[p.name]))

    def export_canonical(self, model: KerasModel) -> dict[str, np.ndarray]:
        out = {}
        for ref, n in self._mapping(model):
            for p in ref.params:
                a = np.asarray(getattr(n.layer, _SLOTS[ref.kind][p.attr]).numpy())
                out[p.name] = layouts.param_from_channels_last(p.kind, a)
        return out

    # ------------------------------------------------------------------ forward
    def _nhwc(self, model: KerasModel, x: Any) -> Any:
        x = np.asarray(x)
        check_input_dtype(x.dtype)
        check_input_shape(model.spec, x.shape, "NCHW")
        return tf.constant(layouts.nchw_to_nhwc(x.astype(np.float32, copy=False)))

    def run(self, model: KerasModel, x: Any, *, train: bool = False) -> ForwardOutput:
        """The network's forward on an NCHW batch, every stage NCHW; in train mode, the
        running statistics its BatchNormalization layers computed, in the canonical
        variance rule. The model is left as it was."""
        xn = self._nhwc(model, x)
        bns = model.bns()
        before = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
        state = _snapshot(model.net)
        try:
            stages, counts = self.forward(model, xn, train)
            after = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
        finally:
            _restore(state)  # running statistics, dropout seed state: all as they were
        out = {}
        for name in model.spec.stage_names:
            a = np.asarray(stages[name])
            out[name] = layouts.nhwc_to_nchw(a) if a.ndim == 4 else a
        running = None
        if train:
            stats = {id(bn): (old, new) for bn, old, new in zip(bns, before, after, strict=True)}
            running = self._running(model, stats, counts)
        return ForwardOutput(logits=out["logits"], stages=out, running=running)

    def _running(self, model: KerasModel, stats: Mapping[int, Any], counts: Mapping[int, int]
                 ) -> dict[str, np.ndarray]:
        """Keras's updated statistics -> canonical names and rule, with each layer's momentum."""
        out = {}
        for ref, n in self._mapping(model):
            if ref.kind != "bn":
                continue
            (_, old_var), (new_mean, new_var) = stats[id(n.layer)]
            m = 1.0 - float(n.layer.momentum)  # the layer's momentum, canonical convention
            out[f"{ref.prefix}.running_mean"] = np.asarray(new_mean)
            out[f"{ref.prefix}.running_var"] = canonical_running_var(
                old_var, new_var, counts[id(n.layer)], m)
        return out

    # ------------------------------------------------------------------ training
    def _loss_and_grads(self, model: KerasModel, xn: Any, labels: np.ndarray
                        ) -> tuple[float, list[Any], Any, dict[int, int]]:
        """Train-mode loss and gradients of the mapped trainable variables and the input;
        the BN layers' statistics are updated by the pass (callers restore or convert)."""
        variables = [getattr(n.layer, _SLOTS[ref.kind][p.attr])
                     for ref, n in self._mapping(model) for p in ref.params if p.trainable]
        with tf.GradientTape() as tape:
            tape.watch(xn)
            stages, counts = self.forward(model, xn, True)
            logp = tf.nn.log_softmax(stages["logits"])
            loss = -tf.reduce_mean(tf.gather(logp, labels, axis=1, batch_dims=1))
        *grads, dx = tape.gradient(loss, [*variables, xn])
        return float(loss), grads, dx, counts

    def gradients(self, model: KerasModel, x: Any, labels: Any) -> GradOutput:
        """Train-mode loss (mean softmax cross-entropy) and its gradients, canonical names."""
        xn = self._nhwc(model, x)
        y = check_labels(labels, xn.shape[0], model.spec.num_classes)
        state = _snapshot(model.net)
        try:
            loss, grads, dx, _ = self._loss_and_grads(model, xn, y)
        finally:
            _restore(state)
        names = [(p.name, p.kind) for ref, _ in self._mapping(model) for p in ref.params
                 if p.trainable]
        params = {name: layouts.param_from_channels_last(kind, np.asarray(g))
                  for (name, kind), g in zip(names, grads, strict=True)}
        return GradOutput(loss=loss, params=params, input=layouts.nhwc_to_nchw(np.asarray(dx)))

    def train_steps(self, model: KerasModel, batches: Iterable[tuple[Any, Any]], *, lr: float,
                    momentum: float) -> list[float]:
        """PyTorch's SGD with momentum (``v = mu v + g; p -= lr v``), one step per batch;
        the running statistics follow the network's BatchNormalization, in the canonical
        variance rule."""
        variables = [getattr(n.layer, _SLOTS[ref.kind][p.attr])
                     for ref, n in self._mapping(model) for p in ref.params if p.trainable]
        velocity: list[Any] | None = None
        losses = []
        bns = model.bns()
        for x, labels in batches:
            xn = self._nhwc(model, x)
            y = check_labels(labels, xn.shape[0], model.spec.num_classes)
            before = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
            loss, grads, _, counts = self._loss_and_grads(model, xn, y)
            after = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
            velocity = list(grads) if velocity is None else \
                [momentum * v + g for v, g in zip(velocity, grads, strict=True)]
            for var, v in zip(variables, velocity, strict=True):
                var.assign_sub(lr * v)
            stats = {id(bn): (old, new) for bn, old, new in zip(bns, before, after, strict=True)}
            running = self._running(model, stats, counts)
            for ref, n in self._mapping(model):
                if ref.kind == "bn":
                    n.layer.moving_variance.assign(running[f"{ref.prefix}.running_var"])
            losses.append(loss)
        return losses

    # ------------------------------------------------------------------ the rest
    def devices(self) -> list[str]:
        return ["cpu"] + (["cuda"] if tf.config.list_physical_devices("GPU") else [])

    def resolve(self, model: KerasModel, part: Any) -> Any:
        """The Keras layer holding canonical module ``part``."""
        for ref, n in self._mapping(model):
            if tuple(ref.part) == tuple(part):
                return n.layer
        raise KeyError(f"no canonical module {part!r} in {model.spec.describe()}")

    def save_checkpoint(self, model: KerasModel, path: str | os.PathLike, *,
                        overwrite: bool = False) -> Path:
        return checkpoint.save(path, self.export_canonical(model), model.spec,
                               overwrite=overwrite)

    def load_checkpoint(self, path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                        device: str | None = None, dtype: str | None = None,
                        memory_efficient: bool = False) -> KerasModel:
        params, spec = checkpoint.load(path, spec)
        model = self.build(spec, device=device, dtype=dtype or "float32",
                           memory_efficient=memory_efficient)
        self.load_canonical(model, params)
        return model


def short_error(e: BaseException) -> str:
    """``Type: message`` of an error, without the advice and terminal colours Keras wraps
    an error raised inside a layer's ``call`` in (it quotes the original error after
    "Exception encountered:" or "Error encountered:")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = (re.search(r"Exception encountered: '{3}(.*?)'{3}", text, re.S)
             or re.search(r"Error encountered:\s*\n(.*?)(?:\n\n|$)", text, re.S))
    if found:
        return f"{type(e).__name__}: {found.group(1).strip()}"
    first = next((line for line in text.splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first.strip()}"


def _snapshot(net: Any) -> list[tuple[Any, np.ndarray]]:
    """Every non-trainable variable of ``net`` (BN statistics, dropout seed states) and
    its value now."""
    return [(v, np.array(v.numpy())) for v in net.non_trainable_variables]


def _restore(state: Sequence[tuple[Any, np.ndarray]]) -> None:
    for v, value in state:
        v.assign(value)


def _device_scope(device: str | None) -> Any:
    if device in (None, "cpu"):
        return contextlib.nullcontext() if device is None else tf.device("/CPU:0")
    if device == "cuda":
        if not tf.config.list_physical_devices("GPU"):
            raise ValueError("device 'cuda': TensorFlow sees no GPU here")
        return tf.device("/GPU:0")
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def small_input(spec: DenseNetSpec) -> int:
    """The smallest square input the network takes (for creating the variables: their
    shapes do not depend on the input size, the head pools globally)."""
    for size in range(8, 1025):
        try:
            spec.stage_shapes(size, size)
        except ValueError:
            continue
        return size
    raise ValueError(f"no input size up to 1024 fits {spec.describe()}")


class TabBackend(KerasAdapter):
    """The backend contract around the tab with ``fixes`` applied (a chain link)."""

    what = "the d2l TensorFlow tab"

    def check_spec(self, spec: DenseNetSpec) -> None:
        cant = []
        if spec.bn_size is not None:
            cant.append(f"bottleneck layers (bn_size={spec.bn_size}): the tab's ConvBlock is "
                        "BN-ReLU-3x3 conv only")
        if spec.compression != 0.5:
            cant.append(f"compression {spec.compression}: the tab halves (num_channels //= 2)")
        if spec.stem != "imagenet":
            cant.append(f"the {spec.stem!r} stem: the tab's b1 is 7x7/2 conv, BN, ReLU, 3x3/2 pool")
        if not spec.conv_bias:
            cant.append("convolutions without bias: Conv2D has one by default")
        if spec.drop_rate:
            cant.append(f"dropout {spec.drop_rate}: the tab has none")
        if spec.transition_rounding != "floor":
            cant.append(f"{spec.transition_rounding} rounding: the tab floors (//= 2)")
        if cant:
            raise NotImplementedError(f"{self.what} cannot build {spec.describe()}: "
                                      + "; ".join(cant))

    def construct(self, spec: DenseNetSpec) -> DenseNet:
        try:
            net = DenseNet(num_channels=spec.num_init_features, growth_rate=spec.growth_rate,
                           arch=tuple(spec.block_config), num_classes=spec.num_classes,
                           fixes=self.fixes)
            size = small_input(spec)
            net(np.zeros((1, size, size, spec.in_channels), np.float32))  # creates the variables
        except (TypeError, AttributeError) as e:
            raise RuntimeError(f"{self.what} ({self.name}) does not run under tf.keras = Keras "
                               f"{keras_version()}: {short_error(e)}") from e
        return net

    @staticmethod
    def _units(net: DenseNet) -> list[Any]:
        """The tab's layers in the order it runs them: b1's, the blocks and transitions,
        the head's."""
        b1, *body, head = net.net.layers
        return [*b1.layers, *body, *head.layers]

    def native_layers(self, net: DenseNet) -> list[KerasNative]:
        out: list[KerasNative] = []
        for layer in self._units(net):
            if isinstance(layer, tf.keras.layers.Conv2D):
                out.append(KerasNative("conv", layer))
            elif isinstance(layer, tf.keras.layers.BatchNormalization):
                out.append(KerasNative("bn", layer))
            elif isinstance(layer, tf.keras.layers.Dense):
                out.append(KerasNative("linear", layer))
            elif isinstance(layer, DenseBlock):
                for block in layer.listLayers:
                    out += [KerasNative("bn", block.bn), KerasNative("conv", block.conv)]
            elif isinstance(layer, TransitionBlock):
                out += [KerasNative("bn", layer.batch_norm), KerasNative("conv", layer.conv)]
        return out

    def forward(self, model: KerasModel, xn: Any, training: bool
                ) -> tuple[dict[str, Any], dict[int, int]]:
        units = self._units(model.net)
        b1, *_ = model.net.net.layers
        blocks = [i for i, u in enumerate(units) if isinstance(u, DenseBlock)]
        trans = [i for i, u in enumerate(units) if isinstance(u, TransitionBlock)]
        head = len(units) - 5  # BN, ReLU, GlobalAvgPool2D, Flatten, Dense
        names = {len(b1.layers) - 1: "stem", head + 1: "features", head + 3: "pooled",
                 head + 4: "logits"}
        names.update({i: f"block{b}" for b, i in enumerate(blocks, start=1)})
        names.update({i: f"transition{t}" for t, i in enumerate(trans, start=1)})
        stages, counts = {}, {}
        x = xn
        for i, unit in enumerate(units):
            inner = ([unit] if isinstance(unit, tf.keras.layers.BatchNormalization) else
                     [b.bn for b in unit.listLayers] if isinstance(unit, DenseBlock) else
                     [unit.batch_norm] if isinstance(unit, TransitionBlock) else [])
            # each BN averages over N * H * W of its input: the input of its unit
            counts.update({id(bn): int(np.prod(x.shape[:3])) for bn in inner})
            x = unit(x, training=training)
            if i in names:
                stages[names[i]] = x
        return stages, counts


# ====================================================================== the chain
#: (object name, the one change it adds to the previous link), in chain order
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "the tab as written (Keras defaults: BatchNormalization epsilon 1e-3, momentum "
                "0.99; 'same' stem padding; Keras 2 idioms)"),
    ("fix_sequential", "tf.keras.models.Sequential([self.b1()]): Keras 3 takes a list of layers, "
                       "not a model"),
    ("fix_keras3", "for layer in self.listLayers: Keras 3's tracked list has no .layers"),
    ("fix_keras3_padding", "the stem pads symmetrically: ZeroPadding2D(3) + 'valid' conv, "
                           "ZeroPadding2D(1) + 'valid' max-pool"),
    ("fix_keras3_padding_eps", "BatchNormalization(epsilon=1e-5)"),
    ("fix_keras3_padding_eps_momentum", "BatchNormalization(momentum=0.9): the canonical 0.1 in "
                                        "Keras's convention"),
)

_LINKS = (
    AS_WRITTEN,
    Fixes(sequential=True),
    Fixes(sequential=True, listlayers=True),
    Fixes(sequential=True, listlayers=True, padding=True),
    Fixes(sequential=True, listlayers=True, padding=True, eps=True),
    Fixes(sequential=True, listlayers=True, padding=True, eps=True, momentum=True),
)
(backend, fix_sequential, fix_keras3, fix_keras3_padding, fix_keras3_padding_eps,
 fix_keras3_padding_eps_momentum) = (TabBackend(name, fixes, change)
                                     for (name, change), fixes in zip(CHAIN, _LINKS, strict=True))
