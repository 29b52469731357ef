"""The Korean PyTorch blog's DenseNet-121 (seed 002), rebuilt as written, and the chain
of changes that turns it into DenseNet-121.

The blog configures an ``easydict`` ``args`` (``in_dim`` 1, ``init_dim`` 32 "the
growth rate", ``out_dim`` 2) and writes five modules: ``ConvLayer`` (BN-ReLU-conv,
3x3 padded 1 unless ``conv_kwargs`` say otherwise), ``InitialConv`` (a ``ConvLayer``
7x7/2, then a 3x3/2 max-pool), ``DenseBlock`` (pairs of ``ConvLayer``\\ s, 1x1 then
3x3, each pair's output concatenated onto the running input), ``TransitionLayer`` (a
1x1 ``ConvLayer`` and an average pool) and ``DenseNet`` (stem, blocks of 6/12/24/16
with widths ``init_dim * 2, 4, 8, 16``, adaptive average pool, and a classifier
Linear-Dropout-ReLU-Linear). ``easydict.EasyDict`` is replaced by a dict with
attribute access (:class:`EDict`); everything else is the blog's code, its bugs
included.

As written it does not construct: ``DenseNet(args)`` calls
``ConvLayer(in_dim, out_dim, convKernel_size, convStride)``, which ``ConvLayer``'s
signature (``in_dim, out_dim, conv_kwargs=None``) does not take. The chain below
makes one change per link, each the one the harness points at next (the
construction errors first, then the errors of the forward pass, then the first
diverging shape, then the first layer that cannot take the canonical weights):

1. ``fix_convlayer``: ``ConvLayer(in_dim, out_dim, convKernel_size=3, convStride=1,
   conv_kwargs=None)``, padding ``convKernel_size // 2`` (what its calls and its own
   comment mean);
2. ``fix_block_call``: the dense blocks are called without ``convKernel_size=3,
   convStride=2``, which ``DenseBlock`` does not take (and a stride 2 in a dense block
   could not be concatenated);
3. ``fix_transition_pool``: the transition's pool is ``nn.AvgPool2d(kernel_size=2,
   stride=2)`` (the blog's ``down_kwargs`` default is ``None``, and its
   ``args.down_kwargs`` is three-dimensional and never passed);
4. ``fix_stem_pool_call``: ``h = self.pool(h)`` in ``InitialConv.forward`` (the blog
   writes ``h = self.pool``, returning the layer);
5. ``fix_widths``: DenseNet-121's channel bookkeeping. The blog sizes each dense block
   like a ResNet stage (``DenseBlock(w, w)``: every layer adds ``w`` maps through a
   ``w``-wide bottleneck, the block returns only its last layer's maps, the stem has
   ``init_dim`` = 32 channels where the blocks expect 64, layer ``i`` expects
   ``in + (i + 1) * w`` inputs). The change: stem 2k = 64, layer ``i`` sees
   ``in + i * k``, each layer adds k = 32 maps through a 4k bottleneck, the block
   returns the concatenation, each transition halves the block's output, and the
   classifier sees the last block's 1024. (Each of these alone still fails with a
   channel-count error: they are one bookkeeping, changed together.)
6. ``fix_flatten``: the pooled ``(N, C, 1, 1)`` map is flattened before the
   classifier;
7. ``fix_stem_padding``: the stem's max-pool is padded by 1 (55x55 -> 56x56);
8. ``fix_stem_order``: the stem is conv-BN-ReLU, not BN-ReLU-conv (the blog's
   ``ConvLayer`` normalises the raw one-channel input before the 7x7 conv);
9. ``fix_bias``: ``bias=False`` on every convolution;
10. ``fix_norm5``: a last BatchNorm and ReLU after the fourth block;
11. ``fix_classifier``: one ``nn.Linear(1024, out_dim)`` instead of
    Linear-Dropout-ReLU-Linear.

On the DenseNet-121 case with the blog's input and classes (one channel, two
classes, 224x224).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.nn as nn

from ..spec import DenseNetSpec, get_spec
from ._common import expect_spec
from ._torch import TorchSource

__all__ = ["CHAIN", "DENSENET121_SPEC", "FIXES", "DenseNet", "EDict", "backend", "make_args"]

SOURCE = "the Korean PyTorch blog (002)"
#: Every change of the chain, in chain order (link i + 1 is ``fix_<FIXES[i]>``).
FIXES = ("convlayer", "block_call", "transition_pool", "stem_pool_call", "widths", "flatten",
         "stem_padding", "stem_order", "bias", "norm5", "classifier")
#: The blog's task: one input channel, two classes.
DENSENET121_SPEC = get_spec("densenet121", in_channels=1, num_classes=2)


class EDict(dict):
    """``easydict.EasyDict``'s part the blog uses: a dict whose keys are attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def make_args() -> EDict:
    """The blog's hyperparameter configuration."""
    args = EDict()
    args.in_dim = 1
    args.init_dim = 32  # the growth rate
    args.enc_depth = 5
    args.net_dim = [args.init_dim * 2 ** x for x in range(args.enc_depth)]
    args.out_dim = 2
    conv_kwargs = EDict()
    conv_kwargs.kernel_size = 3
    conv_kwargs.stride = 1
    conv_kwargs.padding = 1
    down_kwargs = EDict()
    down_kwargs.kernel_size = (2, 2, 2)
    down_kwargs.stride = (2, 2, 2)
    down_kwargs.padding = 0
    args.conv_kwargs = conv_kwargs
    args.down_kwargs = down_kwargs
    return args


