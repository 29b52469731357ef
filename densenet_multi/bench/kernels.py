"""Is a backend's gap in its framework's convolution kernels, or in the model code around them?

Measures, in one process, for one backend (``torch`` eager or channels_last, ``flax``
``jit``), a network preset at an input size and a batch size, and ``infer`` (eval
forward) or ``train`` (training step):

``network``
    the whole network's step, built by the bench probe (:mod:`.probe`) exactly as
    ``densenet-multi bench`` times it;
``convs_each``
    every convolution of the network alone, with its exact shapes (from the spec's
    channel plan and :class:`~densenet_multi.spec.ConvGeometry`; NCHW/OIHW for torch,
    NHWC/HWIO for flax, as the models hold them): forward only for ``infer``, forward
    and both gradients (input and kernel; the stem's kernel only, as its input needs
    none) for ``train``. Torch eager ``F.conv2d`` / ``torch.autograd.grad``; flax one
    ``jax.jit`` per convolution. The sum over the network's convolutions;
``convs_one_program`` (flax only)
    all those convolutions in one jitted program, so XLA schedules them together
    as it does in the network.

Each timed round runs the three parts one after the other (interleaved, so a shared
machine's drift hits them alike); after ``--warmup`` untimed rounds (the first one
compiles; its time is recorded apart) ``--steps`` rounds are timed. Reported: the
medians (min, max) in ms, the cores kept busy (process CPU time / wall time) of each
part, and the convolutions summed per kind (``stem``, ``bottleneck`` 1x1, ``growth``
3x3, ``transition`` 1x1: count, ms, multiply-accumulates of the work done, GMAC/s). Prints one JSON line
that starts with ``{"kernels":`` and with ``--out`` writes it to a file atomically::

    python -m densenet_multi.bench.kernels --backend flax --preset densenet121 --size 224 \\
        --batch 8 --what train --out flax_train.json

With ``--profile N`` (flax), ``N`` more network steps run under ``jax.profiler`` (no
Python tracer) and the trace's XLA operations are summed by name (``profile``: ms per
step over all threads, per op kind (the name without its ``.N`` suffix) and the top ops);
the summary adds them as a second table.

``--summary TORCH_JSON FLAX_JSON`` prints the Markdown table part | torch ms | flax ms
| flax/torch of two such results (same preset, size, batch and what).

The framework is imported inside :func:`measure`, as in the probe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import probe

__all__ = ["KINDS", "MODES", "ConvShape", "conv_table", "measure", "summary_markdown", "main"]

#: the conv kinds of a DenseNet, in network order
KINDS = ("stem", "bottleneck", "growth", "transition")
#: backend -> the modes whose convolutions this module runs the same way as the network
MODES: dict[str, tuple[str, ...]] = {"torch": ("eager", "channels_last"), "flax": ("jit",)}


@dataclass(frozen=True)
class ConvShape:
    """One convolution of the network: its kind, widths, window and input size (square)."""

    kind: str
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    size: int  # input height = width

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def macs(self, batch: int) -> int:
        """Multiply-accumulates of its forward pass on ``batch`` samples."""
        return batch * self.out_size**2 * self.cout * self.cin * self.kernel**2

    def as_dict(self) -> dict[str, int | str]:
        return {k: getattr(self, k) for k in ("kind", "cin", "cout", "kernel", "stride", "padding",
                                              "size")}


def conv_table(spec: Any, size: int) -> list[ConvShape]:
    """Every convolution of ``spec``'s network on ``size`` x ``size`` inputs, in network
    order, from the spec's channel plan, stage shapes and conv geometries."""
    shapes = spec.stage_shapes(size, size)  # validates the size
    plan = spec.channel_plan

    def conv(kind: str, cin: int, cout: int, geometry: Any, at: int) -> ConvShape:
        return ConvShape(kind, cin, cout, geometry.kernel, geometry.stride, geometry.padding, at)

    out = [conv("stem", spec.in_channels, plan.stem_channels, spec.stem_conv, size)]
    for bp in plan.blocks:
        at = shapes[f"block{bp.index}"][1]
        for cin in bp.layer_in_channels:
            if bp.bottleneck_channels is not None:
                out.append(conv("bottleneck", cin, bp.bottleneck_channels, spec.bottleneck_conv, at))
                out.append(conv("growth", bp.bottleneck_channels, spec.growth_rate, spec.growth_conv, at))
            else:  # a plain BN-ReLU-3x3 layer
                out.append(conv("growth", cin, spec.growth_rate, spec.growth_conv, at))
        if bp.index < spec.num_blocks:  # the transition's 1x1 conv runs before its pool
            tp = plan.transitions[bp.index - 1]
            out.append(conv("transition", tp.in_channels, tp.out_channels, spec.transition_conv, at))
    return out


