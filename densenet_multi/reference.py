"""The NumPy forward pass: the oracle every backend is checked against.

Written to be read next to the paper: each function is one part of the
network (conv block, dense layer, dense block, transition, network), on NCHW
arrays in float32 or float64, in eval mode (running statistics) or train mode
(batch statistics, returning the updated running statistics in PyTorch's
convention: the running variance is updated with the *unbiased* batch
variance). Convolutions are im2col + one matrix product; there are no Python
loops over pixels.

Everything here uses only numpy (>= 1.23) and the spec.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .outputs import ForwardOutput
from .params import validate_params
from .spec import ConvGeometry, DenseNetSpec, check_input_dtype, check_input_shape

__all__ = ["ForwardOutput", "forward", "softmax_cross_entropy", "conv2d", "batch_norm"]


# ---------------------------------------------------------------------- primitives
def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
    """NCHW convolution with OIHW kernel, symmetric zero padding (cross-correlation, as all
    frameworks define it)."""
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    assert ci == c, (ci, c)
    s, p = geom.stride, geom.padding
    if kh == 1 and kw == 1 and p == 0:
        xs = x[:, :, ::s, ::s] if s > 1 else x
        y = np.einsum("nchw,oc->nohw", xs, w[:, :, 0, 0], optimize=True)
    else:
        if p:
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        # windows: (N, C, Ho', Wo', kh, kw) view, subsampled by the stride
        win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]
        ho, wo = win.shape[2], win.shape[3]
        # im2col: (N*Ho*Wo, C*kh*kw) @ (C*kh*kw, O)
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
        y = (cols @ w.reshape(o, c * kh * kw).T).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b[None, :, None, None]
    return np.ascontiguousarray(y)


def max_pool(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Max-pool with -inf padding (PyTorch's definition: padding never wins)."""
    k, s, p = geom.kernel, geom.stride, geom.padding
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return np.ascontiguousarray(win.max(axis=(4, 5)))


