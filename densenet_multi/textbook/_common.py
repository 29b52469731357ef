"""What every reconstruction shares, whatever its framework: which network a source
builds, and how its layers line up with the canonical parameters.

A reconstruction runs the source's own layers. Its adapter never renames a layer or
changes a shape: it walks the source's parameterised layers in the order the source's
forward pass uses them (:class:`Layer`, one per conv, BatchNorm or dense layer) and
pairs them one by one with :func:`densenet_multi.params.module_table`, which lists the
canonical network's layers in the same order. Where the two disagree (a layer of the
wrong kind, a wrong width, a bias the canonical layer lacks, a layer too many or too
few) :func:`pair_layers` raises :class:`SourceMismatch` naming every disagreement: the
harness reports it as the error of the checks that need the canonical weights, while
the shapes check still runs on the network as the source builds it.

This module imports no framework.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..params import ModuleRef, init_params, module_table
from ..spec import DenseNetSpec

__all__ = ["Layer", "SourceMismatch", "expect_spec", "pair_layers", "seeded_params"]

class SourceMismatch(ValueError):
    """The source's layers cannot hold the canonical parameters (kinds, widths, biases
    or the number of layers differ). ``problems`` lists every disagreement in network
    order; the first is where the source's structure departs from the canonical one."""

    def __init__(self, source: str, spec: DenseNetSpec,
                 problems: Sequence[tuple[str, str]]) -> None:
        self.problems = [text for _, text in problems]
        # one line per kind of disagreement: its first instance, and how many more
        kinds: dict[str, list[str]] = {}
        for kind, text in problems:
            kinds.setdefault(kind, []).append(text)
        parts = [texts[0] + (f" (and {len(texts) - 1} more like it)" if len(texts) > 1 else "")
                 for texts in kinds.values()]
        super().__init__(f"{source} cannot take the canonical {spec.name} parameters "
                         f"({len(self.problems)} disagreement(s), first in network order): "
                         + "; ".join(parts))


@dataclass
class Layer:
    """One parameterised layer of a source network, in forward order.

    ``kind`` is "conv", "bn" or "linear"; ``shapes`` maps the canonical attribute
    (``weight``, ``bias``, ``running_mean``, ``running_var``) to the shape the layer
    holds *in the canonical layout* (the adapter transposes channels-last kernels
    before describing them), ``None`` for an attribute the layer does not have.
    ``path`` is where the layer sits in the source's own module tree; ``native`` the
    layer itself."""

    kind: str
    path: str
    type_name: str
    shapes: dict[str, tuple[int, ...] | None]
    native: Any = field(default=None, repr=False)

    def describe(self) -> str:
        w = self.shapes.get("weight")
        return f"{self.type_name} at {self.path}" + (f" {tuple(w)}" if w is not None else "")


_KIND_WORDS = {"conv": "a convolution", "bn": "a BatchNorm", "linear": "a dense layer"}


def _compare(ref: ModuleRef, layer: Layer) -> list[tuple[str, str]]:
    """Every disagreement (its kind, its text) between one canonical layer and the source
    layer in its place."""
    if layer.kind != ref.kind:
        return [("kind", f"{ref.prefix} is {_KIND_WORDS[ref.kind]}, the source has "
                         f"{_KIND_WORDS.get(layer.kind, layer.kind)} there ({layer.describe()})")]
    out = []
    wanted = {p.attr: p.shape for p in ref.params}
    for attr, shape in wanted.items():
        have = layer.shapes.get(attr)
        if have is None:
            out.append(("missing", f"{ref.prefix}.{attr}: the source's {layer.describe()} "
                                   "has none"))
        elif tuple(have) != tuple(shape):
            out.append(("shape", f"{ref.prefix}.{attr}: the source's {layer.type_name} at "
                                 f"{layer.path} holds {tuple(have)}, the canonical network "
                                 f"{tuple(shape)}"))
    for attr, have in layer.shapes.items():
        if have is not None and attr not in wanted:
            out.append((f"extra {attr}", f"{ref.prefix}: the source's {layer.describe()} has "
                                         f"a {attr} {tuple(have)} the canonical layer does "
                                         "not have"))
    return out


def pair_layers(source: str, spec: DenseNetSpec, layers: Sequence[Layer]
                ) -> list[tuple[ModuleRef, Layer]]:
    """The canonical layers of ``spec`` paired in order with the source's ``layers``;
    :class:`SourceMismatch` listing every disagreement when they do not fit."""
    refs = module_table(spec)
    problems: list[tuple[str, str]] = []
    for ref, layer in zip(refs, layers, strict=False):
        problems += _compare(ref, layer)
    if len(layers) < len(refs):
        missing = refs[len(layers)]
        problems.append(("count", f"the source has {len(layers)} parameterised layers, the "
                                  f"canonical network {len(refs)}: nothing in the source for "
                                  f"{missing.prefix} and after"))
    elif len(layers) > len(refs):
        extra = layers[len(refs)]
        problems.append(("count", f"the source has {len(layers)} parameterised layers, the "
                                  f"canonical network {len(refs)}: {extra.describe()} and "
                                  "after have no canonical counterpart"))
    if problems:
        raise SourceMismatch(source, spec, problems)
    return list(zip(refs, layers, strict=True))


def expect_spec(source: str, spec: DenseNetSpec, expected: DenseNetSpec) -> None:
    """``NotImplementedError`` unless ``spec`` is the network ``source`` builds (every
    field but the name): the harness then reports the check "unsupported" for that
    case, as for any network a backend cannot build."""
    diff = spec.differences(expected)
    if diff:
        text = ", ".join(f"{f} {a!r} (the source: {b!r})" for f, a, b in diff)
        raise NotImplementedError(f"{source} builds one network, {expected.describe()}; "
                                  f"this case asks for {text}")


def seeded_params(spec: DenseNetSpec, seed: int, dtype: str) -> Mapping[str, np.ndarray]:
    """``init_params(spec, seed, dtype=dtype)``, drawn once per process for each (spec,
    seed, dtype): a worker builds a network several times (the shapes check, every check
    after a failed one), and drawing DenseNet-121's 8M values takes about a second.
    The arrays are shared: read them, never write into them."""
    return _seeded(spec.to_json(), seed, dtype)


@functools.lru_cache(maxsize=4)
def _seeded(spec_json: str, seed: int, dtype: str) -> Mapping[str, np.ndarray]:
    params = init_params(DenseNetSpec.from_json(spec_json), seed, dtype=dtype)
    for a in params.values():
        a.flags.writeable = False
    return params
