"""Gradients and SGD steps of the NumPy reference: the oracle for checks 4 and 5.

The network code of :mod:`densenet_multi.reference` calls only the operations
of its context object; :class:`_GradCtx` implements the same operations on
:class:`_Node` values, records each one on a tape, and runs the tape backwards
with the hand-written rules below (reverse-mode differentiation, nothing more).
So the gradient oracle computes exactly the forward pass the forward oracle
computes: there is no second copy of the architecture.

The loss is the harness's: mean softmax cross-entropy of the logits against
integer labels, in train mode (batch statistics) unless asked otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .params import param_table
from .reference import (
    ForwardOutput,
    _Ctx,
    _prepare,
    avg_pool,
    conv2d,
    densenet,
    max_pool,
)
from .spec import ConvGeometry, DenseNetSpec

__all__ = ["GradResult", "gradients", "train_steps", "sgd_momentum_update"]


@dataclass
class GradResult:
    loss: float
    params: dict[str, np.ndarray]  # d loss / d parameter, canonical names and layout
    input: np.ndarray  # d loss / d x, NCHW
    output: ForwardOutput  # the forward pass the gradients belong to


class _Node:
    __slots__ = ("value", "grad", "parents", "backward")

    def __init__(self, value: np.ndarray, parents: tuple[_Node, ...] = (),
                 backward: Callable[[np.ndarray], tuple] | None = None):
        self.value = value
        self.grad: np.ndarray | None = None
        self.parents = parents
        self.backward = backward

    def accumulate(self, g: np.ndarray) -> None:
        self.grad = g if self.grad is None else self.grad + g


# ---------------------------------------------------------------------- backward rules
def conv2d_backward(x: np.ndarray, w: np.ndarray, geom: ConvGeometry, dy: np.ndarray):
    """(dx, dw, db) of :func:`densenet_multi.reference.conv2d`."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    s, p = geom.stride, geom.padding
    db = dy.sum(axis=(0, 2, 3))
    ho, wo = dy.shape[2], dy.shape[3]
    if kh == 1 and kw == 1 and p == 0:
        xs = x[:, :, ::s, ::s]
        dw = np.einsum("nohw,nchw->oc", dy, xs, optimize=True)[:, :, None, None]
        dx = np.zeros_like(x)
        dx[:, :, ::s, ::s] = np.einsum("nohw,oc->nchw", dy, w[:, :, 0, 0], optimize=True)
        return dx, dw, db
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
    dy2 = dy.transpose(0, 2, 3, 1).reshape(n * ho * wo, o)
    dw = (dy2.T @ cols).reshape(w.shape)
    dcols = (dy2 @ w.reshape(o, c * kh * kw)).reshape(n, ho, wo, c, kh, kw)
    dxp = np.zeros_like(xp)
    for i in range(kh):  # scatter the columns back: a loop over kernel taps, not pixels
        for j in range(kw):
            dxp[:, :, i:i + s * ho:s, j:j + s * wo:s] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, p:p + h, p:p + wd], dw, db


def max_pool_backward(x: np.ndarray, geom: ConvGeometry, dy: np.ndarray) -> np.ndarray:
    """The gradient goes to the first maximum of each window (PyTorch's choice on ties)."""
    k, s, p = geom.kernel, geom.stride, geom.padding
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf) if p else x
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    ho, wo = win.shape[2], win.shape[3]
    arg = win.reshape(*win.shape[:4], k * k).argmax(axis=-1)
    dxp = np.zeros_like(xp)
    for t in range(k * k):
        i, j = divmod(t, k)
        dxp[:, :, i:i + s * ho:s, j:j + s * wo:s] += np.where(arg == t, dy, 0)
    return dxp[:, :, p:p + x.shape[2], p:p + x.shape[3]]


def avg_pool_backward(x: np.ndarray, geom: ConvGeometry, dy: np.ndarray) -> np.ndarray:
    k, s = geom.kernel, geom.stride
    ho, wo = dy.shape[2], dy.shape[3]
    dx = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + s * ho:s, j:j + s * wo:s] += dy / (k * k)
    return dx


