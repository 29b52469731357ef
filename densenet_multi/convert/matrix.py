"""Every ordered pair of formats: converted, verified and converted back, with errors and wall times.

``python -m densenet_multi.convert.matrix --out docs/convert`` writes ``matrix.json``
and ``matrix.md``:

* **ours**: a seeded ``d2l`` network (non-trivial BN statistics) in each of the seven
  formats of this project's flavour; for every ordered pair (A, B): A -> B verified
  (the worst stage error and the first diverging stage, if any), then B -> A
  verified, and A -> B -> A compared with A bit for bit (dtype included);
* **official** (``--official``): densenet121 files written by torchvision,
  keras.applications (``.keras`` and ``.weights.h5``), the Gluon zoo and Flax/Orbax
  (:mod:`.official`), each converted to every other framework, official flavour where
  there is one, and back.

One :class:`~.worker.Session` serves the whole run (each framework starts once).
The tests (``tests/convert``) call :func:`round_trip` on the same files.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint
from ..params import init_params
from ..spec import get_spec
from .api import VerificationError, convert, read_canonical
from .official import make_official
from .worker import Session

__all__ = ["EXTENSIONS", "OURS", "OFFICIAL_TARGETS", "bit_exact", "make_sources", "round_trip",
           "main"]

#: the formats of our flavour (a --to name each) and a file name ending for each
EXTENSIONS = {"canonical": ".safetensors", "torch": ".pth", "torch-safetensors": ".st.safetensors",
              "keras": ".keras", "keras-weights": ".weights.h5", "gluon": ".params",
              "flax": ".orbax"}
OURS = tuple(EXTENSIONS)
#: official file kind -> the targets it is converted to (one per other framework) and its own
OFFICIAL_TARGETS = {
    "torchvision": (("keras-applications", "gluon-zoo", "flax"), "torchvision"),
    "keras-applications": (("torchvision", "gluon-zoo", "flax"), "keras-applications"),
    "keras-applications-weights": (("torchvision", "gluon-zoo", "flax"),
                                   "keras-applications-weights"),
    "gluon-zoo": (("torchvision", "keras-applications-weights", "flax"), "gluon-zoo"),
    "flax": (("torchvision", "keras-applications", "gluon-zoo"), "flax"),
}
TARGET_EXT = {**EXTENSIONS, "torchvision": ".pth", "keras-applications": ".keras",
              "keras-applications-weights": ".weights.h5", "gluon-zoo": ".params"}


def bit_exact(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """What differs between two canonical dicts bit for bit (keys, dtypes, values); [] if nothing."""
    out = [f"only in one: {sorted(set(a) ^ set(b))[:4]}"] if set(a) != set(b) else []
    for k in a.keys() & b.keys():
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape:
            out.append(f"{k}: {a[k].dtype}{a[k].shape} vs {b[k].dtype}{b[k].shape}")
        elif a[k].tobytes() != b[k].tobytes():
            out.append(f"{k}: values differ (max abs {np.max(np.abs(a[k] - b[k])):.3g})")
    return sorted(out)


def make_sources(folder: Path, session: Session, *, preset: str = "d2l", seed: int = 1,
                 dtype: str = "float32", formats: Sequence[str] = OURS, verify: bool = True
                 ) -> dict[str, Path]:
    """A seeded network (non-trivial BN statistics) in each format, converted from canonical
    (verified unless not ``verify``: the tests verify canonical -> every format as pairs)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = get_spec(preset)
    canonical = folder / f"{preset}_{dtype}{EXTENSIONS['canonical']}"
    if not canonical.exists():
        checkpoint.save(canonical, init_params(spec, seed, nontrivial_bn=True, dtype=dtype), spec,
                        dtype=dtype)
    out = {"canonical": canonical}
    for fmt in formats:
        if fmt != "canonical":
            out[fmt] = folder / f"{preset}_{dtype}_{fmt}{EXTENSIONS[fmt]}"
            if not out[fmt].exists():
                convert(canonical, out[fmt], to=fmt, session=session, verify=verify)
    return out


def _row(report: Any, seconds: float) -> dict[str, Any]:
    ff = report.first_fail
    return {"verified": report.verified, "worst_rel": report.worst_rel,
            "first_fail": None if ff is None else ff.short(), "seconds": round(seconds, 2),
            "eps": [report.source.spec.bn_eps,
                    None if report.written is None else report.written.spec.bn_eps],
            "detected": report.source.describe()}


