"""One benchmark configuration, measured in this process; run it in a fresh one.

A configuration is a backend, ours or the framework's official DenseNet, a mode
(the framework's idiomatic fast path), a network preset at an input size and a
batch size, and what to measure:

``infer``
    eval-mode forward passes: img/s per step;
``train``
    training steps (forward, softmax cross-entropy, backward, SGD with momentum),
    the framework's idiomatic step: img/s per step;
``memory``
    training steps as ``train``, and the process's peak resident set size
    (:func:`peak_rss_mib`) after importing the framework, after building the network,
    after the first and warm-up steps (``rss_warm_mib``: with XLA, the compilation's
    own memory is in it) and after the steps (``rss_peak_mib``, the whole run's peak);
    and, the kernel's high-water mark reset after the warm-up (:func:`reset_peak_rss`),
    the timed steps' own peak (``rss_steady_mib``; the C allocator's free memory is
    given back to the system first, :func:`trim_allocator`). ``step_mib`` and
    ``steady_step_mib`` are those two peaks net of the import-and-build baseline.

The first step (with ``jit``, ``torch.compile`` or XLA: the compilation) is timed
on its own; then ``--warmup`` more untimed steps, then ``--steps`` steps timed one
by one: their img/s give the median, min and max. The thread settings the
framework ended up with, the share of cores the timed steps kept busy (process
CPU time / wall time), and the versions are recorded. Prints one JSON line that
starts with ``{"probe":``::

    python -m densenet_multi.bench.probe --backend torch --official --preset densenet121 \\
        --size 224 --batch 8 --what train --mode channels_last

Everything here imports only the standard library and numpy at module level; the
framework is imported inside :func:`measure` (after the ``rss_start`` reading).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MODES", "OFFICIAL", "WHAT", "Config", "peak_rss_mib", "measure", "main"]

#: backend -> its modes, the first being the default
MODES: dict[str, tuple[str, ...]] = {
    "torch": ("eager", "channels_last", "compile"),
    "flax": ("jit", "jit_eigen"),
    "keras": ("graph", "xla"),
    "gluon": ("hybridized",),
}
#: XLA flags of a Flax mode, added to XLA_FLAGS before JAX starts (a fresh process per
#: configuration). ``jit_eigen``: XLA's own (Eigen) convolutions instead of the YNNPACK
#: fusions it picks by default on this CPU, which run each convolution on one thread
#: (`python -m densenet_multi.bench.kernels --profile`: 92% of an inference step's op
#: time in ``ynn_fusion``, 1.17 of 2 cores busy); measured, DenseNet-121 224 batch 8:
#: inference 11.4 -> 19.1 img/s, training step 2.0 -> 4.0 img/s.
FLAX_XLA_FLAGS: dict[str, str] = {
    "jit": "",
    "jit_eigen": "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
}
#: backend -> the official DenseNet a user of that framework would pick (None: there is none)
OFFICIAL: dict[str, str | None] = {
    "torch": "torchvision.models",
    "flax": None,
    "keras": "keras.applications",
    "gluon": "mxnet.gluon.model_zoo.vision",
}
#: presets the official nets build exactly (the same graph as ours)
OFFICIAL_PRESETS = ("densenet121", "densenet161", "densenet169", "densenet201")
WHAT = ("infer", "train", "memory")
#: backends the probe runs on a GPU (their device memory is read with the framework's own counters)
CUDA_BACKENDS = ("torch", "flax")
_KERAS_APPS = {"densenet121": "DenseNet121", "densenet169": "DenseNet169", "densenet201": "DenseNet201"}
_VERSIONS = {"torch": ["torch", "torchvision"], "flax": ["jax", "jaxlib", "flax", "optax"],
             "keras": ["keras", "tensorflow"], "gluon": ["mxnet"]}


@dataclass(frozen=True)
class Config:
    backend: str
    official: bool = False
    mode: str | None = None  # None: the backend's default mode
    preset: str = "densenet121"
    size: int = 224
    batch: int = 8
    what: str = "train"
    memory_efficient: bool = False
    steps: int = 10
    warmup: int = 3
    device: str = "cpu"  # "cpu" or "cuda" (torch and flax)

    def __post_init__(self) -> None:
        if self.backend not in MODES:
            raise ValueError(f"backend must be one of {sorted(MODES)}, got {self.backend!r}")
        mode = self.mode or MODES[self.backend][0]
        if mode not in MODES[self.backend]:
            raise ValueError(f"mode of {self.backend} must be one of {MODES[self.backend]}, "
                             f"got {self.mode!r}")
        object.__setattr__(self, "mode", mode)
        if self.what not in WHAT:
            raise ValueError(f"what must be one of {WHAT}, got {self.what!r}")
        if self.official and not official_available(self.backend, self.preset, self.size):
            raise ValueError(f"no official {self.backend} net for preset {self.preset!r} at "
                             f"{self.size}x{self.size} (official nets: {official_presets(self.backend)}"
                             + (", 224x224 to 255x255 only: the model zoo's head is a fixed 7x7 pool)"
                                if self.backend == "gluon" else ")"))
        for name in ("size", "batch", "steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.device not in ("cpu", "cuda") or (self.device == "cuda"
                                                  and self.backend not in CUDA_BACKENDS):
            raise ValueError(f"device must be 'cpu' (any backend) or 'cuda' ({', '.join(CUDA_BACKENDS)}), "
                             f"got {self.device!r} for {self.backend}")
        if int(self.warmup) < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")

    @property
    def net(self) -> str:
        return "official" if self.official else "ours"

    def argv(self) -> list[str]:
        """The command-line arguments of :func:`main` that measure this configuration."""
        out = ["--backend", self.backend, "--mode", str(self.mode), "--preset", self.preset,
               "--size", str(self.size), "--batch", str(self.batch), "--what", self.what,
               "--steps", str(self.steps), "--warmup", str(self.warmup)]
        if self.official:
            out.append("--official")
        if self.memory_efficient:
            out.append("--memory-efficient")
        if self.device != "cpu":
            out += ["--device", self.device]
        return out


def official_presets(backend: str) -> tuple[str, ...]:
    if OFFICIAL.get(backend) is None:
        return ()
    return tuple(_KERAS_APPS) if backend == "keras" else OFFICIAL_PRESETS


def official_available(backend: str, preset: str, size: int) -> bool:
    """Whether ``backend``'s official net builds ``preset`` (the same graph as ours) at ``size``."""
    if backend == "gluon" and not 224 <= size < 256:
        return False  # the Gluon model zoo's DenseNet ends in a fixed 7x7 average pool
    return preset in official_presets(backend)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (since the start, or since the last
    :func:`reset_peak_rss`), in MiB (Linux and macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def trim_allocator() -> bool:
    """Give the C allocator's free memory back to the system (glibc's ``malloc_trim(0)``):
    memory a one-off phase (XLA's compilation) freed stays resident in glibc's arenas
    otherwise, and would be counted in every later reading. False where there is no
    glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return False
    if trim is None:
        return False
    trim(0)
    return True


def reset_peak_rss() -> bool:
    """Set this process's peak resident set size back to its current one (Linux >= 4.0:
    ``5`` written to ``/proc/self/clear_refs`` resets the kernel's high-water mark, which
    ``getrusage`` and ``VmHWM`` read). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _versions(names: Sequence[str]) -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in names:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def _threads_env() -> dict[str, str]:
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
            "TF_NUM_INTEROP_THREADS", "MXNET_CPU_WORKER_NTHREADS", "XLA_FLAGS")
    return {k: os.environ[k] for k in keys if k in os.environ}