# ---------------------------------------------------------------------- the blog's code
# ``fx`` (keyword-only, last) is the set of changes applied: empty = the blog as written.
class ConvLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, conv_kwargs: Any = None, *,
                 fx: Collection[str] = ()) -> None:
        super().__init__()
        if conv_kwargs is None:
            conv_kwargs = EDict()
            conv_kwargs.kernel_size = 3
            conv_kwargs.stride = 1
            conv_kwargs.padding = conv_kwargs.kernel_size // 2  # keep the input's size
        self.norm = nn.BatchNorm2d(in_dim)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(in_dim, out_dim, **conv_kwargs, **_bias(fx))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # H() = BN - ReLU - Conv
        h = self.norm(inputs)
        h = self.act(h)
        h = self.conv(h)
        return h


class CalledConvLayer(ConvLayer):
    """``fix_convlayer``: the signature the blog's calls use."""

    def __init__(self, in_dim: int, out_dim: int, convKernel_size: int = 3,  # noqa: N803
                 convStride: int = 1, conv_kwargs: Any = None, *,  # noqa: N803
                 fx: Collection[str] = ()) -> None:
        if conv_kwargs is None:
            conv_kwargs = EDict(kernel_size=convKernel_size, stride=convStride,
                                padding=convKernel_size // 2)
        super().__init__(in_dim, out_dim, conv_kwargs, fx=fx)


def _bias(fx: Collection[str]) -> dict[str, bool]:
    return {"bias": False} if "bias" in fx else {}


def _conv_layer(fx: Collection[str]) -> type[ConvLayer]:
    return CalledConvLayer if "convlayer" in fx else ConvLayer


class InitialConv(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, convKernel_size: int = 7,  # noqa: N803
                 convStride: int = 2, poolingKernel_size: int = 3,  # noqa: N803
                 poolingStride: int = 2, *, fx: Collection[str] = ()) -> None:  # noqa: N803
        super().__init__()
        self.fx = frozenset(fx)
        if "stem_order" in fx:  # conv, then BN and ReLU
            self.composite = nn.Sequential(
                nn.Conv2d(in_dim, out_dim, convKernel_size, stride=convStride,
                          padding=convKernel_size // 2, **_bias(fx)),
                nn.BatchNorm2d(out_dim), nn.ReLU())
        else:
            self.composite = _conv_layer(fx)(in_dim, out_dim, convKernel_size, convStride, fx=fx)
        pad = {"padding": poolingKernel_size // 2} if "stem_padding" in fx else {}
        self.pool = nn.MaxPool2d(poolingKernel_size, stride=poolingStride, **pad)

    def forward(self, inputs: torch.Tensor) -> Any:
        h = self.composite(inputs)
        h = self.pool(h) if "stem_pool_call" in self.fx else self.pool
        return h


class DenseBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_conv: int = 6, conv_kwargs: Any = None,
                 *, fx: Collection[str] = ()) -> None:
        super().__init__()
        self.fx = frozenset(fx)
        self.num_conv = num_conv
        self.consecutive = nn.ModuleList([])
        layer = _conv_layer(fx)
        for idx in range(self.num_conv):
            if "widths" in fx:  # layer idx sees in + idx * k; a 4k-wide bottleneck
                self.consecutive.append(layer(in_dim + out_dim * idx, 4 * out_dim,
                                              convKernel_size=1, convStride=1, fx=fx))
                self.consecutive.append(layer(4 * out_dim, out_dim, conv_kwargs=conv_kwargs,
                                              fx=fx))
                continue
            # 1x1 convolution
            self.consecutive.append(layer(in_dim + (out_dim * (idx + 1)), out_dim,
                                          convKernel_size=1, convStride=1, fx=fx))
            # 3x3 convolution
            self.consecutive.append(layer(out_dim, out_dim, conv_kwargs=conv_kwargs, fx=fx))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        prev = inputs
        for idx in range(self.num_conv):
            inter = self.consecutive[idx * 2](prev)  # 1x1 conv
            inter = self.consecutive[idx * 2 + 1](inter)  # 3x3 conv
            prev = torch.concat([prev, inter], dim=1)
        return prev if "widths" in self.fx else inter  # as written: the final layer output


class TransitionLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, down_kwargs: Any = None, *,
                 fx: Collection[str] = ()) -> None:
        super().__init__()
        if down_kwargs is None and "transition_pool" in fx:
            down_kwargs = EDict(kernel_size=2, stride=2, padding=0)
        self.conv = _conv_layer(fx)(in_dim, out_dim, convKernel_size=1, convStride=1, fx=fx)
        self.pool = nn.AvgPool2d(**down_kwargs)  # used average pool (not global)

    def forward(self, dense_out: torch.Tensor) -> torch.Tensor:
        h = self.conv(dense_out)
        h = self.pool(h)
        return h


class DenseNet(nn.Module):
    def __init__(self, args: EDict, *, fx: Collection[str] = ()) -> None:
        super().__init__()
        assert args is not None, "invalid args passing"
        self.fx = frozenset(fx)
        self.growthRate = args.init_dim
        g = self.growthRate
        if "widths" in fx:
            self._widths(args, fx)
        else:
            self.init_conv = InitialConv(args.in_dim, g, convKernel_size=7, convStride=2,
                                         poolingKernel_size=3, poolingStride=2, fx=fx)
            self.dense1 = self._block(g * 2, g * 2, 6, fx)
            self.transition1 = TransitionLayer(g * 2, g * 4, fx=fx)
            self.dense2 = self._block(g * 4, g * 4, 12, fx)
            self.transition2 = TransitionLayer(g * 4, g * 8, fx=fx)
            self.dense3 = self._block(g * 8, g * 8, 24, fx)
            self.transition3 = TransitionLayer(g * 8, g * 16, fx=fx)
            self.dense4 = self._block(g * 16, g * 16, 16, fx)
            width = g * 16
        if "widths" in fx:
            width = self._final_width
        if "norm5" in fx:
            self.norm5 = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        if "classifier" in fx:
            self.classifier = nn.Linear(width, args.out_dim)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(width, width),
                nn.Dropout(),
                nn.ReLU(),
                nn.Linear(width, args.out_dim))

    @staticmethod
    def _block(in_dim: int, out_dim: int, num_conv: int, fx: Collection[str]) -> DenseBlock:
        if "block_call" in fx:
            return DenseBlock(in_dim, out_dim, num_conv=num_conv, fx=fx)
        # as written: DenseBlock takes no convKernel_size / convStride
        return DenseBlock(in_dim, out_dim, num_conv=num_conv, convKernel_size=3,  # type: ignore[call-arg]
                          convStride=2, fx=fx)

    def _widths(self, args: EDict, fx: Collection[str]) -> None:
        """``fix_widths``: DenseNet-121's running width, k = init_dim = 32."""
        k = self.growthRate
        width = 2 * k
        self.init_conv = InitialConv(args.in_dim, width, convKernel_size=7, convStride=2,
                                     poolingKernel_size=3, poolingStride=2, fx=fx)
        for i, n in enumerate((6, 12, 24, 16), start=1):
            setattr(self, f"dense{i}", self._block(width, k, n, fx))
            width += n * k
            if i < 4:
                setattr(self, f"transition{i}", TransitionLayer(width, width // 2, fx=fx))
                width //= 2
        self._final_width = width

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs))

    def body(self, inputs: torch.Tensor) -> torch.Tensor:
        h0 = self.init_conv(inputs)
        h1 = self.dense1(h0)
        h1 = self.transition1(h1)
        h2 = self.dense2(h1)
        h2 = self.transition2(h2)
        h3 = self.dense3(h2)
        h3 = self.transition3(h3)
        h4 = self.dense4(h3)
        return h4

    def head(self, h4: torch.Tensor) -> torch.Tensor:
        if "norm5" in self.fx:
            h4 = self.norm5(h4)
        hg = self.pool(h4)
        if "flatten" in self.fx:
            hg = torch.flatten(hg, 1)
        out = self.classifier(hg)
        return out