def round_trip(src: Path, src_target: str, to: str, folder: Path, session: Session, *,
               original: dict[str, np.ndarray] | None = None, verify_back: bool = True
               ) -> dict[str, Any]:
    """``src`` -> ``to`` -> ``src_target`` (both verified, unless not ``verify_back``), and the
    bit-exact comparison of the last file with ``original`` (default: ``src`` read).
    A failed verification is a row with ``verified`` False."""
    there = folder / f"{src.name.split('.')[0]}__{to}{TARGET_EXT[to]}"
    back = folder / f"{there.name.split('.')[0]}__{src_target}{TARGET_EXT[src_target]}"
    row: dict[str, Any] = {"src": src.name, "to": to, "back_to": src_target}
    for key, a, b, target in (("there", src, there, to), ("back", there, back, src_target)):
        t0 = time.perf_counter()
        try:
            report = convert(a, b, to=target, session=session, overwrite=True,
                             verify=key == "there" or verify_back)
        except VerificationError as e:
            row[key] = _row(e.report, time.perf_counter() - t0)
            return row
        row[key] = _row(report, time.perf_counter() - t0)
    if original is None:
        original, _ = read_canonical(src, session=session)
    returned, _ = read_canonical(back, session=session)
    row["round_trip_differences"] = bit_exact(original, returned)
    row["round_trip_bit_exact"] = not row["round_trip_differences"]
    return row


def _markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "", "| source | target | verification error (worst stage) | "
             "wall time | back: error | back: wall time | A -> B -> A bit-exact |",
             "|---|---|---:|---:|---:|---:|---|"]

    def err(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        return (f"{r['worst_rel']:.1e}" if r["verified"] else f"FAIL: {r['first_fail']}")

    for r in rows:
        there, back = r.get("there"), r.get("back")
        lines.append(f"| {r['src_label']} | {r['to']} | {err(there)} | "
                     f"{there['seconds'] if there else '-'} s | {err(back)} | "
                     f"{back['seconds'] if back else '-'} s | "
                     f"{'yes' if r.get('round_trip_bit_exact') else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from .._files import write_text_atomic

    p = argparse.ArgumentParser(prog="python -m densenet_multi.convert.matrix")
    p.add_argument("--out", type=Path, required=True, help="folder for matrix.json and matrix.md")
    p.add_argument("--work", type=Path, help="folder for the files (default: OUT/files, kept)")
    p.add_argument("--official", action="store_true", help="also the official densenet121 files")
    p.add_argument("--no-ours", dest="ours", action="store_false", help="skip the d2l matrix")
    args = p.parse_args(argv)
    work = args.work or args.out / "files"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version(),
                              "ours": [], "official": []}
    t0 = time.perf_counter()
    with Session() as session:
        if args.ours:
            sources = make_sources(work / "ours", session)
            for a in OURS:
                for b in OURS:
                    if a != b:
                        row = round_trip(sources[a], a, b, work / "ours", session)
                        row["src_label"] = f"{a} (d2l)"
                        result["ours"].append(row)
                        print(json.dumps({k: row[k] for k in ("src", "to")} | {
                            "there": row.get("there", {}).get("worst_rel"),
                            "bit_exact": row.get("round_trip_bit_exact")}), flush=True)
        if args.official:
            for kind, (targets, own) in OFFICIAL_TARGETS.items():
                src = make_official(kind, work / "official")
                for to in targets:
                    row = round_trip(src, own, to, work / "official", session)
                    row["src_label"] = f"{kind} (densenet121)"
                    result["official"].append(row)
                    print(json.dumps({"src": kind, "to": to, "there": row.get("there", {}).get(
                        "worst_rel"), "bit_exact": row.get("round_trip_bit_exact")}), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "matrix.json", json.dumps(result, indent=1) + "\n")
    md = ["# Conversion matrix", "",
          f"Measured on {result['machine']}, one session, {result['seconds']} s in all. Wall times "
          "include model building in each framework's worker (the first use of a framework also "
          "its start-up); a shared 2-core machine, so compare them only roughly.", ""]
    if result["ours"]:
        md.append(_markdown(result["ours"], "This project's flavour, every ordered pair (d2l)"))
    if result["official"]:
        md.append(_markdown(result["official"], "Official files (densenet121) to every other framework"))
    write_text_atomic(args.out / "matrix.md", "\n".join(md))
    bad = [r for r in result["ours"] + result["official"] if not r.get("round_trip_bit_exact")]
    print(f"{len(result['ours']) + len(result['official'])} pairs, {len(bad)} failing; "
          f"{result['seconds']} s; wrote {args.out / 'matrix.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())



