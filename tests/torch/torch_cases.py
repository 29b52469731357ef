"""Shared cases for the PyTorch backend tests (seeded weights and inputs, small sizes)."""

from __future__ import annotations

import numpy as np

from densenet_multi.params import init_params
from densenet_multi.spec import DenseNetSpec, get_spec

#: preset -> (eval input size, train-mode input size, train-mode batch); eval uses batch 2.
#: Train-mode BN over the 1x1 maps of a 32x32 input through an ImageNet stem
#: (2 numbers per channel) is ill-conditioned: there the reference in float32
#: and in float64 disagree by 30%. Train checks therefore use 64x64 (2x2 maps
#: in the last block); for DenseNet-121 a batch of 4, where the float32
#: reference itself is 1.5e-5 from float64 (3e-5 with a batch of 2).
PRESET_CASES: dict[str, tuple[int, int, int]] = {
    "d2l": (32, 64, 2),
    "densenet121": (32, 64, 4),
    "densenet_bc_100_k12": (16, 16, 2),
    "densenet40_k12": (16, 16, 2),
}

#: A tiny spec for the tests that need many forward/backward passes.
TINY = DenseNetSpec(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                    num_classes=5, in_channels=3, stem="cifar", name="tiny")
TINY_PLAIN = TINY.replace(bn_size=None, conv_bias=True, name="tiny-plain")


def case(spec: DenseNetSpec | str, size: int, batch: int = 2, seed: int = 0,
         dtype: str = "float32") -> tuple[DenseNetSpec, dict[str, np.ndarray], np.ndarray]:
    """(spec, canonical weights with non-trivial BN statistics, an NCHW batch)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    params = init_params(spec, seed, nontrivial_bn=True, dtype=dtype)
    rng = np.random.Generator(np.random.PCG64(seed + 1000))
    x = rng.standard_normal((batch, spec.in_channels, size, size)).astype(dtype)
    return spec, params, x


def labels(spec: DenseNetSpec, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(seed + 2000)).integers(0, spec.num_classes, batch)
