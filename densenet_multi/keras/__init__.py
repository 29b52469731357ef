"""The Keras 3 backend of densenet_multi: DenseNet as Keras layers, and the backend contract.

The model (:mod:`.densenet`) is written against the backend-agnostic ``keras``
API and runs under ``KERAS_BACKEND=tensorflow`` and ``KERAS_BACKEND=jax``.
:mod:`.convert` maps canonical (torchvision-named, NCHW/OIHW) parameters and
keras.applications DenseNets to and from it; :mod:`.runtime` implements the
contract of :mod:`densenet_multi.backend`; :mod:`.train` is the digits /
Fashion-MNIST training entry point (compile + fit).
"""

from .convert import (
    KERAS_APPLICATIONS_EPS,
    canonical_to_keras_applications,
    canonical_variables,
    export_canonical,
    keras_applications_layer_name,
    keras_applications_spec,
    keras_applications_to_canonical,
    load_canonical,
    resolve,
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
from .runtime import (
    build,
    check_float64_support,
    devices,
    gradients,
    load_checkpoint,
    loss_fn,
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
    "check_float64_support",
    "loss_fn",
    "canonical_variables",
    "KERAS_APPLICATIONS_EPS",
    "keras_applications_spec",
    "keras_applications_layer_name",
    "keras_applications_to_canonical",
    "canonical_to_keras_applications",
]
