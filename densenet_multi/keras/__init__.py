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
    resolve_part,
)
from .densenet import (
    ConvBlock,
    DenseBlock,
    DenseLayer,
    DenseNet,
    Transition,
    check_float64_support,
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    from_spec,
)
from .runtime import build, devices, gradients, loss_fn, run, to_canonical_running_var, train_steps

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
    "check_float64_support",
    "build",
    "load_canonical",
    "export_canonical",
    "run",
    "gradients",
    "train_steps",
    "devices",
    "loss_fn",
    "to_canonical_running_var",
    "resolve_part",
    "canonical_variables",
    "KERAS_APPLICATIONS_EPS",
    "keras_applications_spec",
    "keras_applications_layer_name",
    "keras_applications_to_canonical",
    "canonical_to_keras_applications",
]
