"""``densenet-multi bench``: each backend against its framework's official DenseNet.

Examples::

    densenet-multi bench                                    # everything (long: hours on 2 cores)
    densenet-multi bench --backends torch --what throughput --presets densenet121@224
    densenet-multi bench --backends gluon,keras --what memory --rounds 1
    densenet-multi bench --backends torch --modes torch=eager,compile --out /tmp/b
    densenet-multi bench --tiny --backends torch            # seconds: is the harness working?

One configuration per process (``python -m densenet_multi.bench.probe``, which
also measures one configuration on its own), ours and the reference back to
back, in every round. Writes ``results.json``, ``ratios.md`` and ``ratios.png``
to ``--out``. Exit status 1 when any configuration failed (it is reported, with
its reason, and has no ratio).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..spec import PRESETS
from .harness import memory_plan, plan, run_pairs
from .probe import MODES
from .report import add_ratios, memory_summary, write_outputs

__all__ = ["build_parser", "main", "parse_presets", "parse_modes"]

DEFAULT_PRESETS = "densenet121@224,densenet_bc_100_k12@32"
MEMORY = {"preset": "densenet121", "size": 224, "batch": 16}
TINY = {"presets": "densenet121@32", "batch": 2, "steps": 2, "warmup": 1, "memory_size": 32,
        "memory_batch": 2}


def parse_presets(text: str) -> list[tuple[str, int]]:
    """``"densenet121@224,d2l@32"`` -> ``[("densenet121", 224), ("d2l", 32)]``."""
    out = []
    for item in [t for t in text.split(",") if t]:
        name, at, size = item.partition("@")
        if name not in PRESETS or not at or not size.isdigit() or int(size) < 1:
            raise ValueError(f"--presets expects PRESET@SIZE items with PRESET one of "
                             f"{sorted(PRESETS)} and SIZE a positive integer, got {item!r}")
        out.append((name, int(size)))
    if not out:
        raise ValueError("--presets is empty")
    return out


def parse_modes(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["torch=eager,compile"]`` -> every backend's modes, those given replaced."""
    modes = dict(MODES)
    for item in items:
        backend, eq, names = item.partition("=")
        chosen = tuple(n for n in names.split(",") if n)
        if backend not in MODES or not eq or not chosen or set(chosen) - set(MODES[backend]):
            raise ValueError(f"--modes expects BACKEND=MODE[,MODE] with modes from "
                             f"{MODES.get(backend, MODES)}, got {item!r}")
        modes[backend] = chosen
    return modes


def _csv(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"{flag} expects a comma-separated list of {list(allowed)}, got {text!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="densenet-multi bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--backends", default="torch,flax,keras,gluon")
    p.add_argument("--what", default="throughput,memory",
                   help="throughput (inference and training step img/s) and/or memory (peak RSS "
                        f"of a training step, {MEMORY['preset']}@{MEMORY['size']} batch "
                        f"{MEMORY['batch']}, default and memory-efficient)")
    p.add_argument("--presets", default=None, help=f"PRESET@SIZE,... (default {DEFAULT_PRESETS})")
    p.add_argument("--modes", action="append", default=[], metavar="BACKEND=MODE[,MODE]",
                   help="only these modes of a backend (default: all: "
                        + "; ".join(f"{b}: {','.join(m)}" for b, m in MODES.items()) + ")")
    p.add_argument("--batch", type=int, default=None, help="throughput batch (default 8)")
    p.add_argument("--memory-batch", type=int, default=None,
                   help=f"memory batch (default {MEMORY['batch']})")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (default 3)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads per process, the same for both sides (default: every core)")
    p.add_argument("--python", action="append", default=[], metavar="BACKEND=PATH",
                   help="the interpreter of a backend's probes (default .tox/<env>/bin/python; "
                        "torch: torch-zoo)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per configuration")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--tiny", action="store_true",
                   help=f"seconds per backend: {TINY['presets']}, batch {TINY['batch']}, "
                        f"{TINY['steps']} steps, each backend's first mode only")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: torch and flax on the GPU (peak device memory from the framework)")
    p.add_argument("--no-figure", action="store_true", help="skip ratios.png (no matplotlib)")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    tiny = args.tiny
    return {
        "backends": _csv(args.backends, list(MODES), "--backends"),
        "what": _csv(args.what, ["throughput", "memory"], "--what"),
        "presets": parse_presets(args.presets or (TINY["presets"] if tiny else DEFAULT_PRESETS)),
        "modes": ({b: m[:1] for b, m in MODES.items()} if tiny and not args.modes
                  else parse_modes(args.modes)),
        "batch": args.batch or (TINY["batch"] if tiny else 8),
        "memory": {"preset": MEMORY["preset"], "size": TINY["memory_size"] if tiny else MEMORY["size"],
                   "batch": args.memory_batch or (TINY["memory_batch"] if tiny else MEMORY["batch"])},
        "steps": args.steps or (TINY["steps"] if tiny else 10),
        "warmup": args.warmup if args.warmup is not None else (TINY["warmup"] if tiny else 3),
        "rounds": args.rounds, "threads": args.threads, "tiny": tiny, "device": args.device,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from ..parity.runner import parse_pythons

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        s = _settings(args)
        pythons = parse_pythons(args.python)
        for name in ("rounds", "threads"):
            if s[name] < 1:
                raise ValueError(f"--{name} must be >= 1, got {s[name]}")
        pairs = plan(s["backends"], ["infer", "train"], s["presets"], s["batch"], s["steps"],
                     s["warmup"], s["modes"], s["device"]) if "throughput" in s["what"] else []
        mem = s["memory"]
        mem_pairs = memory_plan(s["backends"], mem["preset"], mem["size"], mem["batch"], s["steps"],
                                s["warmup"], s["device"]) if "memory" in s["what"] else []
    except ValueError as e:
        parser.error(str(e))
    t0 = time.perf_counter()

    def log(line: str) -> None:
        print(line, flush=True)

    throughput = run_pairs(pairs, rounds=s["rounds"], threads=s["threads"], pythons=pythons,
                           timeout=args.timeout, log=log)
    memory = run_pairs(mem_pairs, rounds=s["rounds"], threads=s["threads"], pythons=pythons,
                       timeout=args.timeout, log=log)
    add_ratios(throughput, "throughput")
    add_ratios(memory, "memory")
    result = {
        "bench": 1,
        "command": "densenet-multi bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"python": platform.python_version(), "machine": platform.machine(),
                    "system": platform.system(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
        "settings": {**s, "presets": [f"{p}@{z}" for p, z in s["presets"]]},
        "throughput": throughput,
        "memory": memory,
        "memory_summary": memory_summary(memory),
    }
    paths = write_outputs(result, args.out, plot=not args.no_figure)
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f" ({result['seconds']} s)")
    failed = sum(1 for row in throughput + memory for rnd in row["rounds"]
                 if rnd["status"].startswith("failed"))
    if failed:
        print(f"{failed} configuration round(s) failed: see {paths['markdown']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