# ---------------------------------------------------------------------- the adapter
def _stages(net: DenseNet) -> list[tuple[Any, str | None]]:
    """``forward`` step by step: h0 (the stem), each block and transition; what enters
    the global pool is the features (the fourth block's output until ``fix_norm5`` adds
    the last BN-ReLU); the pool's output (flattened from ``fix_flatten`` on) is the
    pooled vector; the classifier's output the logits."""
    steps: list[tuple[Any, str | None]] = [(net.init_conv, "stem")]
    for i in range(1, 5):
        steps.append((getattr(net, f"dense{i}"), f"block{i}"))
        if i < 4:
            steps.append((getattr(net, f"transition{i}"), f"transition{i}"))
    steps.append((net.norm5 if "norm5" in net.fx else _identity, "features"))
    if "flatten" in net.fx:
        steps += [(net.pool, None), (lambda h: torch.flatten(h, 1), "pooled")]
    else:
        steps.append((net.pool, "pooled"))
    steps.append((net.classifier, "logits"))
    return steps


def _identity(h: Any) -> Any:
    return h


def _accepts(spec: DenseNetSpec) -> None:
    expect_spec(SOURCE, spec, DENSENET121_SPEC)


def _link(attr: str, fx: tuple[str, ...]) -> TorchSource:
    return TorchSource(f"blog_002_korean.{attr}", make=lambda spec: DenseNet(make_args(), fx=fx),
                       stages=_stages, accepts=_accepts)


