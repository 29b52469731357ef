"""The exercises' tables, measured answers and figures, from their committed JSON.

:func:`generate` reads ``docs/exercises/<name>.json`` (written by
``python -m densenet_multi.exercises.<name> --out docs/exercises``) and writes,
under ``out_dir``:

* ``exercises/<name>.md``: the measurement as a Markdown table;
* ``exercises/<name>_answer.md``: the measured answer in one paragraph, its
  numbers computed here from the same data (so the page can't drift from it);
* ``figures/exercise_<name>.png``: a figure, for pooling, resnet, memory and mlp.

It imports no framework (the docs env has none): numpy and matplotlib only.
Every file is checked before anything is written; a missing file, bad JSON or a
missing or mistyped field raises :class:`ExerciseDataError` naming the file, the
field and the command that writes it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import source_root, write_text_atomic
from ..guide.figures import pyplot, save_figure
from . import EXERCISES

__all__ = ["ExerciseDataError", "SOURCE", "load", "generate", "tables", "answers", "figures"]

SOURCE = source_root() / "docs" / "exercises"
NAMES = tuple(name for name, _ in EXERCISES)
_ENV = {"pooling": "in the torch env", "resnet": "in any env",
        "memory": "in any env: it starts each backend's env itself", "table1": "in any env",
        "mlp": "in the torch env"}


class ExerciseDataError(ValueError):
    """A result file that is missing, not JSON, or lacks a field the guide needs."""


# ---------------------------------------------------------------------- validation
_NUM = (int, float)
#: field -> expected type; "[...]" items are checked in every element of the list above.
_SCHEMA: dict[str, dict[str, Any]] = {
    "pooling": {"network": str, "data": dict, "budget": dict, "runs": list, "command": str,
                "runs[]": {"variant": str, "seed": int, "epoch": list, "loss": list,
                           "train_acc": list, "test_acc": list}},
    "resnet": {"resnets": list, "densenets": list, "pairs": list, "command": str,
               "resnets[]": {"name": str, "depth": int, "block": str, "params": int,
                             "macs_224": int, "macs_224_paper": int, "largest_3x3": int},
               "densenets[]": {"name": str, "depth": int, "params": int, "macs_224": int,
                               "largest_3x3": int},
               "pairs[]": {"densenet": str, "resnet": str, "param_ratio": _NUM,
                           "mac_ratio": _NUM}},
    "memory": {"preset": str, "size": int, "batch": int, "rows": list, "command": str,
               "rows[]": {"backend": str, "memory_efficient": bool, "status": str}},
    "table1": {"size": int, "variants": list, "command": str,
               "variants[]": {"name": str, "depth": int, "growth_rate": int,
                              "num_init_features": int, "blocks": list, "block_out": list,
                              "params": int, "macs": int}},
    "mlp": {"data": dict, "budget": dict, "least_squares_test_mse": list, "configs": list,
            "command": str,
            "configs[]": {"depth": int, "growth": int, "dense_params": int, "plain_width": int,
                          "plain_params": int, "runs": list}},
}
_OK_ROW = {"rss_import_mib": _NUM, "rss_build_mib": _NUM, "rss_peak_mib": _NUM, "step_mib": _NUM,
           "step_seconds": _NUM}
_MLP_RUN = {"model": str, "seed": int, "train_mse": list, "test_mse": list}


def _type_name(t: Any) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _check_fields(obj: Any, fields: Mapping[str, Any], where: str, path: Path) -> None:
    if not isinstance(obj, dict):
        raise ExerciseDataError(f"{path}: {where or 'the top level'} must be an object, "
                                f"got {type(obj).__name__}")
    for key, want in fields.items():
        if key.endswith("[]"):
            continue
        here = f"{where}.{key}" if where else key
        if key not in obj:
            raise ExerciseDataError(f"{path}: field {here!r} is missing")
        value = obj[key]
        if isinstance(value, bool) and want is not bool:
            ok = False
        else:
            ok = isinstance(value, want)
        if not ok:
            raise ExerciseDataError(f"{path}: field {here!r} must be {_type_name(want)}, "
                                    f"got {type(value).__name__} {value!r:.60}")


def _check_numbers(values: Any, where: str, path: Path, *, n: int | None = None) -> list[float]:
    if not isinstance(values, list) or not values or not all(
            isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ExerciseDataError(f"{path}: field {where!r} must be a non-empty list of finite "
                                f"numbers, got {values!r:.80}")
    if n is not None and len(values) != n:
        raise ExerciseDataError(f"{path}: field {where!r} has {len(values)} entries, expected {n}")
    return [float(v) for v in values]


def validate(name: str, data: Any, path: Path) -> dict[str, Any]:
    """Check ``data`` (the parsed file ``path``) has everything the guide reads."""
    schema = _SCHEMA[name]
    _check_fields(data, {"exercise": str}, "", path)
    if data["exercise"] != name:
        raise ExerciseDataError(f"{path}: holds exercise {data['exercise']!r}, expected {name!r}")
    _check_fields(data, schema, "", path)
    for key, fields in schema.items():
        if key.endswith("[]"):
            items = data[key[:-2]]
            if not items:
                raise ExerciseDataError(f"{path}: field {key[:-2]!r} is empty")
            for i, item in enumerate(items):
                _check_fields(item, fields, f"{key[:-2]}[{i}]", path)
    if name == "pooling":
        for i, r in enumerate(data["runs"]):
            n = len(r["epoch"])
            for k in ("loss", "train_acc", "test_acc"):
                _check_numbers(r[k], f"runs[{i}].{k}", path, n=n)
            if r["variant"] not in ("avg", "max"):
                raise ExerciseDataError(f"{path}: runs[{i}].variant must be 'avg' or 'max', "
                                        f"got {r['variant']!r}")
        if {r["variant"] for r in data["runs"]} != {"avg", "max"}:
            raise ExerciseDataError(f"{path}: runs must hold both variants, 'avg' and 'max'")
    elif name == "memory":
        for i, r in enumerate(data["rows"]):
            if r["status"] == "ok":
                _check_fields(r, _OK_ROW, f"rows[{i}]", path)
    elif name == "mlp":
        _check_numbers(data["least_squares_test_mse"], "least_squares_test_mse", path)
        for i, c in enumerate(data["configs"]):
            for j, r in enumerate(c["runs"]):
                _check_fields(r, _MLP_RUN, f"configs[{i}].runs[{j}]", path)
                for k in ("train_mse", "test_mse"):
                    _check_numbers(r[k], f"configs[{i}].runs[{j}].{k}", path)
            if {r["model"] for r in c["runs"]} != {"dense", "plain"}:
                raise ExerciseDataError(f"{path}: configs[{i}].runs must hold both models, "
                                        "'dense' and 'plain'")
    return data


def load(name: str, source: Path | None = None) -> dict[str, Any]:
    """The checked contents of ``source/<name>.json``."""
    if name not in _SCHEMA:
        raise ValueError(f"unknown exercise {name!r}; known: {list(NAMES)}")
    path = Path(source or SOURCE) / f"{name}.json"
    how = (f"write it with `python -m densenet_multi.exercises.{name} --out docs/exercises` "
           f"({_ENV[name]})")
    if not path.is_file():
        raise ExerciseDataError(f"{path} not found: {how}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExerciseDataError(f"{path} is not valid JSON ({e}): {how}") from None
    return validate(name, data, path)


# ---------------------------------------------------------------------- helpers
def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """Mean ± sample standard deviation (a signed ``fmt`` signs only the mean)."""
    m, s = _mean_sd(values)
    return f"{fmt.format(m)} ± {fmt.replace('+', '').format(s)}" if len(values) > 1 else fmt.format(m)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _change(x: float) -> str:
    """A relative change as a signed percentage: -0.36 -> "−36%", 0.01 -> "+1%"."""
    text = f"{100 * x:+.0f}%"
    return text.replace("-", "−") if text not in ("+0%", "-0%") else "±0%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _source_note(data: Mapping[str, Any], extra: str = "") -> str:
    note = f"\n*Written by `{data['command']}`"
    secs = data.get("seconds")
    if isinstance(secs, _NUM):
        note += f" in {secs:.0f} s"
    return note + (f"; {extra}" if extra else "") + ".*\n"


def _by_variant(data: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {"avg": [], "max": []}
    for r in data["runs"]:
        out[r["variant"]].append(r)
    return out


def _mlp_runs(cfg: Mapping[str, Any], model: str) -> list[Mapping[str, Any]]:
    return [r for r in cfg["runs"] if r["model"] == model]


def _ok_rows(data: Mapping[str, Any]) -> dict[tuple[str, bool], Mapping[str, Any]]:
    return {(r["backend"], r["memory_efficient"]): r for r in data["rows"] if r["status"] == "ok"}


_BACKEND_LABEL = {"torch": "PyTorch", "flax": "Flax NNX", "keras": "Keras 3 (TensorFlow)",
                  "gluon": "MXNet Gluon"}


# ---------------------------------------------------------------------- tables
def table_pooling(d: Mapping[str, Any]) -> str:
    rows = []
    for variant, runs in _by_variant(d).items():
        for r in sorted(runs, key=lambda r: r["seed"]):
            rows.append([f"{variant} pool", r["seed"], f"{r['loss'][-1]:.4f}",
                         _pct(r["train_acc"][-1]), _pct(r["test_acc"][-1]), _pct(max(r["test_acc"]))])
        if len(runs) > 1:
            mean_loss = statistics.fmean(r["loss"][-1] for r in runs)
            rows.append([f"**{variant} pool, mean**", "", f"{mean_loss:.4f}",
                         _pct(statistics.fmean(r["train_acc"][-1] for r in runs)),
                         _pct(statistics.fmean(r["test_acc"][-1] for r in runs)),
                         _pct(statistics.fmean(max(r["test_acc"]) for r in runs))])
    b = d["budget"]
    return (_table(["transitions", "seed", "final loss", "final train acc", "final test acc",
                    "best test acc"], rows)
            + _source_note(d, f"{d['network']}; {d['data']['train']} training and "
                              f"{d['data']['test']} test digits at {d['data']['size']}x"
                              f"{d['data']['size']}; {b['epochs']} epochs, batch {b['batch_size']}, "
                              f"SGD lr {b['lr']} momentum {b['momentum']}, {b['schedule']} schedule"))


def table_resnet(d: Mapping[str, Any]) -> str:
    rows = []
    for fam, items in (("ResNet", d["resnets"]), ("DenseNet", d["densenets"])):
        for r in items:
            kind = f"{r['block']} blocks" if fam == "ResNet" else f"k = {r.get('growth_rate', '?')}"
            macs = f"{r['macs_224'] / 1e9:.2f}"
            if fam == "ResNet" and r["macs_224_paper"] != r["macs_224"]:
                macs += f" ({r['macs_224_paper'] / 1e9:.2f})"
            rows.append([r["name"], r["depth"], kind,
                         "-".join(str(b) for b in r.get("blocks", [])), f"{r['params']:,}",
                         f"{r['params'] / 1e6:.1f} M", macs, f"{r['largest_3x3']:,}"])
    rows.sort(key=lambda row: row[1])
    main = _table(["network", "depth", "layer type", "blocks", "parameters", "", "GMACs @224",
                   "largest 3x3 kernel"], rows, "lrlrrrrr")
    pairs = _table(["DenseNet", "nearest-depth ResNet", "ResNet / DenseNet parameters",
                    "ResNet / DenseNet MACs"],
                   [[p["densenet"], p["resnet"], f"{p['param_ratio']:.2f}x",
                     f"{p['mac_ratio']:.2f}x"] for p in d["pairs"]])
    return (main + "\n" + pairs
            + _source_note(d, "ResNet MACs with the stride on the bottleneck's 3x3 conv, as "
                              "torchvision builds it; in brackets with the stride on its first "
                              "1x1 conv, as in the ResNet paper"))


def table_memory(d: Mapping[str, Any]) -> str:
    ok = _ok_rows(d)
    rows = []
    for r in d["rows"]:
        mode = "memory-efficient" if r["memory_efficient"] else "default"
        label = _BACKEND_LABEL.get(r["backend"], r["backend"])
        if r["status"] != "ok":
            rows.append([label, mode, "failed", "", "", "", "", ""])
            continue
        base = ok.get((r["backend"], False))
        saving = ""
        if r["memory_efficient"] and base is not None and base["step_mib"] > 0:
            saving = _change(r["step_mib"] / base["step_mib"] - 1)
        rows.append([label, mode, f"{r['rss_import_mib']:,.0f}", f"{r['rss_build_mib']:,.0f}",
                     f"{r['rss_peak_mib']:,.0f}", f"{r['step_mib']:,.0f}", saving,
                     f"{r['step_seconds']:.1f}"])
    return (_table(["backend", "mode", "after import", "after build", "peak after one step",
                    "the step's own (peak − build)", "vs default", "step time (s)"],
                   rows, "llrrrrrr")
            + _source_note(d, f"{d['preset']} at {d['size']}x{d['size']}, batch {d['batch']}, "
                              f"{d.get('threads', '?')} threads, CPU; peak resident set size in MiB, "
                              "each row a fresh process"))


def table_table1(d: Mapping[str, Any]) -> str:
    rows = []
    for v in d["variants"]:
        tv_p = v.get("torchvision_params")
        tv_m = v.get("torchvision_gmacs")
        rows.append([v["name"], v["depth"], v["growth_rate"], v["num_init_features"],
                     "-".join(map(str, v["blocks"])), " → ".join(map(str, v["block_out"])),
                     f"{v['params']:,}", f"{tv_p:,}" if tv_p else "—", f"{v['macs'] / 1e9:.2f}",
                     f"{tv_m:.2f}" if tv_m else "—"])
    size = d["size"]
    return (_table(["variant", "depth", "k", "stem filters", "blocks", "width after each block",
                    "parameters", "torchvision", f"GMACs @{size}", "torchvision"], rows,
                   "lrrrllrrrr")
            + _source_note(d, "parameters and MACs from `DenseNetSpec.num_params()` and "
                              "`.macs(224)`; torchvision has no DenseNet-264"))


def _mlp_pairs(cfg: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(dense run, plain run) of each seed: the same split, batches and seed."""
    plain = {r["seed"]: r for r in _mlp_runs(cfg, "plain")}
    return [(r, plain[r["seed"]]) for r in sorted(_mlp_runs(cfg, "dense"), key=lambda r: r["seed"])
            if r["seed"] in plain]


