"""The backend contract (:mod:`densenet_multi.backend`) for PyTorch.

Everything crossing this boundary is canonical numpy: NCHW batches in, stage
outputs, logits, running statistics and gradients out under torchvision
names. PyTorch *is* the canonical BatchNorm convention (momentum = weight of
the new batch statistic, running variance updated with the unbiased batch
variance), so the running statistics need no conversion.

``run`` and ``gradients`` do not change the model: a train-mode pass updates
the BN running statistics, and these functions put them back afterwards (the
updated values are what ``run(train=True)`` returns). ``train_steps`` trains.
The model's own dtype is used (``build(spec, dtype="float64")`` or
``model.double()`` runs in float64); inputs are cast to it, and outputs and
gradients come back in it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..backend import GradOutput, check_model_dtype
from ..params import module_table
from ..reference import ForwardOutput
from ..spec import DenseNetSpec, InputError, check_input_dtype, check_input_shape
from .convert import canonical_tensors, resolve
from .densenet import DenseNet

__all__ = ["build", "run", "gradients", "train_steps", "devices"]


def devices() -> list[str]:
    """Devices this backend can run on here."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build(spec: DenseNetSpec, *, device: str | torch.device | None = None, seed: int = 0,
          dtype: str = "float32") -> DenseNet:
    """A :class:`DenseNet` for ``spec`` with torchvision's initialisation, seeded, its
    parameters and buffers in ``dtype`` ("float32" or "float64")."""
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[check_model_dtype(dtype)]
    model = DenseNet(spec)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.to(device=device, dtype=torch_dtype)


def _param(model: DenseNet) -> torch.Tensor:
    return next(model.parameters())


def _as_input(model: DenseNet, x: np.ndarray) -> torch.Tensor:
    """Validate a canonical numpy batch and move it to the model's device and dtype."""
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(model.spec, x.shape, "NCHW")
    p = _param(model)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=p.device, dtype=p.dtype)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()  # a copy: on CPU .numpy() shares memory


@contextlib.contextmanager
def _mode(model: DenseNet, train: bool, keep_running_stats: bool = True) -> Iterator[None]:
    """Put ``model`` in train/eval mode for a block, then restore the mode and (with
    ``keep_running_stats``) every BN buffer."""
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
    model's buffers and mode are left as they were.
    """
    xt = _as_input(model, x)
    with _mode(model, train), torch.no_grad():
        stages = model.forward_stages(xt)
        running = _running_stats(model) if train else None
    out = {k: _numpy(v) for k, v in stages.items()}
    return ForwardOutput(logits=out["logits"], stages=out, running=running)


def _check_labels(labels: np.ndarray, n: int, num_classes: int) -> torch.Tensor:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"expected {n} integer labels of shape ({n},), got {labels.dtype} "
                         f"array of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, "
                         f"{labels.max()}]")
    return torch.from_numpy(labels.astype(np.int64))


def gradients(model: DenseNet, x: np.ndarray, labels: np.ndarray) -> GradOutput:
    """Mean softmax cross-entropy (train mode, batch statistics) and its gradient with
    respect to every trainable canonical parameter and the input.

    Uses ``torch.autograd.grad``, so the parameters' ``.grad`` fields and the
    BN running statistics are left untouched.
    """
    xt = _as_input(model, x).requires_grad_(True)
    yt = _check_labels(labels, xt.shape[0], model.spec.num_classes).to(xt.device)
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
            yt = _check_labels(labels, xt.shape[0], model.spec.num_classes).to(xt.device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses
