"""Read each DenseNet part's conventions off the objects one backend really builds.

``python -m densenet_multi.guide.introspect BACKEND [--out FILE]`` (BACKEND one of
torch, flax, keras, gluon), run with that backend's environment's interpreter,
imports that framework only, builds the parts the guide shows with the backend's
own classes and prints (or writes) JSON: for each part, the facts the guide's
tables show, each with a ``text`` for the table and the raw values it was read
from.

The parts are the textbook chapter's examples: ``ConvBlock(spec, 3, 10, 3x3)``,
a dense layer, the 2-layer growth-10 ``DenseBlock`` (3 -> 23 channels on a
4x3x8x8 batch), ``Transition(spec, 23, 10)`` (8x8 -> 4x4), and the ``d2l``
network for the stem, the head and the whole (``spec = get_spec("d2l",
growth_rate=10)`` for the parts, ``get_spec("d2l")`` for the network).

What can be read from an object is read from it: parameter names and shapes as
the framework stores them, epsilon and momentum from the layer's attribute,
padding and pooling as configured, initialisers where the framework keeps them.
What a framework only documents (which call switches train/eval, the update
rule of its SGD, which layout a layer takes, how a dense layer takes the earlier
maps) is stated once below, in the backend's class, next to the code that
checks it by running it: the train/eval switch must change a BN layer's output,
the momentum's meaning is measured from one train-mode update of the running
mean, the running variance's rule from the same update, the SGD form from two
steps with a learning-rate change, the activation layout from a forward pass's
output shape, global pooling by comparing the head with a mean. Nothing here is
typed in that a run could contradict.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import json
import math
import re
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

from ..params import module_table
from ..spec import GROWTH_CONV, DenseNetSpec, get_spec

__all__ = ["BACKENDS", "PARTS", "introspect", "main", "kernel_layout", "activation_layout",
           "chapter_input"]

BACKENDS = ("torch", "flax", "keras", "gluon")
PARTS = ("conv_block", "dense_layer", "dense_block", "transition", "stem_and_head", "network")

#: the chapter's examples: a 4x3x8x8 batch, growth rate 10, a 2-layer block, a transition to 10
BATCH, IN_CHANNELS, SIZE = 4, 3, 8
GROWTH, BLOCK_LAYERS, TRANSITION_OUT = 10, 2, 10
#: the d2l network's input: Fashion-MNIST resized to 96x96, as in the chapter (batch 2)
NET_INPUT = (2, 1, 96, 96)
#: the head is checked on a map of this height and width (not 7x7, not square)
HEAD_HW = (3, 5)
#: the SGD check: p = 1, gradient 1 at every step, momentum 0.9, lr 0.1 then 0.05
SGD_CHECK = {"p0": 1.0, "grad": 1.0, "momentum": 0.9, "lrs": (0.1, 0.05)}


def chapter_spec() -> DenseNetSpec:
    return get_spec("d2l", growth_rate=GROWTH)


def network_spec() -> DenseNetSpec:
    return get_spec("d2l")


def chapter_input(shape: Sequence[int] = (BATCH, IN_CHANNELS, SIZE, SIZE), seed: int = 0) -> np.ndarray:
    """A float32 NCHW batch with mean 1 and std 2 (not normalised, so a train-mode BN,
    which uses the batch statistics, and an eval-mode BN with fresh running statistics
    (mean 0, variance 1) give clearly different outputs)."""
    return np.random.default_rng(seed).normal(1.0, 2.0, tuple(shape)).astype(np.float32)


# ---------------------------------------------------------------------- derived facts
def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def kernel_layout(shape: Sequence[int], oihw: Sequence[int]) -> list[str]:
    """Every layout (a permutation of the letters O, I, H, W; the two spatial axes read
    as H then W) under which a stored kernel of ``shape`` holds the canonical
    ``(out, in, kh, kw)`` kernel ``oihw``. One entry when the shape decides it."""
    found = set()
    for perm in permutations(range(4)):
        if tuple(int(oihw[i]) for i in perm) == tuple(int(s) for s in shape):
            letters = ["OIHW"[i] for i in perm]
            spatial = iter("HW")
            found.add("".join(next(spatial) if c in "HW" else c for c in letters))
    return sorted(found)


def activation_layout(shape: Sequence[int], channels: int) -> str | None:
    """NCHW or NHWC: where a 4-d activation of ``channels`` channels keeps them (None if
    its shape does not say)."""
    if len(shape) != 4:
        return None
    if shape[1] == channels and shape[3] != channels:
        return "NCHW"
    if shape[3] == channels and shape[1] != channels:
        return "NHWC"
    return None


def matrix_layout(shape: Sequence[int], out_features: int, in_features: int) -> str | None:
    if tuple(shape) == (out_features, in_features):
        return "(out, in)"
    if tuple(shape) == (in_features, out_features):
        return "(in, out)"
    return None


def _fact(text: str, **raw: Any) -> dict[str, Any]:
    return {"text": text, **raw}


def _num(v: float) -> str:
    return f"{v:.6g}"


def _code(s: str) -> str:
    return f"`{s}`"


def _names_fact(params: Sequence[tuple[str, tuple[int, ...], bool]], trainable: bool) -> dict[str, Any]:
    rows = [(n, s) for n, s, t in params if t == trainable]
    text = "<br>".join(f"`{n}` {shape_text(s) if s else 'scalar'}" for n, s in rows) or "none"
    return _fact(text, names=[n for n, _ in rows], shapes=[list(s) for _, s in rows])


def _bn_update_facts(momentum_attr: str, momentum: float, x: np.ndarray, channel_axis: int,
                     before: tuple[np.ndarray, np.ndarray],
                     after: tuple[np.ndarray, np.ndarray]) -> dict[str, dict[str, Any]]:
    """What one train-mode pass did to a BN layer's running statistics, from their values
    before and after it and the batch ``x`` it normalised: the share of the new batch
    mean in the new running mean, and which batch variance went into the running variance."""
    axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
    x64 = x.astype(np.float64)
    mean, n = x64.mean(axis=axes), x64.size // x.shape[channel_axis]
    biased, unbiased = x64.var(axis=axes), x64.var(axis=axes, ddof=1)
    m0, v0 = (b.astype(np.float64) for b in before)
    m1, v1 = (a.astype(np.float64) for a in after)
    new_weight = float(np.mean((m1 - m0) / (mean - m0)))
    if abs(new_weight - momentum) < 1e-4:
        meaning = "weight of the new batch statistic"
    elif abs(new_weight - (1.0 - momentum)) < 1e-4:
        meaning = "weight of the old running value"
    else:
        meaning = f"neither (the new batch mean got weight {new_weight:.4g})"
    implied = (v1 - (1.0 - new_weight) * v0) / new_weight
    err_b = float(np.max(np.abs(implied / biased - 1)))
    err_u = float(np.max(np.abs(implied / unbiased - 1)))
    rule = "unbiased" if err_u < err_b else "biased"
    var_text = ({"unbiased": f"unbiased batch variance (÷ n−1, n = {n})",
                 "biased": f"biased batch variance (÷ n, n = {n})"}[rule]
                + f": measured/predicted − 1 = {min(err_b, err_u):.1e}")
    return {
        "bn_momentum": _fact(
            f"`{momentum_attr}={_num(momentum)}`: {meaning} (one train pass moved the running "
            f"mean {new_weight:.4f} of the way to the batch mean)",
            value=momentum, attribute=momentum_attr, measured_new_weight=new_weight,
            meaning=meaning),
        "bn_running_var": _fact(var_text, rule=rule, n=n, rel_err=min(err_b, err_u)),
    }


def _train_eval_fact(train_call: str, eval_call: str, y_train: np.ndarray, y_eval: np.ndarray,
                     flags: tuple[str | None, str | None], in_runtime: bool) -> dict[str, Any]:
    diff = float(np.max(np.abs(y_train - y_eval)))
    differs = diff > 1e-3
    state = (f"they set {flags[0]} / {flags[1]}" if flags[0] else
             "a call argument: the layer stores no mode")
    text = (f"{train_call} / {eval_call}; {state}; the output "
            f"{'changes' if differs else 'does NOT change'} (max |Δ| {diff:.2g})")
    if not in_runtime:
        text += "; not the call the backend runtime makes"
    return _fact(text, train_call=train_call, eval_call=eval_call, differs=differs, max_abs_diff=diff,
                 in_runtime=in_runtime)


def _sgd_fact(constructor: str, settings: str, form: str, values: Sequence[float]) -> dict[str, Any]:
    """The SGD-with-momentum update of one backend, checked by running it: two steps from
    p = 1 with gradient 1, the learning rate lowered from 0.1 to 0.05 for the second. At a
    constant rate the two textbook forms agree; after a change they do not."""
    mu, (lr1, lr2) = SGD_CHECK["momentum"], SGD_CHECK["lrs"]
    p1 = 1.0 - lr1
    grads_form = p1 - lr2 * (mu * 1.0 + 1.0)  # v = mu*v + g; p -= lr*v
    steps_form = p1 + (mu * -lr1 - lr2)  # v = mu*v - lr*g; p += v
    got = float(values[-1])
    if abs(got - grads_form) < 1e-6:
        fits = "velocity of gradients, lr applied at each step"
    elif abs(got - steps_form) < 1e-6:
        fits = "velocity of steps, lr folded in when the gradient is added"
    else:
        fits = "neither textbook form"
    text = (f"`{constructor}` in `runtime.train_steps` ({settings}): {form}. Run from p = 1 with "
            f"gradient 1, lr 0.1 then 0.05: p = {_num(values[0])}, then {_num(got)} ({fits})")
    return _fact(text, constructor=constructor, settings=settings, form=form,
                 values=[float(v) for v in values],
                 fits=fits, grads_form=grads_form, steps_form=steps_form)


def _constructor_call(fn: Any, callee: str) -> str:
    """The first call of ``callee`` (e.g. ``torch.optim.SGD``) in the code of ``fn``, as
    written there (docstrings are not code: the source is parsed)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == callee:
            return ast.unparse(node)
    raise RuntimeError(f"{fn.__qualname__} does not call {callee}")


