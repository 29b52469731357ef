"""The d2l chapter's JAX tab, rebuilt in Flax **linen** as the tab writes it, under the harness.

Seed ``000`` (the chapter "Densely Connected Networks (DenseNet)", JAX tab). The
network below is the tab's own structure: ``ConvBlock`` (``@nn.compact``:
BN-ReLU-3x3 conv, then the concatenation inside the block), ``DenseBlock``
(``setup``: an ``nn.Sequential`` of conv blocks), ``TransitionBlock``
(BN-ReLU-1x1 conv-2x2 average pool) and ``DenseNet`` (``setup`` -> ``create_net``:
the stem ``nn.Sequential`` of ``b1``, whose ``layers`` list is then extended by
the blocks, the transitions and the head). Every framework default the tab relies
on is kept, because that is what is measured:

* ``nn.BatchNorm(not self.training)``: linen's momentum 0.99 (the weight of the
  *old* running value: PyTorch's 0.01 where the canonical network has 0.1),
  epsilon 1e-5, and ``use_fast_variance=True`` (``E[x^2] - E[x]^2``);
* the stem ``nn.Conv(64, (7, 7), strides=(2, 2), padding='same')`` and
  ``nn.max_pool(..., (3, 3), strides=(2, 2), padding='same')``: at stride 2
  'same' pads (2, 3) and (0, 1), where the canonical network pads 3 and 1 on
  both sides;
* the width rule of ``create_net``: ``num_channels = self.num_channels +
  (num_convs * self.growth_rate)``, computed from the *initial* width on every
  pass of the loop (the other tabs add to a running ``num_channels``), so each
  transition is ``(64 + 4 * 32) // 2 = 96`` wide: 96/96/96 where the canonical
  d2l network has 96/112/120, and the canonical weights do not fit from
  ``features.transition2`` on;
* ``nn.Conv`` and ``nn.Dense`` with their default bias (the d2l spec has
  ``conv_bias=True``); the head's ``nn.avg_pool`` over a window of the whole map.

(linen's fast variance is no link of the chain: measured on the d2l case, batch
4, the last link's worst train-mode stage is 1.8e-6 from the float64 reference
with it and 1.7e-6 with ``use_fast_variance=False``, both far inside 5e-5.)

The adapter (:class:`TabBackend`) offers the backend contract
(:mod:`densenet_multi.backend`) around it: it maps the canonical parameters
(torchvision names, OIHW) onto the tab's layers in execution order and back,
runs the tab's layers one by one to collect the stages, and in train mode
returns the running statistics the tab's BatchNorm really computed, converted
from linen's biased-variance rule to the canonical one
(:func:`densenet_multi.batchnorm.canonical_running_var`) with the tab's own
momentum. The layers keep their parameters in float32 (linen's ``param_dtype``
default): a float64 build is unsupported.

The chain of fixes, each link the previous one plus one change, is
:data:`CHAIN`; run it with
``--backends jax_tab=densenet_multi.textbook.d2l_jax:backend,...`` and
``--python jax_tab=.tox/jax/bin/python``.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402
from collections.abc import Callable, Iterable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax import numpy as jnp  # noqa: E402

from .. import checkpoint, layouts  # noqa: E402
from ..backend import check_model_dtype  # noqa: E402
from ..batchnorm import canonical_running_var  # noqa: E402
from ..outputs import ForwardOutput, GradOutput  # noqa: E402
from ..params import ModuleRef, init_params, validate_params  # noqa: E402
from ..spec import DenseNetSpec, check_input_dtype, check_input_shape, check_labels  # noqa: E402
from ._common import Layer, SourceMismatch, pair_layers  # noqa: E402

__all__ = ["CHAIN", "ConvBlock", "DenseBlock", "DenseNet", "Fixes", "LinenModel", "TabBackend",
           "TransitionBlock", "backend", "fix_widths", "fix_widths_padding",
           "fix_widths_padding_momentum"]


@dataclasses.dataclass(frozen=True)
class Fixes:
    """Which changes are applied to the tab as written (all False: the tab itself)."""

    #: transitions compress the running width (``num_channels += ...``), as the other tabs do
    widths: bool = False
    #: the stem pads explicitly and symmetrically: conv ((3, 3), (3, 3)), max-pool ((1, 1), (1, 1))
    padding: bool = False
    #: ``nn.BatchNorm(..., momentum=0.9)``: the canonical 0.1 in linen's convention
    momentum: bool = False


AS_WRITTEN = Fixes()


# --8<-- [start:tab]
def _batch_norm(training: bool, fixes: Fixes) -> nn.BatchNorm:
    """The tab's ``nn.BatchNorm(not self.training)``: linen's defaults unless a fix says."""
    if fixes.momentum:
        return nn.BatchNorm(not training, momentum=0.9)
    return nn.BatchNorm(not training)


class ConvBlock(nn.Module):
    num_channels: int
    training: bool = True
    fixes: Fixes = AS_WRITTEN

    @nn.compact
    def __call__(self, X):
        Y = nn.relu(_batch_norm(self.training, self.fixes)(X))
        Y = nn.Conv(self.num_channels, kernel_size=(3, 3), padding=(1, 1))(Y)
        Y = jnp.concatenate((X, Y), axis=-1)
        return Y


class DenseBlock(nn.Module):
    num_convs: int
    num_channels: int
    training: bool = True
    fixes: Fixes = AS_WRITTEN

    def setup(self):
        layer = []
        for _ in range(self.num_convs):
            layer.append(ConvBlock(self.num_channels, self.training, self.fixes))
        self.net = nn.Sequential(layer)

    def __call__(self, X):
        return self.net(X)


class TransitionBlock(nn.Module):
    num_channels: int
    training: bool = True
    fixes: Fixes = AS_WRITTEN

    @nn.compact
    def __call__(self, X):
        X = _batch_norm(self.training, self.fixes)(X)
        X = nn.relu(X)
        X = nn.Conv(self.num_channels, kernel_size=(1, 1))(X)
        X = nn.avg_pool(X, window_shape=(2, 2), strides=(2, 2))
        return X


class DenseNet(nn.Module):
    num_channels: int = 64
    growth_rate: int = 32
    arch: tuple = (4, 4, 4, 4)
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True
    fixes: Fixes = AS_WRITTEN

    def setup(self):
        self.net = self.create_net()

    def b1(self):
        if self.fixes.padding:
            conv_pad, pool_pad = ((3, 3), (3, 3)), ((1, 1), (1, 1))
        else:
            conv_pad = pool_pad = 'same'  # as written: (2, 3) and (0, 1) at stride 2
        return nn.Sequential([
            nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding=conv_pad),
            _batch_norm(self.training, self.fixes),
            nn.relu,
            lambda x: nn.max_pool(x, window_shape=(3, 3),
                                  strides=(2, 2), padding=pool_pad)
        ])

    def create_net(self):
        net = self.b1()
        num_channels = self.num_channels
        for i, num_convs in enumerate(self.arch):
            net.layers.extend([DenseBlock(num_convs, self.growth_rate,
                                          training=self.training, fixes=self.fixes)])
            # The number of output channels in the previous dense block
            if self.fixes.widths:
                num_channels += num_convs * self.growth_rate
            else:  # as written: from the initial width, on every pass of the loop
                num_channels = self.num_channels + (num_convs * self.growth_rate)
            # A transition layer that halves the number of channels is added
            # between the dense blocks
            if i != len(self.arch) - 1:
                num_channels //= 2
                net.layers.extend([TransitionBlock(num_channels,
                                                   training=self.training, fixes=self.fixes)])
        net.layers.extend([
            _batch_norm(self.training, self.fixes),
            nn.relu,
            lambda x: nn.avg_pool(x, window_shape=x.shape[1:3],
                                  strides=x.shape[1:3], padding='valid'),
            lambda x: x.reshape((x.shape[0], -1)),
            nn.Dense(self.num_classes)
        ])
        return net

    def __call__(self, X):
        return self.net(X)
# --8<-- [end:tab]


# ====================================================================== the adapter
class Native(NamedTuple):
    """One parameterised layer of the tab, in execution order."""

    kind: str  # "conv", "bn" or "linear" (params.ModuleRef.kind)
    path: tuple[str, ...]  # its path in the variable tree ("net", "layers_4", ...)
    unit: int  # index of the top-level layer of ``net.layers`` that holds it
    type_name: str  # the linen class: Conv, BatchNorm, Dense


#: canonical attribute -> (collection, linen name), per kind
_SLOTS: dict[str, dict[str, tuple[str, str]]] = {
    "conv": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
    "bn": {"weight": ("params", "scale"), "bias": ("params", "bias"),
           "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")},
    "linear": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
}


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _to_native(kind: str, a: np.ndarray) -> np.ndarray:
    return layouts.param_to_channels_last(kind, np.asarray(a))


def _from_native(kind: str, a: Any) -> np.ndarray:
    return layouts.param_from_channels_last(kind, np.asarray(a))


class LinenModel:
    """The built tab: the linen module (train and eval clones) and its variables."""

    def __init__(self, spec: DenseNetSpec, fixes: Fixes, module: DenseNet,
                 variables: dict[str, Any], device: jax.Device | None) -> None:
        self.spec, self.fixes, self.device = spec, fixes, device
        self.train_module = module.clone(training=True)
        self.eval_module = module.clone(training=False)
        self.variables = variables
        self.layers = _native_layers(self.eval_module, variables)
        #: why the canonical seeded weights could not be loaded at build (None: they were)
        self.build_note: str | None = None
        self._jit: dict[str, Callable[..., Any]] = {}

    @property
    def bn_momentum(self) -> float:
        """The momentum the tab's BatchNorms use, in linen's convention (weight of the old value)."""
        return 0.9 if self.fixes.momentum else float(nn.BatchNorm.momentum)


def _native_layers(module: DenseNet, variables: Mapping[str, Any]) -> list[Native]:
    """Every conv, BatchNorm and dense layer of the tab, in the order the tab runs them."""
    bound = module.bind(dict(variables))
    out: list[Native] = []
    for i, layer in enumerate(bound.net.layers):
        base = ("net", f"layers_{i}")
        if isinstance(layer, nn.Conv):
            out.append(Native("conv", base, i, "Conv"))
        elif isinstance(layer, nn.BatchNorm):
            out.append(Native("bn", base, i, "BatchNorm"))
        elif isinstance(layer, nn.Dense):
            out.append(Native("linear", base, i, "Dense"))
        elif isinstance(layer, DenseBlock):
            for j in range(layer.num_convs):  # each ConvBlock: BatchNorm_0, then Conv_0
                inner = (*base, "net", f"layers_{j}")
                out += [Native("bn", (*inner, "BatchNorm_0"), i, "BatchNorm"),
                        Native("conv", (*inner, "Conv_0"), i, "Conv")]
        elif isinstance(layer, TransitionBlock):
            out += [Native("bn", (*base, "BatchNorm_0"), i, "BatchNorm"),
                    Native("conv", (*base, "Conv_0"), i, "Conv")]
    return out


def _native_shapes(model: LinenModel, n: Native) -> dict[str, tuple[int, ...]]:
    """The layer's tensors as canonical attribute -> shape, in the canonical layout."""
    out = {}
    for attr, (coll, name) in _SLOTS[n.kind].items():
        node = _get(model.variables.get(coll, {}), n.path)
        if name in node:
            shape = tuple(np.shape(node[name]))
            if attr == "weight" and n.kind == "conv":  # HWIO -> OIHW
                shape = tuple(shape[i] for i in layouts.HWIO_TO_OIHW)
            elif attr == "weight" and n.kind == "linear":  # (in, out) -> (out, in)
                shape = shape[::-1]
            out[attr] = shape
    return out