def table_mlp(d: Mapping[str, Any]) -> str:
    rows = []
    for c in d["configs"]:
        pairs = _mlp_pairs(c)
        diffs = [a["test_mse"][-1] - b["test_mse"][-1] for a, b in pairs]
        wins = sum(x < 0 for x in diffs)
        for model, runs in (("dense", [a for a, _ in pairs]), ("plain", [b for _, b in pairs])):
            shape = (f"{c['growth']} units per layer, concatenated" if model == "dense"
                     else f"{c['plain_width']} units per layer")
            dense_row = model == "dense"
            rows.append([c["depth"], model, shape, f"{c[f'{model}_params']:,}",
                         _pm([r["test_mse"][-1] for r in runs]),
                         _pm(diffs, "{:+.0f}").replace("-", "−") if dense_row else "",
                         f"{wins} of {len(pairs)}" if dense_row else "",
                         _pm([min(r["test_mse"]) for r in runs]),
                         _pm([r["train_mse"][-1] for r in runs])])
    b = d["budget"]
    ls = d["least_squares_test_mse"]
    return (_table(["hidden layers", "model", "layers", "parameters", "final test MSE",
                    "dense − plain, same seed", "seeds where dense is lower",
                    "best-epoch test MSE", "final train MSE"], rows, "rllrrrrrr")
            + f"\nOrdinary least squares on the same splits: test MSE {_pm(ls)}.\n"
            + _source_note(d, f"mean ± standard deviation over {len(b['seeds'])} seeds (each seed "
                              f"its own split, initialisation and batch order, the same for both "
                              f"models); {b['optimizer']} lr {b['lr']}, batch {b['batch_size']}, "
                              f"{b['epochs']} epochs; MSE in the target's units; the best epoch is "
                              "picked on the test set, so that column is optimistic"))


