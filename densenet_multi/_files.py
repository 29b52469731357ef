"""Atomic file writes: a reader (or a crash) never sees half a file.

Used by the guide's generators and the exercises; a file is written to a temporary
name beside its target and renamed over it only once it is complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it
    becomes ``path`` (readable like any new file), otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; these are shared outputs
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def source_root() -> Path:
    """The project checkout the guide, notebooks, exercises and textbook evidence live in.

    Those files (``notebooks/``, ``docs/``, ``parity/``) are not part of the installed
    wheel, so a tox env's installed copy of this package must find them in the checkout
    it runs from: the nearest folder upward from the current directory holding
    ``tox.ini`` and ``densenet_multi/`` (tox runs every command from there); failing
    that, the folder above this package (a source checkout on ``PYTHONPATH``).
    """
    here = Path(__file__).resolve().parents[1]
    for origin in (Path.cwd().resolve(), here):
        for d in (origin, *origin.parents):
            if (d / "tox.ini").is_file() and (d / "densenet_multi").is_dir():
                return d
    return here
