"""Shared helpers of the parity harness tests: run the real runner on fake backends.

(Imported by name: pytest puts this folder on sys.path.)
"""

from __future__ import annotations

from pathlib import Path

from densenet_multi.parity.cases import Case
from densenet_multi.parity.compare import compare_run
from densenet_multi.parity.runner import BackendTarget, run_parity

FAKES = Path(__file__).with_name("fake_backends.py")

#: A tiny ImageNet-stem net (stride-2 stem conv and max-pool) for fast runs.
TINY_IMAGENET = {"growth_rate": 4, "block_config": [2, 2], "num_init_features": 8,
                 "bn_size": None, "compression": 0.5, "num_classes": 5, "in_channels": 1,
                 "stem": "imagenet", "conv_bias": True, "name": "tiny_imagenet"}
#: A tiny CIFAR-stem DenseNet-BC for the gradient and trajectory tests.
TINY_BC = {"growth_rate": 4, "block_config": [2, 2], "num_init_features": 8, "bn_size": 2,
           "compression": 0.5, "num_classes": 5, "in_channels": 3, "stem": "cifar",
           "name": "tiny_bc"}


def fake(name: str, obj: str | None = None) -> BackendTarget:
    return BackendTarget(name, f"{FAKES}:{obj or name}")


def run(tmp_path: Path, cases: list[Case], backends: list[BackendTarget], **kw):
    result = run_parity(cases, backends, tmp_path / "run", **kw)
    return result, {cc.case.name: cc for cc in compare_run(result)}


def cell(cc, check: str, subject: str):
    found = [c for c in cc.cells if c.check == check and c.subject == subject]
    assert len(found) == 1, (check, subject, [(c.check, c.subject) for c in cc.cells])
    return found[0]