# ---------------------------------------------------------------------- answers
def answer_pooling(d: Mapping[str, Any]) -> str:
    runs = _by_variant(d)
    pairs = list(zip(sorted(runs["avg"], key=lambda r: r["seed"]),
                     sorted(runs["max"], key=lambda r: r["seed"]), strict=True))
    n, epochs, n_test = len(pairs), d["budget"]["epochs"], d["data"]["test"]

    def mean(variant: str, key: str, at: int) -> float:
        return statistics.fmean(r[key][at] for r in runs[variant])

    ahead = sum(a["test_acc"][-1] > m["test_acc"][-1] for a, m in pairs)
    behind = sum(a["test_acc"][-1] < m["test_acc"][-1] for a, m in pairs)
    images = (mean("avg", "test_acc", -1) - mean("max", "test_acc", -1)) * n_test
    seeds = f"seed {pairs[0][0]['seed']}" if n == 1 else f"mean of {n} seeds"
    return (f"**Measured:** after {epochs} epoch{'s' if epochs > 1 else ''} ({seeds}), average "
            f"pooling ends at {_pct(mean('avg', 'test_acc', -1))} test accuracy and max pooling at "
            f"{_pct(mean('max', 'test_acc', -1))}: {abs(images):.1f} of the {n_test} test images "
            f"{'more' if images >= 0 else 'fewer'} for average pooling; per seed, average pooling "
            f"is ahead in {ahead}, tied in {n - ahead - behind} and behind in {behind}. The final "
            f"training losses are {mean('avg', 'loss', -1):.4f} (average) and "
            f"{mean('max', 'loss', -1):.4f} (max). After the first epoch: training loss "
            f"{mean('avg', 'loss', 0):.3f} against {mean('max', 'loss', 0):.3f}, training accuracy "
            f"{_pct(mean('avg', 'train_acc', 0))} against {_pct(mean('max', 'train_acc', 0))}.\n")


