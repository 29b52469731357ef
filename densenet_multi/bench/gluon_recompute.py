"""Where a Gluon memory-efficient training step's time goes, and the least any
recomputation costs in MXNet 1.9.

The Gluon default is one cached graph (``hybridize(static_alloc=True,
static_shape=True)``): MXNet plans its memory once and runs its operators in bulk.
A cached graph cannot recompute part of itself in the backward pass (CachedOp builds
its backward graph without mirroring), so a recomputation has to leave the graph,
and each way out has a price this module measures, one variant per process, the
variants interleaved over rounds (the order flips between rounds), DenseNet-121 at
224x224, batch 16, by default:

``default``
    the network as the benchmark times it: one cached graph;
``split``
    the memory-efficient mode's structure with nothing recomputed: each dense layer's
    recomputable part (concatenation, BN-ReLU-conv1, BN-ReLU) and ``conv2`` as cached
    graphs of their own, run and recorded one after another. What leaving the single
    graph costs;
``custom``
    the default graph with one pass-through ``CustomOp`` per dense layer (its forward
    and backward copy their array): what a recomputation *inside* the cached graph
    would pay before recomputing anything (MXNet runs a custom operator's Python on its
    own thread; the engine waits for it);
``memory_efficient``
    the mode itself (:class:`~densenet_multi.gluon.layers.Recomputed`);
``default_unpooled``, ``memory_efficient_unpooled``
    the two again in a process where no allocator keeps freed memory for reuse
    (:data:`UNPOOLED`): their peak RSS is the arrays alive at the worst moment, what
    the network itself needs, paid for in page faults.

Each process reports the median step time and the timed steps' peak RSS net of the
build (the bench probe's measure) and, for ``memory_efficient``, MXNet's profiler
totals of the recomputation's forward operators (what recomputing costs at the
least). The summary gives each variant's step time and memory against ``default``'s
from the same round (the ``*_unpooled`` ones against ``default_unpooled``'s), and
``floor``: ``custom``'s ratio plus the recomputed forward's share of the default step,
an estimate of the least a recomputation inside the graph could cost (the operator
totals come from another process than ``custom``'s, under the profiler)::

    python -m densenet_multi.bench.gluon_recompute --rounds 2 --out gluon_recompute.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import probe

__all__ = ["VARIANTS", "measure", "run", "summary", "main"]

VARIANTS = ("default", "split", "custom", "memory_efficient", "default_unpooled",
            "memory_efficient_unpooled")
#: the ``*_unpooled`` variants' process environment: MXNet's CPU memory pool off and every
#: allocation from 128 KiB up its own mmap, unmapped when freed (glibc's threshold fixed),
#: so that RSS follows the arrays alive, not what the allocators keep for reuse
UNPOOLED = {"MXNET_CPU_MEM_POOL_TYPE": "Unpooled", "MALLOC_MMAP_THRESHOLD_": "131072"}
_PASS = "densenet_multi_pass_through"
#: operators of the recomputation's forward pass, as MXNet's profiler names them
_FORWARD_OPS = ("Convolution", "BatchNorm", "Activation", "Concat", "expand_dims", "squeeze")


class _Unrecomputed:
    """Stands in for a layer's ``Recomputed``: runs its cached graph recorded as usual
    (the intermediates stored), with the live parameters."""

    def __init__(self, recomputed: Any) -> None:
        self.recomputed = recomputed

    def hybridize(self, active: bool = True) -> None:
        self.recomputed.hybridize(active)

    def __call__(self, *maps: Any) -> Any:
        r = self.recomputed
        return r.graph(*maps, *[block._reg_params[name].data() for block, name in r.keys])


_pass_through: Any = None  # the CustomOp class, once registered


def _register_pass_through() -> None:
    """Register the pass-through custom operator (once per process)."""
    global _pass_through
    if _pass_through is not None:
        return
    import mxnet as mx

    class PassThrough(mx.operator.CustomOp):
        def forward(self, is_train, req, in_data, out_data, aux):
            self.assign(out_data[0], req[0], in_data[0])
            out_data[0].wait_to_read()

        def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
            self.assign(in_grad[0], req[0], out_grad[0])
            in_grad[0].wait_to_read()

    @mx.operator.register(_PASS)
    class PassThroughProp(mx.operator.CustomOpProp):
        def __init__(self) -> None:
            super().__init__(need_top_grad=True)

        def list_arguments(self) -> list[str]:
            return ["x"]

        def infer_shape(self, in_shape):
            return in_shape, [in_shape[0]], []

        def create_operator(self, ctx, shapes, dtypes):
            return PassThrough()

    _pass_through = PassThrough


def _layers(net: Any) -> list[Any]:
    from ..gluon.densenet import DenseLayer

    found: list[Any] = []
    net.apply(lambda block: found.append(block) if isinstance(block, DenseLayer) else None)
    return found


def build(variant: str, spec: Any) -> Any:
    """The variant's network for a spec, built by the backend (the canonical seeded
    weights) and hybridized as the probe does."""
    from ..gluon import build as gluon_build
    from ..gluon.runtime import legacy_mode

    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    variant = variant.removesuffix("_unpooled")
    with legacy_mode():
        net = gluon_build(spec, memory_efficient=variant in ("split", "memory_efficient"))
        for layer in _layers(net):
            if variant == "split":
                layer.recomputed = _Unrecomputed(layer.recomputed)
            elif variant == "custom":
                _register_pass_through()
                part = layer._recomputed
                layer._recomputed = (lambda F, call, *maps, part=part:
                                     F.Custom(part(F, call, *maps), op_type=_PASS))
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def _recomputed_forward_ms(step: Any, steps: int) -> dict[str, float]:
    """MXNet's profiler totals, ms per step, of the forward operators the custom-operator
    thread runs over ``steps`` steps: a memory-efficient network's recomputations."""
    import mxnet as mx

    mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=os.devnull)
    mx.profiler.set_state("run")
    for _ in range(steps):
        step()
    mx.profiler.set_state("stop")
    table = json.loads(mx.profiler.dumps(reset=True, format="json"))
    ops = table.get("Time", {}).get("Custom Operator", {})
    found = {name.lstrip(":"): round(v["Total"] / steps, 1) for name, v in ops.items()
             if name.lstrip(":") in _FORWARD_OPS}
    if "Convolution" not in found:  # the floor would silently leave out the recomputation
        raise RuntimeError("MXNet's profiler: expected the recomputation's Convolution among the "
                           f"custom-operator thread's operators, got {sorted(ops)}")
    return found


