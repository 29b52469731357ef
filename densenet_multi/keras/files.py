"""Keras files <-> this project's Keras model: ``.keras`` archives and ``.weights.h5``.

Two flavours, told apart by their content: this project's :class:`~.densenet.DenseNet`
(a subclassed, registered ``keras.Model``: a ``.keras`` config names
``densenet_multi>DenseNet`` and holds the spec; the weights file nests
``features/dense_block_1/denselayers/dense_layer_3/conv2``) and
``keras.applications``' functional DenseNets (``Functional`` in the config;
the weights file lists ``layers/conv2d_17``, ``layers/batch_normalization_33``,
numbered in network order, so :func:`~densenet_multi.convert.detect.sequence_prefixes`
names them).

Everything is loaded the native way: ``keras.saving.load_model`` for ``.keras``,
``model.load_weights`` into a model built for the detected spec for
``.weights.h5`` (ours, or ``keras.applications.DenseNet121/169/201(weights=None)``), and written
with the model's own ``save`` / ``save_weights``,
so ``keras.applications.DenseNet121(weights=None).load_weights(out)`` works.
keras.applications' files are converted through the existing
:func:`~.convert.keras_applications_to_canonical` /
:func:`~.convert.canonical_to_keras_applications`. Their BatchNorm epsilon is
1.001e-5: read from a ``.keras`` config, implied for a ``.weights.h5``.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np

from ..convert.detect import CorruptFileError, DetectionError, sequence_prefixes
from ..spec import DenseNetSpec
from .convert import (
    KERAS_APPLICATIONS_EPS,
    canonical_to_keras_applications,
    export_canonical,
    keras_applications_to_canonical,
    load_canonical,
)
from .densenet import DenseNet
from .runtime import build

__all__ = ["APPLICATIONS", "inspect", "load_model", "write", "applications_model"]

_BN_ATTRS = ("weight", "bias", "running_mean", "running_var")  # Keras: gamma, beta, moving_*
_COUNTER = re.compile(r"^(.*?)(?:_(\d+))?$")


def _index(name: str) -> int:
    """Keras's object names count from the bare name: ``conv2d`` 0, ``conv2d_1`` 1, ..."""
    m = _COUNTER.match(name)
    return int(m.group(2)) if m and m.group(2) else 0


def _h5(path: str | os.PathLike, fmt: str) -> tuple[Any, dict | None]:
    """The weights HDF5 (opened with h5py) and, for a ``.keras`` archive, its config."""
    import h5py

    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
                data = z.read("model.weights.h5")
            return h5py.File(io.BytesIO(data), "r"), config
        return h5py.File(str(path), "r"), None
    except Exception as e:  # zipfile, json and h5py raise many kinds for a damaged file
        raise CorruptFileError(f"{path} looks like a {fmt} file but cannot be read (truncated or "
                               f"corrupt?): {type(e).__name__}: {e}") from None


def _datasets(f: Any) -> dict[str, tuple[int, ...]]:
    import h5py

    out: dict[str, tuple[int, ...]] = {}
    f.visititems(lambda n, o: out.__setitem__(n, tuple(o.shape))
                 if isinstance(o, h5py.Dataset) else None)
    return out


def _vars(ds: Mapping[str, tuple[int, ...]], group: str) -> list[tuple[int, ...]]:
    return [ds[f"{group}/vars/{i}"] for i in range(8) if f"{group}/vars/{i}" in ds]


def _oihw(s: tuple[int, ...]) -> tuple[int, ...]:
    return (s[3], s[2], s[0], s[1]) if len(s) == 4 else (s[1], s[0]) if len(s) == 2 else s


def _add(shapes: dict, prefix: str, kind: str, var_shapes: list[tuple[int, ...]]) -> None:
    if kind == "bn":
        for attr, s in zip(_BN_ATTRS, var_shapes, strict=False):
            shapes[f"{prefix}.{attr}"] = s
    else:
        shapes[f"{prefix}.weight"] = _oihw(var_shapes[0])
        if len(var_shapes) > 1:
            shapes[f"{prefix}.bias"] = var_shapes[1]