# ---------------------------------------------------------------------- the convolutions alone
# Each returns (one callable per conv, the all-in-one-program callable or None); every
# callable runs its work and waits for the result. Inputs are shared between convs of
# the same shape; kernels are scaled like the network's (Kaiming) so no value goes
# subnormal.
def _torch_convs(convs: Sequence[ConvShape], batch: int, what: str, mode: str
                 ) -> tuple[list[Callable[[], Any]], Callable[[], Any] | None]:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    cache: dict[tuple[int, ...], Any] = {}

    def normal(*shape: int, scale: float = 1.0) -> Any:
        if shape not in cache:
            cache[shape] = (torch.randn(shape, generator=gen) * scale).contiguous(memory_format=fmt)
        return cache[shape]

    runs: list[Callable[[], Any]] = []
    for c in convs:
        x = normal(batch, c.cin, c.size, c.size)
        w = torch.randn((c.cout, c.cin, c.kernel, c.kernel), generator=gen).mul_(
            (2.0 / (c.cin * c.kernel**2)) ** 0.5).contiguous(memory_format=fmt)
        geometry = {"stride": c.stride, "padding": c.padding}
        if what == "infer":
            def run(x: Any = x, w: Any = w, geometry: dict[str, int] = geometry) -> Any:
                with torch.no_grad():
                    return F.conv2d(x, w, **geometry)
        else:
            # the stem's input (the batch) needs no gradient, in the network as here
            x = x.detach().requires_grad_(c.kind != "stem")
            w.requires_grad_(True)
            g = normal(batch, c.cout, c.out_size, c.out_size)
            wrt = (x, w) if x.requires_grad else (w,)

            def run(x: Any = x, w: Any = w, g: Any = g, wrt: tuple[Any, ...] = wrt,
                    geometry: dict[str, int] = geometry) -> Any:
                y = F.conv2d(x, w, **geometry)
                return y, torch.autograd.grad(y, wrt, g)
        runs.append(run)
    return runs, None  # eager: there is no one program