def measure(variant: str, spec: Any, *, batch: int, size: int, steps: int, warmup: int,
            profile: int = 2) -> dict[str, Any]:
    """One variant in this process: step times, the timed steps' peak RSS net of the
    build, the losses of the first and of the last step (the same for every variant,
    to rounding: the same network and updates), and for ``memory_efficient`` the
    recomputed forward operators' ms per step over ``profile`` more steps."""
    if variant.endswith("_unpooled") and any(os.environ.get(k) != v for k, v in UNPOOLED.items()):
        settings = " ".join(f"{k}={v}" for k, v in UNPOOLED.items())
        raise ValueError(f"{variant}: expected a process started with {settings} (read when the "
                         f"process and MXNet start), got {({k: os.environ.get(k) for k in UNPOOLED})}; "
                         "start it so, or run the module without --variant, which does")
    from mxnet import autograd, gluon, nd

    from ..gluon.runtime import legacy_mode

    out: dict[str, Any] = {"variant": variant, "preset": spec.name, "size": size, "batch": batch,
                           "steps": steps, "warmup": warmup}
    net = build(variant, spec)
    nd.waitall()
    out["rss_build_mib"] = round(probe.peak_rss_mib(), 1)
    rng = np.random.Generator(np.random.PCG64(0))
    x = nd.array(rng.standard_normal((batch, spec.in_channels, size, size)).astype(np.float32))
    y = nd.array(rng.integers(0, spec.num_classes, size=batch).astype(np.float32))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 2.0**-7, "momentum": 0.875})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step() -> float:
        with legacy_mode():
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(batch)
            return float(loss.mean().asscalar())

    out["first_loss"] = step()
    for _ in range(warmup):
        step()
    probe.trim_allocator()
    steady = probe.reset_peak_rss()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out["last_loss"] = step()
        times.append(time.perf_counter() - t)
    out["step_seconds"] = [round(t, 4) for t in times]
    out["step_seconds_median"] = round(statistics.median(times), 4)
    out["steady_step_mib"] = (round(probe.peak_rss_mib() - out["rss_build_mib"], 1)
                              if steady else None)
    if variant.startswith("memory_efficient") and profile:
        out["recomputed_forward_ms"] = _recomputed_forward_ms(step, profile)
    out["threads"] = probe._threads_env()
    out["versions"] = probe._versions(["numpy", "mxnet"])
    return out


