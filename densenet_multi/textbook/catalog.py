"""The catalog: every reconstructed network, each link of its fix chain, and its case.

A :class:`Source` is one network a seed text writes (one tab of the d2l chapter, or
one blog's network): which file and tab it comes from, its framework (and so the tox
environment its worker runs in), the module that rebuilds it and the case it is
compared on. Its :class:`Link`\\ s are the module's backend objects in chain order:
``backend`` (the source as written) first, then each ``fix_*`` object, which is the
link before it plus **one** change (:attr:`Link.change`). The chain is the module's
own ``CHAIN`` constant, read from its source text (:func:`read_chain`), so the
catalog and the modules cannot drift apart. The harness, run on every
link (:mod:`densenet_multi.textbook.report`), shows where each link first diverges
from the canonical network; the change of the next link is what makes that
divergence go away.

Cases: the d2l tabs (and the walk-through's copy of the chapter's network) run on the
main job's d2l case (4x1x96x96 float32: shapes, eval, train, copy). The DenseNet-121
blogs run on DenseNet-121 at 224x224, batch 2, float32, with the input channels and
classes each blog builds for (``densenet121`` itself for the torchvision walk-through
and the Keras blog, one channel and ten classes for the 001 walk-through, one channel
and two classes for the Korean blog): the same four checks. Every network runs every
case of the run (one harness run); a network that is not the case's raises
``NotImplementedError`` in ``build`` and that cell is "unsupported", which the report
does not read.

This module imports no framework: it names the objects, the report runs them.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..backend import BACKENDS
from ..parity.cases import Case, get_cases

__all__ = ["CATALOG", "CatalogError", "FRAMEWORKS", "Link", "PACKAGE", "SEEDS", "Source",
           "cases", "links", "read_chain", "source"]

PACKAGE = "densenet_multi.textbook"
#: framework -> the project backend whose environment runs it (its name is what
#: :func:`densenet_multi.parity.runner.resolve_python` takes) and how the page calls it
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "pytorch": ("torch", "PyTorch"),
    "mxnet": ("gluon", "MXNet Gluon"),
    "jax": ("flax", "JAX (Flax linen)"),
    "tensorflow": ("keras", "TensorFlow (tf.keras = Keras 3)"),
}
#: seed number -> its file in ../shared/seeds/
SEEDS = {
    "000": "000_bb0c0aa4b967caf1.txt",
    "001": "001_798f11fbd1dc50dc.txt",
    "002": "002_5c9a2de3569a8460.txt",
    "003": "003_ec90c31f98a67ff0.txt",
    "004": "004_5248b905be511535.txt",
}
#: the checks of every textbook case
CHECKS = ("shapes", "eval", "train", "copy")
HERE = Path(__file__).resolve().parent


class CatalogError(LookupError):
    """A catalog entry whose module, or whose chain in it, is not there or not readable."""


@functools.cache
def read_chain(module: str, name: str = "CHAIN") -> tuple[tuple[str, str], ...]:
    """``module``'s chain constant ``name`` (a literal tuple of ``(object name, change)``
    pairs), read from the module's source with :mod:`ast`: the catalog names what each
    module defines without importing its framework. The first object is the source as
    written; every object it names must be assigned at the module's top level."""
    path = HERE / f"{module}.py"
    if not path.is_file():
        raise CatalogError(f"the catalog names densenet_multi.textbook.{module}, and {path} "
                           "does not exist")
    tree = ast.parse(path.read_text(), filename=str(path))
    value, assigned = None, set()
    for node in tree.body:
        targets = ([node.target] if isinstance(node, ast.AnnAssign)
                   else node.targets if isinstance(node, ast.Assign) else [])
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    assigned.add(n.id)
            if isinstance(t, ast.Name) and t.id == name and node.value is not None:
                value = node.value
    if value is None:
        raise CatalogError(f"{path.name} defines no {name} (the chain of its backend objects)")
    try:
        chain = tuple((str(a), str(c)) for a, c in ast.literal_eval(value))
    except (ValueError, TypeError) as e:
        raise CatalogError(f"{path.name}: {name} is not a literal tuple of (object name, "
                           f"change) pairs: {e}") from None
    if not chain:
        raise CatalogError(f"{path.name}: {name} is empty")
    absent = [a for a, _ in chain if a not in assigned]
    if absent:
        raise CatalogError(f"{path.name}: {name} names {absent}, which the module does not "
                           "assign at its top level")
    return chain


@dataclass(frozen=True)
class Link:
    """One backend object of a source's module: the source plus the changes so far."""

    module: str  # the module's name in the package (d2l_pytorch, blog_002_korean, ...)
    attr: str  # the object: "backend", "fix_..."
    change: str  # the one change it adds to the link before it ("as written" for backend)

    @property
    def name(self) -> str:
        """The harness's name for it (worker, run folder, report)."""
        return f"{self.module}.{self.attr}"

    @property
    def target(self) -> str:
        """What ``--backends NAME=TARGET`` takes."""
        return f"{PACKAGE}.{self.module}:{self.attr}"


