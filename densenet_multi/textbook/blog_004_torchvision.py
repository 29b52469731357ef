"""The torchvision walk-through (seed 004): torchvision's ``densenet.py`` as the text
quotes it, rebuilt.

The text shows ``densenet121`` / ``_densenet`` (the factory), ``DenseNet`` (a
``features`` ``nn.Sequential`` of ``conv0``, ``norm0``, ``relu0``, ``pool0``, the
blocks and transitions, ``norm5``; a ``classifier``; torchvision's initialisation;
a forward pass of ReLU, adaptive average pool, flatten, classifier), ``_DenseBlock``
(an ``nn.ModuleDict`` of layers, each fed the list of all earlier feature maps) and
``_DenseLayer`` (the bottleneck BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, with its
checkpointed memory-efficient path). Every convolution it shows is ``bias=False``,
every BatchNorm PyTorch's default.

What the text does not show, and how it is filled in here:

* ``_Transition``'s code. The text describes it (BN + ReLU + 1x1 conv + 2x2 average
  pool) and calls it as ``_Transition(num_input_features=, num_output_features=)``;
  it is written here as an ``nn.Sequential`` of exactly those four layers, the conv
  ``bias=False`` like every conv the text shows, the pool 2x2 with stride 2 (the
  text: it halves the feature map).
* ``_load_state_dict`` and the model URLs (``pretrained=True``): there are no
  downloads here; ``pretrained=True`` raises.
* The TorchScript overload declarations (``@torch.jit._overload_method``) of
  ``_DenseLayer.forward``: they declare types for scripting and compute nothing.

If this is torchvision's network it passes every check: ``backend`` is the chain.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from ..spec import DenseNetSpec
from ._common import expect_spec
from ._torch import TorchSource

__all__ = ["CHAIN", "DenseNet", "backend", "densenet121"]

SOURCE = "the torchvision walk-through (004)"


# ---------------------------------------------------------------------- the text's code
class _DenseLayer(nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int,
                 drop_rate: float, memory_efficient: bool = False) -> None:
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv2d(num_input_features, bn_size * growth_rate,
                                           kernel_size=1, stride=1, bias=False))
        self.add_module("norm2", nn.BatchNorm2d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(bn_size * growth_rate, growth_rate,
                                           kernel_size=3, stride=1, padding=1, bias=False))
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def any_requires_grad(self, input: list[Tensor]) -> bool:
        return any(tensor.requires_grad for tensor in input)

    def call_checkpoint_bottleneck(self, input: list[Tensor]) -> Tensor:
        def closure(*inputs: Tensor) -> Tensor:
            return self.bn_function(list(inputs))

        return cp.checkpoint(closure, *input)

    def forward(self, input: Tensor | list[Tensor]) -> Tensor:
        prev_features = [input] if isinstance(input, Tensor) else input
        if self.memory_efficient and self.any_requires_grad(prev_features):
            bottleneck_output = self.call_checkpoint_bottleneck(prev_features)
        else:
            bottleneck_output = self.bn_function(prev_features)
        new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    _version = 2

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int,
                 growth_rate: int, drop_rate: float, memory_efficient: bool = False) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate=growth_rate,
                                bn_size=bn_size, drop_rate=drop_rate,
                                memory_efficient=memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for _, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """Not shown in the text: its description (BN + ReLU + 1x1 conv + 2x2 average
    pool), written as torchvision's other layers are."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features,
                                          kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    def __init__(self, growth_rate: int = 32, block_config: tuple[int, ...] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0,
                 num_classes: int = 1000, memory_efficient: bool = False) -> None:
        super().__init__()
        # First convolution
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3,
                                bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        # Each denseblock
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers=num_layers, num_input_features=num_features,
                                bn_size=bn_size, growth_rate=growth_rate, drop_rate=drop_rate,
                                memory_efficient=memory_efficient)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_input_features=num_features,
                                    num_output_features=num_features // 2)
                self.features.add_module(f"transition{i + 1}", trans)
                num_features = num_features // 2
        # Final batch norm
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        # Linear layer
        self.classifier = nn.Linear(num_features, num_classes)
        # Official init from torch repo.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


def _densenet(arch: str, growth_rate: int, block_config: tuple[int, ...],
              num_init_features: int, pretrained: bool, progress: bool, **kwargs: Any
              ) -> DenseNet:
    model = DenseNet(growth_rate, block_config, num_init_features, **kwargs)
    if pretrained:
        raise NotImplementedError(f"{arch}: no pretrained weights here (no downloads)")
    return model


def densenet121(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> DenseNet:
    return _densenet("densenet121", 32, (6, 12, 24, 16), 64, pretrained, progress, **kwargs)


# ---------------------------------------------------------------------- the adapter
def _torchvision_spec(spec: DenseNetSpec) -> DenseNetSpec:
    """What ``DenseNet(growth_rate, block_config, num_init_features, bn_size, drop_rate,
    num_classes)`` builds: a 3-channel ImageNet stem, bottleneck layers, halving
    transitions, no conv biases, PyTorch's BatchNorm defaults."""
    return DenseNetSpec(growth_rate=spec.growth_rate, block_config=spec.block_config,
                        num_init_features=spec.num_init_features,
                        bn_size=spec.bn_size if spec.bn_size is not None else 4,
                        drop_rate=spec.drop_rate, num_classes=spec.num_classes)


def _accepts(spec: DenseNetSpec) -> None:
    expect_spec(SOURCE, spec, _torchvision_spec(spec))


def _make(spec: DenseNetSpec) -> DenseNet:
    kw = {"bn_size": spec.bn_size, "drop_rate": spec.drop_rate, "num_classes": spec.num_classes}
    if (spec.growth_rate, spec.block_config, spec.num_init_features) == (32, (6, 12, 24, 16), 64):
        return densenet121(**kw)
    return DenseNet(spec.growth_rate, spec.block_config, spec.num_init_features, **kw)


def _stages(model: DenseNet) -> list[tuple[Any, str | None]]:
    """``features``' children (pool0 ends the stem), then ``forward``'s tail: the ReLU
    after norm5 gives the features, the pool and flatten the pooled vector."""
    steps: list[tuple[Any, str | None]] = []
    for name, child in model.features.named_children():
        if name == "pool0":
            steps.append((child, "stem"))
        elif name.startswith("denseblock"):
            steps.append((child, f"block{name[len('denseblock'):]}"))
        elif name.startswith("transition"):
            steps.append((child, name))
        else:
            steps.append((child, None))
    steps += [
        (lambda h: F.relu(h, inplace=True), "features"),
        (lambda h: F.adaptive_avg_pool2d(h, (1, 1)), None),
        (lambda h: torch.flatten(h, 1), "pooled"),
        (model.classifier, "logits"),
    ]
    return steps


def _memory_efficient(model: DenseNet, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, _DenseLayer):
            m.memory_efficient = on


#: (object name, the one change it adds to the link before it), in chain order
CHAIN: tuple[tuple[str, str], ...] = (
    ("backend", "torchvision's DenseNet as the text quotes it (its _Transition from the "
                "text's description)"),
)

#: The text's torchvision network as written.
backend = TorchSource("blog_004_torchvision.backend", make=_make, stages=_stages, accepts=_accepts,
                      memory_efficient=_memory_efficient)
