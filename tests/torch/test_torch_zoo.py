"""torchvision compatibility, both ways (run in the torch-zoo env: ``pytest -m zoo``).

torchvision is imported only inside these tests. Models are built with
``weights=None`` (nothing is downloaded) and given seeded weights with
non-trivial BN statistics, so an eval-mode comparison exercises every tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import densenet_multi.torch as dt
from densenet_multi.params import init_params
from densenet_multi.reference import forward
from densenet_multi.spec import get_spec
from densenet_multi.testing import assert_close

pytestmark = pytest.mark.zoo

ZOO = ["densenet121", "densenet161"]


def _torchvision_model(name: str):
    tvm = pytest.importorskip("torchvision.models")
    return getattr(tvm, name)(weights=None).eval()


def _batch(seed: int = 0) -> torch.Tensor:
    # 64x64 keeps the test small; global pooling makes any size >= 29 valid.
    rng = np.random.Generator(np.random.PCG64(seed))
    return torch.from_numpy(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))


@pytest.mark.parametrize("name", ZOO)
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_logits(name):
    tv = _torchvision_model(name)
    # non-trivial weights and BN statistics through torchvision's own state_dict
    params = init_params(get_spec(name), seed=7, nontrivial_bn=True)
    sd = tv.state_dict()
    tv.load_state_dict({**sd, **{k: torch.from_numpy(v) for k, v in params.items()}})
    ours = getattr(dt, name)().eval()
    result = ours.load_state_dict(tv.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = _batch(1)
    with torch.no_grad():
        a, b = ours(x), tv(x)
    assert_close(a.numpy(), b.numpy(), "eval", name=f"{name} logits vs torchvision")
    # and both agree with the NumPy reference
    ref = forward(get_spec(name), params, x.numpy()).logits
    assert_close(a.numpy(), ref, "eval", name=f"{name} logits vs reference")


@pytest.mark.parametrize("name", ZOO)
def test_our_state_dict_loads_into_torchvision(name):
    spec = get_spec(name)
    ours = dt.load_canonical(dt.build(spec, seed=3), init_params(spec, 8, nontrivial_bn=True))
    ours.eval()
    tv = _torchvision_model(name)
    result = tv.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = _batch(2)
    with torch.no_grad():
        assert_close(tv(x).numpy(), ours(x).numpy(), "eval", name=f"{name} torchvision logits")


def test_canonical_export_equals_torchvision_state_dict_minus_num_batches_tracked():
    tv = _torchvision_model("densenet121")
    ours = dt.densenet121()
    ours.load_state_dict(tv.state_dict())
    exported = dt.export_canonical(ours)
    tv_keys = [k for k in tv.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(exported) == tv_keys
    for k in tv_keys:
        np.testing.assert_array_equal(exported[k], tv.state_dict()[k].numpy(), err_msg=k)


def test_parameter_count_matches_torchvision():
    tv = _torchvision_model("densenet121")
    n = sum(p.numel() for p in tv.parameters())
    assert n == 7_978_856 == get_spec("densenet121").num_params()
    assert sum(p.numel() for p in dt.densenet121().parameters()) == n


def test_train_step_matches_torchvision_memory_efficient_on_our_side():
    """One train-mode forward/backward: ours with memory_efficient=True vs torchvision's
    default path, same weights. Loss, every gradient and the updated running statistics
    agree (the checkpoint recomputation must not update the BN statistics twice)."""
    spec = get_spec("densenet121")
    params = init_params(spec, seed=9, nontrivial_bn=True)
    ours = dt.load_canonical(dt.build(spec, memory_efficient=True), params).train()
    tv = _torchvision_model("densenet121").train()
    tv.load_state_dict(ours.state_dict(), strict=True)
    x = _batch(3).repeat(2, 1, 1, 1)  # batch 4 at 64x64: the last block keeps 2x2 maps
    y = torch.tensor([1, 7, 42, 999])
    losses = []
    for m in (ours, tv):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[1])
    tv_params = dict(tv.named_parameters())
    for k, p in ours.named_parameters():
        assert p.grad is not None, k
        assert_close(p.grad.numpy(), tv_params[k].grad.numpy(), "grad", name=k)
    tv_buffers = dict(tv.named_buffers())
    for k, b in ours.named_buffers():
        assert_close(b.numpy(), tv_buffers[k].numpy(), "running", name=k)
