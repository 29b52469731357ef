"""The PyTorch backend: DenseNet as ``nn.Module``s, torchvision-compatible.

``state_dict()`` keys of :class:`DenseNet` are the canonical names, so a
torchvision DenseNet state_dict loads with ``strict=True`` and canonical
parameters need no layout conversion. The backend contract of
:mod:`densenet_multi.backend` (``build``, ``load_canonical``,
``export_canonical``, ``run``, ``gradients``, ``train_steps``, ``devices``) is
exported here, as are canonical checkpoint helpers.
"""

from .convert import (
    export_canonical,
    from_canonical,
    load_canonical,
    load_checkpoint,
    resolve,
    save_checkpoint,
    to_canonical,
)
from .densenet import (
    ConvBlock,
    DenseBlock,
    DenseLayer,
    DenseNet,
    Transition,
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    from_spec,
)
from .runtime import build, devices, gradients, run, train_steps

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "from_spec",
    "build",
    "load_canonical",
    "export_canonical",
    "from_canonical",
    "to_canonical",
    "resolve",
    "load_checkpoint",
    "save_checkpoint",
    "run",
    "gradients",
    "train_steps",
    "devices",
]
