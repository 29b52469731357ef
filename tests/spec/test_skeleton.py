"""One skeleton, four frameworks: the four ``densenet.py`` files are the same network
written four times, part for part.

The files are parsed with :mod:`ast` (no framework is imported, so this runs in the
spec environment) and held to one skeleton: the same public names in the same order,
the same constructor parameters in the same order, the same children, the same
public methods. Everything a framework forces to differ is listed in one table,
:data:`FRAMEWORK_DIFFERENCES`, with the reason; anything else that differs fails.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "densenet_multi"
BACKENDS = ("torch", "flax", "keras", "gluon")

PARTS = ("ConvBlock", "DenseLayer", "DenseBlock", "Transition", "DenseNet")
CONSTRUCTORS = ("from_spec", "densenet121", "densenet161", "densenet169", "densenet201")
PUBLIC = PARTS + CONSTRUCTORS

#: positional constructor parameters (after self), then the shared keyword-only ones
INIT_POSITIONAL = {
    "ConvBlock": ("spec", "in_channels", "out_channels", "geometry"),
    "DenseLayer": ("spec", "in_channels"),
    "DenseBlock": ("spec", "in_channels", "num_layers"),
    "Transition": ("spec", "in_channels", "out_channels"),
    "DenseNet": ("spec",),
}
INIT_KEYWORD = {
    "ConvBlock": (),
    "DenseLayer": ("memory_efficient",),
    "DenseBlock": ("memory_efficient",),
    "Transition": (),
    "DenseNet": ("memory_efficient",),
}
#: children every backend assigns in __init__ (``self.<name> = ...``); a dense layer has
#: norm1/conv1/norm2/conv2 with a bottleneck and norm/conv without: both sets are required
CHILDREN = {
    "ConvBlock": {"norm", "conv"},
    "DenseLayer": {"norm1", "conv1", "norm2", "conv2", "norm", "conv"},
    "Transition": {"pool"},
    "DenseNet": {"spec", "classifier"},
}
#: the network's public methods besides the framework's call idiom
NETWORK_METHODS = {"forward_features", "forward_head", "forward_stages"}


@dataclass(frozen=True)
class Framework:
    """What one framework forces to differ from the skeleton, and why."""

    call: str  # the method a framework calls on a module
    init_extras: tuple[str, ...] = ()  # keyword-only constructor parameters after the shared ones
    init_var_keyword: bool = False  # **kwargs after them
    extra_methods: dict[str, frozenset[str]] = field(default_factory=dict)
    why: str = ""


FRAMEWORK_DIFFERENCES: dict[str, Framework] = {
    "torch": Framework(
        call="forward",
        why="nn.Module: forward(); modules need no extras. features is an nn.Sequential "
            "(torchvision's state_dict keys) and so holds a parameter-free relu0 between norm0 "
            "and pool0; DenseLayer.forward takes the list of earlier maps so that the "
            "concatenation sits inside the part memory_efficient recomputes; DenseBlock is an "
            "nn.ModuleDict (torchvision's keys denselayerN)",
    ),
    "flax": Framework(
        call="__call__",
        init_extras=("dtype", "param_dtype", "rngs"),
        why="NNX: __call__; layers are created eagerly, so the computation dtype, the "
            "parameter dtype and the RNG streams are constructor arguments (keyword-only, last). "
            "NNX sorts a module's attributes by name (denselayer10 before denselayer2), so "
            "DenseNet and DenseBlock keep a private _order; Flax has pooling functions, not "
            "layers, so pool0 and Transition.pool are parameter-free private modules; "
            "dropout is an nnx.Dropout child (it carries its RNG stream)",
    ),
    "keras": Framework(
        call="call",
        init_var_keyword=True,
        extra_methods={"ConvBlock": frozenset({"build"}), "DenseLayer": frozenset({"build"}),
                       "DenseBlock": frozenset({"build"}),
                       "DenseNet": frozenset({"build", "get_config", "from_config"})},
        why="keras.layers.Layer: call(x, training=None); **kwargs carries name/dtype to "
            "Layer; the model serialises the spec once in get_config/from_config (.keras "
            "files); Keras creates weights in build(input_shape), so the parts build their "
            "children from the spec's widths instead of tracing call (Transition inherits "
            "ConvBlock's), and in_channels is also an InputSpec checked at every call (not "
            "DenseLayer's, whose input is a list); a Layer is not a dict, "
            "so DenseBlock keeps its layers in a tracked list (Keras names denselayerN); the "
            "stride-2 stem pads explicitly (pad0, pool0_pad: 'same' pads (2, 3) there)",
    ),
    "gluon": Framework(
        call="hybrid_forward",
        init_var_keyword=True,
        extra_methods={name: frozenset({"hybridize"})
                       for name in ("DenseLayer", "DenseBlock", "DenseNet")},
        why="HybridBlock: hybrid_forward(F, ...) (MXNet 1.9); **kwargs carries prefix/params; "
            "a cached graph cannot hold the memory-efficient recomputation (a Python "
            "autograd.Function: MXNet 1.9 has no checkpointing), so with memory_efficient "
            "DenseLayer, DenseBlock and DenseNet override hybridize() to compile the parts "
            "around it; "
            "a block's inputs are positional arrays, so DenseLayer takes *maps; features is a "
            "HybridSequential and so holds relu0 like torch's; the two-pass train-mode "
            "BatchNorm lives in gluon/layers.py (MXNet's CPU kernel measured 10x less precise)",
    ),
}


@dataclass
class ClassShape:
    bases: tuple[str, ...]
    positional: tuple[str, ...]
    keyword: tuple[str, ...]
    var_keyword: bool
    public_methods: frozenset[str]
    children: frozenset[str]
    source: str


@dataclass
class FileShape:
    all_names: tuple[str, ...]
    public_defs: tuple[str, ...]  # public top-level classes, functions and assignments, in order
    classes: dict[str, ClassShape]


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", ast.unparse(node))


def _class_shape(node: ast.ClassDef, text: str) -> ClassShape:
    methods = {m.name: m for m in node.body if isinstance(m, ast.FunctionDef)}
    init = methods.get("__init__")
    positional: tuple[str, ...] = ()
    keyword: tuple[str, ...] = ()
    var_keyword = False
    children: set[str] = set()
    if init is not None:
        positional = tuple(a.arg for a in init.args.posonlyargs + init.args.args)[1:]
        keyword = tuple(a.arg for a in init.args.kwonlyargs)
        var_keyword = init.args.kwarg is not None
        for sub in ast.walk(init):
            targets = sub.targets if isinstance(sub, ast.Assign) else (
                [sub.target] if isinstance(sub, ast.AnnAssign) else [])
            for t in targets:
                for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(el, ast.Attribute) and _base_name(el.value) == "self":
                        children.add(el.attr)
    public = frozenset(n for n in methods if not n.startswith("_") or n == "__call__")
    return ClassShape(tuple(_base_name(b) for b in node.bases), positional, keyword, var_keyword,
                      public, frozenset(children), ast.get_source_segment(text, node) or "")


def file_shape(text: str) -> FileShape:
    tree = ast.parse(text)
    all_names: tuple[str, ...] = ()
    public_defs: list[str] = []
    classes: dict[str, ClassShape] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if names == ["__all__"]:
                all_names = tuple(ast.literal_eval(node.value))
                continue
            public_defs += [n for n in names if not n.startswith("_")]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if not node.target.id.startswith("_"):
                public_defs.append(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            public_defs.append(node.name)
            if isinstance(node, ast.ClassDef):
                classes[node.name] = _class_shape(node, text)
    return FileShape(all_names, tuple(public_defs), classes)


def skeleton_problems(text: str, fw: Framework) -> list[str]:
    """Every way ``text`` (a densenet.py) departs from the skeleton, given what its
    framework is allowed to differ in; empty when it follows it."""
    shape = file_shape(text)
    problems = []
    if shape.all_names != PUBLIC:
        problems.append(f"__all__ is {shape.all_names}, expected {PUBLIC}")
    if shape.public_defs != PUBLIC:
        problems.append(f"public definitions in order are {shape.public_defs}, expected {PUBLIC}")
    for name in PARTS:
        cls = shape.classes.get(name)
        if cls is None:
            continue  # already reported above
        problems += [f"{name}: {p}" for p in _class_problems(name, cls, fw)]
    return problems


def _class_problems(name: str, cls: ClassShape, fw: Framework) -> list[str]:
    problems = []
    if cls.positional != INIT_POSITIONAL[name]:
        problems.append(f"__init__ positional parameters {cls.positional}, "
                        f"expected {INIT_POSITIONAL[name]}")
    want_kw = INIT_KEYWORD[name] + fw.init_extras
    if cls.keyword != want_kw:
        problems.append(f"__init__ keyword-only parameters {cls.keyword}, expected {want_kw}")
    if cls.var_keyword != fw.init_var_keyword:
        problems.append(f"__init__ **kwargs {'present' if cls.var_keyword else 'absent'}, "
                        f"expected {'present' if fw.init_var_keyword else 'absent'}")
    want_methods = {fw.call} | (NETWORK_METHODS if name == "DenseNet" else set())
    want_methods |= fw.extra_methods.get(name, frozenset())
    if name == "Transition":  # inherits ConvBlock's call; may override it
        got = cls.public_methods | {fw.call}
    else:
        got = set(cls.public_methods)
    if got != want_methods:
        problems.append(f"public methods {sorted(got)}, expected {sorted(want_methods)}")
    missing = CHILDREN.get(name, set()) - cls.children
    if missing:
        problems.append(f"children {sorted(missing)} are not assigned in __init__")
    if name == "Transition" and "ConvBlock" not in cls.bases:
        problems.append(f"bases {cls.bases}: a Transition is a ConvBlock (BN-ReLU-1x1 conv) + pool")
    if name == "DenseNet" and "stage_parts" not in cls.source:
        problems.append("stages are not collected through spec.stage_parts")
    return problems


def _source(backend: str) -> str:
    return (ROOT / backend / "densenet.py").read_text()


@pytest.mark.parametrize("backend", BACKENDS)
def test_densenet_file_follows_the_skeleton(backend):
    problems = skeleton_problems(_source(backend), FRAMEWORK_DIFFERENCES[backend])
    assert not problems, f"{backend}/densenet.py:\n  " + "\n  ".join(problems)


def _mutated(text: str, class_name: str, change) -> str:
    """``text`` with one class changed through its AST (comments are lost: fine here)."""
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    change(cls)
    return ast.unparse(tree)


def _swap_init_args(cls: ast.ClassDef) -> None:
    init = next(m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "__init__")
    init.args.args[2], init.args.args[3] = init.args.args[3], init.args.args[2]


def _rename_method(old: str, new: str):
    def change(cls: ast.ClassDef) -> None:
        next(m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == old).name = new
    return change


def _rename_child(old: str, new: str):
    def change(cls: ast.ClassDef) -> None:
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and node.attr == old and (
                    getattr(node.value, "id", None) == "self"):
                node.attr = new
    return change


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_skeleton_check_fails_on_a_wrong_file(backend):
    """The check can fail: swapping two constructor parameters, adding a public helper,
    renaming a child or hiding a method are each reported."""
    text = _source(backend)
    fw = FRAMEWORK_DIFFERENCES[backend]
    assert not skeleton_problems(ast.unparse(ast.parse(text)), fw)  # unparsing changes nothing
    swapped = _mutated(text, "ConvBlock", _swap_init_args)
    assert any("ConvBlock: __init__ positional" in p for p in skeleton_problems(swapped, fw))
    extra = text + "\n\ndef stem(x):\n    return x\n"
    assert any("public definitions" in p for p in skeleton_problems(extra, fw))
    renamed = _mutated(text, "DenseNet", _rename_child("classifier", "head"))
    assert any("children ['classifier']" in p for p in skeleton_problems(renamed, fw))
    hidden = _mutated(text, "DenseNet", _rename_method("forward_stages", "_forward_stages"))
    assert any("DenseNet: public methods" in p for p in skeleton_problems(hidden, fw))


def test_backends_share_file_names():
    names = [sorted(p.name for p in (ROOT / b).glob("*.py")) for b in BACKENDS]
    required = {"__init__.py", "convert.py", "densenet.py", "runtime.py", "train.py"}
    for b, files in zip(BACKENDS, names, strict=True):
        assert required <= set(files), f"{b} lacks {required - set(files)}"


def test_framework_differences_are_explained():
    for name, fw in FRAMEWORK_DIFFERENCES.items():
        assert fw.why, f"{name}: every allowed difference says why"
