"""Ratios from a benchmark run, and its three outputs: ``results.json``, ``ratios.md``, a figure.

Every ratio is computed from the medians recorded in the same run, round by round:
``ours img/s / reference img/s`` (above 1: ours is faster), and for memory
``ours / reference`` of the training step's own peak memory, net of the
import-and-build baseline (below 1: ours takes less): on a CPU the timed steps'
peak RSS (``rss_steady_mib - rss_build_mib``: the kernel's high-water mark reset
after the warm-up, so a one-off compilation's memory is not counted as the step's),
the whole run's peak (``rss_peak_mib``) shown beside it. A configuration whose
process failed has no ratio: its cell says FAILED and why. Absolute figures of
different runs are never compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import write_text_atomic

__all__ = ["add_ratios", "memory_summary", "ratios_markdown", "table_disagreements", "figure",
           "write_outputs",
           "throughput_ratio", "memory_ratio"]


def _ok(rec: Mapping[str, Any] | None) -> bool:
    return rec is not None and rec.get("status") == "ok"


def net_mib(rec: Mapping[str, Any]) -> float:
    """The training step's own peak memory: the timed steps' peak RSS minus the
    import-and-build baseline (the whole run's peak where the probe could not reset the
    high-water mark; on a GPU: the framework's peak device memory minus what the built
    model held)."""
    if "device_peak_mib" in rec:
        return rec["device_peak_mib"] - rec["device_build_mib"]
    peak = rec.get("rss_steady_mib") or rec["rss_peak_mib"]
    return peak - rec["rss_build_mib"]


def whole_run_mib(rec: Mapping[str, Any]) -> float:
    """The whole run's peak RSS (first steps and compilation included) minus the baseline."""
    return rec["rss_peak_mib"] - rec["rss_build_mib"]


def throughput_ratio(rnd: Mapping[str, Any]) -> float | None:
    if not (_ok(rnd.get("ours")) and _ok(rnd.get("reference"))):
        return None
    return rnd["ours"]["ips_median"] / rnd["reference"]["ips_median"]


def memory_ratio(rnd: Mapping[str, Any]) -> float | None:
    if not (_ok(rnd.get("ours")) and _ok(rnd.get("reference"))):
        return None
    ref = net_mib(rnd["reference"])
    return net_mib(rnd["ours"]) / ref if ref > 0 else None


def _status(rnd: Mapping[str, Any]) -> str:
    failed = [s for s in ("ours", "reference") if s in rnd and not _ok(rnd[s])]
    if failed:
        return "failed: " + ", ".join(failed)
    return "ok" if "reference" in rnd else "no reference"


def add_ratios(rows: Sequence[dict[str, Any]], kind: str) -> None:
    """Put ``ratio`` (None when a side failed or there is no reference) and ``status``
    into every round of ``rows`` (``kind``: "throughput" or "memory")."""
    fn = throughput_ratio if kind == "throughput" else memory_ratio
    for row in rows:
        for rnd in row["rounds"]:
            rnd["status"] = _status(rnd)
            rnd["ratio"] = fn(rnd)


