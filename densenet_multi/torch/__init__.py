"""The PyTorch backend: DenseNet as ``nn.Module``s, torchvision-compatible.

``state_dict()`` keys of :class:`DenseNet` are the canonical names, so a
torchvision DenseNet state_dict loads with ``strict=True`` and canonical
parameters need no layout conversion. The backend contract of
:mod:`densenet_multi.backend` (``build``, ``load_canonical``,
``export_canonical``, ``run``, ``gradients``, ``train_steps``, ``devices``,
``save_checkpoint``, ``load_checkpoint``, ``resolve``) is exported here.
"""

from .convert import export_canonical, load_canonical, resolve
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
from .runtime import (
    build,
    devices,
    gradients,
    load_checkpoint,
    run,
    save_checkpoint,
    train_steps,
)

__all__ = [
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "from_spec",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "build",
    "load_canonical",
    "export_canonical",
    "resolve",
    "run",
    "gradients",
    "train_steps",
    "devices",
    "save_checkpoint",
    "load_checkpoint",
]
