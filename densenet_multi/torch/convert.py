"""Canonical parameters <-> the PyTorch model.

The canonical layout *is* PyTorch's (OIHW kernels, (out, in) linear weights,
NCHW activations), so no layout conversion happens here: every canonical
parameter is copied into the tensor of the module its ``part`` path resolves
to (:func:`resolve`), under the attribute the parameter table names. The
module tree is built so that ``state_dict()`` keys equal the canonical names
as well (a test checks that both routes agree); the converter still walks
:func:`densenet_multi.params.module_table`, like every other backend's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..params import ModuleRef, module_table, validate_params
from .densenet import DenseBlock, DenseNet, Transition

__all__ = ["resolve", "canonical_tensors", "load_canonical", "export_canonical"]


def _parts(model: DenseNet, kind: type[nn.Module]) -> list[nn.Module]:
    """The dense blocks (or transitions) of ``model``, in order."""
    return [m for m in model.features.children() if isinstance(m, kind)]


def resolve(model: DenseNet, part: tuple[Any, ...]) -> nn.Module:
    """The layer a canonical ``ModuleRef.part`` path points to in ``model``.

    Paths (0-based indices): ``("stem", "conv0" | "norm0")``, ``("block", b,
    "layer", l, name)``, ``("transition", t, "norm" | "conv")``, ``("norm5",)``,
    ``("classifier",)``.
    """
    head, *rest = part
    if head == "stem":
        return getattr(model.features, rest[0])
    if head == "block":
        b, _, l, name = rest
        return getattr(list(_parts(model, DenseBlock)[b].values())[l], name)
    if head == "transition":
        t, name = rest
        return getattr(_parts(model, Transition)[t], name)
    if head == "norm5":
        return model.features.norm5
    if head == "classifier":
        return model.classifier
    raise KeyError(f"unknown canonical part path {part!r}")


def canonical_tensors(model: DenseNet) -> list[tuple[ModuleRef, str, str, torch.Tensor]]:
    """(module ref, canonical name, kind, tensor) for every canonical parameter/buffer."""
    out = []
    for ref in module_table(model.spec):
        module = resolve(model, ref.part)
        for p in ref.params:
            out.append((ref, p.name, p.kind, getattr(module, p.attr)))
    return out


def load_canonical(model: DenseNet, params: Mapping[str, Any]) -> DenseNet:
    """Copy canonical parameters and BN running statistics into ``model`` (in place).

    Every key, shape and dtype is validated first (float32 or float64, all
    alike); nothing is copied when anything is wrong. Values are cast to the
    model's dtype and device. Returns the model.
    """
    arrays = {k: np.asarray(v) for k, v in params.items()}
    validate_params(model.spec, arrays, dtype=None, what="canonical parameters")
    with torch.no_grad():
        for _, name, _, tensor in canonical_tensors(model):
            src = torch.from_numpy(np.ascontiguousarray(arrays[name]))
            tensor.copy_(src.to(device=tensor.device, dtype=tensor.dtype))
    return model


def export_canonical(model: DenseNet) -> dict[str, np.ndarray]:
    """Canonical numpy arrays of every parameter and running statistic, in
    ``param_table`` order (no ``num_batches_tracked``): float64 for a float64 model,
    float32 otherwise (a ``.half()`` model exports float32, the canonical checkpoint
    dtypes being float32 and float64)."""
    out: dict[str, np.ndarray] = {}
    for _, name, _, tensor in canonical_tensors(model):
        t = tensor.detach().cpu()
        if t.dtype != torch.float64:
            t = t.to(torch.float32)
        out[name] = np.ascontiguousarray(t.numpy()).copy()
    return out
