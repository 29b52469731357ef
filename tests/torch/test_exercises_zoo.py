"""The exercises' reference counts against torchvision itself (torch-zoo env: ``pytest -m zoo``).

The parameter counts and MACs that ``densenet_multi.exercises.resnet`` and
``.table1`` compute (ResNet from the paper's architecture table, DenseNet from
the spec), and the torchvision figures they are shown next to, checked against
torchvision's models (``weights=None``: nothing is downloaded) and its weights'
metadata.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densenet_multi.exercises import resnet, table1
from densenet_multi.spec import get_spec

pytestmark = pytest.mark.zoo


def _tv():
    return pytest.importorskip("torchvision.models")


def _count_macs(model: nn.Module, size: int = 224) -> int:
    """Convolution and linear multiply-accumulates of one sample, counted with hooks."""
    total = 0

    def conv_hook(m, _inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, _inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


@pytest.mark.parametrize("name", sorted(resnet.RESNETS))
def test_resnet_counts_from_the_paper_table_equal_torchvision(name):
    tv = getattr(_tv(), name)(weights=None)
    n = sum(p.numel() for p in tv.parameters())
    assert resnet.resnet_params(name) == n == resnet.TORCHVISION_RESNET_PARAMS[name]
    # torchvision puts a bottleneck's stride on its 3x3 conv (ResNet v1.5)
    assert resnet.resnet_macs(name) == _count_macs(tv)
    largest = max(m.weight.numel() for m in tv.modules()
                  if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert resnet.resnet_largest_3x3(name) == largest


@pytest.mark.parametrize("name", sorted(table1.TORCHVISION_PARAMS))
def test_densenet_counts_and_macs_equal_torchvision(name):
    tvm = _tv()
    tv = getattr(tvm, name)(weights=None)
    spec = get_spec(name)
    assert spec.num_params() == sum(p.numel() for p in tv.parameters()) == table1.TORCHVISION_PARAMS[name]
    assert spec.macs(224) == _count_macs(tv)
    weights = getattr(tvm, f"DenseNet{name.removeprefix('densenet')}_Weights").IMAGENET1K_V1
    assert weights.meta["_ops"] == table1.TORCHVISION_GMACS[name]
    assert weights.meta["num_params"] == spec.num_params()
