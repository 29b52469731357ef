"""Pitfall variants of the Keras 3 backend (:mod:`densenet_multi.keras`).

Imported only in the tensorflow environment's worker. The harness's worker sets
``KERAS_BACKEND`` only for the backend named "keras"; a variant has its own name,
so the default its tox env would set is set here, before Keras is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from typing import Any  # noqa: E402

from ._base import IntWidthSpec, Variant  # noqa: E402

__all__ = ["same_padding", "eps_default", "eps_applications", "int_width"]


# --8<-- [start:same_padding]
def _patch_same_padding() -> None:
    """The TensorFlow tab's stem: ``Conv2D(64, 7, strides=2, padding='same')`` and
    ``MaxPool2D(pool_size=3, strides=2, padding='same')`` instead of explicit symmetric
    zero padding and 'valid': at stride 2 'same' pads (2, 3) and (0, 1)."""
    from densenet_multi.keras import runtime

    build_model = runtime.from_spec

    def from_spec(spec: Any, **kwargs: Any) -> Any:
        model = build_model(spec, **kwargs)
        for layer in model.features:  # set before the model is built (first called)
            if layer.name in ("pad0", "pool0_pad"):
                layer.padding = ((0, 0), (0, 0))  # no explicit padding ...
            elif layer.name in ("conv0", "pool0"):
                layer.padding = "same"  # ... the framework's 'same' instead
        return model

    runtime.from_spec = from_spec


same_padding = Variant("keras", "same_padding", patch=_patch_same_padding)
# --8<-- [end:same_padding]


def _batch_norm_patch(make: Any) -> Any:
    def patch() -> None:
        from densenet_multi.keras import densenet

        densenet._batch_norm = make
    return patch


def _bn_eps_default(spec: Any, name: str, dtype: Any) -> Any:
    from keras import layers

    # epsilon not passed: Keras's default, 1e-3 (the spec's is 1e-5)
    return layers.BatchNormalization(momentum=1.0 - spec.bn_momentum, name=name, dtype=dtype)


def _bn_eps_applications(spec: Any, name: str, dtype: Any) -> Any:
    from keras import layers

    # keras.applications' DenseNets: epsilon=1.001e-5 (the spec's is 1e-5)
    return layers.BatchNormalization(momentum=1.0 - spec.bn_momentum, epsilon=1.001e-5,
                                     name=name, dtype=dtype)


eps_default = Variant("keras", "eps_default", patch=_batch_norm_patch(_bn_eps_default))
eps_applications = Variant("keras", "eps_applications",
                           patch=_batch_norm_patch(_bn_eps_applications))
#: keras.applications' (and the Keras blog's) transition width: int(n * theta)
int_width = Variant("keras", "int_width", model_spec=IntWidthSpec.of)