def memory_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per backend and net (ours, official), per round: the memory-efficient mode's saving
    (``1 - efficient / default`` of the net step memory) and its step-time ratio
    (``efficient / default`` median step time), both modes measured in the same round."""
    out = []
    by_backend: dict[str, dict[bool, Mapping[str, Any]]] = {}
    for row in rows:
        by_backend.setdefault(row["backend"], {})[bool(row["memory_efficient"])] = row
    for backend, modes in by_backend.items():
        if set(modes) != {False, True}:
            continue
        for side in ("ours", "reference"):
            rounds = []
            for d, e in zip(modes[False]["rounds"], modes[True]["rounds"], strict=True):
                dr, er = d.get(side), e.get(side)
                if side == "reference" and (dr is None or er is None):
                    break
                entry: dict[str, Any] = {"round": d["round"]}
                if _ok(dr) and _ok(er) and net_mib(dr) > 0:
                    entry.update(
                        default_mib=round(net_mib(dr), 1), efficient_mib=round(net_mib(er), 1),
                        default_baseline_mib=dr.get("device_build_mib", dr["rss_build_mib"]),
                        efficient_baseline_mib=er.get("device_build_mib", er["rss_build_mib"]),
                        saving=1 - net_mib(er) / net_mib(dr),
                        step_time_ratio=er["step_seconds_median"] / dr["step_seconds_median"])
                else:
                    entry["status"] = "failed"
                    entry["reason"] = "; ".join(r["reason"].splitlines()[0] for r in (dr, er)
                                                if r is not None and not _ok(r) and r.get("reason"))
                rounds.append(entry)
            if rounds:
                name = modes[False]["reference"] if side == "reference" else f"ours-{backend}"
                out.append({"backend": backend, "net": name, "rounds": rounds})
    return out


# ---------------------------------------------------------------------- Markdown
def _fmt_ratio(rnd: Mapping[str, Any]) -> str:
    if rnd["ratio"] is not None:
        return f"{rnd['ratio']:.2f}"
    if rnd["status"].startswith("failed"):
        return "FAILED"
    return "n/a"


def _ips(rec: Mapping[str, Any] | None) -> str:
    if rec is None:
        return "-"
    if not _ok(rec):
        return "FAILED"
    return f"{rec['ips_median']:.2f} ({rec['ips_min']:.2f}-{rec['ips_max']:.2f})"


def _mem(rec: Mapping[str, Any] | None) -> str:
    if rec is None:
        return "-"
    if not _ok(rec):
        return "FAILED"
    if "device_peak_mib" in rec:
        return f"GPU {rec['device_peak_mib']:.0f} [{rec['device_build_mib']:.0f}] +{net_mib(rec):.0f}"
    text = f"{rec['rss_peak_mib']:.0f} [{rec['rss_build_mib']:.0f}] +{net_mib(rec):.0f}"
    if rec.get("rss_steady_mib"):
        text += f" (whole run +{whole_run_mib(rec):.0f})"
    return text


def _label(row: Mapping[str, Any]) -> str:
    eff = " memory-efficient" if row["memory_efficient"] else ""
    return (f"{row['backend']} {row['mode']}{eff}, {row['preset']}@{row['size']} b{row['batch']}, "
            f"{row['what']}")


def ratios_markdown(result: Mapping[str, Any]) -> str:
    """The ratio tables of a run (throughput, memory, memory-efficient savings) and the
    failures, each with its reason."""
    s = result["settings"]
    lines = [f"# Benchmark: ours / reference, {s['rounds']} round(s), from one run", "",
             f"Machine: {result['machine'].get('cpus')} CPUs ({result['machine'].get('machine')}, "
             f"{result['machine'].get('system')}), {s['threads']} threads per process; "
             f"median img/s of {s['steps']} timed steps after {s['warmup']} warm-up steps "
             f"(min-max in brackets); one configuration per process, ours and reference "
             f"back to back, alternating order. Command: `{result['command']}`", ""]
    if result["throughput"]:
        n = s["rounds"]
        lines += ["## Throughput ratio (ours img/s / reference img/s; above 1: ours faster)", "",
                  "| configuration | reference | " + " | ".join(f"ratio r{i}" for i in range(1, n + 1))
                  + " | ours img/s (r1) | reference img/s (r1) |",
                  "|---|---|" + "---|" * n + "---|---|"]
        for row in result["throughput"]:
            r1 = row["rounds"][0]
            lines.append(f"| {_label(row)} | {row['reference']} | "
                         + " | ".join(_fmt_ratio(rnd) for rnd in row["rounds"])
                         + f" | {_ips(r1.get('ours'))} | {_ips(r1.get('reference'))} |")
        lines.append("")
    if result["memory"]:
        n = s["rounds"]
        lines += ["## Peak memory of a training step (RSS MiB: whole run's peak [import-and-build "
                  "baseline] +the timed steps' own peak over the baseline (+the whole run's, first "
                  "steps and compilation included)); ratio of the step's own memory ours / reference",
                  "",
                  "| configuration | reference | " + " | ".join(f"ratio r{i}" for i in range(1, n + 1))
                  + " | ours (r1) | reference (r1) |", "|---|---|" + "---|" * n + "---|---|"]
        for row in result["memory"]:
            r1 = row["rounds"][0]
            lines.append(f"| {_label(row)} | {row['reference']} | "
                         + " | ".join(_fmt_ratio(rnd) for rnd in row["rounds"])
                         + f" | {_mem(r1.get('ours'))} | {_mem(r1.get('reference'))} |")
        lines.append("")
    if result.get("memory_summary"):
        lines += ["## Memory-efficient mode against the default (same net, same round)", "",
                  "| net | round | step memory default -> efficient (MiB) | saving | step time ratio |",
                  "|---|---|---|---|---|"]
        for entry in result["memory_summary"]:
            for rnd in entry["rounds"]:
                if "saving" in rnd:
                    lines.append(f"| {entry['net']} | {rnd['round']} | {rnd['default_mib']:.0f} -> "
                                 f"{rnd['efficient_mib']:.0f} | {rnd['saving']:.0%} | "
                                 f"{rnd['step_time_ratio']:.2f}x |")
                else:
                    lines.append(f"| {entry['net']} | {rnd['round']} | FAILED | - | - |")
        lines.append("")
    notes = [f"- {_label(row)}: {row['note']}" for row in result["throughput"] + result["memory"]
             if row["note"]]
    failures = [f"- {_label(row)}, round {rnd['round']}, {side}: {rnd[side]['reason'].splitlines()[0]}"
                for row in result["throughput"] + result["memory"] for rnd in row["rounds"]
                for side in ("ours", "reference") if side in rnd and not _ok(rnd[side])]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    if failures:
        lines += ["Failed configurations (no ratio):", "", *failures, ""]
    return "\n".join(lines)


def table_disagreements(md: str, result: Mapping[str, Any]) -> list[str]:
    """Where ``ratios.md`` text disagrees with the run's JSON: a row missing or repeated, or
    a ratio cell that is not the JSON's ratio (to 2 decimals; FAILED, n/a). Empty: agrees."""
    problems = []
    for row in [*result["throughput"], *result["memory"]]:
        label = _label(row)
        lines = [ln for ln in md.splitlines() if ln.startswith(f"| {label} |")]
        if len(lines) != 1:
            problems.append(f"{label}: {len(lines) or 'no'} table row(s)")
            continue
        cells = [c.strip() for c in lines[0].strip().strip("|").split("|")]
        got = cells[2:2 + len(row["rounds"])]
        want = [_fmt_ratio(rnd) for rnd in row["rounds"]]
        if got != want:
            problems.append(f"{label}: table {got} != json {want}")
    return problems


