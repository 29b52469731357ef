"""Canonical parameters <-> the Gluon network, and <-> the Gluon model zoo's DenseNets.

Gluon is NCHW / OIHW / (out, in) like the canonical (PyTorch) layout, so no
array is transposed here (:mod:`densenet_multi.layouts` has nothing to do for
this backend). What does change is the *names*: every canonical parameter
belongs to a :class:`~densenet_multi.params.ModuleRef` whose structural
``part`` is resolved against our block tree in :func:`resolve`, and against
the zoo's ``features`` children in :func:`zoo_layers`. Gluon's own parameter
names (``densenet0_stage1_conv0_weight``) carry counters that depend on how
many networks the program has built; nothing here reads them.

Gluon's names for a layer's arrays differ from the canonical ``attr``:
BatchNorm calls its weight/bias ``gamma``/``beta`` (:data:`GLUON_ATTR`).

Values are copied in with ``Parameter.set_data`` from ``nd`` arrays and read
with ``asnumpy()``, which work whether MXNet's numpy mode is on or off: these
functions need no :func:`~densenet_multi.gluon.runtime.legacy_mode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn

from ..params import ModuleRef, ParameterError, module_table, validate_params
from ..spec import DenseNetSpec
from .densenet import DenseBlock, DenseNet, Transition

__all__ = [
    "GLUON_ATTR",
    "resolve",
    "gluon_param",
    "load_canonical",
    "export_canonical",
    "zoo_layers",
    "from_zoo",
    "to_zoo",
]

#: (module kind, canonical attr) -> the Gluon parameter attribute of that layer
GLUON_ATTR: dict[tuple[str, str], str] = {
    ("conv", "weight"): "weight",
    ("conv", "bias"): "bias",
    ("bn", "weight"): "gamma",
    ("bn", "bias"): "beta",
    ("bn", "running_mean"): "running_mean",
    ("bn", "running_var"): "running_var",
    ("linear", "weight"): "weight",
    ("linear", "bias"): "bias",
}


def resolve(model: DenseNet, part: tuple[Any, ...]) -> gluon.Block:
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
        return getattr(list(_parts(model, DenseBlock)[b]._children.values())[l], name)
    if head == "transition":
        t, name = rest
        return getattr(_parts(model, Transition)[t], name)
    if head == "norm5":
        return model.features.norm5
    if head == "classifier":
        return model.classifier
    raise KeyError(f"unknown canonical part path {part!r}")


def _parts(model: DenseNet, kind: type) -> list[gluon.Block]:
    """The children of ``model.features`` of one kind (DenseBlock, Transition), in order."""
    return [c for c in model.features._children.values() if isinstance(c, kind)]


def gluon_param(layer: gluon.Block, ref: ModuleRef, attr: str) -> gluon.Parameter:
    """The Gluon ``Parameter`` holding canonical attribute ``attr`` of the layer ``ref``."""
    p = getattr(layer, GLUON_ATTR[(ref.kind, attr)], None)
    if not isinstance(p, gluon.Parameter):
        raise ParameterError(f"{ref.prefix}: {type(layer).__name__} has no parameter for {attr!r}")
    return p


def _pairs(spec: DenseNetSpec, find) -> list[tuple[str, gluon.Parameter]]:
    """(canonical name, Gluon parameter) for every canonical parameter, in param_table order."""
    out = []
    for ref in module_table(spec):
        layer = find(ref)
        for info in ref.params:
            out.append((info.name, gluon_param(layer, ref, info.attr)))
    return out


def _copy_in(pairs: list[tuple[str, gluon.Parameter]], params: Mapping[str, Any],
             what: str) -> None:
    """Check every target shape first, then copy: all or nothing."""
    wrong = [f"{name}: model has {tuple(p.shape)}, given {tuple(np.shape(params[name]))}"
             for name, p in pairs if tuple(p.shape) != tuple(np.shape(params[name]))]
    if wrong:
        raise ParameterError(f"{what}: shapes do not fit the model:\n  - " + "\n  - ".join(wrong))
    for name, p in pairs:
        # an NDArray source, not numpy: MXNet copies numpy arrays straight into the
        # parameter's memory, which fails once oneDNN has reordered it (after a forward)
        p.set_data(nd.array(np.asarray(params[name]), ctx=p.list_ctx()[0], dtype=p.dtype))


def _copy_out(pairs: list[tuple[str, gluon.Parameter]]) -> dict[str, np.ndarray]:
    # float64 stays float64; float32 (and a float16-cast net's arrays) come out as float32
    return {name: np.ascontiguousarray(
        p.data().asnumpy(), dtype=np.float64 if np.dtype(p.dtype) == np.float64 else np.float32)
        for name, p in pairs}


def load_canonical(net: DenseNet, params: Mapping[str, Any]) -> None:
    """Copy canonical parameters (trainable ones and BN running statistics) into ``net``.

    Everything is validated first (keys, shapes, dtypes; float32 or float64);
    nothing is copied when anything is wrong. Values are cast to the parameters'
    dtype (float32, or float64 for a network built with ``dtype="float64"``).
    """
    validate_params(net.spec, params, dtype=None)
    _copy_in(_pairs(net.spec, lambda ref: resolve(net, ref.part)), params, "load_canonical")


def export_canonical(net: DenseNet) -> dict[str, np.ndarray]:
    """``net``'s parameters as canonical numpy arrays, in ``param_table`` order, in the
    network's dtype (float64 for a float64 network, float32 otherwise)."""
    return _copy_out(_pairs(net.spec, lambda ref: resolve(net, ref.part)))


