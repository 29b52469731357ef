"""PyTorch files <-> this project's PyTorch model: ``torch.save`` state_dicts and safetensors.

A state_dict's keys are the canonical names (they are torchvision's), plus
``num_batches_tracked`` for every BatchNorm, which this project does not carry:
it is dropped on the way in and written as 0 on the way out, as
``torchvision.models.densenet121().state_dict()`` has it. Files are read with
``torch.load(weights_only=True)`` (no pickled code runs) and loaded the native
way, ``model.load_state_dict(strict=True)``, into :class:`~.densenet.DenseNet`.
The torchvision flavour is the same bytes for a network torchvision builds
(``torchvision.models.densenet121().load_state_dict(torch.load(f))`` works): it
needs no torchvision to read or write.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..convert.detect import CorruptFileError, DetectionError
from ..spec import DenseNetSpec
from .densenet import DenseNet
from .runtime import build

__all__ = ["inspect", "load_model", "write", "TORCHVISION_ARCHS"]

#: (growth, blocks, init features) of the networks torchvision.models builds.
TORCHVISION_ARCHS = {(32, (6, 12, 24, 16), 64): "densenet121", (48, (6, 12, 36, 24), 96):
                     "densenet161", (32, (6, 12, 32, 32), 64): "densenet169",
                     (32, (6, 12, 48, 32), 64): "densenet201"}
_NBT = ".num_batches_tracked"


def torchvision_arch(spec: DenseNetSpec) -> str | None:
    """The ``torchvision.models`` function that builds ``spec``'s network, or None. (Its BN
    epsilon is always PyTorch's 1e-5, which a state_dict does not store: a network of
    another epsilon, keras.applications' 1.001e-5, is written as torchvision runs it.)"""
    if (spec.stem != "imagenet" or spec.bn_size != 4 or spec.compression != 0.5
            or spec.conv_bias):
        return None
    return TORCHVISION_ARCHS.get((spec.growth_rate, spec.block_config, spec.num_init_features))


def _state_dict(path: str | os.PathLike, fmt: str) -> dict[str, torch.Tensor]:
    try:
        if fmt == "torch-safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many kinds for a damaged file
        raise CorruptFileError(f"{path} looks like a {fmt} file but cannot be read (truncated or "
                               f"corrupt?): {type(e).__name__}: {e}") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DetectionError(f"{path} holds a {type(sd).__name__}, not a state_dict (a dict of "
                             "tensors): save model.state_dict(), not the model or a training state")
    return dict(sd)


def _canonical_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.endswith(_NBT)}


def inspect(path: str | os.PathLike, fmt: str) -> dict:
    """Shapes in canonical names, dtype and flavour of a torch file, without building anything."""
    sd = _canonical_keys(_state_dict(path, fmt))
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values()})
    return {"shapes": {k: tuple(v.shape) for k, v in sd.items()}, "dtypes": dtypes,
            "flavour": None, "bn_eps": None, "eps_source": "PyTorch's default; not in the file"}


def load_model(path: str | os.PathLike, fmt: str, flavour: str, spec: DenseNetSpec,
               dtype: str) -> DenseNet:
    """Our model for ``spec`` with the file's state_dict loaded by ``load_state_dict(strict=True)``
    (``num_batches_tracked`` added as 0 where the file has none)."""
    sd = _state_dict(path, fmt)
    model = build(spec, dtype=dtype)
    for k, v in model.state_dict().items():
        if k.endswith(_NBT) and k not in sd:
            sd[k] = torch.zeros_like(v)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def write(params: Mapping[str, np.ndarray], spec: DenseNetSpec, path: str | os.PathLike,
          fmt: str, flavour: str) -> None:
    """``params`` as our model's ``state_dict()`` (``num_batches_tracked`` 0), with
    ``torch.save`` or ``safetensors.torch.save_file``, at ``path`` (the caller's temp path)."""
    if flavour == "torchvision" and torchvision_arch(spec) is None:
        raise ValueError(f"torchvision builds no network like {spec.describe()}; write the "
                         "torch format in our flavour (--to torch)")
    from .convert import load_canonical

    dtype = str(next(iter(params.values())).dtype)
    model = load_canonical(build(spec, dtype=dtype), params)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "torch-safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, Path(path))
