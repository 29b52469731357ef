"""The file formats ``densenet-multi convert`` reads and writes, and the names ``--to`` takes.

A *format* is how the bytes are laid out (and which framework reads them); a
*flavour* is whose network the names describe: this project's model (``ours``)
or an official one (``torchvision``, ``keras-applications``, ``gluon-zoo``).

=====================  =========  ===============================================================
format                 framework  what it is
=====================  =========  ===============================================================
``canonical``          (core)     safetensors, canonical names, the spec in the metadata
``torch``              torch      a ``state_dict`` saved with ``torch.save`` (``.pth`` / ``.pt``)
``torch-safetensors``  torch      a ``state_dict`` saved with ``safetensors.torch.save_file``
``keras``              keras      a whole model saved with ``model.save`` (``.keras``)
``keras-weights``      keras      the weights saved with ``model.save_weights`` (``.weights.h5``)
``gluon``              gluon      ``HybridBlock.save_parameters`` (``.params``)
``flax``               flax       an Orbax checkpoint folder of ``nnx.state(model)``
=====================  =========  ===============================================================

Flax NNX's documented way to save a model today is Orbax: ``ocp.StandardCheckpointer()
.save(path, nnx.state(model))`` and ``restore(path, abstract_state)`` (Flax's
"Save and load checkpoints" guide); ``flax.serialization`` bytes are the older
Linen-era route. So the flax format is that checkpoint folder.

The torchvision flavour has the same keys as ours (canonical names are
torchvision's), so it needs no torchvision to read or write; it is the flavour
named when the network is one torchvision builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["FORMATS", "TARGETS", "Format", "Target", "FLAVOURS", "target_for", "format_of_path"]


@dataclass(frozen=True)
class Format:
    name: str
    framework: str | None  # a backend of backend.BACKENDS, or None (the core reads it)
    extensions: tuple[str, ...]
    description: str
    flavours: tuple[str, ...] = ("ours",)
    is_folder: bool = False


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("canonical", None, (".safetensors",),
           "canonical safetensors (torchvision names, PyTorch layout, spec in the metadata)"),
    Format("torch", "torch", (".pth", ".pt"), "PyTorch state_dict saved with torch.save",
           ("ours", "torchvision")),
    Format("torch-safetensors", "torch", (".safetensors",),
           "PyTorch state_dict saved as safetensors (no spec in the metadata)",
           ("ours", "torchvision")),
    Format("keras", "keras", (".keras",), "Keras 3 model saved with model.save (.keras zip)",
           ("ours", "keras-applications")),
    Format("keras-weights", "keras", (".weights.h5",),
           "Keras 3 weights saved with model.save_weights (.weights.h5, HDF5)",
           ("ours", "keras-applications")),
    Format("gluon", "gluon", (".params",), "MXNet Gluon save_parameters (.params)",
           ("ours", "gluon-zoo")),
    Format("flax", "flax", (".orbax", ""),
           "Flax NNX state, an Orbax StandardCheckpointer folder", is_folder=True),
)}

FLAVOURS = {
    "ours": "this project's model",
    "torchvision": "torchvision.models.DenseNet",
    "keras-applications": "keras.applications.DenseNet121/169/201",
    "gluon-zoo": "mxnet.gluon.model_zoo.vision DenseNet",
}


@dataclass(frozen=True)
class Target:
    """What ``--to`` names: a format and the flavour to write."""

    name: str
    format: str
    flavour: str


#: ``--to`` names -> (format, flavour)
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("canonical", "canonical", "ours"),
    Target("torch", "torch", "ours"),
    Target("torchvision", "torch", "torchvision"),
    Target("torch-safetensors", "torch-safetensors", "ours"),
    Target("keras", "keras", "ours"),
    Target("keras-weights", "keras-weights", "ours"),
    Target("keras-applications", "keras", "keras-applications"),
    Target("keras-applications-weights", "keras-weights", "keras-applications"),
    Target("gluon", "gluon", "ours"),
    Target("gluon-zoo", "gluon", "gluon-zoo"),
    Target("flax", "flax", "ours"),
)}


def format_of_path(path: str | Path) -> str | None:
    """The format a destination's name implies (our flavour), or None: ``.safetensors`` is
    canonical, ``.pth``/``.pt`` torch, ``.keras``, ``.weights.h5``, ``.params``, ``.orbax``."""
    name = Path(path).name.lower()
    if name.endswith(".weights.h5"):
        return "keras-weights"
    for f in FORMATS.values():
        if f.name == "torch-safetensors":
            continue
        if any(e and name.endswith(e) for e in f.extensions):
            return f.name
    return None


def target_for(dst: str | Path, to: str | None) -> Target:
    """The target of a conversion: ``to`` (a key of :data:`TARGETS`) or DST's extension."""
    if to is not None:
        if to not in TARGETS:
            raise ValueError(f"unknown target format {to!r}; expected one of {', '.join(TARGETS)}")
        return TARGETS[to]
    fmt = format_of_path(dst)
    if fmt is None:
        raise ValueError(
            f"cannot tell the target format from the name {str(dst)!r}: expected an extension "
            ".safetensors, .pth, .pt, .keras, .weights.h5, .params or .orbax, or --to "
            f"({', '.join(TARGETS)})")
    return TARGETS[fmt]
