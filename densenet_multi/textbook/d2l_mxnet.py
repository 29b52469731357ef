"""The d2l chapter's MXNet tab (seed 000), rebuilt the way the tab builds it.

The tab runs Gluon in MXNet's numpy mode (``npx.set_np()``; arrays are ``mxnet.np``
arrays, the dense block concatenates with ``np.concatenate``). ``conv_block`` and
``transition_block`` are ``nn.Sequential`` helpers (``nn.BatchNorm()``,
``nn.Activation('relu')``, ``nn.Conv2D`` with deferred input widths, the transition's
``nn.AvgPool2D(pool_size=2, strides=2)``); ``DenseBlock`` is an ``nn.Block`` whose
``forward`` concatenates each conv block's output onto its input; the network is one
``nn.Sequential``: ``b1`` (7x7/2 conv padded 3, BatchNorm, ReLU, 3x3/2 max-pool
padded 1), the blocks and transitions with the tab's width arithmetic, and the head
``nn.BatchNorm(), nn.Activation('relu'), nn.GlobalAvgPool2D(), nn.Dense(num_classes)``
(``Dense`` flattens its input: Gluon's default). Every BatchNorm takes Gluon's
defaults (momentum 0.9, the weight of the *old* running value, i.e. PyTorch's 0.1;
epsilon 1e-5), every convolution its default bias, and the batch statistics come
from MXNet's ``BatchNorm`` operator.

Left out of the tab: ``d2l.Classifier`` (training; its ``forward`` is
``self.net(X)``, kept), ``save_hyperparameters`` and ``lr``. ``npx.set_np()`` is
process-wide in the tab; here numpy mode is switched on around every contract call
and the caller's mode put back (:func:`numpy_mode`). The tab's
``self.net.initialize(init.Xavier())`` is kept; the harness then loads the canonical
weights over it.

MXNet 1.9's BatchNorm operator updates the running statistics in the *backward*
pass, with the biased batch variance (the project's Gluon backend, docs/backends/
gluon.md): a train-mode :meth:`GluonSource.run` therefore runs one backward pass with
a zero head gradient, reads the statistics, converts the variance to the canonical
unbiased rule with the tab's own momentum, and puts the model's statistics back.

The tab's network is the canonical d2l network: :data:`backend` is the whole chain
(measured by the harness, docs/textbook.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import autograd, init, np
from mxnet.gluon import nn

from .. import checkpoint
from ..backend import check_model_dtype
from ..batchnorm import canonical_running_var, sample_counts
from ..outputs import ForwardOutput, GradOutput
from ..params import ModuleRef, validate_params
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape, get_spec
from ._common import Layer, SourceMismatch, expect_spec, pair_layers, seeded_params

__all__ = ["CHAIN", "DenseBlock", "DenseNet", "GluonSource", "backend", "conv_block", "numpy_mode",
           "transition_block"]

SOURCE = "the d2l MXNet tab (000)"


@contextlib.contextmanager
def numpy_mode() -> Iterator[None]:
    """The tab's ``npx.set_np()`` for a block of code; the caller's modes put back."""
    with mx.util.np_shape(True), mx.util.np_array(True):
        yield


# ---------------------------------------------------------------------- the tab's code
def conv_block(num_channels: int) -> nn.Sequential:
    blk = nn.Sequential()
    blk.add(nn.BatchNorm(),
            nn.Activation("relu"),
            nn.Conv2D(num_channels, kernel_size=3, padding=1))
    return blk


class DenseBlock(nn.Block):
    def __init__(self, num_convs: int, num_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential()
        for _ in range(num_convs):
            self.net.add(conv_block(num_channels))

    def forward(self, X: Any) -> Any:
        for blk in self.net:
            Y = blk(X)
            X = np.concatenate((X, Y), axis=1)  # each block's output joins its input
        return X


def transition_block(num_channels: int) -> nn.Sequential:
    blk = nn.Sequential()
    blk.add(nn.BatchNorm(), nn.Activation("relu"),
            nn.Conv2D(num_channels, kernel_size=1),
            nn.AvgPool2D(pool_size=2, strides=2))
    return blk


class DenseNet(nn.Block):
    """The tab's ``DenseNet(d2l.Classifier)``: ``b1`` and the constructor as written."""

    def __init__(self, num_channels: int = 64, growth_rate: int = 32,
                 arch: Sequence[int] = (4, 4, 4, 4), lr: float = 0.1,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.lr = lr  # the tab's training hyperparameter (unused here)
        self.net = nn.Sequential()
        self.net.add(self.b1())
        for i, num_convs in enumerate(arch):
            self.net.add(DenseBlock(num_convs, growth_rate))
            num_channels += num_convs * growth_rate  # the block's output width
            if i != len(arch) - 1:  # a transition halves the width between blocks
                num_channels //= 2
                self.net.add(transition_block(num_channels))
        self.net.add(nn.BatchNorm(), nn.Activation("relu"),
                     nn.GlobalAvgPool2D(), nn.Dense(num_classes))
        self.net.initialize(init.Xavier())

    def b1(self) -> nn.Sequential:
        net = nn.Sequential()
        net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
                nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        return net

    def forward(self, X: Any) -> Any:
        return self.net(X)


# ---------------------------------------------------------------------- the adapter
def tab_spec(spec: DenseNetSpec) -> DenseNetSpec:
    """The network the tab builds for ``spec``'s growth rate, blocks, classes and input
    channels: the d2l preset with those fields (see d2l_pytorch.tab_spec)."""
    return get_spec("d2l", growth_rate=spec.growth_rate, block_config=spec.block_config,
                    num_classes=spec.num_classes, in_channels=spec.in_channels)


#: canonical attribute -> Gluon parameter attribute, per kind
_ATTRS = {"conv": {"weight": "weight", "bias": "bias"},
          "bn": {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
                 "running_var": "running_var"},
          "linear": {"weight": "weight", "bias": "bias"}}


def gluon_layers(block: nn.Block, path: str = "") -> list[Layer]:
    """Every Conv2D, BatchNorm and Dense of ``block`` in registration order (the tab's
    forward order), shapes in the canonical layout (Gluon's is the canonical one)."""
    out = []
    for name, child in block._children.items():
        child = child() if callable(child) and not isinstance(child, nn.Block) else child
        where = f"{path}.{name}" if path else name
        kind = ("conv" if isinstance(child, nn.Conv2D) else "bn" if isinstance(child, nn.BatchNorm)
                else "linear" if isinstance(child, nn.Dense) else None)
        if kind is None:
            out += gluon_layers(child, where)
            continue
        shapes: dict[str, tuple[int, ...] | None] = {}
        for attr, gattr in _ATTRS[kind].items():
            p = getattr(child, gattr, None)
            shapes[attr] = None if p is None else tuple(p.shape)
        out.append(Layer(kind, where, type(child).__name__, shapes, child))
    return out


class GluonModel:
    """The tab's network, the spec it stands for and its layers paired with the canonical ones."""

    def __init__(self, source: GluonSource, net: DenseNet, spec: DenseNetSpec) -> None:
        self.source, self.net, self.spec = source, net, spec
        self.load_error = ""
        self._pairs: list[tuple[ModuleRef, Layer]] | None = None

    def __repr__(self) -> str:
        return f"GluonModel({self.source.name!r}, {self.spec.name})"

    @property
    def pairs(self) -> list[tuple[ModuleRef, Layer]]:
        if self._pairs is None:
            self._pairs = pair_layers(self.source.name, self.spec, gluon_layers(self.net))
        return self._pairs

    def params(self) -> list[tuple[str, str, Any]]:
        """(canonical name, kind, Gluon parameter) in ``param_table`` order."""
        return [(p.name, p.kind, getattr(layer.native, _ATTRS[ref.kind][p.attr]))
                for ref, layer in self.pairs for p in ref.params]


class GluonSource:
    """The MXNet tab (numpy mode) offering the backend contract."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"GluonSource({self.name!r})"

    def build(self, spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
              dtype: str = "float32", memory_efficient: bool = False) -> GluonModel:
        """The tab's network for ``spec`` (deferred shapes resolved by one eval-mode call on
        zeros, as its first call would), in ``dtype``, holding the canonical seeded
        weights where its layers take them (else ``model.load_error`` says why)."""
        expect_spec(SOURCE, spec, tab_spec(spec))
        if memory_efficient:
            raise NotImplementedError(f"{self.name}: the tab has no memory-efficient mode")
        if device not in (None, "cpu"):
            raise NotImplementedError(f"{self.name}: runs on the CPU here")
        dtype = check_model_dtype(dtype)
        with numpy_mode():
            net = DenseNet(growth_rate=spec.growth_rate, arch=spec.block_config,
                           num_classes=spec.num_classes)
            size = max(spec.min_input_size(), 32)
            with autograd.predict_mode():
                net(np.zeros((1, spec.in_channels, size, size)))
            if dtype != "float32":
                net.cast(dtype)
        model = GluonModel(self, net, spec)
        try:
            model.pairs  # noqa: B018 - do the tab's layers fit the canonical ones?
        except SourceMismatch as e:
            model.load_error = str(e)
            return model
        return self.load_canonical(model, seeded_params(spec, seed, dtype))

    def load_canonical(self, model: GluonModel, params: Mapping[str, Any]) -> GluonModel:
        arrays = {k: onp.asarray(v) for k, v in params.items()}
        validate_params(model.spec, arrays, dtype=None, what="canonical parameters")
        with numpy_mode():
            for name, _, p in model.params():
                p.set_data(np.array(arrays[name], dtype=onp.dtype(p.dtype).name))
        return model

    def export_canonical(self, model: GluonModel) -> dict[str, onp.ndarray]:
        with numpy_mode():
            return {name: onp.ascontiguousarray(p.data().asnumpy()).copy()
                    for name, _, p in model.params()}

    def _steps(self, net: DenseNet) -> list[tuple[Any, str | None]]:
        """``self.net``'s children: b1 the stem, the blocks and transitions, then BN, ReLU
        (the features), the global pool, the flatten ``nn.Dense`` does first (the pooled
        vector) and the dense layer (the logits)."""
        children = list(net.net._children.values())
        body, head = children[1:-4], children[-4:]
        steps: list[tuple[Any, str | None]] = [(children[0], "stem")]
        for i, child in enumerate(body):
            n = i // 2 + 1
            steps.append((child, f"block{n}" if i % 2 == 0 else f"transition{n}"))
        steps += [(head[0], None), (head[1], "features"), (head[2], None),
                  (lambda h: h.reshape(h.shape[0], -1), "pooled"), (head[3], "logits")]
        return steps

    def run(self, model: GluonModel, x: Any, *, train: bool = False) -> ForwardOutput:
        """The tab's forward pass step by step on an NCHW numpy batch (every stage, the
        logits); in train mode also the running statistics its BatchNorms leave, in the
        canonical rule. The model's statistics are put back."""
        x = onp.asarray(x)
        check_input_dtype(x.dtype)
        check_input_shape(model.spec, x.shape, "NCHW")
        with numpy_mode():
            dtype = onp.dtype(model.net.net[0][0].weight.dtype).name
            h = np.array(x, dtype=dtype)
            if not train:
                with autograd.predict_mode():
                    stages, logits = self._walk(model, h)
                return ForwardOutput(logits=logits.asnumpy(), stages=stages)
            before = self._running(model)
            h.attach_grad()
            try:
                with autograd.record(train_mode=True):
                    stages, logits = self._walk(model, h)
                autograd.grad(logits, [h], head_grads=np.zeros_like(logits), train_mode=True)
                running = self._canonical_running(model, before, x.shape)
            finally:
                self._write_running(model, before)
        return ForwardOutput(logits=logits.asnumpy(), stages=stages, running=running)

    def _walk(self, model: GluonModel, h: Any) -> tuple[dict[str, onp.ndarray], Any]:
        stages = {}
        for step, stage in self._steps(model.net):
            h = step(h)
            if stage is not None:
                stages[stage] = h.asnumpy()
        return stages, h

    def _running(self, model: GluonModel) -> dict[str, onp.ndarray]:
        return {name: p.data().asnumpy() for name, kind, p in model.params()
                if kind in ("bn_running_mean", "bn_running_var")}

    def _write_running(self, model: GluonModel, values: Mapping[str, onp.ndarray]) -> None:
        for name, _, p in model.params():
            if name in values:
                p.set_data(np.array(values[name], dtype=onp.dtype(p.dtype).name))

    def _canonical_running(self, model: GluonModel, before: Mapping[str, onp.ndarray],
                           shape: tuple[int, ...]) -> dict[str, onp.ndarray]:
        """The updated statistics by canonical name; each variance converted from MXNet's
        biased update to the canonical unbiased one, with the momentum the tab's
        BatchNorm really has (Gluon's convention: weight of the old value)."""
        n, _, h, w = shape
        counts = sample_counts(model.spec, n, h, w)
        out = {}
        for ref, layer in model.pairs:
            if ref.kind != "bn":
                continue
            m = 1.0 - float(layer.native._kwargs["momentum"])
            mean, var = f"{ref.prefix}.running_mean", f"{ref.prefix}.running_var"
            out[mean] = layer.native.running_mean.data().asnumpy()
            out[var] = canonical_running_var(before[var], layer.native.running_var.data().asnumpy(),
                                             counts[ref.prefix], m)
        return out

    def gradients(self, model: GluonModel, x: Any, labels: Any) -> GradOutput:
        raise NotImplementedError(f"{self.name}: the textbook reconstructions are checked in "
                                  "the forward pass and the weight copy only")

    def train_steps(self, model: GluonModel, batches: Any, *, lr: float,
                    momentum: float) -> list[float]:
        raise NotImplementedError(f"{self.name}: the textbook reconstructions are checked in "
                                  "the forward pass and the weight copy only")

    def devices(self) -> list[str]:
        return ["cpu"]

    def resolve(self, model: GluonModel, part: Any) -> nn.Block:
        for ref, layer in model.pairs:
            if ref.part == tuple(part):
                return layer.native
        raise KeyError(f"unknown canonical part path {part!r}")

    def save_checkpoint(self, model: GluonModel, path: str | os.PathLike, *,
                        overwrite: bool = False) -> Path:
        return checkpoint.save(path, self.export_canonical(model), model.spec,
                               overwrite=overwrite, dtype=None)

    def load_checkpoint(self, path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                        device: str | None = None, dtype: str | None = None,
                        memory_efficient: bool = False) -> GluonModel:
        params, spec = checkpoint.load(path, spec, dtype=None)
        dt = dtype or str(next(iter(params.values())).dtype)
        model = self.build(spec, device=device, dtype=dt, memory_efficient=memory_efficient)
        return self.load_canonical(model, params)


#: (object name, the one change it adds to the link before it), in chain order
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "the tab as written (numpy mode, Gluon's BatchNorm defaults and operator, "
                "conv biases)"),
)

#: The tab as written.
backend = GluonSource("d2l_mxnet.backend")