# ---------------------------------------------------------------------- the four frameworks
# Each returns (step, threads): ``step()`` runs one forward (infer) or training step and
# waits for its result; ``threads`` is what the framework reports about its thread pools.
def _torch(cfg: Config, spec: Any, x: np.ndarray, y: np.ndarray, mark: Callable[[str], None]
           ) -> tuple[Callable[[], Any], dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    mark("import")
    if cfg.official:
        import torchvision

        kw = {"memory_efficient": True} if cfg.memory_efficient else {}
        model = getattr(torchvision.models, cfg.preset)(weights=None, num_classes=spec.num_classes,
                                                        **kw)
    else:
        from ..torch import build

        model = build(spec, memory_efficient=cfg.memory_efficient)
    dev = torch.device(cfg.device)
    model = model.to(dev)
    mark("build")
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if cfg.mode == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(model) if cfg.mode == "compile" else model
    threads = {"torch_num_threads": torch.get_num_threads(),
               "torch_interop_threads": torch.get_num_interop_threads()}
    if cfg.what == "infer":
        model.eval()

        def step() -> Any:
            with torch.no_grad():
                out = fn(xt)
            sync()
            return out
        return step, threads
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=2.0**-7, momentum=0.875)

    def train_step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fn(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()  # waits for the step
    return train_step, threads


def _flax(cfg: Config, spec: Any, x: np.ndarray, y: np.ndarray, mark: Callable[[str], None]
          ) -> tuple[Callable[[], Any], dict[str, Any]]:
    if flags := FLAX_XLA_FLAGS[cfg.mode]:  # read when JAX starts its CPU backend
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    import jax
    from flax import nnx

    from ..layouts import nchw_to_nhwc

    mark("import")
    from ..flax import build
    from ..flax.runtime import _train_step, make_optimizer

    model = build(spec, memory_efficient=cfg.memory_efficient, device=cfg.device)
    mark("build")
    device = jax.devices("gpu" if cfg.device == "cuda" else "cpu")[0]
    xj = jax.device_put(nchw_to_nhwc(x), device)
    yj = jax.device_put(y.astype(np.int32), device)
    threads = {"jax_devices": [str(d) for d in jax.devices()]}
    if cfg.what == "infer":
        model.eval()
        forward = nnx.jit(lambda m, v: m(v))
        return lambda: forward(model, xj).block_until_ready(), threads
    model.train()
    optimizer = make_optimizer(model, 2.0**-7, 0.875)
    # the backend's own jitted step (nnx.value_and_grad + optimizer.update)
    return lambda: _train_step(model, optimizer, xj, yj).block_until_ready(), threads


def _keras(cfg: Config, spec: Any, x: np.ndarray, y: np.ndarray, mark: Callable[[str], None]
           ) -> tuple[Callable[[], Any], dict[str, Any]]:
    import keras

    from ..layouts import nchw_to_nhwc

    mark("import")
    if cfg.official:
        if cfg.memory_efficient:
            raise NotImplementedError("keras.applications' DenseNet has no memory-efficient mode")
        app = getattr(keras.applications, _KERAS_APPS[cfg.preset])
        model = app(weights=None, input_shape=(cfg.size, cfg.size, 3), classes=spec.num_classes,
                    classifier_activation=None)
    else:
        from ..keras import build

        model = build(spec, memory_efficient=cfg.memory_efficient)
    mark("build")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=2.0**-7, momentum=0.875),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=(cfg.mode == "xla"))
    xk = nchw_to_nhwc(x)
    threads: dict[str, Any] = {"keras_backend": keras.backend.backend()}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        threads.update(tf_intra_op=tf.config.threading.get_intra_op_parallelism_threads(),
                       tf_inter_op=tf.config.threading.get_inter_op_parallelism_threads())
    if cfg.what == "infer":
        return lambda: model.predict_on_batch(xk), threads
    return lambda: model.train_on_batch(xk, y), threads


