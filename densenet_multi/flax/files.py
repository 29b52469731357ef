"""Flax NNX checkpoints <-> this project's Flax model: Orbax, as Flax documents it today.

Flax's "Save and load checkpoints" guide saves an NNX model with
``ocp.StandardCheckpointer().save(path, nnx.state(model))`` and restores it with
``restore(path, abstract_state)`` then ``nnx.update(model, state)``: that is this
format, a checkpoint folder. The state's paths are the module tree's, which
carries the canonical names (``features.denseblock1.denselayer1.conv1.kernel``),
so :data:`~.convert.ATTRIBUTES` maps them back; kernels are HWIO there. The
state also holds the dropout RNG streams, restored with everything else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ..convert.detect import CorruptFileError
from ..spec import DenseNetSpec
from ._x64 import needs_x64, x64_scope
from .convert import ATTRIBUTES, load_canonical
from .densenet import DenseNet
from .runtime import build

__all__ = ["inspect", "load_model", "write"]

#: NNX variable name -> canonical attribute (kernel -> weight, scale -> weight, mean -> running_mean)
_CANONICAL_ATTR = {nnx_attr: attr for (_, attr), nnx_attr in ATTRIBUTES.items()}


def _leaves(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    try:
        meta = ocp.StandardCheckpointer().metadata(Path(path).resolve())
    except Exception as e:
        raise CorruptFileError(f"{path} looks like an Orbax checkpoint but its metadata cannot be "
                               f"read (incomplete or corrupt?): {type(e).__name__}: {e}") from None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if tree is None:  # Orbax warns and answers None when the tree's metadata is missing
        raise CorruptFileError(f"{path} looks like an Orbax checkpoint but has no readable tree "
                               "metadata (_METADATA missing or damaged): incomplete or corrupt?")
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)
        out[name.removesuffix(".value")] = (tuple(leaf.shape), str(leaf.dtype))
    return out


def inspect(path: str | os.PathLike, fmt: str) -> dict:
    """Canonical shapes and dtypes of an Orbax checkpoint of our model, from its metadata."""
    shapes, dtypes = {}, set()
    for name, (shape, dtype) in _leaves(path).items():
        module, _, attr = name.rpartition(".")
        if ".rngs." in f".{name}." or attr in ("key", "count"):
            continue  # the dropout RNG streams: state, not parameters
        canon = _CANONICAL_ATTR.get(attr, attr)
        if attr == "kernel" and len(shape) in (2, 4):  # HWIO -> OIHW, (in, out) -> (out, in)
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        shapes[f"{module}.{canon}"] = shape
        dtypes.add(dtype)
    return {"shapes": shapes, "dtypes": sorted(dtypes), "flavour": "ours", "bn_eps": None,
            "eps_source": "the preset's; the checkpoint does not store it"}


def load_model(path: str | os.PathLike, fmt: str, flavour: str, spec: DenseNetSpec,
               dtype: str) -> DenseNet:
    """Our model for ``spec``, its state restored from the checkpoint (``nnx.update``)."""
    model = build(spec, dtype=dtype)
    with x64_scope(needs_x64(dtype)):
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model))
        try:
            state = ocp.StandardCheckpointer().restore(Path(path).resolve(), abstract)
        except Exception as e:
            raise CorruptFileError(f"{path}: Orbax could not restore it into the detected network "
                                   f"(incomplete or corrupt?): {type(e).__name__}: {e}") from None
        nnx.update(model, state)
    return model


def write(params: Mapping[str, np.ndarray], spec: DenseNetSpec, path: str | os.PathLike,
          fmt: str, flavour: str) -> None:
    """``params`` in our model, saved with ``StandardCheckpointer().save(path, nnx.state(model))``."""
    dtype = str(next(iter(params.values())).dtype)
    model = build(spec, dtype=dtype)
    load_canonical(model, params)
    with x64_scope(needs_x64(dtype)):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(Path(path).resolve(), nnx.state(model))
        checkpointer.wait_until_finished()