@dataclass(frozen=True)
class Source:
    """One network of the seeds and how it is rebuilt."""

    key: str  # short label: "d2l-pytorch", "blog-002"
    title: str  # for the table: "d2l, PyTorch tab"
    seed: str  # "000"
    tab: str  # the tab ("PyTorch") or "" for a blog
    framework: str  # a key of FRAMEWORKS
    module: str
    case: str  # a key of cases()
    kind: str  # "tab" or "blog"
    network: str  # what it builds, in a few words
    #: the module constant listing the chain: ((object name, the change it adds), ...)
    chain_name: str = "CHAIN"

    @property
    def chain(self) -> tuple[tuple[str, str], ...]:
        """The module's chain, read from its source text (:func:`read_chain`)."""
        return read_chain(self.module, self.chain_name)

    @property
    def links(self) -> tuple[Link, ...]:
        return tuple(Link(self.module, a, c) for a, c in self.chain)

    @property
    def backend(self) -> str:
        """The project backend whose environment (tox env) runs this source."""
        return FRAMEWORKS[self.framework][0]

    @property
    def env(self) -> str:
        return BACKENDS[self.backend][2]

    @property
    def seed_file(self) -> str:
        return SEEDS[self.seed]

    @property
    def where(self) -> str:
        return f"{self.seed} {self.tab} tab" if self.tab else self.seed


CATALOG: tuple[Source, ...] = (
    # ------------------------------------------------------------------ the chapter's tabs
    Source("d2l-pytorch", "d2l, PyTorch tab", "000", "PyTorch", "pytorch", "d2l_pytorch",
           "d2l", "tab", "the chapter's network, lazy layers"),
    Source("d2l-mxnet", "d2l, MXNet tab", "000", "MXNet", "mxnet", "d2l_mxnet", "d2l", "tab",
           "the chapter's network, Gluon numpy mode"),
    Source("d2l-jax", "d2l, JAX tab", "000", "JAX", "jax", "d2l_jax", "d2l", "tab",
           "the chapter's network in Flax linen"),
    Source("d2l-tensorflow", "d2l, TensorFlow tab", "000", "TensorFlow", "tensorflow",
           "d2l_tensorflow", "d2l", "tab", "the chapter's network in tf.keras"),
    # ------------------------------------------------------------------ the blogs
    Source("blog-001-chapter", "PyTorch-tab walk-through: the chapter's net", "001", "",
           "pytorch", "blog_001_d2l121", "d2l", "blog",
           "the chapter's network, older edition (explicit input widths)",
           chain_name="CHAPTER_CHAIN"),
    Source("blog-001", "PyTorch-tab walk-through: DenseNet-121", "001", "", "pytorch",
           "blog_001_d2l121", "densenet121-1ch-10cls", "blog",
           "DenseNet-121 built on the tab's code (exercise 4)"),
    Source("blog-002", "Korean PyTorch blog: DenseNet-121", "002", "", "pytorch",
           "blog_002_korean", "densenet121-1ch-2cls", "blog",
           "DenseNet-121 from scratch (in_dim 1, out_dim 2)"),
    Source("blog-003", "Keras blog: DenseNet-121", "003", "", "tensorflow", "blog_003_keras",
           "densenet121", "blog", "DenseNet-121-style functional Keras model"),
    Source("blog-004", "torchvision walk-through", "004", "", "pytorch",
           "blog_004_torchvision", "densenet121", "blog",
           "torchvision's densenet.py as the text quotes it"),
)


def source(key: str) -> Source:
    for s in CATALOG:
        if s.key == key:
            return s
    raise KeyError(f"no source {key!r} in the catalog; known: {[s.key for s in CATALOG]}")


def links(sources: Iterable[Source] = CATALOG) -> list[tuple[Source, Link]]:
    """Every (source, link), in catalog and chain order."""
    return [(s, ln) for s in sources for ln in s.links]


def _dn121(name: str, **changes: object) -> Case:
    return Case(name, "densenet121", (224, 224), changes={"drop_rate": 0.0, **changes},
                batch=2, checks=CHECKS, reference=())


def cases(names: Sequence[str] | None = None) -> dict[str, Case]:
    """The textbook cases by name (all, or ``names``): the main job's d2l case and the
    three DenseNet-121 cases."""
    (d2l,) = get_cases(["d2l"])
    if d2l.checks != CHECKS:
        raise RuntimeError(f"the shipped d2l case checks {d2l.checks}; the textbook table "
                           f"describes {CHECKS}")
    every = {
        "d2l": d2l,
        "densenet121": _dn121("densenet121"),
        "densenet121-1ch-10cls": _dn121("densenet121-1ch-10cls", in_channels=1, num_classes=10),
        "densenet121-1ch-2cls": _dn121("densenet121-1ch-2cls", in_channels=1, num_classes=2),
    }
    if names is None:
        return every
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ValueError(f"unknown textbook case(s) {unknown}; known: {sorted(every)}")
    return {n: every[n] for n in names}