class TabBackend:
    """The backend contract around the tab with ``fixes`` applied (a chain link)."""

    what = "the d2l JAX tab"

    def __init__(self, name: str, fixes: Fixes, change: str) -> None:
        self.name, self.fixes, self.change = name, fixes, change

    def __repr__(self) -> str:
        return f"<d2l JAX tab {self.name}: {self.change}>"

    # ------------------------------------------------------------------ build
    def check_spec(self, spec: DenseNetSpec) -> None:
        """NotImplementedError for a network the tab's code cannot express at all."""
        cant = []
        if spec.bn_size is not None:
            cant.append(f"bottleneck layers (bn_size={spec.bn_size}): the tab's ConvBlock is "
                        "BN-ReLU-3x3 conv only")
        if spec.compression != 0.5:
            cant.append(f"compression {spec.compression}: the tab halves (num_channels //= 2)")
        if spec.stem != "imagenet":
            cant.append(f"the {spec.stem!r} stem: the tab's b1 is 7x7/2 conv, BN, ReLU, 3x3/2 pool")
        if not spec.conv_bias:
            cant.append("convolutions without bias: linen's nn.Conv has one by default")
        if spec.drop_rate:
            cant.append(f"dropout {spec.drop_rate}: the tab has none")
        if spec.transition_rounding != "floor":
            cant.append(f"{spec.transition_rounding} rounding: the tab floors (//= 2)")
        if cant:
            raise NotImplementedError(f"{self.what} cannot build {spec.describe()}: "
                                      + "; ".join(cant))

    def build(self, spec: DenseNetSpec, *, device: str | None = None, seed: int = 0,
              dtype: str = "float32", memory_efficient: bool = False) -> LinenModel:
        """The tab for ``spec``'s widths, with the canonical seeded weights
        ``init_params(spec, seed)`` where its structure takes them (otherwise linen's own
        initialisation, and ``model.build_note`` says why)."""
        if check_model_dtype(dtype) != "float32":
            raise NotImplementedError(f"{self.what} keeps its parameters in float32 (linen's "
                                      "param_dtype default); a float64 build is not the tab")
        if memory_efficient:
            raise NotImplementedError(f"{self.what} has no memory-efficient mode")
        self.check_spec(spec)
        dev = _device(device)
        module = DenseNet(num_channels=spec.num_init_features, growth_rate=spec.growth_rate,
                          arch=tuple(spec.block_config), num_classes=spec.num_classes,
                          fixes=self.fixes)
        size = _small_input(spec)
        x = jnp.zeros((1, size, size, spec.in_channels), jnp.float32)
        variables = jax.jit(module.clone(training=False).init)(jax.random.PRNGKey(seed), x)
        variables = jax.device_put(jax.tree_util.tree_map(np.asarray, dict(variables)), dev)
        model = LinenModel(spec, self.fixes, module, variables, dev)
        try:
            self.load_canonical(model, init_params(spec, seed, dtype="float32"))
        except SourceMismatch as e:
            model.build_note = str(e)
        return model

    # ------------------------------------------------------------------ weights
    def _mapping(self, model: LinenModel) -> list[tuple[ModuleRef, Native]]:
        """The canonical layers paired with the tab's, in order; SourceMismatch naming every
        disagreement when the tab's structure does not take the canonical parameters."""
        layers = [Layer(n.kind, "/".join(n.path), n.type_name, _native_shapes(model, n), n)
                  for n in model.layers]
        return [(ref, layer.native)
                for ref, layer in pair_layers(f"{self.what} ({self.name})", model.spec, layers)]

    def load_canonical(self, model: LinenModel, params: Mapping[str, np.ndarray]) -> None:
        """Copy canonical parameters and running statistics onto the tab's layers, in
        execution order; :class:`~densenet_multi.textbook._common.SourceMismatch` naming
        every misfit, and nothing copied, when the tab's structure does not take them."""
        validate_params(model.spec, params, dtype="float32")
        mapping = self._mapping(model)
        new = _unfreeze(model.variables)
        for ref, n in mapping:
            for p in ref.params:
                coll, name = _SLOTS[ref.kind][p.attr]
                _get(new[coll], n.path)[name] = jax.device_put(
                    _to_native(p.kind, params[p.name]), model.device)
        model.variables = new

    def export_canonical(self, model: LinenModel) -> dict[str, np.ndarray]:
        out = {}
        for ref, n in self._mapping(model):
            for p in ref.params:
                coll, name = _SLOTS[ref.kind][p.attr]
                out[p.name] = _from_native(p.kind, _get(model.variables[coll], n.path)[name])
        return out

    # ------------------------------------------------------------------ forward
    def _forward_fn(self, model: LinenModel, train: bool) -> Callable[..., Any]:
        key = "train" if train else "eval"
        if key not in model._jit:
            module = model.train_module if train else model.eval_module

            def walk(m: DenseNet, x: Any) -> list[Any]:
                """The tab's top-level layers one by one: every layer's output."""
                outs = []
                for layer in m.net.layers:
                    x = layer(x)
                    outs.append(x)
                return outs

            if train:
                def fn(params, batch_stats, x):
                    outs, mutated = nn.apply(walk, module, mutable=["batch_stats"])(
                        {"params": params, "batch_stats": batch_stats}, x)
                    return outs, mutated["batch_stats"]
            else:
                def fn(params, batch_stats, x):
                    return nn.apply(walk, module)({"params": params, "batch_stats": batch_stats},
                                                  x), batch_stats
            model._jit[key] = jax.jit(fn)
        return model._jit[key]

    def _stage_units(self, model: LinenModel) -> dict[str, int]:
        """Stage name -> index of the top-level layer whose output it is."""
        layers = model.eval_module.bind(dict(model.variables)).net.layers
        blocks = [i for i, layer in enumerate(layers) if isinstance(layer, DenseBlock)]
        trans = [i for i, layer in enumerate(layers) if isinstance(layer, TransitionBlock)]
        units = {"stem": blocks[0] - 1}
        for b, i in enumerate(blocks, start=1):
            units[f"block{b}"] = i
        for t, i in enumerate(trans, start=1):
            units[f"transition{t}"] = i
        head = blocks[-1]  # then BN, relu, avg_pool, reshape, Dense
        units.update(features=head + 2, pooled=head + 4, logits=head + 5)
        return units

    def _nhwc(self, model: LinenModel, x: Any) -> Any:
        x = np.asarray(x)
        check_input_dtype(x.dtype)
        check_input_shape(model.spec, x.shape, "NCHW")
        return jax.device_put(layouts.nchw_to_nhwc(x.astype(np.float32, copy=False)), model.device)

    def run(self, model: LinenModel, x: Any, *, train: bool = False) -> ForwardOutput:
        """The tab's forward on an NCHW batch, every stage NCHW; in train mode, the running
        statistics the tab's BatchNorms computed, in the canonical variance rule. The model
        is left as it was."""
        xn = self._nhwc(model, x)
        outs, new_stats = self._forward_fn(model, train)(
            model.variables["params"], model.variables["batch_stats"], xn)
        stages = {}
        for name, unit in self._stage_units(model).items():
            a = np.asarray(outs[unit])
            stages[name] = layouts.nhwc_to_nchw(a) if a.ndim == 4 else a
        running = self._running(model, xn, new_stats) if train else None
        return ForwardOutput(logits=stages["logits"], stages=stages, running=running)

    def _unit_shapes(self, model: LinenModel, xn: Any) -> list[tuple[int, ...]]:
        """The input shape of every top-level layer, then the last one's output shape."""
        outs = jax.eval_shape(self._forward_fn(model, False), model.variables["params"],
                              model.variables["batch_stats"], xn)[0]
        return [tuple(xn.shape), *(tuple(o.shape) for o in outs)]

    def _running(self, model: LinenModel, xn: Any, new_stats: Mapping[str, Any]
                 ) -> dict[str, np.ndarray]:
        """linen's updated statistics -> canonical names and rule. Each BN averages over
        N * H * W of its input: the input of the top-level layer that holds it."""
        m = 1.0 - model.bn_momentum  # the tab's momentum, in the canonical convention
        shapes = self._unit_shapes(model, xn)
        out = {}
        for ref, n in self._mapping(model):
            if ref.kind != "bn":
                continue
            nb, h, w = shapes[n.unit][:3]
            node, old = _get(new_stats, n.path), _get(model.variables["batch_stats"], n.path)
            out[f"{ref.prefix}.running_mean"] = np.asarray(node["mean"])
            out[f"{ref.prefix}.running_var"] = canonical_running_var(
                np.asarray(old["var"]), np.asarray(node["var"]), nb * h * w, m)
        return out

    # ------------------------------------------------------------------ training
    def _loss_fn(self, model: LinenModel) -> Callable[..., Any]:
        if "loss" not in model._jit:
            module = model.train_module

            def loss(params, batch_stats, x, labels):
                logits, mutated = module.apply({"params": params, "batch_stats": batch_stats}, x,
                                               mutable=["batch_stats"])
                logp = jax.nn.log_softmax(logits)
                nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)
                return jnp.mean(nll), mutated["batch_stats"]

            model._jit["loss"] = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))
        return model._jit["loss"]

    def gradients(self, model: LinenModel, x: Any, labels: Any) -> GradOutput:
        """Train-mode loss (mean softmax cross-entropy) and its gradients, canonical names."""
        xn = self._nhwc(model, x)
        y = jnp.asarray(check_labels(labels, xn.shape[0], model.spec.num_classes))
        (loss, _), (g, dx) = self._loss_fn(model)(model.variables["params"],
                                                  model.variables["batch_stats"], xn, y)
        params = {}
        for ref, n in self._mapping(model):
            for p in ref.params:
                coll, name = _SLOTS[ref.kind][p.attr]
                if coll == "params":
                    params[p.name] = _from_native(p.kind, _get(g, n.path)[name])
        return GradOutput(loss=float(loss), params=params,
                          input=layouts.nhwc_to_nchw(np.asarray(dx)))

    def train_steps(self, model: LinenModel, batches: Iterable[tuple[Any, Any]], *, lr: float,
                    momentum: float) -> list[float]:
        """PyTorch's SGD with momentum (``v = mu v + g; p -= lr v``), one step per batch;
        the running statistics follow the tab's BatchNorm, in the canonical variance rule."""
        grad_fn = self._loss_fn(model)
        velocity = None
        losses = []
        for x, labels in batches:
            xn = self._nhwc(model, x)
            y = jnp.asarray(check_labels(labels, xn.shape[0], model.spec.num_classes))
            params, stats = model.variables["params"], model.variables["batch_stats"]
            (loss, new_stats), (g, _) = grad_fn(params, stats, xn, y)
            velocity = g if velocity is None else jax.tree_util.tree_map(
                lambda v, gi: momentum * v + gi, velocity, g)
            running = self._running(model, xn, new_stats)
            stats = _unfreeze(new_stats)
            for ref, n in self._mapping(model):
                if ref.kind == "bn":
                    _get(stats, n.path)["var"] = jax.device_put(
                        running[f"{ref.prefix}.running_var"], model.device)
            model.variables = {"params": jax.tree_util.tree_map(lambda p, v: p - lr * v,
                                                                params, velocity),
                               "batch_stats": stats}
            losses.append(float(loss))
        return losses

    # ------------------------------------------------------------------ the rest
    def devices(self) -> list[str]:
        try:
            n = len(jax.devices("gpu"))
        except RuntimeError:
            n = 0
        return ["cpu"] + (["cuda"] if n else [])

    def resolve(self, model: LinenModel, part: Any) -> dict[str, Any]:
        """The variables of the tab's layer holding canonical module ``part``:
        ``{"path": ..., "params": ..., "batch_stats": ...}`` (a linen layer lives in its
        parent's scope; its variables are what there is to hold)."""
        for ref, n in self._mapping(model):
            if tuple(ref.part) == tuple(part):
                return {"path": n.path, **{c: _get(model.variables[c], n.path)
                                           for c in ("params", "batch_stats")
                                           if _has(model.variables.get(c, {}), n.path)}}
        raise KeyError(f"no canonical module {part!r} in {model.spec.describe()}")

    def save_checkpoint(self, model: LinenModel, path: str | os.PathLike, *,
                        overwrite: bool = False) -> Path:
        return checkpoint.save(path, self.export_canonical(model), model.spec,
                               overwrite=overwrite)

    def load_checkpoint(self, path: str | os.PathLike, spec: DenseNetSpec | None = None, *,
                        device: str | None = None, dtype: str | None = None,
                        memory_efficient: bool = False) -> LinenModel:
        params, spec = checkpoint.load(path, spec)
        model = self.build(spec, device=device, dtype=dtype or "float32",
                           memory_efficient=memory_efficient)
        self.load_canonical(model, params)
        return model