def _head_expression(forward_head: Any) -> str:
    """The pooling line of a network's ``forward_head``, read from its source."""
    for line in inspect.getsource(forward_head).splitlines():
        line = line.strip()
        if line.startswith("x = "):
            return line
    raise RuntimeError(f"no pooling line found in {forward_head.__qualname__}")


def _in_path(name: str, part: str) -> bool:
    """Whether ``part`` is one component of the parameter path ``name`` (``.`` or ``/``)."""
    return re.search(rf"(^|[./]){re.escape(part)}([./]|$)", name) is not None


def _base_text(cls: type, namespaces: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The class a part derives from: the project's own bases, then the first framework
    class, under its public name (``nn.Module``, ``nnx.Module``, ``keras.layers.Layer``)."""
    own, framework = [], None
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("densenet_multi."):
            own.append(base.__name__)
            continue
        for prefix, ns in namespaces:
            if getattr(ns, base.__name__, None) is base:
                framework = f"{prefix}.{base.__name__}"
                break
        if framework:
            break
    chain = [*own, framework or cls.__mro__[1].__qualname__]
    return _fact(" → ".join(f"`{c}`" for c in chain), chain=chain)


# ---------------------------------------------------------------------- the backends
class _Backend:
    """How one framework builds, runs and stores a part. Subclasses state each idiom once
    (the attributes below) and read everything else from the objects."""

    name = ""
    title = ""
    module = ""  # the framework's import name, for its version
    #: the activation layout the backend's modules take (stated; checked by every forward)
    layout = "NCHW"
    #: the train/eval switch (stated; checked: it must change a BN layer's output)
    train_call = ""
    eval_call = ""
    #: text the backend's runtime.py must contain: where the runtime makes that switch
    runtime_switch = ""
    #: how a dense layer is given the block input and the earlier layers' maps
    maps_call = ""
    #: the SGD the runtime builds: its constructor (read from runtime.train_steps) and its rule
    sgd_head = ""
    sgd_form = ""

    def __init__(self) -> None:
        self.runtime = importlib.import_module(f"densenet_multi.{self.name}.runtime")
        self.D = importlib.import_module(f"densenet_multi.{self.name}.densenet")

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        yield

    def version(self) -> str:
        return str(importlib.import_module(self.module).__version__)

    def native(self, x: np.ndarray) -> Any:
        return x if self.layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    @property
    def channel_axis(self) -> int:
        return 1 if self.layout == "NCHW" else -1

    # -- to implement ---------------------------------------------------------
    namespaces: Sequence[tuple[str, Any]] = ()

    def build(self, part: str, spec: DenseNetSpec, *args: Any) -> Any: ...
    def params(self, obj: Any) -> list[tuple[str, tuple[int, ...], bool]]: ...
    def forward(self, obj: Any, x: Any, train: bool) -> np.ndarray: ...
    def mode_flag(self, obj: Any) -> str | None:
        """The mode the switch left in the object (None where the framework keeps none)."""
        return None

    def call_maps(self, layer: Any, maps: Sequence[Any]) -> np.ndarray: ...
    def running(self, bn: Any) -> tuple[np.ndarray, np.ndarray]: ...
    def bn_eps(self, bn: Any) -> tuple[str, float]: ...
    def bn_momentum(self, bn: Any) -> tuple[str, float]: ...
    def conv_padding(self, conv: Any) -> str: ...
    def conv_bias(self, conv: Any) -> bool: ...
    def pool_text(self, pool: Any) -> str: ...
    def layer_class(self, layer: Any) -> str: ...
    def block_layers(self, block: Any) -> tuple[str, list[str]]: ...
    def dropout(self, layer: Any) -> dict[str, Any]: ...
    def stem_layers(self, net: Any) -> list[tuple[str, Any]]: ...
    def run_layers(self, layers: Sequence[Any], x: Any) -> np.ndarray: ...
    def stem_conv_padding(self, net: Any) -> str: ...
    def stem_pool(self, net: Any) -> tuple[str, list[Any]]: ...
    def pooled(self, net: Any, features: Any) -> np.ndarray: ...
    def canonical_names(self, net: Any) -> dict[str, str]: ...

    def name_text(self, native: str | None) -> str:
        return f"`{native}`" if native else "not found"

    def conv_init(self, block: Any) -> dict[str, Any]: ...
    def classifier_init(self, net: Any) -> dict[str, Any]: ...
    def conv_kernel_values(self, net: Any) -> np.ndarray: ...
    def conv_init_source(self, net: Any) -> str: ...
    def sgd_values(self) -> tuple[str, str, list[float]]:
        """The optimizer constructor ``runtime.train_steps`` calls (from its source), its
        settings read from an optimizer built the same way, and p after each of the two
        steps of :data:`SGD_CHECK`."""
        raise NotImplementedError

    # -- the facts ------------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        with self.context():
            spec, net_spec = chapter_spec(), network_spec()
            # the transition first: its 23 -> 10 kernel's shape decides the kernel layout
            # where a 3 -> 10 3x3 kernel's cannot (in = kh = kw = 3)
            transition = self._transition(spec)
            self.reference_layout = transition["kernel"]["layout"]
            parts = {
                "conv_block": self._conv_block(spec),
                "dense_layer": self._dense_layer(spec),
                "dense_block": self._dense_block(spec),
                "transition": transition,
            }
            net = self.build("network", net_spec)
            parts["stem_and_head"] = self._stem_and_head(net_spec, net)
            parts["network"] = self._network(net_spec, net)
        return {"backend": self.name, "framework": self.title, "version": self.version(),
                "layout": self.layout, "parts": parts}

    def _kernel_fact(self, params: list[tuple[str, tuple[int, ...], bool]], oihw: tuple[int, ...],
                     reference: str | None = None) -> dict[str, Any]:
        name, shape = next((n, s) for n, s, _ in params if len(s) == 4)
        layouts = kernel_layout(shape, oihw)
        if len(layouts) == 1:
            layout, how = layouts[0], "the shape decides it"
        elif reference in layouts:
            layout = reference
            how = f"the shape alone fits {', '.join(layouts)}; the transition's 23→10 kernel decides it"
        else:
            layout, how = "?", f"shape fits {layouts or 'no layout'}"
        return _fact(f"`{name}` {shape_text(shape)}: {layout} ({how})", name=name, shape=list(shape),
                     layout=layout, candidates=layouts)

    def _shapes_fact(self, x_shape: Sequence[int], y: np.ndarray, channels: int) -> dict[str, Any]:
        layout = activation_layout(y.shape, channels)
        return _fact(f"{shape_text(x_shape)} → {shape_text(y.shape)} ({layout or '?'})",
                     input=list(x_shape), output=list(y.shape), layout=layout)

    def _mode_fact(self, obj: Any, x: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Run ``obj`` in eval mode, then in train mode (which updates its BN running
        statistics once); the switch's fact and both outputs."""
        y_eval = self.forward(obj, x, train=False)
        eval_flag = self.mode_flag(obj)
        y_train = self.forward(obj, x, train=True)
        train_flag = self.mode_flag(obj)
        src = inspect.getsource(self.runtime)
        fact = _train_eval_fact(self.train_call, self.eval_call, y_train, y_eval,
                                (train_flag, eval_flag), self.runtime_switch in src)
        return fact, y_train, y_eval

    def _conv_block(self, spec: DenseNetSpec) -> dict[str, Any]:
        block = self.build("conv_block", spec, IN_CHANNELS, GROWTH, GROWTH_CONV)
        x = chapter_input()
        self.forward(block, self.native(x), train=False)  # Keras creates the weights on a first call
        bn_before = self.running(block.norm)
        mode, y_train, _ = self._mode_fact(block, self.native(x))
        params = self.params(block)
        eps_attr, eps = self.bn_eps(block.norm)
        mom_attr, mom = self.bn_momentum(block.norm)
        facts = {
            "base": _base_text(type(block), self.namespaces),
            "layers": _fact(f"`norm`: {self.layer_class(block.norm)}, "
                            f"`conv`: {self.layer_class(block.conv)}"),
            "trainable": _names_fact(params, True),
            "non_trainable": _names_fact(params, False),
            "shapes": self._shapes_fact(self.native(x).shape, y_train, GROWTH),
            "kernel": self._kernel_fact(params, (GROWTH, IN_CHANNELS, 3, 3), self.reference_layout),
            "conv_padding": _fact(self.conv_padding(block.conv)),
            "conv_bias": _fact("yes" if self.conv_bias(block.conv) else "no",
                               value=self.conv_bias(block.conv)),
            "bn_eps": _fact(f"`{eps_attr}={_num(eps)}`", value=eps, attribute=eps_attr),
            **_bn_update_facts(mom_attr, mom, x, 1, bn_before, self.running(block.norm)),
            "train_eval": mode,
            "init": self.conv_init(block),
        }
        return facts

    def _dense_layer(self, spec: DenseNetSpec) -> dict[str, Any]:
        layer = self.build("dense_layer", spec, IN_CHANNELS)
        x = chapter_input()
        y = self.call_maps(layer, [self.native(x)])
        # the block's second layer: the input and the first layer's maps, 3 + 10 channels
        second = self.build("dense_layer", spec, IN_CHANNELS + GROWTH)
        y2 = self.call_maps(second, [self.native(x), y])
        params = self.params(layer)
        return {
            "base": _base_text(type(layer), self.namespaces),
            "trainable": _names_fact(params, True),
            "non_trainable": _names_fact(params, False),
            "shapes": self._shapes_fact(self.native(x).shape, y, GROWTH),
            "maps": _fact(f"{self.maps_call}: the second layer, given the 3-channel input and the "
                          f"first layer's {GROWTH} maps, returns {shape_text(y2.shape)}",
                          call=self.maps_call, second_output=list(y2.shape)),
            "dropout": self.dropout(layer),
        }

    def _dense_block(self, spec: DenseNetSpec) -> dict[str, Any]:
        block = self.build("dense_block", spec, IN_CHANNELS, BLOCK_LAYERS)
        x = self.native(chapter_input())
        y = self.forward(block, x, train=False)
        out = IN_CHANNELS + BLOCK_LAYERS * GROWTH
        container, names = self.block_layers(block)
        params = self.params(block)
        layout = activation_layout(y.shape, out)
        axis = 1 if layout == "NCHW" else -1
        return {
            "base": _base_text(type(block), self.namespaces),
            "layers": _fact(f"{container}: " + ", ".join(f"`{n}`" for n in names), names=names),
            "trainable": _names_fact(params, True),
            "non_trainable": _names_fact(params, False),
            "shapes": self._shapes_fact(x.shape, y, out),
            "concat": _fact(f"axis {axis} (the C of {layout}): "
                            f"{IN_CHANNELS} + {BLOCK_LAYERS}×{GROWTH} = {y.shape[axis]}",
                            axis=axis, channels=int(y.shape[axis])),
        }

    def _transition(self, spec: DenseNetSpec) -> dict[str, Any]:
        cin = IN_CHANNELS + BLOCK_LAYERS * GROWTH
        t = self.build("transition", spec, cin, TRANSITION_OUT)
        x = self.native(chapter_input((BATCH, cin, SIZE, SIZE)))
        y = self.forward(t, x, train=False)
        params = self.params(t)
        return {
            "base": _base_text(type(t), self.namespaces),
            "layers": _fact(f"`norm`: {self.layer_class(t.norm)}, `conv`: {self.layer_class(t.conv)}, "
                            f"`pool`: {self.layer_class(t.pool)}"),
            "trainable": _names_fact(params, True),
            "non_trainable": _names_fact(params, False),
            "shapes": self._shapes_fact(x.shape, y, TRANSITION_OUT),
            "kernel": self._kernel_fact(params, (TRANSITION_OUT, cin, 1, 1)),
            "conv_padding": _fact(self.conv_padding(t.conv)),
            "pool": _fact(self.pool_text(t.pool)),
        }

    def _stem_and_head(self, spec: DenseNetSpec, net: Any) -> dict[str, Any]:
        plan = spec.channel_plan
        stem = self.stem_layers(net)
        x = self.native(chapter_input(NET_INPUT))
        y = self.run_layers([layer for _, layer in stem], x)
        params = self.params(net)
        stem_params = self.owned(net, params, [n for n, _ in stem])
        pool_text, pool_layers = self.stem_pool(net)
        neg = self.native(-np.ones((1, 1, 4, 4), np.float32))
        corner = float(self.run_layers(pool_layers, neg).reshape(-1)[0])
        fill = ("padding never wins: an all −1 input gives −1 at the border" if corner == -1.0 else
                f"zero padding: an all −1 input gives {_num(corner)} at the border "
                "(harmless here: the input follows a ReLU, so it is ≥ 0)")
        c = plan.final_channels
        h, w = HEAD_HW
        feats = chapter_input((NET_INPUT[0], c, h, w), seed=1)
        pooled = self.pooled(net, self.native(feats))
        mean_diff = float(np.max(np.abs(pooled - feats.mean(axis=(2, 3)))))
        head_params = self.owned(net, params, ["norm5", "classifier"])
        matrix = next(s for n, s, _ in head_params if len(s) == 2)
        return {
            "stem_layers": _fact(", ".join(f"`{n}` {self.layer_class(layer)}" for n, layer in stem),
                                 names=[n for n, _ in stem]),
            "stem_params": _names_fact(stem_params, True),
            "stem_kernel": self._kernel_fact(stem_params, (plan.stem_channels, spec.in_channels,
                                                           spec.stem_conv.kernel, spec.stem_conv.kernel)),
            "stem_padding": _fact(self.stem_conv_padding(net)),
            "stem_pool": _fact(f"{pool_text}; {fill}", border=corner),
            "stem_shapes": self._shapes_fact(x.shape, y, plan.stem_channels),
            "head_params": _names_fact(head_params, True),
            "head_stats": _names_fact(head_params, False),
            "head_pool": _fact(f"`{_head_expression(type(net).forward_head)}` in `forward_head`: "
                               f"global (on a {h}×{w} map it equals the mean over H and W, "
                               f"max |Δ| {mean_diff:.1g})", global_mean=mean_diff < 1e-5,
                               max_abs_diff=mean_diff),
            "classifier": _fact(f"{shape_text(matrix)}: {matrix_layout(matrix, spec.num_classes, c)}",
                                shape=list(matrix), layout=matrix_layout(matrix, spec.num_classes, c)),
            "classifier_init": self.classifier_init(net),
        }

    def owned(self, net: Any, params: list[tuple[str, tuple[int, ...], bool]],
              layers: Sequence[str]) -> list[tuple[str, tuple[int, ...], bool]]:
        """The entries of ``params`` (the network's) that belong to the named children."""
        return [p for p in params if any(_in_path(p[0], n) for n in layers)]

    def _network(self, spec: DenseNetSpec, net: Any) -> dict[str, Any]:
        x = self.native(chapter_input(NET_INPUT))
        mode, y_train, y_eval = self._mode_fact(net, x)
        params = self.params(net)
        trainable = sum(math.prod(s) for _, s, t in params if t)
        names = self.canonical_names(net)
        canonical = [p.name for m in module_table(spec) for p in m.params]
        examples = ("features.conv0.weight", "features.denseblock1.denselayer1.norm.weight",
                    "features.denseblock1.denselayer1.norm.running_var", "classifier.weight")
        same = sum(names.get(n) == n for n in canonical)
        kernel = self.conv_kernel_values(net)
        fan_in = math.prod(kernel.shape[1:])
        ratio = float(kernel.std() / math.sqrt(2.0 / fan_in))
        sgd_constructor, sgd_settings, sgd_values = self.sgd_values()
        return {
            "base": _base_text(type(net), self.namespaces),
            "trainable_count": _fact(f"{trainable:,}", value=trainable),
            "stored": _fact(f"{sum(1 for _, _, t in params if t)} trainable + "
                            f"{sum(1 for _, _, t in params if not t)} not trained",
                            trainable=sum(1 for _, _, t in params if t),
                            non_trainable=sum(1 for _, _, t in params if not t)),
            "name_map": _fact(f"{len(names)} of {len(canonical)} canonical names found; "
                              f"{same} stored under the canonical name itself",
                              found=len(names), canonical=len(canonical), identical=same),
            **{f"name:{n}": _fact(self.name_text(names.get(n)), native=names.get(n)) for n in examples},
            "shapes": self._shapes_fact(x.shape, y_eval, spec.num_classes) | {
                "text": f"{shape_text(x.shape)} → {shape_text(y_eval.shape)} (logits)"},
            "train_eval": mode,
            "conv_init": _fact(f"{self.conv_init_source(net)}: std of `conv0` ÷ √(2/fan_in) = {ratio:.2f}",
                               std_ratio=ratio),
            "sgd": _sgd_fact(sgd_constructor, sgd_settings, self.sgd_form, sgd_values),
        }


# ---------------------------------------------------------------------- PyTorch
class _Torch(_Backend):
    name, title, module = "torch", "PyTorch", "torch"
    layout = "NCHW"  # nn.Conv2d and nn.BatchNorm2d take (N, C, H, W)
    train_call, eval_call = "`model.train()`", "`model.eval()`"
    runtime_switch = "model.train(train)"
    maps_call = "`layer([x, y1])`, a list (concatenated inside the layer)"
    sgd_head = "torch.optim.SGD"
    sgd_form = "v ← μ·v + g; p ← p − lr·v"

    def __init__(self) -> None:
        super().__init__()
        import torch
        from torch import nn

        self.torch, self.nn = torch, nn
        self.namespaces = (("nn", nn),)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        # seeded and single-threaded for the run only: the caller's RNG state and
        # thread count are theirs (the backend's tests call this in their own process)
        threads = self.torch.get_num_threads()
        with self.torch.random.fork_rng():
            self.torch.manual_seed(0)
            self.torch.set_num_threads(1)
            try:
                yield
            finally:
                self.torch.set_num_threads(threads)

    def build(self, part: str, spec: DenseNetSpec, *args: Any) -> Any:
        cls = {"conv_block": self.D.ConvBlock, "dense_layer": self.D.DenseLayer,
               "dense_block": self.D.DenseBlock, "transition": self.D.Transition,
               "network": self.D.DenseNet}[part]
        return cls(spec, *args)

    def native(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x))

    def params(self, obj: Any) -> list[tuple[str, tuple[int, ...], bool]]:
        trainable = {n for n, _ in obj.named_parameters()}
        return [(k, tuple(v.shape), k in trainable) for k, v in obj.state_dict().items()]

    def forward(self, obj: Any, x: Any, train: bool) -> np.ndarray:
        obj.train(train)
        with self.torch.no_grad():
            return obj(x).numpy()

    def mode_flag(self, obj: Any) -> str | None:
        return f"`.training={obj.training}`"

    def call_maps(self, layer: Any, maps: Sequence[Any]) -> np.ndarray:
        layer.eval()
        with self.torch.no_grad():
            return layer([self.torch.as_tensor(m) for m in maps]).numpy()

    def running(self, bn: Any) -> tuple[np.ndarray, np.ndarray]:
        return bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()

    def bn_eps(self, bn: Any) -> tuple[str, float]:
        return "eps", float(bn.eps)

    def bn_momentum(self, bn: Any) -> tuple[str, float]:
        return "momentum", float(bn.momentum)

    def conv_padding(self, conv: Any) -> str:
        return f"`padding={conv.padding}`, `padding_mode={conv.padding_mode!r}`"

    def conv_bias(self, conv: Any) -> bool:
        return conv.bias is not None

    def pool_text(self, pool: Any) -> str:
        return (f"`{type(pool).__name__}(kernel_size={pool.kernel_size}, stride={pool.stride}, "
                f"padding={pool.padding})`, `ceil_mode={pool.ceil_mode}`"
                + (f", `count_include_pad={pool.count_include_pad}`"
                   if hasattr(pool, "count_include_pad") else ""))

    def layer_class(self, layer: Any) -> str:
        return f"`nn.{type(layer).__name__}`"

    def block_layers(self, block: Any) -> tuple[str, list[str]]:
        return "`nn.ModuleDict` keys", list(block.keys())

    def dropout(self, layer: Any) -> dict[str, Any]:
        return _fact(f"`drop_rate={layer.drop_rate}` (`F.dropout` in `forward` when > 0)",
                     rate=layer.drop_rate)

    def stem_layers(self, net: Any) -> list[tuple[str, Any]]:
        out = []
        for n, m in net.features.named_children():
            if n.startswith("denseblock"):
                break
            out.append((n, m))
        return out

    def run_layers(self, layers: Sequence[Any], x: Any) -> np.ndarray:
        with self.torch.no_grad():
            for layer in layers:
                layer.eval()
                x = layer(x)
        return x.numpy()

    def stem_conv_padding(self, net: Any) -> str:
        c = net.features.conv0
        return f"`conv0`: `stride={c.stride}`, `padding={c.padding}`"

    def stem_pool(self, net: Any) -> tuple[str, list[Any]]:
        return self.pool_text(net.features.pool0), [net.features.pool0]

    def pooled(self, net: Any, features: Any) -> np.ndarray:
        with self.torch.no_grad():
            return net.forward_head(features, pre_logits=True).numpy()

    def canonical_names(self, net: Any) -> dict[str, str]:
        from ..torch.convert import canonical_tensors

        where = {id(t): k for k, t in net.state_dict(keep_vars=True).items()}
        return {name: where[id(t)] for _, name, _, t in canonical_tensors(net) if id(t) in where}

    def conv_init(self, block: Any) -> dict[str, Any]:
        # PyTorch's own defaults, which ConvBlock keeps when built alone (nn.Conv2d.reset_parameters:
        # kaiming_uniform_ with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)) for the weight, and the same
        # bound for the bias; nn.BatchNorm2d: weight 1, bias 0). Checked against the values.
        w, b = block.conv.weight.detach().numpy(), block.conv.bias.detach().numpy()
        bound = 1.0 / math.sqrt(math.prod(w.shape[1:]))
        inside = bool(np.all(np.abs(w) <= bound) and np.all(np.abs(b) <= bound))
        ones = bool(np.all(block.norm.weight.detach().numpy() == 1)
                    and np.all(block.norm.bias.detach().numpy() == 0))
        return _fact(
            "alone, PyTorch's defaults: conv weight and bias U(±1/√fan_in) (`kaiming_uniform_`, "
            f"a=√5){' ✓' if inside else ' ✗'}; BN weight 1, bias 0{' ✓' if ones else ' ✗'}. "
            "Inside `DenseNet`, `_init_torchvision` re-draws the convs: see the network table",
            within_bound=inside, bn_ones_zeros=ones)

    def classifier_init(self, net: Any) -> dict[str, Any]:
        # nn.Linear's default weight, U(+-1/sqrt(in)); _init_torchvision zeroes the bias. Checked.
        w = net.classifier.weight.detach().numpy()
        inside = bool(np.all(np.abs(w) <= 1.0 / math.sqrt(w.shape[1])))
        zero = bool(np.all(net.classifier.bias.detach().numpy() == 0))
        return _fact(f"weight U(±1/√in) (`nn.Linear`'s default){' ✓' if inside else ' ✗'}; bias 0 "
                     f"(`_init_torchvision`){' ✓' if zero else ' ✗'}", within_bound=inside, bias_zero=zero)

    def conv_kernel_values(self, net: Any) -> np.ndarray:
        return net.features.conv0.weight.detach().numpy()

    def conv_init_source(self, net: Any) -> str:
        # _init_torchvision (torch/densenet.py): nn.init.kaiming_normal_(weight, nonlinearity="relu"),
        # N(0, 2/fan_in); the ratio below checks it.
        return "`_init_torchvision`: `kaiming_normal_` (fan_in, ReLU gain)"

    def sgd_values(self) -> tuple[str, str, list[float]]:
        torch = self.torch
        constructor = _constructor_call(self.runtime.train_steps, self.sgd_head)
        p = torch.nn.Parameter(torch.tensor([SGD_CHECK["p0"]], dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=SGD_CHECK["lrs"][0], momentum=SGD_CHECK["momentum"])
        values = []
        for lr in SGD_CHECK["lrs"]:
            for group in opt.param_groups:
                group["lr"] = lr
            p.grad = torch.full_like(p, SGD_CHECK["grad"])
            opt.step()
            values.append(float(p.detach()[0]))
        d = opt.defaults
        return (constructor, f"`dampening={d['dampening']}`, `nesterov={d['nesterov']}`, "
                f"`weight_decay={d['weight_decay']}`", values)


# ---------------------------------------------------------------------- Flax NNX
class _Flax(_Backend):
    name, title, module = "flax", "Flax NNX", "flax"
    layout = "NHWC"  # nnx.Conv convolves over the middle axes: features last
    train_call, eval_call = "`model.train()`", "`model.eval()`"
    runtime_switch = "model.train()"
    maps_call = "`layer([x, y1])`, a list (concatenated inside the layer)"
    sgd_head = "optax.sgd"
    sgd_form = "optax trace v ← g + μ·v, update −lr·v (PyTorch's form)"

    def __init__(self) -> None:
        super().__init__()
        import jax
        import jax.numpy as jnp
        from flax import nnx

        self.jax, self.jnp, self.nnx = jax, jnp, nnx
        self.namespaces = (("nnx", nnx),)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        # The initialisers' values are only checked by their statistics here, so the
        # random bits may come from XLA's generator: JAX's default (threefry) compiles
        # for ~10 s per new parameter shape on two busy cores, "rbg" in a fraction.
        # For this run only: the setting is process-wide.
        before = self.jax.config.jax_default_prng_impl
        self.jax.config.update("jax_default_prng_impl", "rbg")
        try:
            yield
        finally:
            self.jax.config.update("jax_default_prng_impl", before)

    def build(self, part: str, spec: DenseNetSpec, *args: Any) -> Any:
        if part == "network":
            # The runtime's network: the same class, built abstractly (nnx.eval_shape) and
            # filled with the canonical weights. Built eagerly, NNX's initialisers compile
            # one XLA kernel per parameter shape: half a minute on two busy cores, for
            # values nothing here reads (conv_init_source draws one conv the class's way).
            return self.runtime.build(spec)
        cls = {"conv_block": self.D.ConvBlock, "dense_layer": self.D.DenseLayer,
               "dense_block": self.D.DenseBlock, "transition": self.D.Transition}[part]
        return cls(spec, *args, rngs=self.nnx.Rngs(0))

    def native(self, x: np.ndarray) -> Any:
        return self.jnp.asarray(super().native(x))

    def _value(self, v: Any) -> np.ndarray:
        return np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)

    def params(self, obj: Any) -> list[tuple[str, tuple[int, ...], bool]]:
        nnx = self.nnx
        out = []
        for path, v in nnx.to_flat_state(nnx.state(obj)):
            if isinstance(v, (nnx.Param, nnx.BatchStat)):  # RNG streams are state, not parameters
                out.append(("/".join(map(str, path)), tuple(self._value(v).shape), isinstance(v, nnx.Param)))
        return out

    def forward(self, obj: Any, x: Any, train: bool) -> np.ndarray:
        if train:
            obj.train()
        else:
            obj.eval()
        # one compiled graph per part and mode (eager JAX compiles every op on its own);
        # nnx.jit carries the BN statistics a train-mode call updates back into obj
        return np.asarray(self.nnx.jit(lambda m, x: m(x))(obj, x))

    def mode_flag(self, obj: Any) -> str | None:
        bn = next(m for _, m in self.nnx.iter_graph(obj) if isinstance(m, self.nnx.BatchNorm))
        return f"`use_running_average={bn.use_running_average}`"

    def call_maps(self, layer: Any, maps: Sequence[Any]) -> np.ndarray:
        layer.eval()
        return np.asarray(layer([self.jnp.asarray(m) for m in maps]))

    def running(self, bn: Any) -> tuple[np.ndarray, np.ndarray]:
        return self._value(bn.mean).copy(), self._value(bn.var).copy()

    def bn_eps(self, bn: Any) -> tuple[str, float]:
        return "epsilon", float(bn.epsilon)

    def bn_momentum(self, bn: Any) -> tuple[str, float]:
        return "momentum", float(bn.momentum)

    def conv_padding(self, conv: Any) -> str:
        return f"`padding={conv.padding}`"

    def conv_bias(self, conv: Any) -> bool:
        return bool(conv.use_bias)

    def pool_text(self, pool: Any) -> str:
        g = pool.geometry
        sig = inspect.signature(pool.reduce).parameters
        extra = (f", `count_include_pad={sig['count_include_pad'].default}`"
                 if "count_include_pad" in sig else "")
        return (f"`nnx.{pool.reduce.__name__}(window_shape=({g.kernel}, {g.kernel}), "
                f"strides=({g.stride}, {g.stride}), padding={g.pads})`{extra}")

    def layer_class(self, layer: Any) -> str:
        cls = type(layer)
        if getattr(self.nnx, cls.__name__, None) is cls:
            return f"`nnx.{cls.__name__}`"
        if cls.__name__ == "_Pool":
            return f"`_Pool` (a parameter-free module calling `nnx.{layer.reduce.__name__}`)"
        if callable(layer) and not isinstance(layer, self.nnx.Module):
            return f"`nnx.{layer.__name__}` (a function)"
        return f"`{cls.__name__}`"

    def block_layers(self, block: Any) -> tuple[str, list[str]]:
        return "attributes, in the order of `_order`", list(block._order)

    def dropout(self, layer: Any) -> dict[str, Any]:
        rng = [p for p, v in self.nnx.to_flat_state(self.nnx.state(layer.dropout))]
        return _fact(f"`nnx.Dropout(rate={layer.dropout.rate})` child, holding its RNG stream "
                     f"({', '.join('`dropout/' + '/'.join(map(str, p)) + '`' for p in rng)})",
                     rate=layer.dropout.rate)

    def stem_layers(self, net: Any) -> list[tuple[str, Any]]:
        out = []
        for n in net._order:
            if n.startswith("denseblock"):
                break
            out.append((n, net.features[n]))
        return out

    def run_layers(self, layers: Sequence[Any], x: Any) -> np.ndarray:
        for layer in layers:
            if isinstance(layer, self.nnx.Module):
                layer.eval()
            x = layer(x)
        return np.asarray(x)

    def stem_conv_padding(self, net: Any) -> str:
        c = net.features["conv0"]
        return f"`conv0`: `strides={c.strides}`, `padding={c.padding}`"

    def stem_pool(self, net: Any) -> tuple[str, list[Any]]:
        pool = net.features["pool0"]
        return self.pool_text(pool), [pool]

    def pooled(self, net: Any, features: Any) -> np.ndarray:
        return np.asarray(net.forward_head(features, pre_logits=True))

    def canonical_names(self, net: Any) -> dict[str, str]:
        from ..flax.convert import variables

        where = {id(v): "/".join(map(str, p)) for p, v in self.nnx.iter_graph(net)
                 if isinstance(v, self.nnx.Variable)}
        return {info.name: where[id(v)] for _, info, v in variables(net) if id(v) in where}

    def _init_text(self, fn: Any) -> str:
        """A jax initialiser, from the function itself (variance_scaling keeps its settings
        in its closure)."""
        if "variance_scaling" in fn.__qualname__:
            nl = inspect.getclosurevars(fn).nonlocals
            return (f"`variance_scaling({nl['scale']}, {nl['mode']!r}, {nl['distribution']!r})`")
        return f"`{fn.__name__}`"

    def conv_init(self, block: Any) -> dict[str, Any]:
        nnx = self.nnx
        kernel = self._init_text(self.D._kaiming_normal)  # what the backend's _conv passes
        conv_bias = self._init_text(inspect.signature(nnx.Conv.__init__).parameters["bias_init"].default)
        sig = inspect.signature(nnx.BatchNorm.__init__).parameters
        ones = bool(np.all(self._value(block.norm.scale) == 1) and np.all(self._value(block.norm.bias) == 0))
        return _fact(f"kernel {kernel} (the backend's `_kaiming_normal`, passed as `kernel_init`); "
                     f"bias {conv_bias} (`nnx.Conv`'s default); BN scale "
                     f"{self._init_text(sig['scale_init'].default)}, bias "
                     f"{self._init_text(sig['bias_init'].default)}{' ✓' if ones else ' ✗'}",
                     kernel=kernel, bn_ones_zeros=ones)

    def classifier_init(self, net: Any) -> dict[str, Any]:
        sig = inspect.signature(self.nnx.Linear.__init__).parameters
        zero = bool(np.all(self._value(net.classifier.bias) == 0))
        return _fact(f"kernel {self._init_text(sig['kernel_init'].default)}, bias "
                     f"{self._init_text(sig['bias_init'].default)}{' ✓' if zero else ' ✗'} "
                     "(`nnx.Linear`'s defaults)", bias_zero=zero)

    def conv_kernel_values(self, net: Any) -> np.ndarray:
        # conv0 as the class makes it: the backend's _conv with fresh RNG streams (the
        # network itself holds the canonical weights, see build)
        s = net.spec
        conv = self.D._conv(s, s.in_channels, s.channel_plan.stem_channels, s.stem_conv, dtype=None,
                            param_dtype=None, rngs=self.nnx.Rngs(0))
        return self._value(conv.kernel).transpose(3, 2, 0, 1)

    def conv_init_source(self, net: Any) -> str:
        return (f"{self._init_text(self.D._kaiming_normal)} (`_kaiming_normal`; `conv0` drawn "
                "by the backend's `_conv`)")

    def sgd_values(self) -> tuple[str, str, list[float]]:
        import optax

        jnp = self.jnp
        constructor = _constructor_call(self.runtime.sgd, self.sgd_head)
        mu = SGD_CHECK["momentum"]
        p = jnp.asarray([SGD_CHECK["p0"]])
        g = jnp.asarray([SGD_CHECK["grad"]])
        state = self.runtime.sgd(SGD_CHECK["lrs"][0], mu).init(p)
        values = []
        for lr in SGD_CHECK["lrs"]:
            tx = self.runtime.sgd(lr, mu)  # the runtime's own transformation; the state carries over
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
            values.append(float(p[0]))
        return (constructor, "through `make_optimizer` and `sgd`, wrapped in `nnx.Optimizer`; "
                f"`nesterov={inspect.signature(optax.sgd).parameters['nesterov'].default}`, "
                "no weight decay", values)