def _flax_convs(convs: Sequence[ConvShape], batch: int, what: str, mode: str
                ) -> tuple[list[Callable[[], Any]], Callable[[], Any] | None]:
    import jax

    rng = np.random.Generator(np.random.PCG64(0))
    cache: dict[tuple[int, ...], Any] = {}

    def normal(*shape: int) -> Any:
        if shape not in cache:
            cache[shape] = jax.device_put(rng.standard_normal(shape, dtype=np.float32))
        return cache[shape]

    def conv_fn(c: ConvShape) -> Callable[..., Any]:
        def conv(x: Any, w: Any) -> Any:  # what nnx.Conv computes (NHWC, HWIO, explicit pads)
            return jax.lax.conv_general_dilated(
                x, w, (c.stride, c.stride), ((c.padding, c.padding), (c.padding, c.padding)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if what == "infer":
            return conv

        def fwd_bwd(x: Any, w: Any, g: Any) -> Any:
            if c.kind == "stem":  # the batch needs no gradient: the kernel's only
                y, vjp = jax.vjp(lambda w: conv(x, w), w)
            else:
                y, vjp = jax.vjp(conv, x, w)
            return y, vjp(g)
        return fwd_bwd

    fns, args = [], []
    for c in convs:
        w = jax.device_put(rng.standard_normal((c.kernel, c.kernel, c.cin, c.cout), dtype=np.float32)
                            * np.float32((2.0 / (c.cin * c.kernel**2)) ** 0.5))
        a = (normal(batch, c.size, c.size, c.cin), w)
        if what != "infer":
            a += (normal(batch, c.out_size, c.out_size, c.cout),)
        fns.append(conv_fn(c))
        args.append(a)
    runs: list[Callable[[], Any]] = []
    for fn, a in zip(fns, args, strict=True):
        jitted = jax.jit(fn)
        runs.append(lambda jitted=jitted, a=a: jax.block_until_ready(jitted(*a)))
    together = jax.jit(lambda all_args: [fn(*a) for fn, a in zip(fns, all_args, strict=True)])
    return runs, lambda: jax.block_until_ready(together(args))


_CONVS = {"torch": _torch_convs, "flax": _flax_convs}


# ---------------------------------------------------------------------- the measurement
@dataclass
class _Timer:
    """Wall and process CPU time of one part: per round, and summed over the rounds."""

    rounds: list[float]
    cpu: float = 0.0
    wall: float = 0.0

    def add(self, wall: float, cpu: float) -> None:
        self.rounds.append(wall)
        self.wall += wall
        self.cpu += cpu

    def summary(self) -> dict[str, Any]:
        ms = [t * 1e3 for t in self.rounds]
        return {"ms_median": round(statistics.median(ms), 3), "ms_min": round(min(ms), 3),
                "ms_max": round(max(ms), 3),
                "cores_busy": round(self.cpu / self.wall, 2) if self.wall > 0 else None}


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def measure(cfg: probe.Config, spec: Any = None, profile: int = 0) -> dict[str, Any]:
    """Time the network's step and its convolutions alone (see the module docstring);
    ``spec``, a :class:`~densenet_multi.spec.DenseNetSpec`, replaces the preset's network
    (its name is recorded as the preset); ``profile`` > 0 (flax): that many more network
    steps profiled (:func:`profile_flax`)."""
    from ..spec import get_spec

    if cfg.backend not in MODES or cfg.mode not in MODES[cfg.backend]:
        known = ", ".join(f"{b} ({'/'.join(m)})" for b, m in MODES.items())
        raise ValueError(f"kernels measures {known}; got {cfg.backend} ({cfg.mode})")
    if cfg.what not in ("infer", "train") or cfg.device != "cpu" or cfg.memory_efficient:
        raise ValueError(f"kernels measures what='infer' or 'train' on the cpu, default mode; got "
                         f"what={cfg.what!r}, device={cfg.device!r}, memory_efficient={cfg.memory_efficient}")
    if profile and cfg.backend != "flax":
        raise ValueError(f"profile runs jax.profiler: flax only, got backend {cfg.backend!r}")
    spec = get_spec(cfg.preset) if spec is None else spec
    convs = conv_table(spec, cfg.size)
    # the probe's own inputs (probe.measure draws them so)
    rng = np.random.Generator(np.random.PCG64(0))
    x = rng.standard_normal((cfg.batch, spec.in_channels, cfg.size, cfg.size)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, size=cfg.batch)
    out: dict[str, Any] = {"kernels": 1, **{k: getattr(cfg, k) for k in (
        "backend", "mode", "size", "batch", "what", "steps", "warmup")}, "preset": spec.name,
        "net": cfg.net}
    net_step, threads = probe._FRAMEWORKS[cfg.backend](cfg, spec, x, y, lambda stage: None)
    runs, together = _CONVS[cfg.backend](convs, cfg.batch, cfg.what, str(cfg.mode))

    parts: dict[str, Callable[[], Any]] = {"network": net_step}
    parts["convs_each"] = lambda: [run() for run in runs]
    if together is not None:
        parts["convs_one_program"] = together
    # the first round compiles (jit) or primes oneDNN's caches: timed apart
    out["first_seconds"] = {name: round(_timed(fn)[0], 3) for name, fn in parts.items()}
    for _ in range(cfg.warmup):
        for fn in parts.values():
            fn()
    timers = {name: _Timer([]) for name in parts}
    per_conv = [_Timer([]) for _ in convs]
    per_kind = {kind: _Timer([]) for kind in KINDS}
    for _ in range(cfg.steps):
        for name, fn in parts.items():
            if name != "convs_each":
                timers[name].add(*_timed(fn))
                continue
            kind_wall = dict.fromkeys(KINDS, 0.0)
            kind_cpu = dict.fromkeys(KINDS, 0.0)
            for c, run, t in zip(convs, runs, per_conv, strict=True):
                wall, cpu = _timed(run)
                t.add(wall, cpu)
                kind_wall[c.kind] += wall
                kind_cpu[c.kind] += cpu
            for kind in KINDS:
                per_kind[kind].add(kind_wall[kind], kind_cpu[kind])
            timers[name].add(sum(kind_wall.values()), sum(kind_cpu.values()))
    # training: forward, input gradient and kernel gradient each cost one forward's MACs
    # (the stem: no input gradient)
    def passes(c: ConvShape) -> int:
        return 1 if cfg.what == "infer" else (2 if c.kind == "stem" else 3)

    out["parts"] = {name: t.summary() for name, t in timers.items()}
    kinds = {}
    for kind in KINDS:
        members = [c for c in convs if c.kind == kind]
        row: dict[str, Any] = {"count": len(members),
                               "macs": sum(c.macs(cfg.batch) * passes(c) for c in members)}
        if members:
            row.update(per_kind[kind].summary())
            row["gmacs_per_s"] = round(row["macs"] / 1e6 / row["ms_median"], 2)
        kinds[kind] = row
    out["kinds"] = kinds
    out["convs"] = [{**c.as_dict(), "ms_median": round(statistics.median(t.rounds) * 1e3, 4)}
                    for c, t in zip(convs, per_conv, strict=True)]
    net_ms = out["parts"]["network"]["ms_median"]
    out["conv_share"] = round(out["parts"]["convs_each"]["ms_median"] / net_ms, 3) if net_ms > 0 else None
    if profile:
        out["profile"] = profile_flax(net_step, profile)
    out["threads"] = {**threads, "env": probe._threads_env()}
    out["versions"] = probe._versions(["numpy", *probe._VERSIONS[cfg.backend]])
    out["status"] = "ok"
    return out


# ---------------------------------------------------------------------- the flax profile
def _op_kind(name: str) -> str:
    """An XLA op name without its instance number: ``convolution.12`` -> ``convolution``."""
    head, _, tail = name.rpartition(".")
    return head if head and tail.isdigit() else name


def profile_flax(step: Callable[[], Any], steps: int) -> dict[str, Any]:
    """Run ``step`` ``steps`` times under ``jax.profiler`` and sum the XLA CPU runtime's op
    events (the threads of its client and its Eigen pool; the executor's own wrapper
    events left out, as they enclose the ops) per op name and per op kind, in ms per step.
    Ops on different threads overlap: the sums are thread time, not wall time."""
    import tempfile

    import jax

    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # the Python tracer's own cost would swamp a step
    with tempfile.TemporaryDirectory(prefix="kernels-profile-") as tmp:
        c, w = time.process_time(), time.perf_counter()
        with jax.profiler.trace(tmp, profiler_options=options):
            for _ in range(steps):
                step()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        traces = sorted(Path(tmp).rglob("*.xplane.pb"))
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no .xplane.pb trace under {tmp}")
        data = jax.profiler.ProfileData.from_file(str(traces[-1]))
        by_op: dict[str, float] = {}
        for plane in data.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLA"):
                    continue
                for ev in line.events:
                    if not ev.name.startswith("ThunkExecutor"):
                        by_op[ev.name] = by_op.get(ev.name, 0.0) + ev.duration_ns / 1e6 / steps
    by_kind: dict[str, float] = {}
    for name, ms in by_op.items():  # an async op's "end: <name>" event counts with its op
        kind = _op_kind(name.removeprefix("end: "))
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
    if not by_op:
        raise RuntimeError("the jax.profiler trace holds no XLA op events (threads tf_XLA*)")
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"steps": steps, "step_ms": round(wall * 1e3 / steps, 3),
            "cores_busy": round(cpu / wall, 2) if wall > 0 else None,
            "ops_ms": round(sum(by_op.values()), 3), "ops": len(by_op),
            "by_kind_ms": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])[:25]},
            "top_ops_ms": {k: round(v, 3) for k, v in top[:25]}}