def answer_resnet(d: Mapping[str, Any]) -> str:
    pairs = d["pairs"]
    ratios = [p["param_ratio"] for p in pairs]
    dn = {r["name"]: r for r in d["densenets"]}
    rn = {r["name"]: r for r in d["resnets"]}
    p0 = pairs[0]
    return (f"**Measured:** at the nearest depth, a ResNet has {min(ratios):.1f}x to "
            f"{max(ratios):.1f}x the parameters of the DenseNet ({p0['densenet']}: "
            f"{dn[p0['densenet']]['params'] / 1e6:.1f} M, depth {dn[p0['densenet']]['depth']}; "
            f"{p0['resnet']}: {rn[p0['resnet']]['params'] / 1e6:.1f} M, depth "
            f"{rn[p0['resnet']]['depth']}). The largest 3x3 kernel holds "
            f"{min(r['largest_3x3'] for r in d['resnets']):,} weights in every ResNet here and "
            f"at most {max(r['largest_3x3'] for r in d['densenets']):,} in a DenseNet.\n")


def answer_memory(d: Mapping[str, Any]) -> str:
    ok = _ok_rows(d)
    parts = []
    for backend in dict.fromkeys(r["backend"] for r in d["rows"]):
        a, b = ok.get((backend, False)), ok.get((backend, True))
        label = _BACKEND_LABEL.get(backend, backend)
        if a is None or b is None:
            parts.append(f"{label}: not measured (a run failed)")
            continue
        saved = (a["step_mib"] - b["step_mib"]) / a["step_mib"] if a["step_mib"] > 0 else 0.0
        parts.append(f"{label} {a['step_mib']:,.0f} → {b['step_mib']:,.0f} MiB "
                     f"({_change(-saved)}; step time {a['step_seconds']:.0f} → "
                     f"{b['step_seconds']:.0f} s)")
    return (f"**Measured** ({d['preset']}, {d['size']}x{d['size']}, batch {d['batch']}, CPU), "
            "the training step's own memory, default → memory-efficient: "
            + "; ".join(parts) + ".\n")


