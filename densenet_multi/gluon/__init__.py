"""MXNet Gluon backend (MXNet 1.9): DenseNet as ``HybridBlock``s and the backend contract.

Only this subpackage imports mxnet. See ``docs/backends/gluon.md`` for the
conventions (BN momentum, BatchNorm's update in the backward pass, MXNet's
numpy mode, the model zoo's fixed 7x7 head).
"""

from .convert import export_canonical, from_zoo, load_canonical, resolve, to_zoo
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
    dtype_of,
    gradients,
    legacy_mode,
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
    "run",
    "gradients",
    "train_steps",
    "devices",
    "save_checkpoint",
    "load_checkpoint",
    "resolve",
    "legacy_mode",
    "dtype_of",
    "from_zoo",
    "to_zoo",
]
