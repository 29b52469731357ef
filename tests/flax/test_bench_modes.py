"""The bench's Flax modes: ``jit_eigen`` starts JAX with XLA's own convolutions instead of its
YNNPACK fusions (the flag that doubled the DenseNet-121 training step on the CPU), and a probe
in that mode runs and records the flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("flax.nnx")

from densenet_multi.bench.probe import FLAX_XLA_FLAGS, MODES  # noqa: E402

#: a DenseNet-121 growth conv (block 1, layer 1, batch 8): a size XLA hands to YNNPACK
_CONV = """
import jax, jax.numpy as jnp
x, w = jnp.ones((8, 56, 56, 128)), jnp.ones((3, 3, 128, 32))
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
text = conv.lower(x, w).compile().as_text()
print(sum("ROOT %ynn_fusion" in line for line in text.splitlines()))
"""


def _run(code_or_args: list[str], flags: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    done = subprocess.run([sys.executable, *code_or_args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_every_flax_mode_has_its_flags():
    assert set(FLAX_XLA_FLAGS) == set(MODES["flax"]) and FLAX_XLA_FLAGS["jit"] == ""


@pytest.mark.parametrize("mode, ynn", [("jit", 1), ("jit_eigen", 0)])
def test_the_mode_s_flags_decide_who_runs_the_convolution(mode, ynn):
    # fails if XLA renames the flag or stops picking YNNPACK: then the mode means nothing
    assert int(_run(["-c", _CONV], FLAX_XLA_FLAGS[mode]).strip()) == ynn


def test_a_jit_eigen_probe_runs_and_records_the_flag():
    out = _run(["-m", "densenet_multi.bench.probe", "--backend", "flax", "--mode", "jit_eigen",
                "--preset", "d2l", "--size", "32", "--batch", "2", "--what", "infer",
                "--steps", "1", "--warmup", "0"], "")
    rec = json.loads(next(line for line in out.splitlines() if line.startswith('{"probe"')))
    assert rec["status"] == "ok" and rec["mode"] == "jit_eigen" and rec["ips_median"] > 0
    assert FLAX_XLA_FLAGS["jit_eigen"] in rec["threads"]["env"]["XLA_FLAGS"]