# ---------------------------------------------------------------------- Gluon model zoo
def zoo_layers(zoo: gluon.HybridBlock) -> dict[tuple[Any, ...], gluon.Block]:
    """Map every canonical ``part`` to its layer in a ``mxnet.gluon.model_zoo.vision``
    DenseNet, by walking the zoo's ``features`` children in order (never by name).

    The zoo's ``features`` is: Conv2D, BatchNorm, Activation, MaxPool2D, then per
    stage a HybridSequential of dense layers (each a HybridConcurrent of Identity
    and [BN, Act, Conv1x1, BN, Act, Conv3x3(, Dropout)]) followed, except after the
    last, by a transition [BN, Act, Conv1x1, AvgPool2D]; then BatchNorm, Activation,
    AvgPool2D(7), Flatten. The classifier is ``zoo.output``.
    """
    feats = list(zoo.features._children.values())

    def expect(block, cls, where):
        if not isinstance(block, cls):
            raise ParameterError(f"zoo DenseNet: expected {cls.__name__} at {where}, "
                                 f"found {type(block).__name__}")
        return block

    out: dict[tuple[Any, ...], gluon.Block] = {
        ("stem", "conv0"): expect(feats[0], nn.Conv2D, "features[0]"),
        ("stem", "norm0"): expect(feats[1], nn.BatchNorm, "features[1]"),
    }
    b = t = 0
    rest = feats[4:]
    for i, child in enumerate(rest):
        where = f"features[{i + 4}]"
        if isinstance(child, nn.BatchNorm):  # norm5: the first bare BN after the stages
            out[("norm5",)] = child
            break
        kids = list(expect(child, nn.HybridSequential, where)._children.values())
        if kids and isinstance(kids[-1], nn.AvgPool2D):  # a transition
            out[("transition", t, "norm")] = expect(kids[0], nn.BatchNorm, f"{where}[0]")
            out[("transition", t, "conv")] = expect(kids[2], nn.Conv2D, f"{where}[2]")
            t += 1
            continue
        for l, layer in enumerate(kids):  # a dense block
            new = list(layer._children.values())[1]  # [Identity, new_features]
            units = list(new._children.values())
            for name, j, cls in (("norm1", 0, nn.BatchNorm), ("conv1", 2, nn.Conv2D),
                                 ("norm2", 3, nn.BatchNorm), ("conv2", 5, nn.Conv2D)):
                out[("block", b, "layer", l, name)] = expect(units[j], cls, f"{where}[{l}][1][{j}]")
        b += 1
    out[("classifier",)] = expect(zoo.output, nn.Dense, "output")
    return out


def _zoo_pairs(zoo: gluon.HybridBlock, spec: DenseNetSpec) -> list[tuple[str, gluon.Parameter]]:
    layers = zoo_layers(zoo)
    missing = [ref.prefix for ref in module_table(spec) if ref.part not in layers]
    if missing or len(layers) != len(module_table(spec)):
        raise ParameterError(
            f"the zoo network does not have the layers of {spec.describe()}: "
            f"{len(layers)} layers found, {len(module_table(spec))} expected; "
            f"missing e.g. {missing[:4]}")
    return _pairs(spec, lambda ref: layers[ref.part])


def from_zoo(zoo: gluon.HybridBlock, spec: DenseNetSpec) -> dict[str, np.ndarray]:
    """Canonical parameters of an initialised Gluon-zoo DenseNet (e.g.
    ``vision.densenet121()``; its parameters must exist, so run one forward pass
    first if it was initialised without shapes). ``spec`` names the matching preset."""
    params = _copy_out(_zoo_pairs(zoo, spec))
    validate_params(spec, params)
    return params


def to_zoo(params: Mapping[str, Any], zoo: gluon.HybridBlock, spec: DenseNetSpec) -> None:
    """Copy canonical parameters of ``spec`` into a Gluon-zoo DenseNet (all or nothing)."""
    validate_params(spec, params, dtype=None)
    _copy_in(_zoo_pairs(zoo, spec), params, "to_zoo")
