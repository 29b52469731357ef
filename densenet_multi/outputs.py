"""What the backend contract returns: the output types, defined once for the NumPy
reference and every backend."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ForwardOutput", "GradOutput"]


@dataclass
class ForwardOutput:
    """What a forward pass returns, in canonical layout and names.

    ``stages`` maps every name of ``spec.stage_names`` (stem, block1, ...,
    features, pooled, logits) to its output. ``running`` holds the updated BN
    running statistics after a train-mode pass (None in eval mode), in the
    canonical (PyTorch) convention.
    """

    logits: np.ndarray
    stages: dict[str, np.ndarray]
    running: dict[str, np.ndarray] | None = None
    extras: dict[str, object] = field(default_factory=dict)


@dataclass
class GradOutput:
    """The loss of a train-mode forward and its gradients, canonical names and layout."""

    loss: float
    params: dict[str, np.ndarray]  # canonical name -> gradient, canonical layout
    input: np.ndarray  # d loss / d x, NCHW