def answer_table1(d: Mapping[str, Any]) -> str:
    vs = d["variants"]
    agree = [v["name"] for v in vs if v.get("torchvision_params") == v["params"]]
    return (f"**Measured:** the five variants have {min(v['params'] for v in vs) / 1e6:.1f} M to "
            f"{max(v['params'] for v in vs) / 1e6:.1f} M parameters and "
            f"{min(v['macs'] for v in vs) / 1e9:.2f} to {max(v['macs'] for v in vs) / 1e9:.2f} "
            f"GMACs at {d['size']}x{d['size']}; the counts equal torchvision's for "
            f"{', '.join(agree)}.\n")


def answer_mlp(d: Mapping[str, Any]) -> str:
    parts = []
    for c in d["configs"]:
        pairs = _mlp_pairs(c)
        diffs = [a["test_mse"][-1] - b["test_mse"][-1] for a, b in pairs]
        train = [a["train_mse"][-1] - b["train_mse"][-1] for a, b in pairs]
        lowest = [1 + min(range(len(pairs[0][i]["test_mse"])), key=lambda e: statistics.fmean(
            p[i]["test_mse"][e] for p in pairs)) for i in (0, 1)]
        parts.append(f"{c['depth']} hidden layers: dense − plain {_pm(diffs, '{:+.0f}')} test MSE "
                     f"(dense lower in {sum(x < 0 for x in diffs)} of {len(pairs)} seeds), "
                     f"{_pm(train, '{:+.0f}')} training MSE; the mean test MSE is lowest after "
                     f"epoch {lowest[0]} (dense) and {lowest[1]} (plain)")
    ls = d["least_squares_test_mse"]
    means = [statistics.fmean(r["test_mse"][-1] for r in c["runs"]) for c in d["configs"]]
    return (f"**Measured** (after {d['budget']['epochs']} epochs, the same seed's split and batches "
            f"for both models, mean ± standard deviation over {len(d['budget']['seeds'])} seeds): "
            + "; ".join(parts).replace("-", "−")
            + f". Ordinary least squares on the same splits: test MSE {_pm(ls)}; the MLPs' means "
            f"range from {min(means):.0f} to {max(means):.0f}.\n")