# ---------------------------------------------------------------------- the recording context
class _GradCtx(_Ctx):
    """Runs the reference network on :class:`_Node` values and records a tape."""

    def __init__(self, spec: DenseNetSpec, p: Mapping[str, np.ndarray], train: bool):
        super().__init__(spec, p, train)
        self.tape: list[_Node] = []
        self.leaves: dict[str, _Node] = {}

    def _op(self, value, parents, backward) -> _Node:
        node = _Node(value, tuple(parents), backward)
        self.tape.append(node)
        return node

    def param(self, name: str) -> _Node:
        if name not in self.leaves:
            self.leaves[name] = _Node(self.p[name])
        return self.leaves[name]

    def value(self, x: _Node) -> np.ndarray:
        return x.value

    def conv(self, x: _Node, prefix: str, geom: ConvGeometry) -> _Node:
        w = self.param(f"{prefix}.weight")
        has_bias = f"{prefix}.bias" in self.p
        b = self.param(f"{prefix}.bias") if has_bias else None
        y = conv2d(x.value, w.value, b.value if b is not None else None, geom)

        def backward(dy):
            dx, dw, db = conv2d_backward(x.value, w.value, geom, dy)
            return (dx, dw, db) if has_bias else (dx, dw)

        return self._op(y, (x, w, b) if has_bias else (x, w), backward)

    def bn(self, x: _Node, prefix: str) -> _Node:
        g, b = self.param(f"{prefix}.weight"), self.param(f"{prefix}.bias")
        y = super().bn(x.value, prefix)  # also records the running-stat update
        v = x.value
        if self.train:
            mean, var = v.mean(axis=(0, 2, 3)), v.var(axis=(0, 2, 3))
        else:
            mean, var = self.p[f"{prefix}.running_mean"], self.p[f"{prefix}.running_var"]
        inv_std = 1.0 / np.sqrt(var + v.dtype.type(self.spec.bn_eps))
        xhat = (v - mean[None, :, None, None]) * inv_std[None, :, None, None]
        train = self.train

        def backward(dy):
            dgamma = (dy * xhat).sum(axis=(0, 2, 3))
            dbeta = dy.sum(axis=(0, 2, 3))
            dxhat = dy * g.value[None, :, None, None]
            if train:  # the batch statistics depend on x too
                m = v.shape[0] * v.shape[2] * v.shape[3]
                dx = (inv_std[None, :, None, None] / m) * (
                    m * dxhat
                    - dxhat.sum(axis=(0, 2, 3))[None, :, None, None]
                    - xhat * (dxhat * xhat).sum(axis=(0, 2, 3))[None, :, None, None]
                )
            else:
                dx = dxhat * inv_std[None, :, None, None]
            return dx, dgamma, dbeta

        return self._op(y, (x, g, b), backward)

    def relu(self, x: _Node) -> _Node:
        return self._op(np.maximum(x.value, 0), (x,), lambda dy: (dy * (x.value > 0),))

    def max_pool(self, x: _Node, geom: ConvGeometry) -> _Node:
        return self._op(max_pool(x.value, geom), (x,),
                        lambda dy: (max_pool_backward(x.value, geom, dy),))

    def avg_pool(self, x: _Node, geom: ConvGeometry) -> _Node:
        return self._op(avg_pool(x.value, geom), (x,),
                        lambda dy: (avg_pool_backward(x.value, geom, dy),))

    def concat(self, xs: Sequence[_Node]) -> _Node:
        splits = np.cumsum([n.value.shape[1] for n in xs])[:-1]
        return self._op(np.concatenate([n.value for n in xs], axis=1), xs,
                        lambda dy: tuple(np.split(dy, splits, axis=1)))

    def global_pool(self, x: _Node) -> _Node:
        h, w = x.value.shape[2], x.value.shape[3]
        return self._op(x.value.mean(axis=(2, 3)), (x,),
                        lambda dy: (np.broadcast_to(dy[:, :, None, None] / (h * w),
                                                    x.value.shape).copy(),))

    def linear(self, x: _Node, prefix: str) -> _Node:
        w, b = self.param(f"{prefix}.weight"), self.param(f"{prefix}.bias")
        y = x.value @ w.value.T + b.value
        return self._op(y, (x, w, b), lambda dy: (dy @ w.value, dy.T @ x.value, dy.sum(axis=0)))

    def run_backward(self, out: _Node, dout: np.ndarray) -> None:
        out.grad = dout
        for node in reversed(self.tape):
            if node.grad is None or node.backward is None:
                continue
            for parent, g in zip(node.parents, node.backward(node.grad), strict=True):
                parent.accumulate(g)


def _softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(-np.log(prob[np.arange(n), labels]).mean())
    d = prob.copy()
    d[np.arange(n), labels] -= 1
    return loss, d / n


def gradients(
    spec: DenseNetSpec,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    labels: np.ndarray,
    *,
    train: bool = True,
    dtype: str | None = None,
) -> GradResult:
    """Loss and its gradient w.r.t. every trainable canonical parameter and the input."""
    p, xv = _prepare(spec, params, x, dtype, True)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (xv.shape[0],) or labels.min() < 0 or labels.max() >= spec.num_classes:
        raise ValueError(
            f"expected {xv.shape[0]} integer labels in [0, {spec.num_classes}), got shape "
            f"{labels.shape} with range [{labels.min()}, {labels.max()}]"
        )
    ctx = _GradCtx(spec, p, train)
    xin = _Node(xv)
    logits, stages = densenet(ctx, xin)
    loss, dlogits = _softmax_xent(logits.value, labels)
    ctx.run_backward(logits, dlogits.astype(xv.dtype))
    grads = {}
    for info in param_table(spec):
        if info.trainable:
            node = ctx.leaves.get(info.name)
            grads[info.name] = (node.grad if node is not None and node.grad is not None
                                else np.zeros(info.shape, xv.dtype))
    out = ForwardOutput(logits=logits.value, stages={k: v.value for k, v in stages.items()},
                        running=ctx.running)
    return GradResult(loss=loss, params=grads, input=xin.grad, output=out)


def sgd_momentum_update(params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray],
                        velocity: dict[str, np.ndarray], lr: float, momentum: float) -> None:
    """PyTorch's SGD with momentum (no dampening, no Nesterov, no weight decay), in place:
    ``v = mu * v + g; p -= lr * v`` (the first step has ``v = g``)."""
    for name, g in grads.items():
        v = g if name not in velocity else momentum * velocity[name] + g
        velocity[name] = v
        params[name] = params[name] - lr * v


def train_steps(
    spec: DenseNetSpec,
    params: Mapping[str, np.ndarray],
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    lr: float,
    momentum: float,
    dtype: str | None = None,
) -> tuple[list[float], dict[str, np.ndarray]]:
    """K SGD-with-momentum steps in train mode; returns the loss of each step (before its
    update) and the final parameters (running statistics updated PyTorch's way)."""
    dt = np.dtype(dtype or batches[0][0].dtype)
    cur = {k: np.asarray(v, dtype=dt) for k, v in params.items()}
    velocity: dict[str, np.ndarray] = {}
    losses = []
    for x, y in batches:
        r = gradients(spec, cur, x, y, train=True, dtype=str(dt))
        losses.append(r.loss)
        sgd_momentum_update(cur, r.params, velocity, lr, momentum)
        cur.update(r.output.running)
    return losses, cur