# ---------------------------------------------------------------------- Keras 3
class _Keras(_Backend):
    name, title, module = "keras", "Keras 3", "keras"
    layout = "NHWC"  # channels_last, the layers' data_format (read below)
    train_call, eval_call = "`layer(x, training=True)`", "`layer(x, training=False)`"
    runtime_switch = "training=True"
    maps_call = "`layer([x, y1])`, a list (concatenated inside the layer)"
    sgd_head = "keras.optimizers.SGD"
    sgd_form = "v ← μ·v − lr·g; p ← p + v"

    def __init__(self) -> None:
        super().__init__()
        import keras

        self.keras = keras
        self.namespaces = (("keras", keras), ("keras.layers", keras.layers))

    def version(self) -> str:
        return f"{self.keras.__version__} ({self.keras.backend.backend()})"

    def build(self, part: str, spec: DenseNetSpec, *args: Any) -> Any:
        cls = {"conv_block": self.D.ConvBlock, "dense_layer": self.D.DenseLayer,
               "dense_block": self.D.DenseBlock, "transition": self.D.Transition,
               "network": self.D.DenseNet}[part]
        obj = cls(spec, *args)
        if part == "network":
            from ..keras.convert import ensure_built

            ensure_built(obj)
        return obj

    def _np(self, v: Any) -> np.ndarray:
        from ..keras.convert import to_numpy

        return to_numpy(v)

    def params(self, obj: Any) -> list[tuple[str, tuple[int, ...], bool]]:
        if not obj.built:
            raise RuntimeError("a Keras layer has no weights before its first call")
        return [(v.path, tuple(v.shape), bool(v.trainable)) for v in obj.weights]

    def forward(self, obj: Any, x: Any, train: bool) -> np.ndarray:
        return self._np(obj(x, training=train))

    def call_maps(self, layer: Any, maps: Sequence[Any]) -> np.ndarray:
        return self._np(layer(list(maps), training=False))

    def running(self, bn: Any) -> tuple[np.ndarray, np.ndarray]:
        if not bn.built:  # the stats exist once the layer is built; fresh ones are 0 and 1
            return np.zeros(0), np.zeros(0)
        return self._np(bn.moving_mean), self._np(bn.moving_variance)

    def bn_eps(self, bn: Any) -> tuple[str, float]:
        return "epsilon", float(bn.epsilon)

    def bn_momentum(self, bn: Any) -> tuple[str, float]:
        return "momentum", float(bn.momentum)

    def conv_padding(self, conv: Any) -> str:
        return (f"`padding={conv.padding!r}` (stride {conv.strides[0]}), "
                f"`data_format={conv.data_format!r}`")

    def conv_bias(self, conv: Any) -> bool:
        return bool(conv.use_bias)

    def pool_text(self, pool: Any) -> str:
        return (f"`{type(pool).__name__}(pool_size={pool.pool_size}, strides={pool.strides}, "
                f"padding={pool.padding!r})`")

    def layer_class(self, layer: Any) -> str:
        return f"`keras.layers.{type(layer).__name__}`"

    def block_layers(self, block: Any) -> tuple[str, list[str]]:
        return "a list `denselayers`, the layers' names", [layer.name for layer in block.denselayers]

    def dropout(self, layer: Any) -> dict[str, Any]:
        if layer.dropout is None:
            return _fact("none: `drop_rate` is 0, so no `Dropout` layer is made", rate=0.0)
        return _fact(f"`Dropout(rate={layer.dropout.rate})` child", rate=layer.dropout.rate)

    def stem_layers(self, net: Any) -> list[tuple[str, Any]]:
        out = []
        for layer in net.features:
            if layer.name.startswith("denseblock"):
                break
            out.append((layer.name, layer))
        return out

    def run_layers(self, layers: Sequence[Any], x: Any) -> np.ndarray:
        for layer in layers:
            x = layer(x, training=False)
        return self._np(x)

    def stem_conv_padding(self, net: Any) -> str:
        pad, conv = net.get_layer("pad0"), net.get_layer("conv0")
        return (f"`pad0` `ZeroPadding2D(padding={pad.padding})`, then `conv0` "
                f"`strides={conv.strides}`, `padding={conv.padding!r}`")

    def stem_pool(self, net: Any) -> tuple[str, list[Any]]:
        pad, pool = net.get_layer("pool0_pad"), net.get_layer("pool0")
        return (f"`pool0_pad` `ZeroPadding2D(padding={pad.padding})`, then `pool0` "
                f"{self.pool_text(pool)}", [pad, pool])

    def pooled(self, net: Any, features: Any) -> np.ndarray:
        return self._np(net.forward_head(features, pre_logits=True))

    def canonical_names(self, net: Any) -> dict[str, str]:
        from ..keras.convert import canonical_variables

        return {n: v.path for n, v in canonical_variables(net).items()}

    def _init_text(self, init: Any) -> str:
        cfg = {k: v for k, v in init.get_config().items() if v is not None}
        return f"`{type(init).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})`"

    def conv_init(self, block: Any) -> dict[str, Any]:
        c, n = block.conv, block.norm
        return _fact(f"kernel {self._init_text(c.kernel_initializer)}, bias "
                     f"{self._init_text(c.bias_initializer)}; BN gamma "
                     f"{self._init_text(n.gamma_initializer)}, beta {self._init_text(n.beta_initializer)}, "
                     f"moving mean {self._init_text(n.moving_mean_initializer)}, moving variance "
                     f"{self._init_text(n.moving_variance_initializer)} (Keras's defaults, read from "
                     "the layers)",
                     kernel=type(c.kernel_initializer).__name__)

    def classifier_init(self, net: Any) -> dict[str, Any]:
        d = net.classifier
        return _fact(f"kernel {self._init_text(d.kernel_initializer)}, "
                     f"bias {self._init_text(d.bias_initializer)}",
                     kernel=type(d.kernel_initializer).__name__)

    def conv_kernel_values(self, net: Any) -> np.ndarray:
        return self._np(net.get_layer("conv0").kernel).transpose(3, 2, 0, 1)

    def conv_init_source(self, net: Any) -> str:
        return f"{self._init_text(net.get_layer('conv0').kernel_initializer)} (`Conv2D`'s default)"

    def sgd_values(self) -> tuple[str, str, list[float]]:
        keras = self.keras
        constructor = _constructor_call(self.runtime.train_steps, self.sgd_head)
        p = keras.Variable(np.array([SGD_CHECK["p0"]], np.float32))
        opt = keras.optimizers.SGD(learning_rate=SGD_CHECK["lrs"][0], momentum=SGD_CHECK["momentum"])
        opt.build([p])
        values = []
        for lr in SGD_CHECK["lrs"]:
            opt.learning_rate = lr
            opt.apply([np.array([SGD_CHECK["grad"]], np.float32)], [p])
            values.append(float(self._np(p)[0]))
        return constructor, f"`nesterov={opt.nesterov}`, `weight_decay={opt.weight_decay}`", values


