"""The d2l chapter's exercises, answered by measurement.

One module per exercise; each is a command that runs the measurement and
writes its result as JSON (the committed copies are ``docs/exercises/*.json``)::

    python -m densenet_multi.exercises.pooling --out docs/exercises   # torch env
    python -m densenet_multi.exercises.resnet  --out docs/exercises   # any env
    python -m densenet_multi.exercises.memory  --out docs/exercises   # any env: runs the backends' envs
    python -m densenet_multi.exercises.table1  --out docs/exercises   # any env
    python -m densenet_multi.exercises.mlp     --out docs/exercises   # torch env

:mod:`.render` turns those JSON files into the guide's tables and figures
without importing a framework (it runs in the docs env).

This module holds the few helpers they share; it imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import write_text_atomic

__all__ = ["EXERCISES", "write_json", "environment", "command_line"]

#: The exercises, in the chapter's order: (name of the module and JSON file, title).
EXERCISES: tuple[tuple[str, str], ...] = (
    ("pooling", "Average or max pooling in the transitions"),
    ("resnet", "DenseNet vs ResNet: parameters at comparable depth"),
    ("memory", "Memory at 224x224, with and without the memory-efficient mode"),
    ("table1", "The paper's Table 1 variants"),
    ("mlp", "A DenseNet-style MLP on a regression task"),
)


def write_json(data: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def environment(modules: Sequence[str] = ()) -> dict[str, str]:
    """Python, the machine, and the versions of ``modules`` that are already imported."""
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "system": platform.system(), "cpus": str(os.cpu_count())}
    for name in modules:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run, as the guide prints it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", f"densenet_multi.exercises.{module}", *args])