def _has(tree: Mapping[str, Any], path: Sequence[str]) -> bool:
    try:
        _get(tree, path)
    except (KeyError, TypeError):
        return False
    return True


def _unfreeze(variables: Mapping[str, Any]) -> dict[str, Any]:
    """A plain nested dict copy of the variable tree (leaves shared)."""
    return {k: _unfreeze(v) if isinstance(v, Mapping) else v for k, v in variables.items()}


def _device(device: str | None) -> jax.Device:
    if device in (None, "cpu"):
        return jax.devices("cpu")[0] if device == "cpu" else jax.devices()[0]
    if device == "cuda":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise ValueError("device 'cuda': JAX sees no GPU here") from None
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _small_input(spec: DenseNetSpec) -> int:
    """The smallest square input the network takes (for initialising the variables:
    their shapes do not depend on the input size, the head pools globally)."""
    for size in range(8, 1025):
        try:
            spec.stage_shapes(size, size)
        except ValueError:
            continue
        return size
    raise ValueError(f"no input size up to 1024 fits {spec.describe()}")


# ====================================================================== the chain
#: (object name, the one change it adds to the previous link), in chain order
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "the tab as written (linen defaults: momentum 0.99, fast variance; 'same' "
                "stem padding; transitions from the initial width, 96/96/96)"),
    ("fix_widths", "each transition compresses the running width (num_channels += ...): "
                   "96/112/120"),
    ("fix_widths_padding", "the stem pads symmetrically: conv ((3, 3), (3, 3)), max-pool "
                           "((1, 1), (1, 1))"),
    ("fix_widths_padding_momentum", "nn.BatchNorm(momentum=0.9): the canonical 0.1 in linen's "
                                    "convention"),
)

backend = TabBackend("backend", AS_WRITTEN, CHAIN[0][1])
fix_widths = TabBackend("fix_widths", Fixes(widths=True), CHAIN[1][1])
fix_widths_padding = TabBackend("fix_widths_padding", Fixes(widths=True, padding=True),
                                CHAIN[2][1])
fix_widths_padding_momentum = TabBackend(
    "fix_widths_padding_momentum", Fixes(widths=True, padding=True, momentum=True), CHAIN[3][1])