# ---------------------------------------------------------------------- the Markdown table
_ROWS = (("network", "network step"), ("convs_each", "convolutions, each alone"),
         ("convs_one_program", "convolutions, one program"))
_KIND_LABELS = {"stem": "stem conv", "bottleneck": "1x1 bottleneck convs",
                "growth": "3x3 growth convs", "transition": "transition 1x1 convs"}


def _check_result(data: Any, backend: str, source: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("kernels") != 1 or data.get("status") != "ok":
        raise ValueError(f"{source}: expected a kernels result (a JSON object with \"kernels\": 1 and "
                         f"\"status\": \"ok\"), got {str(data)[:120]!r}")
    if data.get("backend") != backend:
        raise ValueError(f"{source}: expected the {backend} result, got backend {data.get('backend')!r}")
    return data


def summary_markdown(torch_result: dict[str, Any], flax_result: dict[str, Any]) -> str:
    """The Markdown table part | torch ms | flax ms | flax/torch (and each part's cores
    busy) of a torch and a flax result of the same configuration."""
    t = _check_result(torch_result, "torch", "torch result")
    f = _check_result(flax_result, "flax", "flax result")
    keys = ("preset", "size", "batch", "what")
    if any(t[k] != f[k] for k in keys):
        raise ValueError("the two results measure different configurations: "
                         + ", ".join(f"{k} {t[k]!r} vs {f[k]!r}" for k in keys if t[k] != f[k]))

    def cell(row: dict[str, Any] | None, key: str) -> str:
        v = None if row is None else row.get(key)
        return "—" if v is None else f"{v:.1f}" if key == "ms_median" else f"{v:.2f}"

    rows = [(label, t["parts"].get(k), f["parts"].get(k)) for k, label in _ROWS]
    # what the step spends outside its convolutions (BN, ReLU, concatenations, pools, the
    # update; and any scheduling loss): network step minus the convolutions each alone
    rows.insert(1, ("rest of the step (network - convolutions)", *(
        {"ms_median": r["parts"]["network"]["ms_median"] - r["parts"]["convs_each"]["ms_median"]}
        for r in (t, f))))
    rows += [(f"{_KIND_LABELS[k]} ({t['kinds'][k]['count']})", t["kinds"][k], f["kinds"][k])
             for k in KINDS if t["kinds"][k]["count"]]
    lines = [f"{t['preset']} {t['size']}x{t['size']}, batch {t['batch']}, {t['what']}: torch "
             f"{t['mode']} ({t['net']}) against flax {f['mode']}, medians of {t['steps']} / {f['steps']} "
             "rounds",
             "",
             "| part | torch ms | flax ms | flax/torch | torch cores busy | flax cores busy |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, a, b in rows:
        ratio = (f"{b['ms_median'] / a['ms_median']:.2f}" if a and b and a.get("ms_median")
                 and b.get("ms_median") is not None else "—")
        lines.append(f"| {label} | {cell(a, 'ms_median')} | {cell(b, 'ms_median')} | {ratio} | "
                     f"{cell(a, 'cores_busy')} | {cell(b, 'cores_busy')} |")
    prof = f.get("profile")
    if prof:  # the flax step's XLA ops by kind (thread time: ops on different threads overlap)
        lines += ["", f"flax step under jax.profiler: {prof['step_ms']:.1f} ms per step, "
                  f"{prof['cores_busy']} cores busy, XLA ops {prof['ops_ms']:.1f} ms of thread time",
                  "", "| XLA op kind | ms per step | share of op time |", "|---|---:|---:|"]
        lines += [f"| {kind} | {ms:.1f} | {ms / prof['ops_ms']:.0%} |"
                  for kind, ms in list(prof["by_kind_ms"].items())[:12]]
    return "\n".join(lines) + "\n"


def _load(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    for line in reversed(text.splitlines()):
        if line.startswith('{"kernels":'):
            return json.loads(line)
    raise ValueError(f"{path}: no kernels result (a line starting with '{{\"kernels\":') in it")


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.bench.kernels",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=sorted(MODES))
    p.add_argument("--official", action="store_true",
                   help="the network step of the framework's official DenseNet (torch: torchvision)")
    p.add_argument("--mode", default=None,
                   help="; ".join(f"{b}: {', '.join(m)}" for b, m in MODES.items()) + " (default: the first)")
    p.add_argument("--preset", default="densenet121")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--what", choices=("infer", "train"), default="train")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="flax: profile N more network steps with jax.profiler (default 0: none)")
    p.add_argument("--out", help="also write the JSON line to this file (atomically)")
    p.add_argument("--summary", nargs=2, metavar=("TORCH_JSON", "FLAX_JSON"),
                   help="print the Markdown table of two results instead of measuring")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.summary:
        try:
            print(summary_markdown(_load(args.summary[0]), _load(args.summary[1])), end="")
        except (OSError, ValueError) as e:
            parser.error(str(e))
        return 0
    if args.backend is None:
        parser.error("--backend is required (or --summary TORCH_JSON FLAX_JSON)")
    try:
        cfg = probe.Config(args.backend, args.official, args.mode, args.preset, args.size, args.batch,
                           args.what, steps=args.steps, warmup=args.warmup)
        if args.profile and cfg.backend != "flax" or args.profile < 0:
            raise ValueError(f"--profile takes a number of steps >= 0, for flax only; got {args.profile} "
                             f"for {cfg.backend}")
        if cfg.mode not in MODES[cfg.backend]:
            raise ValueError(f"mode of {cfg.backend} must be one of {MODES[cfg.backend]} here, "
                             f"got {cfg.mode!r}")
    except ValueError as e:
        parser.error(str(e))
    status = 0
    try:
        result = measure(cfg, profile=args.profile)
    except Exception as e:  # reported as a failed measurement, with the traceback on stderr
        traceback.print_exc()
        result = {"kernels": 1, **{k: getattr(cfg, k) for k in ("backend", "mode", "preset", "size",
                                                                "batch", "what")},
                  "status": "failed", "reason": f"{type(e).__name__}: {e}"}
        status = 1
    line = json.dumps(result)
    if args.out:
        from .._files import write_text_atomic

        write_text_atomic(args.out, line + "\n")
    print(line, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