def _gluon(cfg: Config, spec: Any, x: np.ndarray, y: np.ndarray, mark: Callable[[str], None]
           ) -> tuple[Callable[[], Any], dict[str, Any]]:
    import mxnet as mx
    from mxnet import autograd, gluon, nd

    mark("import")
    from ..gluon.runtime import legacy_mode

    with legacy_mode():
        if cfg.official:
            if cfg.memory_efficient:
                raise NotImplementedError("the Gluon model zoo's DenseNet has no memory-efficient mode")
            net = getattr(gluon.model_zoo.vision, cfg.preset)(pretrained=False,
                                                              classes=spec.num_classes)
            net.initialize(mx.init.Xavier())
        else:
            from ..gluon import build

            net = build(spec, memory_efficient=cfg.memory_efficient)
        net.hybridize(static_alloc=True, static_shape=True)
    mark("build")
    xm, ym = nd.array(x), nd.array(y.astype(np.float32))
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset (MXNet: half the cores)")}

    def legacy(fn: Callable[[], Any]) -> Callable[[], Any]:
        def wrapped() -> Any:
            with legacy_mode():
                return fn()
        return wrapped

    if cfg.what == "infer":
        return legacy(lambda: net(xm).wait_to_read()), threads
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 2.0**-7, "momentum": 0.875})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def train_step() -> Any:
        with autograd.record():
            loss = loss_fn(net(xm), ym)
        loss.backward()
        trainer.step(xm.shape[0])  # gradients of the summed loss, divided by the batch
        return loss.mean().asscalar()  # waits for the step
    return legacy(train_step), threads


_FRAMEWORKS = {"torch": _torch, "flax": _flax, "keras": _keras, "gluon": _gluon}


