"""The adapter that turns a PyTorch network, written the way a source writes it, into a
backend the parity harness runs (:mod:`densenet_multi.backend`'s contract).

A :class:`TorchSource` is given three things by the module that reconstructs a source:

* ``make(spec) -> nn.Module``: the source's network, built by the source's own code
  (lazy layers included: they are materialised by one forward pass in eval mode, as
  the source's first call would);
* ``stages(net) -> [(step, stage name or None), ...]``: the source's forward pass as a
  sequence of steps (its own layers, or small functions of its own code), each step
  tagged with the canonical stage its output is, if any. :meth:`run` feeds the batch
  through the steps in order and collects the tagged outputs; the last step's output
  is the logits;
* ``accepts(spec)``: raises ``NotImplementedError`` for a network the source does not
  build (another case of the same harness run).

The canonical parameters go onto the source's layers in forward order
(:func:`._common.pair_layers`); PyTorch's layout is the canonical one, so nothing is
transposed. PyTorch's BatchNorm *is* the canonical convention (momentum 0.1 = weight of
the new statistic, unbiased running variance), so the running statistics of a
train-mode pass are returned as they are: whatever momentum and epsilon the source
leaves at PyTorch's defaults are what the harness measures.

Gradients and training steps are not offered (the textbook cases check the forward
pass and the weight copy): they raise ``NotImplementedError``, which the harness
reports as "unsupported", never as a pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import checkpoint
from ..backend import check_model_dtype
from ..outputs import ForwardOutput, GradOutput
from ..params import ModuleRef, validate_params
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape
from ._common import Layer, SourceMismatch, pair_layers, seeded_params

__all__ = ["SourceModel", "TorchSource", "torch_layers"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
Step = Callable[[Any], Any]


def torch_layers(net: nn.Module) -> list[Layer]:
    """Every conv, BatchNorm and linear layer of ``net`` in registration order (the
    order of these sources' forward passes), described in the canonical layout."""
    out = []
    for path, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            kind = "conv"
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            kind = "bn"
        elif isinstance(m, nn.Linear):
            kind = "linear"
        else:
            continue
        shapes: dict[str, tuple[int, ...] | None] = {}
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, attr, None)
            shapes[attr] = None if t is None else tuple(t.shape)
        out.append(Layer(kind, path or "(root)", type(m).__name__, shapes, m))
    return out


class SourceModel:
    """A source's network with what the adapter knows about it: the spec it stands
    for, and its layers paired with the canonical ones (or why they cannot be)."""

    def __init__(self, source: TorchSource, net: nn.Module, spec: DenseNetSpec) -> None:
        self.source, self.net, self.spec = source, net, spec
        self.load_error = ""  # why build() could not load the canonical seeded weights
        self._pairs: list[tuple[ModuleRef, Layer]] | None = None

    def __repr__(self) -> str:
        return f"SourceModel({self.source.name!r}, {self.spec.name})"

    @property
    def pairs(self) -> list[tuple[ModuleRef, Layer]]:
        """Canonical layer -> source layer; :class:`SourceMismatch` when they do not fit."""
        if self._pairs is None:
            self._pairs = pair_layers(self.source.name, self.spec, torch_layers(self.net))
        return self._pairs

    def tensors(self) -> list[tuple[str, str, torch.Tensor]]:
        """(canonical name, kind, the source layer's tensor) in ``param_table`` order."""
        return [(p.name, p.kind, getattr(layer.native, p.attr))
                for ref, layer in self.pairs for p in ref.params]

    @property
    def param(self) -> torch.Tensor:
        return next(self.net.parameters())