def _applications_shapes(ds: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    groups = sorted({n.split("/vars/")[0] for n in ds if n.startswith("layers/")})
    convs = sorted((g for g in groups if _COUNTER.match(g[7:]).group(1) == "conv2d"),
                   key=lambda g: _index(g[7:]))
    bns = sorted((g for g in groups if _COUNTER.match(g[7:]).group(1) == "batch_normalization"),
                 key=lambda g: _index(g[7:]))
    dense = [g for g in groups if _COUNTER.match(g[7:]).group(1) == "dense"]
    conv_names, bn_names = sequence_prefixes([_oihw(_vars(ds, g)[0]) for g in convs])
    if len(bn_names) != len(bns) or len(dense) != 1:
        raise DetectionError(f"a keras.applications-style weights file with {len(convs)} "
                             f"convolutions should have {len(bn_names)} BatchNorms and one Dense "
                             f"layer; it has {len(bns)} and {len(dense)}")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, g in zip(conv_names, convs, strict=True):
        _add(shapes, name, "conv", _vars(ds, g))
    for name, g in zip(bn_names, bns, strict=True):
        _add(shapes, name, "bn", _vars(ds, g))
    _add(shapes, "classifier", "linear", _vars(ds, dense[0]))
    return shapes


_OURS = re.compile(r"^features/(dense_block(?:_\d+)?)/denselayers/(dense_layer(?:_\d+)?)/(\w+)$")
_OURS_T = re.compile(r"^features/(transition(?:_\d+)?)/(norm|conv)$")


def _ours_shapes(ds: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    groups = sorted({n.split("/vars/")[0] for n in ds})
    shapes: dict[str, tuple[int, ...]] = {}
    top_bns = sorted((g for g in groups if re.fullmatch(r"features/batch_normalization(_\d+)?", g)),
                     key=lambda g: _index(g.split("/")[1]))
    norms = ["features.norm0", "features.norm5"][-len(top_bns):] if top_bns else []
    for g in groups:
        kind = "bn" if "norm" in g.rsplit("/", 1)[-1] or "batch_norm" in g else "conv"
        if g == "classifier":
            _add(shapes, "classifier", "linear", _vars(ds, g))
        elif re.fullmatch(r"features/conv2d(_\d+)?", g):
            _add(shapes, "features.conv0", "conv", _vars(ds, g))
        elif g in top_bns:
            _add(shapes, norms[top_bns.index(g)], "bn", _vars(ds, g))
        elif m := _OURS.match(g):
            b, l, unit = _index(m.group(1)) + 1, _index(m.group(2)) + 1, m.group(3)
            _add(shapes, f"features.denseblock{b}.denselayer{l}.{unit}", kind, _vars(ds, g))
        elif m := _OURS_T.match(g):
            _add(shapes, f"features.transition{_index(m.group(1)) + 1}.{m.group(2)}", kind,
                 _vars(ds, g))
        else:
            shapes[g.replace("/", ".")] = _vars(ds, g)[0] if _vars(ds, g) else ()
    return shapes


def _config_eps(config: Mapping[str, Any]) -> float | None:
    eps = {layer["config"]["epsilon"] for layer in config.get("config", {}).get("layers", [])
           if layer.get("class_name") == "BatchNormalization"}
    if len(eps) > 1:
        raise DetectionError(f"the .keras config has BatchNorms with different epsilons {eps}")
    return eps.pop() if eps else None


def inspect(path: str | os.PathLike, fmt: str) -> dict:
    """Flavour, canonical shapes, dtypes and BN epsilon of a Keras file, without building a model."""
    f, config = _h5(path, fmt)
    with f:
        ds = _datasets(f)
        dtypes = sorted({str(f[n].dtype) for n in ds})
    stored = None
    if config is not None and config.get("class_name") == "DenseNet":
        flavour, stored = "ours", config["config"].get("spec")
    elif config is not None:
        flavour = "keras-applications"
    else:
        flavour = "keras-applications" if any(n.startswith("layers/") for n in ds) else "ours"
    shapes = _applications_shapes(ds) if flavour == "keras-applications" else _ours_shapes(ds)
    if stored is not None:
        eps, source = stored["bn_eps"], "the spec in the .keras config"
    elif config is not None:
        eps, source = _config_eps(config), "the BatchNorm epsilon in the .keras config"
    elif flavour == "keras-applications":
        eps, source = KERAS_APPLICATIONS_EPS, "keras.applications' fixed epsilon"
    else:
        eps, source = None, "the preset's; a .weights.h5 does not store it"
    return {"shapes": shapes, "dtypes": dtypes, "flavour": flavour, "bn_eps": eps,
            "eps_source": source, "stored_spec": stored}


@contextmanager
def _policy(dtype: str) -> Iterator[None]:
    """keras.applications builds in the global dtype policy: set it for a float64 model only
    while building, and put it back."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


#: block_config -> the keras.applications function that builds it (growth 32, 64 stem features)
APPLICATIONS = {(6, 12, 24, 16): "DenseNet121", (6, 12, 32, 32): "DenseNet169",
                (6, 12, 48, 32): "DenseNet201"}


_APPS: dict[tuple[DenseNetSpec, str], keras.Model] = {}


def applications_model(spec: DenseNetSpec, dtype: str = "float32") -> keras.Model:
    """``keras.applications.DenseNet121/169/201(weights=None, classes=...)`` for ``spec``: built
    once per spec and dtype in a process (a DenseNet121 costs seconds to build); whoever
    asks for it overwrites every variable (``load_weights`` or
    :func:`canonical_to_keras_applications`)."""
    key = (spec, dtype)
    if key not in _APPS:
        if len(_APPS) >= 1:
            _APPS.clear()
        _APPS[key] = _applications_model(spec, dtype)
    return _APPS[key]


def _applications_model(spec: DenseNetSpec, dtype: str) -> keras.Model:
    name = APPLICATIONS.get(spec.block_config)
    if name is None or (spec.growth_rate, spec.num_init_features) != (32, 64):
        raise ValueError(f"keras.applications builds DenseNet121/169/201 only (k=32, 64 stem "
                         f"features, blocks {sorted(APPLICATIONS)}); not {spec.describe()}: "
                         "write --to keras or keras-weights (our flavour) instead")
    with _policy(dtype):
        return getattr(keras.applications, name)(
            include_top=True, weights=None, input_shape=(224, 224, spec.in_channels),
            classes=spec.num_classes)


_BUILT: dict[tuple[DenseNetSpec, str], DenseNet] = {}


def _model(spec: DenseNetSpec, dtype: str) -> DenseNet:
    """Our model for ``spec`` (every variable is overwritten by whoever asks for it): built
    once per spec and dtype, as building a Keras model costs seconds and loading none."""
    key = (spec, dtype)
    if key not in _BUILT:
        if len(_BUILT) >= 2:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = build(spec, dtype=dtype)
    return _BUILT[key]


def _load(model: keras.Model, path: str | os.PathLike) -> None:
    try:
        model.load_weights(str(path))
    except Exception as e:  # Keras raises ValueError/KeyError for a file that doesn't fit
        raise CorruptFileError(f"{path}: Keras could not load it into the detected network "
                               f"(truncated or corrupt?): {type(e).__name__}: {e}") from None


def load_model(path: str | os.PathLike, fmt: str, flavour: str, spec: DenseNetSpec,
               dtype: str) -> DenseNet:
    """Our Keras model for ``spec`` holding the file's weights, loaded the native way (the
    same model object for the same spec and dtype: the next call overwrites it)."""
    if fmt == "keras":
        try:
            native = keras.saving.load_model(str(path))
        except Exception as e:
            raise CorruptFileError(f"{path}: keras.saving.load_model failed (truncated or "
                                   f"corrupt?): {type(e).__name__}: {e}") from None
        if isinstance(native, DenseNet) and native.spec == spec:
            return native
        params = (export_canonical(native) if isinstance(native, DenseNet)
                  else keras_applications_to_canonical(native, spec))
    elif flavour == "keras-applications":
        app = applications_model(spec, dtype)
        _load(app, path)
        params = keras_applications_to_canonical(app, spec)
    else:
        model = _model(spec, dtype)
        _load(model, path)
        return model
    model = _model(spec, dtype)
    load_canonical(model, params)
    return model


def write(params: Mapping[str, np.ndarray], spec: DenseNetSpec, path: str | os.PathLike,
          fmt: str, flavour: str) -> None:
    """``params`` saved by the flavour's model's own ``save`` (``.keras``) or ``save_weights``."""
    dtype = str(next(iter(params.values())).dtype)
    if flavour == "keras-applications":
        model = applications_model(spec, dtype)
        canonical_to_keras_applications(params, model, spec)
    else:
        model = _model(spec, dtype)
        load_canonical(model, params)
    if fmt == "keras":
        model.save(str(path))
    else:
        model.save_weights(str(path))
