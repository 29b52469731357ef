"""Gluon ``.params`` files <-> this project's Gluon network: ``save_parameters`` / ``load_parameters``.

Two flavours, told apart by their names: this project's :class:`~.densenet.DenseNet`
(``features.denseblock1.denselayer1.norm1.gamma``: the canonical prefix and
Gluon's attribute) and the model zoo's ``vision.DenseNet``, whose anonymous
``HybridSequential`` children give positional names (``features.4.0.1.2.weight``);
those are sorted by position, which is network order, and named by
:func:`~densenet_multi.convert.detect.sequence_prefixes`. Files are read with
``net.load_parameters`` into a network built for the detected spec (ours, or
``vision.DenseNet(num_init_features, growth_rate, block_config, bn_size,
classes=...)``) and written with ``save_parameters``; the zoo's are converted by the
existing :func:`~.convert.from_zoo` / :func:`~.convert.to_zoo`. The zoo's BatchNorm
epsilon is Gluon's default, 1e-5.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import mxnet as mx
import numpy as np
from mxnet.gluon.model_zoo import vision

from ..convert.detect import CorruptFileError, DetectionError, sequence_prefixes
from ..spec import DenseNetSpec
from .convert import from_zoo, load_canonical, to_zoo
from .densenet import DenseNet
from .runtime import _empty

__all__ = ["inspect", "load_model", "write", "zoo_model"]

#: Gluon's array name -> the canonical attribute
_ATTR = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias",
         "running_mean": "running_mean", "running_var": "running_var"}
_BN_ORDER = ("gamma", "beta", "running_mean", "running_var")


def _arrays(path: str | os.PathLike) -> dict[str, mx.nd.NDArray]:
    try:
        loaded = mx.nd.load(str(path))
    except Exception as e:  # MXNetError for a truncated list
        raise CorruptFileError(f"{path} looks like a Gluon .params file but cannot be read "
                               f"(truncated or corrupt?): {type(e).__name__}: {e}") from None
    if not isinstance(loaded, dict):
        raise DetectionError(f"{path} is an MXNet array list without names, not save_parameters'")
    return loaded


def _position(module: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in module.split("."))


def _zoo_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, s in shapes.items():
        module, _, attr = name.rpartition(".")
        modules.setdefault(module, {})[attr] = s
    order = sorted((m for m in modules if m != "output"), key=_position)
    convs = [m for m in order if "weight" in modules[m] and len(modules[m]["weight"]) == 4]
    bns = [m for m in order if "gamma" in modules[m]]
    conv_names, bn_names = sequence_prefixes([modules[m]["weight"] for m in convs])
    if len(bn_names) != len(bns) or "output" not in modules:
        raise DetectionError(f"a Gluon-zoo DenseNet with {len(convs)} convolutions has "
                             f"{len(bn_names)} BatchNorms and an output layer; this file has "
                             f"{len(bns)} BatchNorms{'' if 'output' in modules else ', no output'}")
    out: dict[str, tuple[int, ...]] = {}
    for canon, m in [*zip(conv_names, convs, strict=True), *zip(bn_names, bns, strict=True),
                     ("classifier", "output")]:
        for attr, s in modules[m].items():
            out[f"{canon}.{_ATTR.get(attr, attr)}"] = s
    return out


def inspect(path: str | os.PathLike, fmt: str) -> dict:
    """Flavour, canonical shapes and dtypes of a ``.params`` file, without building a network."""
    arrays = _arrays(path)
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    dtypes = sorted({np.dtype(v.dtype).name for v in arrays.values()})
    if any(re.match(r"features\.\d+\.", k) for k in shapes) and any(k.startswith("output.")
                                                                    for k in shapes):
        return {"shapes": _zoo_shapes(shapes), "dtypes": dtypes, "flavour": "gluon-zoo",
                "bn_eps": 1e-5, "eps_source": "Gluon's default, which the zoo uses"}
    canon = {}
    for k, s in shapes.items():
        module, _, attr = k.rpartition(".")
        canon[f"{module}.{_ATTR.get(attr, attr)}"] = s
    return {"shapes": canon, "dtypes": dtypes, "flavour": "ours", "bn_eps": None,
            "eps_source": "the preset's; a .params file does not store it"}


def zoo_model(spec: DenseNetSpec, dtype: str = "float32") -> vision.DenseNet:
    """The model zoo's ``vision.DenseNet`` for ``spec`` (ImageNet stem, bottleneck, theta 0.5,
    no conv bias are all it builds)."""
    problems = [f"{k}={getattr(spec, k)!r}" for k, ok in (
        ("stem", spec.stem == "imagenet"), ("bn_size", spec.bn_size is not None),
        ("compression", spec.compression == 0.5), ("conv_bias", not spec.conv_bias))
        if not ok]  # (its BN epsilon is Gluon's 1e-5 whatever the spec says; not stored in the file)
    if problems:
        raise ValueError(f"the Gluon model zoo builds no network with {', '.join(problems)} "
                         f"({spec.describe()}); write --to gluon (our flavour) instead")
    net = vision.DenseNet(spec.num_init_features, spec.growth_rate, list(spec.block_config),
                          spec.bn_size, 0, classes=spec.num_classes)
    net.initialize(mx.init.Zero())
    if dtype != "float32":
        net.cast(dtype)
    net(mx.nd.zeros((1, spec.in_channels, 224, 224), dtype=dtype))  # create every parameter
    return net


def _load(net, path: str | os.PathLike) -> None:
    try:
        net.load_parameters(str(path))
    except Exception as e:
        raise CorruptFileError(f"{path}: Gluon's load_parameters failed for the detected "
                               f"network: {type(e).__name__}: {e}") from None


def load_model(path: str | os.PathLike, fmt: str, flavour: str, spec: DenseNetSpec,
               dtype: str) -> DenseNet:
    """Our Gluon network for ``spec`` with the file's parameters (``load_parameters``)."""
    net = _empty(spec, None, dtype, False, False)
    if flavour == "gluon-zoo":
        zoo = zoo_model(spec, dtype)
        _load(zoo, path)
        load_canonical(net, from_zoo(zoo, spec))
    else:
        _load(net, path)
    return net


def write(params: Mapping[str, np.ndarray], spec: DenseNetSpec, path: str | os.PathLike,
          fmt: str, flavour: str) -> None:
    """``params`` saved by ``save_parameters`` of our network or of the zoo's."""
    dtype = str(next(iter(params.values())).dtype)
    if flavour == "gluon-zoo":
        net = zoo_model(spec, dtype)
        to_zoo(params, net, spec)
    else:
        net = _empty(spec, None, dtype, False, False)
        load_canonical(net, params)
    net.save_parameters(str(path))
