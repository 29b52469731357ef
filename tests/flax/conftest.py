"""Shared fixtures of the Flax backend tests.

JIT compilation dominates the run time on a small CPU, so every preset's model
is built, loaded and run once per session (``preset_case``) and the tests
read the cached outputs. The tests run on whatever device JAX picks (the jax
tox env sets JAX_PLATFORMS=cpu); the contract functions compute with "highest"
float32 precision, so the tolerances hold on a GPU too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from densenet_multi import reference
from densenet_multi.params import init_params
from densenet_multi.spec import DenseNetSpec, get_spec

jax = pytest.importorskip("jax")
pytest.importorskip("flax.nnx")

from flax_cases import make_input  # noqa: E402

from densenet_multi import flax as backend  # noqa: E402

#: preset -> (input size, batch): small inputs, as the CPU is small. d2l at
#: 32x32 is the digits setting; the CIFAR nets' native size is 32x32;
#: DenseNet-121 at 32x32 keeps one pixel in its last block. Train-mode BN over
#: only N*H*W = 2 values per channel is ill-conditioned (its output is
#: +-gamma + beta, and the next BN then normalises rounding noise: the float32
#: reference itself is 84% off its float64 run there), so the ImageNet-stem
#: nets whose last block is 1x1 get batches of 4 and 8.
PRESET_INPUTS: dict[str, tuple[int, int]] = {
    "d2l": (32, 4),
    "densenet121": (32, 8),
    "densenet_bc_100_k12": (32, 2),
    "densenet40_k12": (32, 2),
}


@dataclass
class PresetCase:
    spec: DenseNetSpec
    params: dict[str, np.ndarray]
    x: np.ndarray
    model: object
    eval_out: object
    train_out: object
    ref_eval: object
    ref_train: object
    after_load: dict[str, np.ndarray]


_CASES: dict[str, PresetCase] = {}


@pytest.fixture(scope="session", params=sorted(PRESET_INPUTS))
def preset_case(request) -> PresetCase:
    name = request.param
    if name not in _CASES:
        spec = get_spec(name)
        size, batch = PRESET_INPUTS[name]
        params = init_params(spec, seed=1, nontrivial_bn=True)
        x = make_input(spec, size, batch)
        model = backend.build(spec, seed=0)
        backend.load_canonical(model, params)
        after_load = backend.export_canonical(model)
        eval_out = backend.run(model, x, train=False)
        train_out = backend.run(model, x, train=True)
        _CASES[name] = PresetCase(
            spec, params, x, model, eval_out, train_out,
            # The oracle runs in float64, so a measured error is ours alone.
            reference.forward(spec, params, x, train=False, dtype="float64"),
            reference.forward(spec, params, x, train=True, dtype="float64"),
            after_load,
        )
    return _CASES[name]
