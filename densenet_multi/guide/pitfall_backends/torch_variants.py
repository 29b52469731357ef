"""Pitfall variants of the PyTorch backend (:mod:`densenet_multi.torch`).

Imported only in the torch environment's worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ._base import Variant, strict_false

__all__ = ["momentum_keras", "zero_pool_padding", "no_conv_bias", "eval_forgotten"]


def _patch_momentum_keras() -> None:
    """``nn.BatchNorm2d(n, momentum=0.9)``: Keras's / Gluon's number in PyTorch's
    convention, where it is the weight of the *new* batch statistic (PyTorch's 0.1)."""
    from densenet_multi.torch import densenet

    def _norm(spec: Any, num_features: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(num_features, eps=spec.bn_eps, momentum=0.9)

    densenet._norm = _norm


def _zero_pool_padding(model: Any) -> None:
    """The stem's max-pool padded with zeros (``ZeroPadding2D(1)`` + a 'valid' pool, as
    keras.applications writes it) instead of PyTorch's -inf padding."""
    model.features.pool0 = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2))


def _no_conv_bias(spec: Any) -> Any:
    """torchvision's ``nn.Conv2d(..., bias=False)`` everywhere, on the d2l net whose
    convolutions have a bias; its checkpoint is then loaded with ``strict=False``."""
    return spec.replace(conv_bias=False)


def _patch_eval_forgotten() -> None:
    """``net.eval()`` never called: an ``nn.Module`` starts in train mode, so the eval
    check's forward normalises with the batch statistics."""
    from densenet_multi.torch import runtime

    @contextlib.contextmanager
    def _mode(model: Any, train: bool, keep_running_stats: bool = True) -> Iterator[None]:
        saved = {k: b.clone() for k, b in model.named_buffers()} if keep_running_stats else {}
        try:
            yield  # the mode switch, model.train(train), is missing
        finally:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    if k in saved:
                        b.copy_(saved[k])

    runtime._mode = _mode


momentum_keras = Variant("torch", "momentum_keras", patch=_patch_momentum_keras)
zero_pool_padding = Variant("torch", "zero_pool_padding", after_build=_zero_pool_padding)
no_conv_bias = Variant("torch", "no_conv_bias", model_spec=_no_conv_bias, params_in=strict_false)
eval_forgotten = Variant("torch", "eval_forgotten", patch=_patch_eval_forgotten)
