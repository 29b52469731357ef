"""Pitfall variants of the MXNet Gluon backend (:mod:`densenet_multi.gluon`).

Imported only in the mxnet environment's worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Variant

__all__ = ["momentum_torch", "fixed_pool7", "biased_running_var"]


def _patch_momentum_torch() -> None:
    """``BatchNorm(momentum=0.1)``: PyTorch's number in Gluon's convention, where it is
    the weight of the *old* running value (Gluon's default, and the spec's, is 0.9)."""
    from densenet_multi.gluon import densenet
    from densenet_multi.gluon.layers import TwoPassBatchNorm

    def _norm(spec: Any, num_features: int) -> Any:
        return TwoPassBatchNorm(axis=1, in_channels=num_features, epsilon=spec.bn_eps,
                                momentum=spec.bn_momentum)

    densenet._norm = _norm


def _patch_fixed_pool7() -> None:
    """The Gluon model zoo's head: ``nn.AvgPool2D(pool_size=7)`` then ``nn.Flatten()``,
    a fixed 7x7 window (stride 7), instead of a global average."""
    from mxnet.gluon import nn

    from densenet_multi.gluon import densenet

    pool, flatten = nn.AvgPool2D(pool_size=7), nn.Flatten()

    def forward_head(self: Any, x: Any, pre_logits: bool = False) -> Any:
        x = flatten(pool(x))
        return x if pre_logits else self.classifier(x)

    densenet.DenseNet.forward_head = forward_head


def _patch_biased_running_var() -> None:
    """Gluon's running variance (updated with the *biased* batch variance) taken for
    PyTorch's (updated with the unbiased one): the conversion is missing."""
    from densenet_multi.gluon import runtime

    def canonical_running_var(old: Any, updated: Any, count: int, momentum: float) -> Any:
        return np.asarray(updated)

    runtime.canonical_running_var = canonical_running_var


momentum_torch = Variant("gluon", "momentum_torch", patch=_patch_momentum_torch)
fixed_pool7 = Variant("gluon", "fixed_pool7", patch=_patch_fixed_pool7)
biased_running_var = Variant("gluon", "biased_running_var", patch=_patch_biased_running_var)