# ---------------------------------------------------------------------- the measurement
def measure(cfg: Config) -> dict[str, Any]:
    """Build the configuration's network and time it (see the module docstring)."""
    from ..spec import get_spec

    spec = get_spec(cfg.preset)
    rng = np.random.Generator(np.random.PCG64(0))
    x = rng.standard_normal((cfg.batch, spec.in_channels, cfg.size, cfg.size)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, size=cfg.batch)
    out: dict[str, Any] = {"probe": 1, **{k: getattr(cfg, k) for k in (
        "backend", "mode", "preset", "size", "batch", "what", "memory_efficient", "steps", "warmup",
        "device")},
        "net": cfg.net, "rss_start_mib": round(peak_rss_mib(), 1)}
    t0 = time.perf_counter()

    def mark(stage: str) -> None:
        out[f"rss_{stage}_mib"] = round(peak_rss_mib(), 1)
        out[f"{stage}_seconds"] = round(time.perf_counter() - t0, 3)

    step, threads = _FRAMEWORKS[cfg.backend](cfg, spec, x, y, mark)
    if cfg.device == "cuda":
        out["device_build_mib"] = _device_mib(cfg.backend, "current")
        out["device_name"] = _device_name(cfg.backend)
    t1 = time.perf_counter()
    first = step()
    out["first_step_seconds"] = round(time.perf_counter() - t1, 3)
    if cfg.what != "infer":  # the loss of the first step: the same weights give the same loss
        out["loss"] = float(np.asarray(first))
    for _ in range(cfg.warmup):
        step()
    # the peak so far holds the one-off work of the first steps (XLA's and oneDNN's
    # compilation, caches): read it, then measure the timed steps' own peak, from the
    # memory in use (what the allocator holds free given back first)
    out["rss_warm_mib"] = round(peak_rss_mib(), 1)
    out["allocator_trimmed"] = trim_allocator()
    steady = reset_peak_rss()
    times = []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(cfg.steps):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    ips = sorted(cfg.batch / t for t in times)
    out.update(
        step_seconds=[round(t, 5) for t in times],
        step_seconds_median=round(statistics.median(times), 5),
        ips_median=round(statistics.median(ips), 3), ips_min=round(ips[0], 3),
        ips_max=round(ips[-1], 3),
        cores_busy=round(cpu / wall, 2) if wall > 0 else None,
        rss_peak_mib=round(max(out["rss_warm_mib"], peak_rss_mib()), 1),
        rss_steady_mib=round(peak_rss_mib(), 1) if steady else None,
        threads={**threads, "env": _threads_env(), "cpus": os.cpu_count()},
        versions=_versions(["numpy", *_VERSIONS[cfg.backend]]),
        status="ok",
    )
    out["step_mib"] = round(out["rss_peak_mib"] - out["rss_build_mib"], 1)
    if steady:  # the timed steps' peak, net of the build (the first steps' one-off work left out)
        out["steady_step_mib"] = round(out["rss_steady_mib"] - out["rss_build_mib"], 1)
    if cfg.device == "cuda":
        out["device_peak_mib"] = _device_mib(cfg.backend, "peak")
        out["device_step_mib"] = round(out["device_peak_mib"] - out["device_build_mib"], 1)
    return out


def _device_mib(backend: str, which: str) -> float:
    """The framework's own count of GPU memory in use (``current``) or at its peak so far."""
    if backend == "torch":
        import torch

        n = torch.cuda.memory_allocated() if which == "current" else torch.cuda.max_memory_allocated()
    else:
        import jax

        stats = jax.devices("gpu")[0].memory_stats() or {}
        n = stats.get("bytes_in_use" if which == "current" else "peak_bytes_in_use", float("nan"))
    return round(n / 2**20, 1)


def _device_name(backend: str) -> str:
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name()
    import jax

    return str(jax.devices("gpu")[0].device_kind)


def parse_line(text: str, prefix: str = '{"probe":') -> dict[str, Any] | None:
    """The last JSON line starting with ``prefix`` (a probe's by default) in a process's
    stdout (None if there is none)."""
    for line in reversed(text.splitlines()):
        if line.startswith(prefix):
            return json.loads(line)
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.bench.probe",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=True, choices=sorted(MODES))
    p.add_argument("--official", action="store_true",
                   help="the framework's official DenseNet instead of ours")
    p.add_argument("--mode", default=None,
                   help="; ".join(f"{b}: {', '.join(m)}" for b, m in MODES.items())
                   + " (default: the first)")
    p.add_argument("--preset", default="densenet121")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--what", choices=WHAT, default="train")
    p.add_argument("--memory-efficient", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (torch and flax)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = Config(args.backend, args.official, args.mode, args.preset, args.size, args.batch,
                     args.what, args.memory_efficient, args.steps, args.warmup, args.device)
    except ValueError as e:
        _parser().error(str(e))
    try:
        result = measure(cfg)
    except Exception as e:  # reported as a failed configuration, with the traceback on stderr
        traceback.print_exc()
        result = {"probe": 1, **{k: getattr(cfg, k) for k in ("backend", "mode", "preset", "size",
                                                              "batch", "what", "memory_efficient")},
                  "net": cfg.net, "status": "failed", "reason": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
