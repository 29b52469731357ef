"""Canonical checkpoints: safetensors files with the spec in their metadata.

A checkpoint holds the canonical parameters (torchvision names, PyTorch
layout; see :mod:`densenet_multi.params`) and, in the safetensors header
metadata, the :class:`~densenet_multi.spec.DenseNetSpec` as JSON under
``densenet_multi.spec``. Any safetensors reader can open it; a torchvision
DenseNet-121 state_dict saved with ``safetensors.torch.save_file`` (minus
``num_batches_tracked``) loads here with ``spec=get_spec("densenet121")``.

* Loading checks every key, shape and dtype against the spec and raises one
  :class:`CheckpointError` listing everything that is wrong; nothing is
  returned half-loaded.
* Loading against a different spec than the one stored names the fields
  that differ.
* Writing is atomic (a temporary file in the same folder, fsync, rename) and
  refuses to replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .params import ParameterError, param_table, validate_params
from .spec import DenseNetSpec, SpecError

__all__ = ["CheckpointError", "save", "load", "read_spec", "METADATA_KEY"]

METADATA_KEY = "densenet_multi.spec"
FORMAT_KEY = "densenet_multi.format"
FORMAT = "canonical/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or does not match its spec."""


def save(
    path: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    spec: DenseNetSpec,
    *,
    overwrite: bool = False,
    dtype: str | None = "float32",
) -> Path:
    """Write canonical ``params`` of ``spec`` to ``path`` atomically.

    The parameters are validated first (all keys, shapes, one dtype), so an
    invalid dict never reaches the disk.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in params.items()}
    try:
        validate_params(spec, arrays, dtype=dtype)
    except ParameterError as e:
        raise CheckpointError(f"refusing to write {path}: {e}") from None
    metadata = {METADATA_KEY: spec.to_json(), FORMAT_KEY: FORMAT}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _open(path: Path):
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return safe_open(str(path), framework="np")
    except Exception as e:  # safetensors raises SafetensorError for bad headers
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None


def read_spec(path: str | os.PathLike) -> DenseNetSpec | None:
    """The spec stored in a checkpoint's metadata, or None when it has none."""
    path = Path(path)
    f = _open(path)
    meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        return None
    try:
        return DenseNetSpec.from_json(meta[METADATA_KEY])
    except SpecError as e:
        raise CheckpointError(f"{path}: the spec in its metadata is invalid: {e}") from None


def load(
    path: str | os.PathLike,
    spec: DenseNetSpec | None = None,
    *,
    dtype: str | None = "float32",
) -> tuple[dict[str, np.ndarray], DenseNetSpec]:
    """Read a checkpoint and check it completely against ``spec``.

    ``spec=None`` uses the spec stored in the file (an error if it has none).
    Given a spec that differs from the stored one, the error names each field
    that differs. Returns ``(params, spec)``.
    """
    path = Path(path)
    f = _open(path)
    stored = read_spec(path)
    if spec is None:
        if stored is None:
            raise CheckpointError(
                f"{path} has no densenet_multi spec in its metadata; pass the spec it was"
                " saved for (e.g. spec=get_spec('densenet121'))"
            )
        spec = stored
    elif stored is not None:
        diffs = spec.differences(stored)
        if diffs:
            lines = "\n  - ".join(f"{n}: expected {a!r}, file has {b!r}" for n, a, b in diffs)
            raise CheckpointError(
                f"{path} was saved for a different spec ({stored.name}) than the one given "
                f"({spec.name}):\n  - {lines}"
            )
    try:
        params = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: could not read its tensors (truncated?): {e}") from None
    try:
        validate_params(spec, params, dtype=dtype, what=f"the tensors in {path}")
    except ParameterError as e:
        raise CheckpointError(str(e)) from None
    # safetensors stores keys sorted; hand them back in state_dict order
    return {p.name: params[p.name] for p in param_table(spec)}, spec
