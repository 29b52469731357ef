"""The guide's pictures, drawn with matplotlib from data the build has: the spec, the
committed parity baseline, the histories of the executed notebooks.

Each function takes its data as arguments and writes one PNG (atomically); none
imports a framework. :mod:`.build` calls them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import atomic_path
from ..spec import DenseNetSpec

__all__ = ["channel_sawtooth", "parity_by_stage", "pyplot", "save_figure", "training_curves",
           "width_trace", "BACKEND_STYLE"]

#: Label and colour of each backend, the same in every figure.
BACKEND_STYLE: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", "#ee4c2c"),
    "flax": ("Flax NNX", "#4a90d9"),
    "keras": ("Keras 3 (TensorFlow)", "#7b2cbf"),
    "gluon": ("MXNet Gluon", "#2a9d8f"),
}


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend: the guide's figures go to files only."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            # no timestamp in the file: the same data gives the same bytes
            fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    finally:
        pyplot().close(fig)
    return Path(path)


# ---------------------------------------------------------------------- channel growth
def width_trace(spec: DenseNetSpec) -> tuple[list[int], list[str]]:
    """The channel count after every unit of the network, in depth order, and a label for
    each: the stem, each dense layer (the running concatenation), each transition.

    Read from the spec's channel plan, the one place widths are derived."""
    plan = spec.channel_plan
    widths, labels = [plan.stem_channels], ["stem"]
    for b, block in enumerate(plan.blocks):
        for i, width in enumerate(block.layer_in_channels[1:] + (block.out_channels,), 1):
            widths.append(width)
            labels.append(f"block{block.index}.layer{i}")
        if b < len(plan.transitions):
            widths.append(plan.transitions[b].out_channels)
            labels.append(f"transition{plan.transitions[b].index}")
    return widths, labels


def channel_sawtooth(specs: Sequence[DenseNetSpec], path: Path) -> Path:
    """Channels after every layer: each dense layer adds k, each transition cuts by theta."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(specs), figsize=(5.2 * len(specs), 3.4), squeeze=False)
    for ax, spec in zip(axes[0], specs, strict=True):
        widths, labels = width_trace(spec)
        xs = range(len(widths))
        ax.step(xs, widths, where="post", color="#444", lw=1.6)
        ax.plot(xs, widths, "o", ms=3, color="#444")
        for x, (w, label) in enumerate(zip(widths, labels, strict=True)):
            if label.startswith("transition") or label == "stem":
                ax.annotate(str(w), (x, w), textcoords="offset points", xytext=(0, -12),
                            ha="center", fontsize=7, color="#b5179e")
            if x + 1 < len(labels) and labels[x + 1].startswith("transition"):
                ax.annotate(str(w), (x, w), textcoords="offset points", xytext=(0, 5),
                            ha="center", fontsize=7)
        ax.set_title(f"{spec.name}: k={spec.growth_rate}, blocks {tuple(spec.block_config)}, "
                     f"theta={spec.compression:g}", fontsize=9)
        ax.set_xlabel("depth (stem, dense layers, transitions)")
        ax.set_ylabel("channels")
        ax.grid(alpha=0.3)
    fig.suptitle("Channel growth: +k per dense layer, x theta at each transition", fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------------- parity by stage
def parity_by_stage(report: Mapping[str, Any], cases: Sequence[str], path: Path,
                    checks: Sequence[str] = ("eval", "train"),
                    stage_names: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Each backend's error vs the float64 reference at every stage, log scale, with the
    tolerance as a line: one panel per (case, check). ``report`` is a parity
    report.json (``items`` with case/check/subject/name/error/tolerance/against)."""
    plt = pyplot()
    items = [i for i in report["items"] if i.get("against") == "reference"
             and i.get("check") in checks and i.get("case") in cases]
    fig, axes = plt.subplots(len(cases), len(checks), figsize=(5.6 * len(checks), 3.1 * len(cases)),
                             squeeze=False)
    for r, case in enumerate(cases):
        for c, check in enumerate(checks):
            ax = axes[r][c]
            rows = [i for i in items if i["case"] == case and i["check"] == check]
            if stage_names and case in stage_names:
                order = [s for s in stage_names[case] if any(i["name"] == s for i in rows)]
            else:
                order = list(dict.fromkeys(i["name"] for i in rows if "." not in i["name"]))
            tol = {i["tolerance"] for i in rows if i["name"] in order}
            for backend, (label, colour) in BACKEND_STYLE.items():
                err = {i["name"]: i["error"] for i in rows if i["subject"] == backend}
                ys = [max(err.get(s) or 0.0, 1e-12) for s in order]
                if any(s in err for s in order):
                    ax.plot(range(len(order)), ys, "o-", ms=3, lw=1.2, color=colour, label=label)
            for t in sorted(tol):
                ax.axhline(t, color="k", ls="--", lw=1)
                ax.annotate(f"tolerance {t:g}", (0, t), textcoords="offset points", xytext=(2, 3),
                            fontsize=7)
            ax.set_yscale("log")
            lo = min([i["error"] for i in rows if i["error"]] + [1e-7])
            ax.set_ylim(10 ** math.floor(math.log10(lo)), 10 ** (math.log10(max(tol or {1e-5})) + 1))
            ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{case}: {check}", fontsize=9)
            ax.set_ylabel("max|x - ref| / max|ref|", fontsize=8)
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle("Every backend against the float64 NumPy reference, stage by stage", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    return save_figure(fig, path)


# ---------------------------------------------------------------------- training curves
def training_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """The notebooks' training runs overlaid: loss, and train/test accuracy per epoch."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.4))
    for backend, h in histories.items():
        label, colour = BACKEND_STYLE.get(backend, (backend, None))
        ax_loss.plot(h["epoch"], h["train_loss"], "o-", ms=3, color=colour, label=label)
        ax_acc.plot(h["epoch"], h["test_acc"], "o-", ms=3, color=colour, label=f"{label} test")
        ax_acc.plot(h["epoch"], h["train_acc"], ":", color=colour, label=f"{label} train")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (dotted: train)")
    ax_loss.legend(fontsize=7)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle("The d2l network on scikit-learn's digits, the same seeded weights in four "
                 "frameworks", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