class TorchSource:
    """A PyTorch reconstruction offering the backend contract (see the module notes)."""

    def __init__(self, name: str, *, make: Callable[[DenseNetSpec], nn.Module],
                 stages: Callable[[nn.Module], Sequence[tuple[Step, str | None]]],
                 accepts: Callable[[DenseNetSpec], None],
                 memory_efficient: Callable[[nn.Module, bool], None] | None = None) -> None:
        self.name, self._make, self._stages, self._accepts = name, make, stages, accepts
        self._memory_efficient = memory_efficient

    def __repr__(self) -> str:
        return f"TorchSource({self.name!r})"

    # ------------------------------------------------------------------ building
    def build(self, spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
              dtype: str = "float32", memory_efficient: bool = False) -> SourceModel:
        """The source's network for ``spec`` on ``device`` in ``dtype``, holding the
        canonical seeded weights where its layers can take them. Where they cannot,
        the network keeps PyTorch's own initialisation and the reason is kept in
        ``model.load_error`` (so the harness's shapes check still sees the network as
        the source builds it; :meth:`load_canonical` then raises)."""
        self._accepts(spec)
        dtype = check_model_dtype(dtype)
        net = self._make(spec)
        if memory_efficient:
            if self._memory_efficient is None:
                raise NotImplementedError(f"{self.name}: the source has no memory-efficient mode")
            self._memory_efficient(net, True)
        _materialise(net, spec)
        net.to(device=torch.device(device or "cpu"), dtype=_DTYPES[dtype]).eval()
        model = SourceModel(self, net, spec)
        try:
            model.pairs  # noqa: B018 - do the source's layers fit the canonical ones?
        except SourceMismatch as e:
            model.load_error = str(e)
            return model
        return self.load_canonical(model, seeded_params(spec, seed, dtype))

    def load_canonical(self, model: SourceModel, params: Mapping[str, Any]) -> SourceModel:
        """Copy canonical parameters and running statistics onto the source's layers, in
        forward order; keys and shapes are validated first and nothing is copied when
        anything is wrong. :class:`SourceMismatch` when the layers cannot take them."""
        arrays = {k: np.asarray(v) for k, v in params.items()}
        validate_params(model.spec, arrays, dtype=None, what="canonical parameters")
        tensors = model.tensors()
        with torch.no_grad():
            for name, _, t in tensors:
                t.copy_(torch.from_numpy(np.ascontiguousarray(arrays[name])).to(t.device, t.dtype))
        return model

    def export_canonical(self, model: SourceModel) -> dict[str, np.ndarray]:
        """The source's layers read back as canonical arrays, in ``param_table`` order."""
        out = {}
        for name, _, t in model.tensors():
            a = t.detach().cpu()
            out[name] = np.ascontiguousarray(
                (a if a.dtype == torch.float64 else a.to(torch.float32)).numpy()).copy()
        return out

    # ------------------------------------------------------------------ running
    def run(self, model: SourceModel, x: Any, *, train: bool = False) -> ForwardOutput:
        """The source's forward pass, step by step, on an NCHW numpy batch: every stage
        its steps are tagged with, and the logits (the last step's output). In train
        mode also the updated running statistics (PyTorch's rule is the canonical
        one). The network's buffers and mode are put back afterwards."""
        x = np.asarray(x)
        check_input_dtype(x.dtype)
        check_input_shape(model.spec, x.shape, "NCHW")
        p = model.param
        h = torch.from_numpy(np.ascontiguousarray(x)).to(device=p.device, dtype=p.dtype)
        stages: dict[str, np.ndarray] = {}
        with _mode(model.net, train), torch.no_grad():
            for step, stage in self._stages(model.net):
                h = step(h)
                if stage is not None:
                    stages[stage] = _numpy(h, stage)
            running = None
            if train:
                running = {name: _numpy(t, name) for name, kind, t in model.tensors()
                           if kind in ("bn_running_mean", "bn_running_var")}
        return ForwardOutput(logits=_numpy(h, "logits"), stages=stages, running=running)

    def gradients(self, model: SourceModel, x: Any, labels: Any) -> GradOutput:
        raise NotImplementedError(f"{self.name}: the textbook reconstructions are checked in "
                                  "the forward pass and the weight copy only")

    def train_steps(self, model: SourceModel, batches: Any, *, lr: float,
                    momentum: float) -> list[float]:
        raise NotImplementedError(f"{self.name}: the textbook reconstructions are checked in "
                                  "the forward pass and the weight copy only")

    def devices(self) -> list[str]:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return ["cpu"] + (["cuda"] if n else [])

    def resolve(self, model: SourceModel, part: Any) -> nn.Module:
        """The source's layer that holds the canonical layer at ``part``."""
        for ref, layer in model.pairs:
            if ref.part == tuple(part):
                return layer.native
        raise KeyError(f"unknown canonical part path {part!r}")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, model: SourceModel, path: str | os.PathLike, *,
                        overwrite: bool = False) -> Path:
        return checkpoint.save(path, self.export_canonical(model), model.spec,
                               overwrite=overwrite, dtype=None)

    def load_checkpoint(self, path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                        device: str | None = None, dtype: str | None = None,
                        memory_efficient: bool = False) -> SourceModel:
        params, spec = checkpoint.load(path, spec, dtype=None)
        dt = dtype or str(next(iter(params.values())).dtype)
        model = self.build(spec, device=device, dtype=dt, memory_efficient=memory_efficient)
        return self.load_canonical(model, params)


# ---------------------------------------------------------------------- helpers
def _numpy(t: Any, stage: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"the source's forward pass gives a {type(t).__module__}."
                        f"{type(t).__name__} where the {stage} stage ends, not a tensor")
    return t.detach().cpu().numpy().copy()


def _materialise(net: nn.Module, spec: DenseNetSpec) -> None:
    """Give lazy layers (``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``, ``nn.LazyLinear``)
    their shapes with one eval-mode forward pass on zeros, as the source's first call
    does; a network without lazy layers is left alone."""
    if not any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m in net.modules()):
        return
    size = max(spec.min_input_size(), 32)
    net.eval()  # the fresh running statistics are not touched
    with torch.no_grad():
        net(torch.zeros(1, spec.in_channels, size, size))


@contextlib.contextmanager
def _mode(net: nn.Module, train: bool) -> Iterator[None]:
    """``net`` in train or eval mode for a block; mode and every buffer put back after."""
    was = net.training
    saved = {k: b.clone() for k, b in net.named_buffers()}
    net.train(train)
    try:
        yield
    finally:
        net.train(was)
        with torch.no_grad():
            for k, b in net.named_buffers():
                if k in saved and b.shape == saved[k].shape:
                    b.copy_(saved[k])