# ---------------------------------------------------------------------- figures


_VARIANT_STYLE = {"avg": ("average pooling", "#1f77b4"), "max": ("max pooling", "#d62728")}


def figure_pooling(d: Mapping[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for variant, runs in _by_variant(d).items():
        label, colour = _VARIANT_STYLE[variant]
        for i, r in enumerate(sorted(runs, key=lambda r: r["seed"])):
            style = ["-", "--", ":", "-."][i % 4]
            for ax, key in zip(axes, ("loss", "train_acc", "test_acc"), strict=True):
                ax.plot(r["epoch"], r[key], style, color=colour, marker="o", ms=3,
                        label=f"{label}, seed {r['seed']}")
    for ax, title in zip(axes, ("training loss", "training accuracy", "test accuracy"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.suptitle("d2l DenseNet on digits: transitions with average vs max pooling", y=1.03)
    return save_figure(fig, path)


def figure_resnet(d: Mapping[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for fam, items, colour, marker in (("ResNet", d["resnets"], "#ff7f0e", "s"),
                                       ("DenseNet", d["densenets"], "#1f77b4", "o")):
        depth = [r["depth"] for r in items]
        for ax, key, scale in ((axes[0], "params", 1e6), (axes[1], "macs_224", 1e9)):
            ax.plot(depth, [r[key] / scale for r in items], marker=marker, ls="", color=colour,
                    ms=7, label=fam)
            for r in items:
                ax.annotate(r["name"].replace("densenet", "DN-").replace("resnet", "RN-"),
                            (r["depth"], r[key] / scale), textcoords="offset points",
                            xytext=(5, 4), fontsize=8)
    axes[0].set_ylabel("parameters (millions)")
    axes[1].set_ylabel("GMACs at 224x224")
    for ax in axes:
        ax.set_xlabel("depth (weighted layers)")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def figure_memory(d: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    plt = pyplot()
    ok = _ok_rows(d)
    backends = list(dict.fromkeys(r["backend"] for r in d["rows"]))
    fig, ax = plt.subplots(figsize=(8.5, 4))
    x = np.arange(len(backends))
    for j, (eff, colour, label) in enumerate(((False, "#7f7f7f", "default"),
                                              (True, "#2ca02c", "memory-efficient"))):
        build = [ok[(b, eff)]["rss_build_mib"] if (b, eff) in ok else 0 for b in backends]
        step = [ok[(b, eff)]["step_mib"] if (b, eff) in ok else 0 for b in backends]
        pos = x + (j - 0.5) * 0.38
        ax.bar(pos, build, 0.36, color=colour, alpha=0.35)
        ax.bar(pos, step, 0.36, bottom=build, color=colour, label=f"{label}: one training step")
    from matplotlib.patches import Patch

    handles = [*ax.get_legend_handles_labels()[0],
               Patch(color="#cccccc", label="import + build (the lighter part of each bar)")]
    ax.set_ylim(0, 1.3 * max(r["rss_peak_mib"] for r in ok.values()))
    ax.set_xticks(x, [_BACKEND_LABEL.get(b, b) for b in backends])
    ax.set_ylabel("peak resident memory (MiB)")
    ax.set_title(f"{d['preset']}, {d['size']}x{d['size']}, batch {d['batch']}, one training step (CPU)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return save_figure(fig, path)


def figure_mlp(d: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    plt = pyplot()
    configs = d["configs"]
    fig, axes = plt.subplots(1, len(configs), figsize=(4.3 * len(configs), 3.6), squeeze=False,
                             sharey=True)
    ls = statistics.fmean(d["least_squares_test_mse"])
    for ax, c in zip(axes[0], configs, strict=True):
        for model, colour in (("dense", "#1f77b4"), ("plain", "#ff7f0e")):
            runs = np.array([r["test_mse"] for r in _mlp_runs(c, model)])
            m, s = runs.mean(0), runs.std(0)
            ep = np.arange(1, runs.shape[1] + 1)
            ax.plot(ep, m, color=colour, label=f"{model} ({c[f'{model}_params']:,} params)")
            ax.fill_between(ep, m - s, m + s, color=colour, alpha=0.15)
        ax.axhline(ls, color="k", ls=":", lw=1, label="least squares")
        ax.set_title(f"{c['depth']} hidden layers")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test MSE (mean ± sd over seeds)")
    axes[0][0].set_ylim(0.7 * ls, 2 * ls)
    return save_figure(fig, path)


# ---------------------------------------------------------------------- generate
Renderer = Callable[[Mapping[str, Any]], str]
tables: dict[str, Renderer] = {"pooling": table_pooling, "resnet": table_resnet,
                               "memory": table_memory, "table1": table_table1, "mlp": table_mlp}
answers: dict[str, Renderer] = {"pooling": answer_pooling, "resnet": answer_resnet,
                                "memory": answer_memory, "table1": answer_table1,
                                "mlp": answer_mlp}
figures: dict[str, Callable[[Mapping[str, Any], Path], Path]] = {
    "pooling": figure_pooling, "resnet": figure_resnet, "memory": figure_memory, "mlp": figure_mlp}


def _write(path: Path, text: str) -> Path:
    return write_text_atomic(path, text)


def generate(out_dir: Path, *, source: Path | None = None) -> list[Path]:
    """Write every exercise's table, answer and figure under ``out_dir``; the paths
    written. All files are read and checked before the first one is written."""
    out_dir = Path(out_dir)
    data = {name: load(name, source) for name in NAMES}
    written = []
    for name, d in data.items():
        written.append(_write(out_dir / "exercises" / f"{name}.md", tables[name](d)))
        written.append(_write(out_dir / "exercises" / f"{name}_answer.md", answers[name](d)))
        if name in figures:
            written.append(figures[name](d, out_dir / "figures" / f"exercise_{name}.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m densenet_multi.exercises.render",
                                description="The exercises' tables and figures from their JSON.")
    p.add_argument("--out", type=Path, required=True, help="e.g. docs/generated")
    p.add_argument("--source", type=Path, default=None, help=f"default {SOURCE}")
    args = p.parse_args(argv)
    for path in generate(args.out, source=args.source):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
