"""The backend contract (:mod:`densenet_multi.backend`) for PyTorch.

Everything crossing this boundary is canonical numpy: NCHW batches in, stage
outputs, logits, running statistics and gradients out under torchvision
names. PyTorch *is* the canonical BatchNorm convention (momentum = weight of
the new batch statistic, running variance updated with the unbiased batch
variance), so the running statistics need no conversion. Inputs and labels
are validated here, at the boundary, not in the model's forward (which stays
free of Python checks, so ``torch.compile(fullgraph=True)`` captures it).

``build`` gives the canonical seeded weights (``params.init_params``), the
same arrays as every other backend for the same seed. ``run`` and
``gradients`` leave the model as it was: a train-mode pass updates the BN
running statistics, and they are put back afterwards (the updated values are
what ``run(train=True)`` returns). ``train_steps`` trains. The model's own
dtype is used (``build(spec, dtype="float64")`` or ``model.double()`` runs in
float64); inputs are cast to it, and outputs and gradients come back in it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint
from ..backend import check_model_dtype
from ..outputs import ForwardOutput, GradOutput
from ..params import init_params, module_table
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape, check_labels
from .convert import canonical_tensors, export_canonical, load_canonical, resolve
from .densenet import DenseNet

__all__ = ["build", "run", "gradients", "train_steps", "devices", "save_checkpoint",
           "load_checkpoint"]

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def devices() -> list[str]:
    """Devices this backend can run on here: "cpu", then "cuda" (and "cuda:N" for
    more than one GPU)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + (["cuda"] if n else []) + [f"cuda:{i}" for i in range(1, n)]


def _device(device: str | torch.device | None) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


def _empty(spec: DenseNetSpec, device: str | torch.device | None, dtype: object,
           memory_efficient: bool) -> DenseNet:
    """A model for ``spec`` on ``device`` in ``dtype``, with the class's own init."""
    torch_dtype = _TORCH_DTYPES[check_model_dtype(dtype)]
    model = DenseNet(spec, memory_efficient=memory_efficient)
    return model.to(device=_device(device), dtype=torch_dtype)


def build(spec: DenseNetSpec, *, device: str | torch.device | None = None, seed: int = 0,
          dtype: str = "float32", memory_efficient: bool = False) -> DenseNet:
    """A :class:`DenseNet` for ``spec`` holding the canonical seeded weights
    ``init_params(spec, seed, dtype=dtype)`` (bit for bit the arrays every backend
    gets), its parameters and buffers in ``dtype`` ("float32" or "float64") on
    ``device`` ("cpu", "cuda", "cuda:N"). ``memory_efficient=True`` recomputes each
    dense layer's concatenation and first BN-ReLU-conv in the backward pass."""
    model = _empty(spec, device, dtype, memory_efficient)
    return load_canonical(model, init_params(spec, seed, dtype=check_model_dtype(dtype)))


def _param(model: DenseNet) -> torch.Tensor:
    return next(model.parameters())


def _as_input(model: DenseNet, x: np.ndarray) -> torch.Tensor:
    """Validate a canonical numpy batch and move it to the model's device and dtype."""
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(model.spec, x.shape, "NCHW")
    p = _param(model)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=p.device, dtype=p.dtype)


def _as_labels(model: DenseNet, labels: np.ndarray, n: int) -> torch.Tensor:
    labels = check_labels(labels, n, model.spec.num_classes)
    return torch.from_numpy(labels).to(_param(model).device)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()  # a copy: on CPU .numpy() shares memory


@contextlib.contextmanager
def _mode(model: DenseNet, train: bool, keep_running_stats: bool = True) -> Iterator[None]:
    """Put ``model`` in train/eval mode for a block, then restore the mode and (with
    ``keep_running_stats``) every buffer."""
    was_training = model.training
    saved = {k: b.clone() for k, b in model.named_buffers()} if keep_running_stats else {}
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in saved:
                    b.copy_(saved[k])


def _running_stats(model: DenseNet) -> dict[str, np.ndarray]:
    return {name: _numpy(t) for _, name, kind, t in canonical_tensors(model)
            if kind in ("bn_running_mean", "bn_running_var")}


def run(model: DenseNet, x: np.ndarray, *, train: bool = False) -> ForwardOutput:
    """Forward an NCHW numpy batch in eval or train mode.

    Returns logits and every stage of ``spec.stage_names`` (NCHW numpy, the
    model's dtype) and, in train mode, the updated running statistics under
    their canonical names (PyTorch's convention is the canonical one). The
    model's parameters, buffers and mode are left as they were.
    """
    xt = _as_input(model, x)
    with _mode(model, train), torch.no_grad():
        stages = model.forward_stages(xt)
        running = _running_stats(model) if train else None
    out = {k: _numpy(v) for k, v in stages.items()}
    return ForwardOutput(logits=out["logits"], stages=out, running=running)


def gradients(model: DenseNet, x: np.ndarray, labels: np.ndarray) -> GradOutput:
    """Mean softmax cross-entropy (train mode, batch statistics) and its gradient with
    respect to every trainable canonical parameter and the input.

    Uses ``torch.autograd.grad``, so the parameters' ``.grad`` fields and the
    BN running statistics are left untouched.
    """
    xt = _as_input(model, x).requires_grad_(True)
    yt = _as_labels(model, labels, xt.shape[0])
    names, tensors = [], []
    for ref in module_table(model.spec):
        module = resolve(model, ref.part)
        for p in ref.params:
            if p.trainable:
                names.append(p.name)
                tensors.append(getattr(module, p.attr))
    with _mode(model, train=True):
        loss = F.cross_entropy(model(xt), yt)
        grads = torch.autograd.grad(loss, [*tensors, xt])
    return GradOutput(
        loss=float(loss.detach()),
        params={n: _numpy(g) for n, g in zip(names, grads[:-1], strict=True)},
        input=_numpy(grads[-1]),
    )


def train_steps(
    model: DenseNet,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    lr: float,
    momentum: float,
) -> list[float]:
    """One SGD-with-momentum step (PyTorch's ``v = mu*v + g; p -= lr*v``, no weight decay,
    no Nesterov) per ``(x, labels)`` batch in train mode; the loss of each step, computed
    before its update. Updates the model's parameters and running statistics."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses: list[float] = []
    with _mode(model, train=True, keep_running_stats=False):
        for x, labels in batches:
            xt = _as_input(model, x)
            yt = _as_labels(model, labels, xt.shape[0])
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(model: DenseNet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` as a canonical safetensors checkpoint (spec in the metadata),
    atomically, in the model's dtype (float32, or float64 for a float64 model)."""
    return checkpoint.save(path, export_canonical(model), model.spec, overwrite=overwrite,
                           dtype=None)


def load_checkpoint(path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                    device: str | torch.device | None = None, dtype: str | None = None,
                    memory_efficient: bool = False) -> DenseNet:
    """A model built from a canonical checkpoint (its stored spec, or ``spec``, which
    must agree with it), in the file's dtype unless ``dtype`` is given, with every
    parameter and running statistic loaded. A checkpoint loads into either mode."""
    params, spec = checkpoint.load(path, spec, dtype=None)
    file_dtype = next(iter(params.values())).dtype
    model = _empty(spec, device, file_dtype if dtype is None else dtype, memory_efficient)
    return load_canonical(model, params)