def _one(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """One variant in a fresh process (the module run with ``--variant``): its JSON line.
    A process past ``args.timeout`` seconds (a deadlocked recomputation) is an error."""
    cmd = [sys.executable, "-m", "densenet_multi.bench.gluon_recompute", "--variant", variant,
           "--preset", args.preset, "--size", str(args.size), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, **(UNPOOLED if variant.endswith("_unpooled") else {})}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{variant}: no result within {args.timeout} s") from e
    record = probe.parse_line(done.stdout, prefix='{"variant"')
    if done.returncode != 0 or record is None:
        raise RuntimeError(f"{variant}: exit {done.returncode}; {done.stderr.strip()[-2000:]}")
    return record


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant in ``args.rounds`` rounds, one process at a time; the order flips
    between rounds."""
    rounds = []
    variants = VARIANTS if args.unpooled else VARIANTS[:4]
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        results = {v: _one(v, args) for v in order}
        rounds.append({v: results[v] for v in variants})
    return {"gluon_recompute": 1,
            "command": " ".join(["python -m densenet_multi.bench.gluon_recompute", *sys.argv[1:]]),
            "machine": {"python": platform.python_version(), "machine": platform.machine(),
                        "system": platform.system(), "cpus": os.cpu_count()},
            "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")},
            "rounds": rounds, "summary": summary(rounds)}


def summary(rounds: Sequence[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per round and variant: step seconds, its ratio to ``default``'s, the timed steps'
    peak RSS net of the build and its change from ``default``'s (``*_unpooled``: from
    ``default_unpooled``'s); per round the estimated floor
    (``custom``'s ratio plus the recomputed forward's share of the default step)."""
    rows = []
    for i, results in enumerate(rounds, start=1):
        for variant, res in results.items():
            base = results["default_unpooled" if variant.endswith("_unpooled") else "default"]
            mib, base_mib = res.get("steady_step_mib"), base.get("steady_step_mib")
            rows.append({
                "round": i, "variant": variant, "step_seconds": res["step_seconds_median"],
                "time_ratio": round(res["step_seconds_median"] / base["step_seconds_median"], 3),
                "step_mib": mib,
                "memory_change": (round(mib / base_mib - 1, 3) if mib is not None and base_mib else None),
                "last_loss": res["last_loss"]})
        base = results["default"]
        me, custom = results.get("memory_efficient", {}), results.get("custom")
        if custom and "recomputed_forward_ms" in me:
            recompute = sum(me["recomputed_forward_ms"].values()) / 1000
            rows.append({"round": i, "variant": "floor (custom + recomputed forward)",
                         "step_seconds": round(custom["step_seconds_median"] + recompute, 4),
                         "time_ratio": round((custom["step_seconds_median"] + recompute)
                                             / base["step_seconds_median"], 3),
                         "recomputed_forward_seconds": round(recompute, 4)})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    out = ["| round | variant | step s | / default | step MiB (net of build) | vs default |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        mib = "" if r.get("step_mib") is None else f"{r['step_mib']:.0f}"
        change = "" if r.get("memory_change") is None else f"{r['memory_change']:+.0%}"
        out.append(f"| {r['round']} | {r['variant']} | {r['step_seconds']:.3f} | "
                   f"{r['time_ratio']:.2f}x | {mib} | {change} |")
    return "\n".join(out) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.bench.gluon_recompute",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=VARIANTS, help="measure this one in this process")
    p.add_argument("--preset", default="densenet121")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per variant process")
    p.add_argument("--no-unpooled", dest="unpooled", action="store_false",
                   help="leave out the *_unpooled variants (slow: page faults)")
    p.add_argument("--out", type=Path, help="write the results as JSON (atomically)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..spec import get_spec

    if args.variant:
        print(json.dumps(measure(args.variant, get_spec(args.preset), batch=args.batch,
                                 size=args.size, steps=args.steps, warmup=args.warmup)))
        return 0
    result = run(args)
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
    print(markdown(result["summary"]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