# ---------------------------------------------------------------------- the figure
def figure(result: Mapping[str, Any], path: Path) -> Path:
    """Throughput ratios per configuration and round (a line at 1) and, when measured, each
    net's training-step memory net of its baseline."""
    from ..guide.figures import pyplot, save_figure

    plt = pyplot()
    rows = [r for r in result["throughput"] if any(x["ratio"] is not None for x in r["rounds"])]
    mem = [r for r in result["memory"] if any(_ok(x.get("ours")) for x in r["rounds"])]
    panels = [p for p in (rows, mem) if p]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(7 * max(len(panels), 1),
                                                               0.45 * max(len(rows), len(mem), 4) + 1.5),
                             squeeze=False)
    ax_iter = iter(axes[0])
    if rows:
        ax = next(ax_iter)
        n = result["settings"]["rounds"]
        h = 0.8 / n
        for i in range(n):
            vals = [r["rounds"][i]["ratio"] or 0.0 for r in rows]
            ax.barh([k + i * h for k in range(len(rows))], vals, height=h, label=f"round {i + 1}")
        ax.axvline(1.0, color="k", lw=1)
        ax.set_yticks([k + 0.4 - h / 2 for k in range(len(rows))], [_label(r) for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("throughput ratio ours / reference (img/s)")
        ax.legend(fontsize=7)
    if mem:
        ax = next(ax_iter)
        labels, ours, refs = [], [], []
        for r in mem:
            rnd = r["rounds"][0]
            labels.append(_label(r))
            ours.append(net_mib(rnd["ours"]) if _ok(rnd.get("ours")) else 0.0)
            refs.append(net_mib(rnd["reference"]) if _ok(rnd.get("reference")) else 0.0)
        ks = range(len(mem))
        ax.barh([k - 0.2 for k in ks], ours, height=0.4, label="ours")
        ax.barh([k + 0.2 for k in ks], refs, height=0.4, label="official")
        ax.set_yticks(list(ks), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("training step's peak RSS net of import+build (MiB, round 1)")
        ax.legend(fontsize=7)
    fig.suptitle("densenet-multi bench: " + ", ".join(sorted({r["backend"] for r in
                                                               result["throughput"] + result["memory"]})))
    return save_figure(fig, path)


def write_outputs(result: dict[str, Any], out: Path, *, plot: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``ratios.md`` and (with ``plot``) ``ratios.png`` into ``out``,
    each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_text_atomic(out / "results.json", json.dumps(result, indent=1) + "\n"),
             "markdown": write_text_atomic(out / "ratios.md", ratios_markdown(result) + "\n")}
    if plot:
        paths["figure"] = figure(result, out / "ratios.png")
    return paths
