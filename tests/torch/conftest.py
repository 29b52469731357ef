"""Test-session settings for the PyTorch backend tests."""

from __future__ import annotations

import torch

# The test machines share two cores between several jobs; with more than one
# intra-op thread, OpenMP's spinning workers slow a small model down by 10x or
# more under that load. One thread changes no result beyond float32 rounding
# (which the tolerances cover) and keeps the suite fast.
torch.set_num_threads(1)