def avg_pool(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Average pool without padding (the transition's 2x2/2); odd sizes drop the last row/col."""
    k, s = geom.kernel, geom.stride
    assert geom.padding == 0
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return np.ascontiguousarray(win.mean(axis=(4, 5)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def batch_norm(
    x: np.ndarray,
    p: Mapping[str, np.ndarray],
    prefix: str,
    spec: DenseNetSpec,
    train: bool,
    running: dict[str, np.ndarray] | None,
) -> np.ndarray:
    """BatchNorm over (N, H, W) per channel.

    Eval: running statistics. Train: biased batch variance for the
    normalisation; running mean/var updated with momentum ``m`` (PyTorch
    convention, weight of the new value) and the *unbiased* batch variance.
    """
    gamma, beta = p[f"{prefix}.weight"], p[f"{prefix}.bias"]
    if train:
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))  # biased, used to normalise
        n = x.shape[0] * x.shape[2] * x.shape[3]
        m = spec.bn_momentum
        unbiased = var * (n / max(n - 1, 1))
        assert running is not None
        rm, rv = f"{prefix}.running_mean", f"{prefix}.running_var"
        running[rm] = ((1 - m) * p[rm] + m * mean).astype(x.dtype)
        running[rv] = ((1 - m) * p[rv] + m * unbiased).astype(x.dtype)
    else:
        mean, var = p[f"{prefix}.running_mean"], p[f"{prefix}.running_var"]
    scale = gamma / np.sqrt(var + x.dtype.type(spec.bn_eps))
    shift = beta - mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


# ---------------------------------------------------------------------- the parts
class _Ctx:
    """The operations the network is made of, on plain arrays.

    The parts below call only these methods, so that :class:`_GradCtx` can run
    the very same code while recording what it needs for the backward pass.
    """

    def __init__(self, spec: DenseNetSpec, p: Mapping[str, np.ndarray], train: bool):
        self.spec, self.p, self.train = spec, p, train
        self.running: dict[str, np.ndarray] | None = {} if train else None

    def bn(self, x, prefix: str):
        return batch_norm(x, self.p, prefix, self.spec, self.train, self.running)

    def conv(self, x, prefix: str, geom: ConvGeometry):
        return conv2d(x, self.p[f"{prefix}.weight"], self.p.get(f"{prefix}.bias"), geom)

    def relu(self, x):
        return relu(x)

    def max_pool(self, x, geom: ConvGeometry):
        return max_pool(x, geom)

    def avg_pool(self, x, geom: ConvGeometry):
        return avg_pool(x, geom)

    def concat(self, xs):
        return np.concatenate(xs, axis=1)

    def global_pool(self, x):
        return x.mean(axis=(2, 3))

    def linear(self, x, prefix: str):
        return x @ self.p[f"{prefix}.weight"].T + self.p[f"{prefix}.bias"]

    def value(self, x) -> np.ndarray:
        return x


def conv_block(ctx: _Ctx, x, norm: str, conv: str, geom: ConvGeometry):
    """BN -> ReLU -> conv: the pre-activation unit every DenseNet part is made of."""
    return ctx.conv(ctx.relu(ctx.bn(x, norm)), conv, geom)


def dense_layer(ctx: _Ctx, x, prefix: str):
    """H_l: [BN-ReLU-1x1 conv (bottleneck)] -> BN-ReLU-3x3 conv, giving k new feature maps."""
    s = ctx.spec
    if s.has_bottleneck:
        y = conv_block(ctx, x, f"{prefix}.norm1", f"{prefix}.conv1", s.bottleneck_conv)
        return conv_block(ctx, y, f"{prefix}.norm2", f"{prefix}.conv2", s.growth_conv)
    return conv_block(ctx, x, f"{prefix}.norm", f"{prefix}.conv", s.growth_conv)


def dense_block(ctx: _Ctx, x, block: int, num_layers: int):
    """Each layer sees the concatenation of the block input and every earlier layer's output."""
    for l in range(1, num_layers + 1):
        new = dense_layer(ctx, x, f"features.denseblock{block}.denselayer{l}")
        x = ctx.concat([x, new])
    return x


def transition(ctx: _Ctx, x, index: int):
    """BN -> ReLU -> 1x1 conv (compression) -> 2x2/2 average pool."""
    s = ctx.spec
    pre = f"features.transition{index}"
    y = conv_block(ctx, x, f"{pre}.norm", f"{pre}.conv", s.transition_conv)
    return ctx.avg_pool(y, s.transition_pool)


def densenet(ctx: _Ctx, x):
    """The whole network; returns (logits, stages) in ``ctx``'s value type."""
    spec = ctx.spec
    stages = {}
    y = ctx.conv(x, "features.conv0", spec.stem_conv)
    if spec.stem_pool is not None:
        y = ctx.max_pool(ctx.relu(ctx.bn(y, "features.norm0")), spec.stem_pool)
    stages["stem"] = y

    for bp in spec.channel_plan.blocks:
        y = dense_block(ctx, y, bp.index, bp.num_layers)
        stages[f"block{bp.index}"] = y
        if bp.index < spec.num_blocks:
            y = transition(ctx, y, bp.index)
            stages[f"transition{bp.index}"] = y

    # The final BN-ReLU belongs to the features (torchvision applies the ReLU in
    # forward() after features.norm5; we report the tensor after it).
    y = ctx.relu(ctx.bn(y, "features.norm5"))
    stages["features"] = y
    pooled = ctx.global_pool(y)  # global average pooling: any input size
    stages["pooled"] = pooled
    logits = ctx.linear(pooled, "classifier")
    stages["logits"] = logits
    return logits, stages


def _prepare(spec, params, x, dtype, check):
    x = np.asarray(x)
    check_input_dtype(x.dtype)
    check_input_shape(spec, x.shape, "NCHW")
    dt = np.dtype(dtype or x.dtype)
    if check:
        validate_params(spec, params, dtype=None)
    p = {k: np.asarray(v, dtype=dt) for k, v in params.items()}
    return p, x.astype(dt, copy=False)


def forward(
    spec: DenseNetSpec,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    train: bool = False,
    dtype: str | None = None,
    check: bool = True,
) -> ForwardOutput:
    """Run ``spec`` with canonical ``params`` on an NCHW batch ``x``.

    Computes in ``dtype`` (default: the dtype of ``x``), casting the parameters.
    Returns logits, every stage output and, in train mode, the updated running
    statistics (canonical names).
    """
    p, x = _prepare(spec, params, x, dtype, check)
    ctx = _Ctx(spec, p, train)
    logits, stages = densenet(ctx, x)
    return ForwardOutput(logits=logits, stages=stages, running=ctx.running)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The harness's loss: mean softmax cross-entropy against integer labels."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())
