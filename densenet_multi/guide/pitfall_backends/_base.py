"""The wrapper every pitfall variant is: a real backend with one thing changed.

A :class:`Variant` delegates every contract function to the real backend package
and changes it through at most four hooks, each optional:

* ``patch()``: run once, before the backend is first used, in the worker process
  that hosts the variant: replaces one function of the real backend's modules
  (a layer factory, a converter, a mode switch) with the wrong one;
* ``model_spec(spec)``: the spec the model is really built from (a width rule, a
  missing conv bias);
* ``after_build(model)``: a change to the built model (a layer replaced);
* ``params_in(model, params)``: what ``load_canonical`` really copies.

A patch changes the module for the whole process, so one process hosts at most
one variant: a second one raises RuntimeError instead of mixing two pitfalls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from ... import checkpoint
from ...backend import BACKENDS
from ...params import param_table
from ...spec import BlockPlan, ChannelPlan, DenseNetSpec, TransitionPlan

__all__ = ["InitialWidthSpec", "IntWidthSpec", "Variant", "strict_false"]

#: The variant whose patch this process applied (one per process).
_ACTIVE: dict[str, str] = {}


class Variant:
    """A real backend (``backend``: one of ``backend.BACKENDS``) with one thing changed."""

    def __init__(self, backend: str, name: str, *,
                 patch: Callable[[], None] | None = None,
                 model_spec: Callable[[DenseNetSpec], DenseNetSpec] | None = None,
                 after_build: Callable[[Any], None] | None = None,
                 params_in: Callable[[Any, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
                 | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")
        self.backend, self.name = backend, name
        self._patch, self._model_spec = patch, model_spec
        self._after_build, self._params_in = after_build, params_in
        self._real: ModuleType | None = None

    def __repr__(self) -> str:
        return f"Variant({self.backend!r}, {self.name!r})"

    @property
    def real(self) -> ModuleType:
        """The real backend package, with this variant's patch applied (once)."""
        if self._real is None:
            active = _ACTIVE.get("variant")
            if active is not None and active != self.name:
                raise RuntimeError(f"pitfall variant {self.name!r} cannot run in a process "
                                   f"that already runs {active!r}: their patches would mix")
            mod = importlib.import_module(BACKENDS[self.backend][0])
            if self._patch is not None and active is None:
                self._patch()
            _ACTIVE["variant"] = self.name
            self._real = mod
        return self._real

    # ------------------------------------------------------------------ the contract
    def build(self, spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
              dtype: str = "float32", memory_efficient: bool = False) -> Any:
        real = self.real
        if self._model_spec is not None:
            spec = self._model_spec(spec)
        model = real.build(spec, device=device, seed=seed, dtype=dtype,
                           memory_efficient=memory_efficient)
        if self._after_build is not None:
            self._after_build(model)
        return model

    def load_canonical(self, model: Any, params: Mapping[str, np.ndarray]) -> Any:
        if self._params_in is not None:
            params = self._params_in(model, params)
        return self.real.load_canonical(model, params)

    def export_canonical(self, model: Any) -> dict[str, np.ndarray]:
        return self.real.export_canonical(model)

    def run(self, model: Any, x: Any, *, train: bool = False) -> Any:
        return self.real.run(model, x, train=train)

    def gradients(self, model: Any, x: Any, labels: Any) -> Any:
        return self.real.gradients(model, x, labels)

    def train_steps(self, model: Any, batches: Any, *, lr: float, momentum: float) -> list[float]:
        return self.real.train_steps(model, batches, lr=lr, momentum=momentum)

    def devices(self) -> list[str]:
        return self.real.devices()

    def resolve(self, model: Any, part: Any) -> Any:
        return self.real.resolve(model, part)

    def save_checkpoint(self, model: Any, path: Any, *, overwrite: bool = False) -> Any:
        return checkpoint.save(path, self.export_canonical(model), model.spec,
                               overwrite=overwrite, dtype=None)

    def load_checkpoint(self, path: Any, spec: DenseNetSpec | None = None, *,
                        device: str | None = None, dtype: str | None = None,
                        memory_efficient: bool = False) -> Any:
        params, spec = checkpoint.load(path, spec, dtype=None)
        dt = dtype or str(next(iter(params.values())).dtype)
        model = self.build(spec, device=device, dtype=dt, memory_efficient=memory_efficient)
        self.load_canonical(model, params)
        return model



def strict_false(model: Any, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only the entries the model's own spec has (PyTorch's ``load_state_dict(strict=False)``:
    whatever the model has no slot for is dropped without a word)."""
    names = {p.name for p in param_table(model.spec)}
    return {k: v for k, v in params.items() if k in names}


# ---------------------------------------------------------------------- wrong width rules
class IntWidthSpec(DenseNetSpec):
    """A spec whose transitions are ``int(n * theta)`` wide (keras.applications'
    ``int(x.shape[bn_axis] * reduction)``), where the spec floors ``n * theta + 1e-9``:
    the two differ where ``n * theta`` lands just below an integer in floating point."""

    def transition_width(self, in_channels: int) -> int:
        return int(in_channels * self.compression)

    @classmethod
    def of(cls, spec: DenseNetSpec) -> IntWidthSpec:
        return cls.from_dict(spec.to_dict())  # type: ignore[return-value]


class InitialWidthSpec(DenseNetSpec):
    """A spec whose every transition compresses ``num_init_features + layers * k`` (the
    JAX tab's ``num_channels = self.num_channels + num_convs * self.growth_rate``)
    instead of the running width: 96/96/96 on d2l where the spec has 96/112/120. The
    blocks still see the width that really arrives (Flax infers it)."""

    @property
    def channel_plan(self) -> ChannelPlan:
        k, width = self.growth_rate, self.num_init_features
        blocks, transitions = [], []
        for b, n in enumerate(self.block_config, start=1):
            blocks.append(BlockPlan(b, n, width, tuple(width + i * k for i in range(n)),
                                    self.bottleneck_channels, width + n * k))
            width += n * k
            if b < self.num_blocks:
                t = self.transition_width(self.num_init_features + n * k)  # the JAX tab's rule
                transitions.append(TransitionPlan(b, width, t))
                width = t
        return ChannelPlan(self.num_init_features, tuple(blocks), tuple(transitions), width)

    @classmethod
    def of(cls, spec: DenseNetSpec) -> InitialWidthSpec:
        return cls.from_dict(spec.to_dict())  # type: ignore[return-value]
