"""MXNet Gluon backend (MXNet 1.9): DenseNet as ``HybridBlock``s and the backend contract.

Only this subpackage imports mxnet. See ``docs/backends/gluon.md`` for the
conventions (BN momentum, BatchNorm's update in the backward pass, the model
zoo's fixed 7x7 head).
"""

from .convert import export_canonical, from_zoo, load_canonical, to_zoo
from .densenet import (
    BatchNorm,
    ConvBlock,
    DenseBlock,
    DenseLayer,
    DenseNet,
    Stem,
    Transition,
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    from_spec,
    legacy_mode,
)
from .runtime import (
    build,
    devices,
    dtype_of,
    gradients,
    load_checkpoint,
    run,
    save_checkpoint,
    train_steps,
)

__all__ = [
    "BatchNorm",
    "ConvBlock",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "Stem",
    "DenseNet",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "from_spec",
    "legacy_mode",
    "build",
    "load_canonical",
    "export_canonical",
    "run",
    "gradients",
    "train_steps",
    "devices",
    "dtype_of",
    "from_zoo",
    "to_zoo",
    "save_checkpoint",
    "load_checkpoint",
]
