"""Detection, said out loud: a file's format from its content, then its network from its tensors.

Two steps, both framework-free (numpy and the standard library only):

1. :func:`sniff_format` reads a file's first bytes (or a folder's layout): a zip
   holding ``data.pkl`` is ``torch.save``'s; a zip holding ``config.json`` and
   ``model.weights.h5`` is a ``.keras``; the HDF5 signature is a ``.weights.h5``;
   MXNet's NDArray-list magic (0x112) is a Gluon ``.params``; an 8-byte header length
   followed by JSON is safetensors (canonical when its metadata holds a spec); a folder
   with Orbax's ``_CHECKPOINT_METADATA`` is a Flax checkpoint. The extension is only
   used to say what a damaged file looked like.
2. A framework worker turns the file's own names into canonical names (the official
   networks' names are mapped by :func:`sequence_prefixes`, which walks their
   convolutions in network order) and :func:`infer_spec` reads the network off the
   canonical shapes: stem, widths, blocks, bottleneck, compression, classes, input
   channels, conv biases. The result is matched with the presets; a file matching none
   names the closest preset and what differs, and every missing, extra or misshapen
   tensor is listed in one :class:`DetectionError`.

The BatchNorm epsilon is not in any tensor: it is read where the format stores it
(a ``.keras`` config, a canonical file's spec), or is the one the flavour implies
(keras.applications: 1.001e-5; torchvision, the Gluon zoo: 1e-5), and said so.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..params import param_table
from ..spec import PRESETS, DenseNetSpec, SpecError, get_spec

__all__ = [
    "ConvertError",
    "CorruptFileError",
    "DetectionError",
    "Detection",
    "STRUCTURE_FIELDS",
    "sniff_format",
    "infer_spec",
    "sequence_prefixes",
    "check_shapes",
]

#: The spec fields a file's tensor shapes determine (besides classes and input channels).
STRUCTURE_FIELDS = ("stem", "num_init_features", "growth_rate", "block_config", "bn_size",
                    "compression", "conv_bias")

MXNET_LIST_MAGIC = 0x112  # kMXAPINDArrayListMagic: the first 8 bytes of nd.save / save_parameters
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


class ConvertError(ValueError):
    """A conversion that cannot be done; the message says what was expected and what was found."""


class CorruptFileError(ConvertError):
    """A truncated or corrupt file: names the file and the format it looked like."""


class DetectionError(ConvertError):
    """A file whose tensors do not describe a network this project builds."""


@dataclass
class Detection:
    """What was found in a file (said out loud by :meth:`describe`)."""

    path: str
    format: str
    flavour: str
    spec: DenseNetSpec
    dtype: str
    eps_source: str
    preset: str | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        from .formats import FORMATS

        who = {"ours": "densenet_multi", "torchvision": "torchvision",
               "keras-applications": "keras.applications", "gluon-zoo": "Gluon model zoo"}
        s = self.spec
        net = self.preset or f"custom network ({s.describe()})"
        return (f"{who.get(self.flavour, self.flavour)} {FORMATS[self.format].description}: "
                f"{net}, {s.num_classes} classes, {s.in_channels} input channel"
                f"{'s' if s.in_channels != 1 else ''}, {self.dtype}, BN eps {s.bn_eps:g} "
                f"({self.eps_source})")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "flavour": self.flavour,
                "spec": self.spec.to_dict(), "dtype": self.dtype, "eps_source": self.eps_source,
                "preset": self.preset, "notes": list(self.notes), "description": self.describe()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Detection:
        return cls(d["path"], d["format"], d["flavour"], DenseNetSpec.from_dict(d["spec"]),
                   d["dtype"], d["eps_source"], d["preset"], list(d.get("notes", [])))


# ---------------------------------------------------------------------- the format
def _looked_like(path: Path) -> str:
    from .formats import format_of_path

    return format_of_path(path) or "an unknown format"


def sniff_format(path: str | Path) -> str:
    """The format of ``path`` from its content (a key of :data:`formats.FORMATS`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if any(m in names for m in ORBAX_MARKERS):
            return "flax"
        raise ConvertError(f"{path} is a folder but not an Orbax checkpoint (none of "
                           f"{', '.join(ORBAX_MARKERS)} in it); found {sorted(names)[:8]}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CorruptFileError(f"{path} is {size} bytes long: too short to be any format "
                               f"(its name says {_looked_like(path)}); truncated?")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CorruptFileError(
                f"{path} starts like a zip archive ({_looked_like(path)}: torch.save and .keras "
                f"files are zips) but cannot be opened: {e}; truncated or corrupt?") from None
        if {"config.json", "model.weights.h5"} <= set(names):
            return "keras"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch"
        raise ConvertError(f"{path} is a zip archive but neither torch.save's (no data.pkl) nor "
                           f"a .keras model (no config.json + model.weights.h5): {names[:6]}")
    if head.startswith(HDF5_MAGIC):
        return "keras-weights"
    (first,) = struct.unpack("<Q", head[:8])
    if first == MXNET_LIST_MAGIC:
        return "gluon"
    if head[8:9] == b"{":
        if first > size - 8:
            raise CorruptFileError(f"{path} looks like safetensors (header of {first} bytes) but "
                                   f"the file has only {size - 8} after the length: truncated?")
        with open(path, "rb") as f:
            f.seek(8)
            try:
                header = json.loads(f.read(first))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorruptFileError(f"{path} looks like safetensors but its header is not "
                                       f"JSON: {e}; corrupt?") from None
        meta = header.get("__metadata__") or {}
        from ..checkpoint import METADATA_KEY

        return "canonical" if METADATA_KEY in meta else "torch-safetensors"
    if head[:2] == b"\x80\x02":  # torch.save's legacy (non-zip) pickle format
        return "torch"
    raise ConvertError(f"{path}: unknown content (first bytes {head[:8]!r}); expected a torch.save "
                       "zip, safetensors, a .keras zip, HDF5 .weights.h5, an MXNet .params list or "
                       "an Orbax checkpoint folder")


# ---------------------------------------------------------------------- official names -> canonical
def _is_1x1(s: Sequence[int]) -> bool:
    return tuple(s[2:]) == (1, 1)


def _is_3x3(s: Sequence[int]) -> bool:
    return tuple(s[2:]) == (3, 3)


def sequence_prefixes(convs: Sequence[Sequence[int]]) -> tuple[list[str], list[str]]:
    """Canonical module names of a DenseNet's convolutions and BatchNorms, given its
    convolution kernels (OIHW shapes) in network order.

    For files whose names don't say which block a layer is in (keras.applications'
    ``conv2d_17``, ``batch_normalization_33``; the Gluon zoo's ``features.6.3.1.2``):
    the stem is the first conv (7x7: ImageNet stem with ``norm0``; 3x3: CIFAR). With
    a bottleneck (the second conv is 1x1 and feeds a 3x3), a 1x1 followed by a 3x3 is
    a dense layer and a 1x1 followed by a 1x1 a transition; without one, a 3x3 is a
    dense layer and a 1x1 a transition. Every conv after the stem has its BN right
    before it; ``norm5`` comes last. Returns (conv names, BN names), in network order.
    """
    convs = [tuple(int(d) for d in s) for s in convs]
    if not convs or len(convs[0]) != 4:
        raise DetectionError("no convolution kernels found: not a DenseNet")
    k0 = convs[0][2]
    if k0 not in (7, 3):
        raise DetectionError(f"the first convolution is {k0}x{k0}; a DenseNet stem is 7x7 "
                             "(ImageNet) or 3x3 (CIFAR)")
    conv_names = ["features.conv0"]
    bn_names = ["features.norm0"] if k0 == 7 else []
    bottleneck = (len(convs) > 2 and _is_1x1(convs[1]) and _is_3x3(convs[2])
                  and convs[2][1] == convs[1][0])
    b, l, i = 1, 1, 1
    while i < len(convs):
        s = convs[i]
        nxt = convs[i + 1] if i + 1 < len(convs) else None
        layer = f"features.denseblock{b}.denselayer{l}"
        if bottleneck and _is_1x1(s) and nxt is not None and _is_3x3(nxt):
            conv_names += [f"{layer}.conv1", f"{layer}.conv2"]
            bn_names += [f"{layer}.norm1", f"{layer}.norm2"]
            i, l = i + 2, l + 1
        elif not bottleneck and _is_3x3(s):
            conv_names.append(f"{layer}.conv")
            bn_names.append(f"{layer}.norm")
            i, l = i + 1, l + 1
        elif _is_1x1(s):
            conv_names.append(f"features.transition{b}.conv")
            bn_names.append(f"features.transition{b}.norm")
            i, b, l = i + 1, b + 1, 1
        else:
            raise DetectionError(f"convolution {i} (shape {s}) fits neither a dense layer nor a "
                                 "transition of a DenseNet")
    bn_names.append("features.norm5")
    return conv_names, bn_names


# ---------------------------------------------------------------------- the network
_LAYER = re.compile(r"features\.denseblock(\d+)\.denselayer(\d+)\.")


def _structure(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The spec fields the canonical shapes say, or DetectionError naming what's missing."""
    def need(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise DetectionError(f"no tensor {name!r}: cannot tell the network's "
                                 f"{'stem' if 'conv0' in name else 'widths'} without it; "
                                 f"the file has {len(shapes)} tensors, e.g. {sorted(shapes)[:4]}")
        return tuple(shapes[name])

    conv0 = need("features.conv0.weight")
    out: dict[str, Any] = {
        "stem": "imagenet" if "features.norm0.weight" in shapes or conv0[2:] == (7, 7) else "cifar",
        "num_init_features": conv0[0], "in_channels": conv0[1],
        "conv_bias": "features.conv0.bias" in shapes,
    }
    layers: dict[int, int] = {}
    for name in shapes:
        m = _LAYER.match(name)
        if m:
            b, l = int(m.group(1)), int(m.group(2))
            layers[b] = max(layers.get(b, 0), l)
    if not layers:
        raise DetectionError("no dense layer tensors (features.denseblockN.denselayerM.*) found")
    out["block_config"] = tuple(layers.get(b, 0) for b in range(1, max(layers) + 1))
    first = "features.denseblock1.denselayer1."
    if first + "conv1.weight" in shapes:
        bott = need(first + "conv1.weight")[0]
        out["growth_rate"] = need(first + "conv2.weight")[0]
        out["bn_size"] = bott // out["growth_rate"] if bott % out["growth_rate"] == 0 else bott
    else:
        out["growth_rate"] = need(first + "conv.weight")[0]
        out["bn_size"] = None
    out["num_classes"] = need("classifier.weight")[0]
    t = shapes.get("features.transition1.conv.weight")
    out["compression"] = 1.0 if t is None else _compression(t[0], t[1])
    return out


def _compression(cout: int, cin: int) -> float:
    """theta with floor(theta * cin) == cout: a preset's value where one fits, else cout / cin."""
    for s in PRESETS.values():
        if s.transition_width(cin) == cout:
            return s.compression
    return cout / cin


def check_shapes(spec: DenseNetSpec, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every missing, extra or misshapen tensor of ``shapes`` against ``spec``, one line each."""
    table = {p.name: p.shape for p in param_table(spec)}
    problems = [f"missing {n} {table[n]}" for n in table if n not in shapes]
    problems += [f"extra {n} {tuple(s)}" for n, s in shapes.items() if n not in table]
    problems += [f"misshapen {n}: expected {table[n]}, file has {tuple(s)}"
                 for n, s in shapes.items() if n in table and tuple(s) != table[n]]
    return problems


def _differences(found: Mapping[str, Any], preset: DenseNetSpec) -> list[str]:
    return [f"{k}: {getattr(preset, k)!r} in {preset.name}, {found[k]!r} in the file"
            for k in STRUCTURE_FIELDS if getattr(preset, k) != found[k]]


def infer_spec(shapes: Mapping[str, tuple[int, ...]], *, where: str, bn_eps: float | None = None,
               spec: DenseNetSpec | None = None) -> tuple[DenseNetSpec, str | None]:
    """The spec of a file from its canonical tensor shapes: ``(spec, preset name or None)``.

    ``spec`` (``--spec``) overrides the inference; the shapes are still checked against
    it. ``bn_eps``: the epsilon the file or its flavour implies (else the preset's).
    Raises one :class:`DetectionError` naming every problem: the closest preset and how
    the file differs from it, and every missing, extra or misshapen tensor.
    """
    shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    if spec is not None:
        problems = check_shapes(spec, shapes)
        if problems:
            raise DetectionError(f"{where} does not hold the network of the given spec "
                                 f"({spec.describe()}): {len(problems)} problem(s):\n  - "
                                 + "\n  - ".join(problems))
        return spec, spec.name if spec.name in PRESETS else None
    found = _structure(shapes)
    ranked = sorted(PRESETS.values(), key=lambda p: len(_differences(found, p)))
    best = ranked[0]
    diffs = _differences(found, best)
    changes = {"num_classes": found["num_classes"], "in_channels": found["in_channels"]}
    if bn_eps is not None:
        changes["bn_eps"] = bn_eps
    try:
        candidate = get_spec(best.name, **{**changes, **{k: found[k] for k in STRUCTURE_FIELDS}})
        candidate = candidate.replace(name=best.name if not diffs else "custom")
    except SpecError as e:
        candidate, diffs = None, diffs or [str(e)]
    problems = check_shapes(candidate, shapes) if candidate is not None else []
    if diffs or problems:
        lines = []
        if diffs:
            lines.append(f"it matches no preset; the closest is {best.name}, which differs in "
                         + "; ".join(diffs))
        if problems:
            against = best.name if not diffs else "the network its first layers describe"
            lines.append(f"{len(problems)} tensor problem(s) against {against}:\n  - "
                         + "\n  - ".join(problems))
        hint = ("" if not diffs else "\n(pass --spec PRESET or --spec spec.json to convert it "
                "as a given network)")
        raise DetectionError(f"{where}: " + "\n".join(lines) + hint)
    assert candidate is not None
    return candidate, best.name
