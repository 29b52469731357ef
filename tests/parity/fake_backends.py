"""Fake backends in NumPy, built on densenet_multi.reference, some with deliberate bugs.

Each module-level object below offers the backend contract
(``backend.CONTRACT``: build, load_canonical, export_canonical, run,
gradients, train_steps, devices, save_checkpoint, load_checkpoint, resolve) and
is run by the real runner and worker in a subprocess
(``--backends NAME=tests/parity/fake_backends.py:OBJECT``), so the tests
exercise the whole harness. The bugs are the mistakes real ports make:

* ``same_padding``: TensorFlow-style "same" padding at the stride-2 stem conv
  (pads (2, 3)) and max-pool (pads (0, 1)) instead of the spec's symmetric
  padding. Same shapes, different numbers from the stem on.
* ``initial_width``: every transition's width computed from the *initial*
  width (num_init_features + layers * k) instead of the running one: on d2l,
  96/96/96 instead of 96/112/120. Shapes fail first at transition2.
* ``momentum_convention``: BN momentum 0.9 used as PyTorch's 0.1 (the Keras
  value plugged into PyTorch's formula). Eval and the train-mode outputs are
  right; only the updated running statistics are wrong.
* ``hwio_reshape``: a channels-last backend whose converter *reshapes* OIHW
  kernels to HWIO instead of transposing them (and reshapes back on export,
  so its own round trip is exact). Eval fails at the stem.
* ``hwio_reshape_export``: the same reshape on load, but a correct transpose
  on export: the copy check fails too.
* ``int_rounding``: transition width ``int(n * theta)`` whatever the spec's
  rounding rule (wrong when the spec says "ceil" and the width is odd).
* ``grad_bug``: right forward, but the gradient of the transition1 kernel is
  scaled by 1.01.
* ``bias_grad_bug``: the gradient of the transition1 conv *bias* (exactly 0 in
  truth) set to half the magnitude of its kernel's gradient.
* ``reuse_batch``: a trajectory that trains K times on the first batch.
* ``momentum_ema``: SGD momentum in the other convention, ``v = mu v + (1 - mu) g``
  (an exponential average) instead of PyTorch's ``v = mu v + g``.
* ``trajectory_x11``: the right trajectory, then one final weight
  (``features.denseblock1.denselayer1.conv2.weight``) multiplied by 11: a 1000% error.
* ``float32_tape``: gradients and trajectory computed by the reference's tape in
  float32 (a correct float32 implementation, with float32's rounding).
* ``nan_stage``: NaN from block2 on (block2's output times NaN).
* ``keras_eps``: every BatchNorm with Keras' default epsilon 1e-3 instead of the spec's.
* ``drift``: block2 and all after it scaled by 1 + 8e-6 (within the tolerance: a
  regression only against a baseline).
* ``fixed_pool7``: Gluon model zoo's head, a fixed 7x7 average pool (stride 7)
  instead of a global one: the same at 224x224 (7x7 features), the top-left 7x7
  of 8x8 features at 256x256.

``gradients`` / ``train_steps``: ``good`` and the forward-bug fakes raise
NotImplementedError (the "unsupported" path); the others
use the reference's tape (densenet_multi.reference_grad) in float64, rounded
to the model's dtype (a float32 NumPy tape is less accurate than the frameworks), and
``grad_bug`` then scales the gradient of the transition1 kernel by 1.01.

``fake_gpu`` claims a "cuda" device (and computes the same there);
``fake_gpu_tf32`` keeps only TF32's 10 mantissa bits in the stem on it.

``float32_only`` ignores ``build(dtype=...)``: a float64 case runs in float32.

``crash`` exits the interpreter in the middle of the eval check; ``hang``
sleeps past any test timeout; ``raises`` raises a RuntimeError in eval;
``exit_in_copy`` exits with status 0 when it loads another backend's export in
the copy phase (leaving no result for it); ``complex_stages`` returns complex
stage outputs with the right real part and a garbage imaginary one.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from densenet_multi import checkpoint, layouts, reference, reference_grad
from densenet_multi.backend import GradOutput, check_model_dtype
from densenet_multi.params import init_params, param_table, validate_params
from densenet_multi.reference import ForwardOutput, relu
from densenet_multi.spec import (
    BlockPlan,
    ChannelPlan,
    ConvGeometry,
    DenseNetSpec,
    TransitionPlan,
    check_input_dtype,
    check_input_shape,
)


class InitialWidthSpec(DenseNetSpec):
    """A spec whose transitions halve ``num_init_features + layers * k`` (the bug)."""

    @property
    def channel_plan(self) -> ChannelPlan:
        k, width = self.growth_rate, self.num_init_features
        blocks, transitions = [], []
        for b, n in enumerate(self.block_config, start=1):
            blocks.append(BlockPlan(b, n, width, tuple(width + i * k for i in range(n)),
                                    None if self.bn_size is None else self.bn_size * k,
                                    width + n * k))
            width += n * k
            if b < self.num_blocks:
                t = self.transition_width(self.num_init_features + n * k)  # BUG
                transitions.append(TransitionPlan(b, width, t))
                width = t
        return ChannelPlan(self.num_init_features, tuple(blocks), tuple(transitions), width)


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's "same": total padding so that out = ceil(size / s), the extra at the end."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@dataclass
class Model:
    spec: DenseNetSpec  # what the harness asked for
    mspec: DenseNetSpec  # what this (buggy) backend actually builds
    store: dict[str, np.ndarray]  # in the backend's own layout
    device: str = "cpu"
    dtype: str = "float32"


class Fake:
    def __init__(self, *, same_padding: bool = False, initial_width: bool = False,
                 momentum_convention: bool = False, channels_last: bool = False,
                 reshape_load: bool = False, transpose_export: bool = False,
                 int_rounding: bool = False, grads: bool = False,
                 grad_bug: bool = False, crash: bool = False, hang: bool = False,
                 raises: bool = False, gpu: bool = False, tf32: bool = False,
                 float32_only: bool = False, bias_grad_bug: bool = False,
                 reuse_batch: bool = False, momentum_ema: bool = False,
                 scale_final: dict[str, float] | None = None, tape_dtype: str = "float64",
                 nan_stage: str | None = None, bn_eps: float | None = None,
                 fixed_pool: int | None = None, drift: float = 0.0,
                 exit_in_copy: bool = False, complex_stages: bool = False) -> None:
        self.__dict__.update(locals())
        del self.__dict__["self"]

    # -- contract -------------------------------------------------------------------
    def devices(self) -> list[str]:
        return ["cpu", "cuda"] if self.gpu else ["cpu"]

    def _mspec(self, spec: DenseNetSpec) -> DenseNetSpec:
        m = spec
        if self.initial_width:
            m = InitialWidthSpec(**spec.to_dict())
        if self.momentum_convention:
            # BUG: Keras' momentum (1 - PyTorch's: the weight of the *old* running value)
            # plugged into PyTorch's formula, 0.9 as 0.1
            m = m.replace(bn_momentum=1 - spec.bn_momentum)
        if self.bn_eps is not None:
            m = m.replace(bn_eps=self.bn_eps)  # BUG: the framework's default, not the spec's
        if self.int_rounding:
            m = m.replace(transition_rounding="floor")  # BUG: int(n * theta), spec ignored
        return m

    def build(self, spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
              dtype: str = "float32", memory_efficient: bool = False) -> Model:
        mspec = self._mspec(spec)
        # BUG (float32_only): the dtype is ignored, a float64 case computes in float32
        model = Model(spec, mspec, {}, device or "cpu",
                      "float32" if self.float32_only else check_model_dtype(dtype))
        self._store(model, init_params(mspec, seed, dtype=model.dtype))
        return model

    def save_checkpoint(self, model: Model, path: Any, *, overwrite: bool = False) -> Any:
        return checkpoint.save(path, self.export_canonical(model), model.spec,
                               overwrite=overwrite, dtype=model.dtype)

    def load_checkpoint(self, path: Any, spec: DenseNetSpec | None = None, *,
                        device: str | None = None, dtype: str | None = None,
                        memory_efficient: bool = False) -> Model:
        params, spec = checkpoint.load(path, spec, dtype=None)
        dt = dtype or str(next(iter(params.values())).dtype)
        model = self.build(spec, device=device, dtype=dt)
        self.load_canonical(model, params)
        return model

    def resolve(self, model: Model, part: Any) -> dict[str, np.ndarray]:
        """The stored tensors under a canonical part path (``"features.transition1"``)."""
        prefix = part if isinstance(part, str) else ".".join(map(str, part))
        return {k: v for k, v in model.store.items() if k.startswith(prefix + ".")}

    def _store(self, model: Model, params: dict[str, np.ndarray]) -> None:
        kinds = {p.name: p.kind for p in param_table(model.mspec)}
        store = {}
        for k, v in params.items():
            v = np.array(v, dtype=model.dtype)
            if self.channels_last and kinds[k] == "conv_weight":
                o, i, kh, kw = v.shape
                # BUG (reshape_load): a reshape keeps the memory order: not a transpose
                v = v.reshape(kh, kw, i, o) if self.reshape_load else layouts.oihw_to_hwio(v)
            store[k] = v
        model.store = store

    def load_canonical(self, model: Model, params: dict[str, np.ndarray]) -> None:
        if self.exit_in_copy and sys.argv[sys.argv.index("--phase") + 1] == "copy":
            os._exit(0)  # BUG: gone, with a success status, before writing the copy
        validate_params(model.mspec, params, dtype=None)
        self._store(model, params)

    def export_canonical(self, model: Model) -> dict[str, np.ndarray]:
        out = {}
        for p in param_table(model.mspec):
            v = model.store[p.name]
            if self.channels_last and p.kind == "conv_weight":
                kh, kw, i, o = v.shape
                if self.reshape_load and not self.transpose_export:
                    v = v.reshape(o, i, kh, kw)  # the inverse of the load bug: round trip exact
                else:
                    v = layouts.hwio_to_oihw(v)
            out[p.name] = np.array(v, dtype=model.dtype)
        return out

    def _canonical_view(self, model: Model) -> dict[str, np.ndarray]:
        """What the forward computes with: the stored kernels read as HWIO (correctly)."""
        kinds = {p.name: p.kind for p in param_table(model.mspec)}
        return {k: layouts.hwio_to_oihw(v) if self.channels_last and kinds[k] == "conv_weight"
                else v for k, v in model.store.items()}

    def run(self, model: Model, x: np.ndarray, *, train: bool = False) -> ForwardOutput:
        if self.crash:
            os._exit(17)
        if self.hang:
            time.sleep(3600)
        if self.raises:
            raise RuntimeError("deliberate failure in run()")
        x = np.asarray(x)
        check_input_dtype(x.dtype)
        x = x.astype(model.dtype)
        check_input_shape(model.spec, x.shape)
        out = self._forward(model, x, train)  # leaves the model as it was (the contract)
        if self.complex_stages:
            out.stages.update({k: v + 123j for k, v in out.stages.items()})  # BUG
        return out

    def _forward(self, model: Model, x: np.ndarray, train: bool) -> ForwardOutput:
        s = model.mspec
        p = self._canonical_view(model)
        ctx = reference._Ctx(s, p, train)
        stages: dict[str, np.ndarray] = {}
        if self.same_padding and s.stem_pool is not None:
            g, q = s.stem_conv, s.stem_pool
            ph = _same_pads(x.shape[2], g.kernel, g.stride)
            pw = _same_pads(x.shape[3], g.kernel, g.stride)
            y = np.pad(x, ((0, 0), (0, 0), ph, pw))  # BUG: (2, 3), not (3, 3)
            y = ctx.conv(y, "features.conv0", ConvGeometry(g.kernel, g.stride, 0))
            y = relu(ctx.bn(y, "features.norm0"))
            ph = _same_pads(y.shape[2], q.kernel, q.stride)
            pw = _same_pads(y.shape[3], q.kernel, q.stride)
            y = np.pad(y, ((0, 0), (0, 0), ph, pw))  # BUG: (0, 1), not (1, 1)
            y = reference.max_pool(y, ConvGeometry(q.kernel, q.stride, 0))
        else:
            y = ctx.conv(x, "features.conv0", s.stem_conv)
            if s.stem_pool is not None:
                y = reference.max_pool(relu(ctx.bn(y, "features.norm0")), s.stem_pool)
        if self.tf32 and model.device == "cuda":
            # BUG: a "GPU" that keeps 10 mantissa bits (TF32) in the stem conv
            y = (y.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
        stages["stem"] = y
        for bp in s.channel_plan.blocks:
            y = reference.dense_block(ctx, y, bp.index, bp.num_layers)
            if self.nan_stage == f"block{bp.index}":
                y = y * np.nan  # BUG
            if self.drift and bp.index == 2:
                y = y * (1 + self.drift)  # a drift within the tolerance (baseline tests)
            stages[f"block{bp.index}"] = y
            if bp.index < s.num_blocks:
                y = reference.transition(ctx, y, bp.index)
                stages[f"transition{bp.index}"] = y
        y = relu(ctx.bn(y, "features.norm5"))
        stages["features"] = y
        if self.fixed_pool:
            # BUG: a fixed k x k average pool (stride k), Gluon zoo's AvgPool2D(7)
            k = self.fixed_pool
            stages["pooled"] = reference.avg_pool(y, ConvGeometry(k, k, 0))[:, :, 0, 0]
        else:
            stages["pooled"] = y.mean(axis=(2, 3))
        logits = stages["pooled"] @ p["classifier.weight"].T + p["classifier.bias"]
        stages["logits"] = logits
        return ForwardOutput(logits, stages, ctx.running)

    def gradients(self, model: Model, x: np.ndarray, labels: np.ndarray) -> GradOutput:
        if not (self.grads or self.grad_bug):
            raise NotImplementedError("this fake has no gradients")
        r = reference_grad.gradients(model.mspec, self.export_canonical(model), x, labels,
                                     dtype=self.tape_dtype)
        grads = {k: v.astype(model.dtype) for k, v in r.params.items()}
        if self.grad_bug:
            k = "features.transition1.conv.weight"
            grads[k] = grads[k] * 1.01  # BUG
        if self.bias_grad_bug:
            w = np.abs(grads["features.transition1.conv.weight"]).max()
            b = grads["features.transition1.conv.bias"]
            grads["features.transition1.conv.bias"] = np.full_like(b, 0.5 * w)  # BUG
        return GradOutput(r.loss, grads, r.input.astype(model.dtype))

    def train_steps(self, model: Model, batches: Any, *, lr: float, momentum: float) -> list[float]:
        if not self.grads:
            raise NotImplementedError("this fake cannot train")
        batches = list(batches)
        if self.reuse_batch:
            batches = [batches[0]] * len(batches)  # BUG: the first batch K times
        if self.momentum_ema:
            losses, final = _ema_steps(model.mspec, self.export_canonical(model), batches, lr,
                                       momentum)
        else:
            losses, final = reference_grad.train_steps(
                model.mspec, self.export_canonical(model), batches, lr=lr, momentum=momentum,
                dtype=self.tape_dtype)
        for k, f in (self.scale_final or {}).items():
            final[k] = final[k] * f  # BUG
        self._store(model, dict(final))
        return losses


def _ema_steps(spec: DenseNetSpec, params: dict[str, np.ndarray], batches: list, lr: float,
               momentum: float) -> tuple[list[float], dict[str, np.ndarray]]:
    """SGD whose momentum is an exponential average of the gradients (the BUG)."""
    cur = {k: np.asarray(v, np.float64) for k, v in params.items()}
    velocity: dict[str, np.ndarray] = {}
    losses = []
    for x, y in batches:
        r = reference_grad.gradients(spec, cur, x, y, dtype="float64")
        losses.append(r.loss)
        for k, g in r.params.items():
            velocity[k] = momentum * velocity.get(k, 0.0) + (1 - momentum) * g
            cur[k] = cur[k] - lr * velocity[k]
        cur.update(r.output.running)
    return losses, cur


good = Fake()
autograd = Fake(grads=True)
same_padding = Fake(same_padding=True)
initial_width = Fake(initial_width=True)
momentum_convention = Fake(momentum_convention=True)
channels_last = Fake(channels_last=True)
hwio_reshape = Fake(channels_last=True, reshape_load=True)
hwio_reshape_export = Fake(channels_last=True, reshape_load=True, transpose_export=True)
int_rounding = Fake(int_rounding=True)
grad_bug = Fake(grads=True, grad_bug=True)
crash = Fake(crash=True)
hang = Fake(hang=True)
raises = Fake(raises=True)
exit_in_copy = Fake(exit_in_copy=True)
complex_stages = Fake(complex_stages=True)
#: "GPU" fakes (the same NumPy code on device "cuda"): the device check's comparison logic
fake_gpu = Fake(gpu=True, grads=True)
fake_gpu_tf32 = Fake(gpu=True, grads=True, tf32=True)
#: builds float32 whatever dtype it is asked for
float32_only = Fake(grads=True, float32_only=True)
bias_grad_bug = Fake(grads=True, bias_grad_bug=True)
reuse_batch = Fake(grads=True, reuse_batch=True)
momentum_ema = Fake(grads=True, momentum_ema=True)
trajectory_x11 = Fake(grads=True,
                      scale_final={"features.denseblock1.denselayer1.conv2.weight": 11.0})
float32_tape = Fake(grads=True, tape_dtype="float32")
nan_stage = Fake(nan_stage="block2")
keras_eps = Fake(bn_eps=1e-3)
fixed_pool7 = Fake(fixed_pool=7)
#: block2 and everything after it 8e-6 off: within the eval tolerance (1e-5), but far
#: more than a correct float32 backend's error (~1e-7): a regression against a baseline
drift = Fake(drift=8e-6)