# ---------------------------------------------------------------------- MXNet Gluon
class _Gluon(_Backend):
    name, title, module = "gluon", "MXNet Gluon", "mxnet"
    layout = "NCHW"  # the layers' layout argument (read below)
    train_call = "`with autograd.record(train_mode=True):`"
    eval_call = "outside it (predict mode)"
    runtime_switch = "autograd.record(train_mode=True)"
    maps_call = "`layer(x, y1)`, positional arrays (a HybridBlock takes arrays, not a list)"
    sgd_head = "gluon.Trainer"
    sgd_form = "m ← μ·m − lr·g; w ← w + m"

    def __init__(self) -> None:
        super().__init__()
        import mxnet as mx
        from mxnet import autograd, gluon, nd

        self.mx, self.autograd, self.gluon, self.nd = mx, autograd, gluon, nd
        self.namespaces = (("gluon", gluon), ("gluon.nn", gluon.nn))

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        with self.runtime.legacy_mode():
            yield

    def build(self, part: str, spec: DenseNetSpec, *args: Any) -> Any:
        cls = {"conv_block": self.D.ConvBlock, "dense_layer": self.D.DenseLayer,
               "dense_block": self.D.DenseBlock, "transition": self.D.Transition,
               "network": self.D.DenseNet}[part]
        obj = cls(spec, *args)
        obj.initialize()  # the framework's default initializer (reported with the init facts)
        return obj

    def native(self, x: np.ndarray) -> Any:
        return self.nd.array(x)

    def params(self, obj: Any) -> list[tuple[str, tuple[int, ...], bool]]:
        return [(n, tuple(p.shape), p.grad_req != "null") for n, p in obj.collect_params().items()]

    def forward(self, obj: Any, x: Any, train: bool) -> np.ndarray:
        if train:
            with self.autograd.record(train_mode=True):
                self._flag = self.autograd.is_training()
                y = obj(x)
        else:
            self._flag = self.autograd.is_training()
            y = obj(x)
        return y.asnumpy()

    def mode_flag(self, obj: Any) -> str | None:
        return f"`autograd.is_training()={self._flag}`"

    def call_maps(self, layer: Any, maps: Sequence[Any]) -> np.ndarray:
        return layer(*[m if isinstance(m, self.nd.NDArray) else self.nd.array(m) for m in maps]).asnumpy()

    def running(self, bn: Any) -> tuple[np.ndarray, np.ndarray]:
        return bn.running_mean.data().asnumpy().copy(), bn.running_var.data().asnumpy().copy()

    def bn_eps(self, bn: Any) -> tuple[str, float]:
        return "eps", float(bn._kwargs["eps"])

    def bn_momentum(self, bn: Any) -> tuple[str, float]:
        return "momentum", float(bn._kwargs["momentum"])

    def conv_padding(self, conv: Any) -> str:
        k = conv._kwargs
        return f"`pad={k['pad']}` (stride {k['stride']}), `layout={k['layout']!r}`"

    def conv_bias(self, conv: Any) -> bool:
        return not conv._kwargs["no_bias"]

    def pool_text(self, pool: Any) -> str:
        k = pool._kwargs
        return (f"`{type(pool).__name__}`: `pool_type={k['pool_type']!r}`, `kernel={k['kernel']}`, "
                f"`stride={k['stride']}`, `pad={k['pad']}`, `global_pool={k['global_pool']}`, "
                f"`pooling_convention={k['pooling_convention']!r}`"
                + (f", `count_include_pad={k['count_include_pad']}`" if "count_include_pad" in k else ""))

    def layer_class(self, layer: Any) -> str:
        cls = type(layer)
        for prefix, ns in self.namespaces:
            if getattr(ns, cls.__name__, None) is cls:
                return f"`{prefix}.{cls.__name__}`"
        base = next(b for b in cls.__mro__[1:] if not b.__module__.startswith("densenet_multi."))
        return f"`{cls.__name__}` (a `gluon.nn.{base.__name__}`)"

    def block_layers(self, block: Any) -> tuple[str, list[str]]:
        return "attributes (registered in `_children`)", list(block._children)

    def dropout(self, layer: Any) -> dict[str, Any]:
        return _fact(f"`drop_rate={layer.drop_rate}` (`F.Dropout` in `hybrid_forward` when > 0)",
                     rate=layer.drop_rate)

    def stem_layers(self, net: Any) -> list[tuple[str, Any]]:
        out = []
        for n, m in net.features._children.items():
            if n.startswith("denseblock"):
                break
            out.append((n, m))
        return out

    def run_layers(self, layers: Sequence[Any], x: Any) -> np.ndarray:
        for layer in layers:
            x = layer(x)
        return x.asnumpy()

    def stem_conv_padding(self, net: Any) -> str:
        k = net.features.conv0._kwargs
        return f"`conv0`: `stride={k['stride']}`, `pad={k['pad']}`"

    def stem_pool(self, net: Any) -> tuple[str, list[Any]]:
        return self.pool_text(net.features.pool0), [net.features.pool0]

    def pooled(self, net: Any, features: Any) -> np.ndarray:
        return net.forward_head(features, pre_logits=True).asnumpy()

    def canonical_names(self, net: Any) -> dict[str, str]:
        from ..gluon.convert import gluon_param, resolve

        self._structural = {p.name: k for k, p in net._collect_params_with_prefix().items()}
        out = {}
        for ref in module_table(net.spec):
            layer = resolve(net, ref.part)
            for info in ref.params:
                out[info.name] = gluon_param(layer, ref, info.attr).name
        return out

    def name_text(self, native: str | None) -> str:
        if not native:
            return "not found"
        return f"`{native}` (`save_parameters` key `{self._structural.get(native, '?')}`)"

    def owned(self, net: Any, params: list[tuple[str, tuple[int, ...], bool]],
              layers: Sequence[str]) -> list[tuple[str, tuple[int, ...], bool]]:
        # Gluon's names come from class counters (twopassbatchnorm0_, dense0_), not from the
        # attribute names: the structural keys (features.norm0.gamma) say which child owns one.
        structural = {p.name: k for k, p in net._collect_params_with_prefix().items()}
        return [p for p in params if any(_in_path(structural[p[0]], n) for n in layers)]

    def _init_text(self, p: Any) -> str:
        if p.init is None:
            default = inspect.signature(self.gluon.Block.initialize).parameters["init"].default
            args = ", ".join(f"{k}={v}" for k, v in default._kwargs.items())
            return f"none of its own (`initialize()`'s, default `{type(default).__name__}({args})`)"
        return f"`{p.init!r}`" if isinstance(p.init, str) else f"`{type(p.init).__name__}`"

    def conv_init(self, block: Any) -> dict[str, Any]:
        c, n = block.conv, block.norm
        return _fact(f"weight {self._init_text(c.weight)}, bias {self._init_text(c.bias)}; BN gamma "
                     f"{self._init_text(n.gamma)}, beta {self._init_text(n.beta)}, running mean "
                     f"{self._init_text(n.running_mean)}, running var {self._init_text(n.running_var)} "
                     "(each `Parameter`'s `init`)", weight=repr(c.weight.init))

    def classifier_init(self, net: Any) -> dict[str, Any]:
        d = net.classifier
        return _fact(f"weight {self._init_text(d.weight)}, bias {self._init_text(d.bias)}",
                     weight=repr(d.weight.init))

    def conv_kernel_values(self, net: Any) -> np.ndarray:
        return net.features.conv0.weight.data().asnumpy()

    def conv_init_source(self, net: Any) -> str:
        return f"`conv0` weight: {self._init_text(net.features.conv0.weight)}"

    def sgd_values(self) -> tuple[str, str, list[float]]:
        gluon = self.gluon
        constructor = _constructor_call(self.runtime.train_steps, self.sgd_head)
        p = gluon.Parameter("p", shape=(1,))
        p.initialize(self.mx.init.Constant(SGD_CHECK["p0"]))
        trainer = gluon.Trainer([p], "sgd", {"learning_rate": SGD_CHECK["lrs"][0],
                                             "momentum": SGD_CHECK["momentum"], "wd": 0.0}, kvstore=None)
        values = []
        for lr in SGD_CHECK["lrs"]:
            trainer.set_learning_rate(lr)
            with self.autograd.record():
                loss = (p.data() * SGD_CHECK["grad"]).sum()  # gradient: SGD_CHECK["grad"]
            loss.backward()
            trainer.step(1)
            values.append(float(p.data().asnumpy()[0]))
        o = trainer._optimizer
        return (constructor, f"optimizer `{type(o).__name__}`, `wd={o.wd}`, "
                f"`rescale_grad={o.rescale_grad}`", values)


_CLASSES: dict[str, type[_Backend]] = {"torch": _Torch, "flax": _Flax, "keras": _Keras, "gluon": _Gluon}


def introspect(backend: str) -> dict[str, Any]:
    """Build the guide's parts with ``backend``'s classes and read their conventions off
    them (imports that backend's framework only)."""
    if backend not in _CLASSES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    t0 = time.perf_counter()
    facts = _CLASSES[backend]().collect()
    facts["seconds"] = round(time.perf_counter() - t0, 2)
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.guide.introspect",
                                description=__doc__.split("\n")[0])
    p.add_argument("backend", choices=BACKENDS)
    p.add_argument("--out", type=Path, help="write the JSON here instead of printing it")
    args = p.parse_args(argv)
    text = json.dumps(introspect(args.backend), indent=1, ensure_ascii=False)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