#: (object name, the one change it adds to the link before it), in chain order
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "the blog as written (it does not construct)"),
    ("fix_convlayer", "ConvLayer(in_dim, out_dim, convKernel_size=3, convStride=1, "
                      "conv_kwargs=None), padding kernel // 2: the signature its calls use"),
    ("fix_block_call", "the dense blocks called without convKernel_size=3, convStride=2"),
    ("fix_transition_pool", "the transition's pool nn.AvgPool2d(kernel_size=2, stride=2) (its "
                            "down_kwargs default is None)"),
    ("fix_stem_pool_call", "h = self.pool(h) in InitialConv.forward, not h = self.pool"),
    ("fix_widths", "DenseNet-121's channel bookkeeping: a 64-channel stem, layer i sees "
                   "in + i*k, each layer adds k = 32 maps through a 4k bottleneck, the block "
                   "returns the concatenation, transitions halve it, the classifier sees 1024"),
    ("fix_flatten", "the pooled (N, C, 1, 1) map flattened before the classifier"),
    ("fix_stem_padding", "the stem's max-pool padded by 1"),
    ("fix_stem_order", "the stem is conv-BN-ReLU, not BN-ReLU-conv"),
    ("fix_bias", "bias=False on every convolution"),
    ("fix_norm5", "a last BatchNorm and ReLU after the fourth block"),
    ("fix_classifier", "one nn.Linear(1024, out_dim) instead of Linear-Dropout-ReLU-Linear"),
)

#: The blog as written, and its fix chain (each link the one before plus one change).
backend = _link("backend", ())
fix_convlayer = _link("fix_convlayer", FIXES[:1])
fix_block_call = _link("fix_block_call", FIXES[:2])
fix_transition_pool = _link("fix_transition_pool", FIXES[:3])
fix_stem_pool_call = _link("fix_stem_pool_call", FIXES[:4])
fix_widths = _link("fix_widths", FIXES[:5])
fix_flatten = _link("fix_flatten", FIXES[:6])
fix_stem_padding = _link("fix_stem_padding", FIXES[:7])
fix_stem_order = _link("fix_stem_order", FIXES[:8])
fix_bias = _link("fix_bias", FIXES[:9])
fix_norm5 = _link("fix_norm5", FIXES[:10])
fix_classifier = _link("fix_classifier", FIXES[:11])
