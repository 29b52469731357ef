"""The guide's per-part conventions tables, read from the models each backend builds.

:func:`generate` runs :mod:`densenet_multi.guide.introspect` once per backend, each in
its own environment's interpreter (the parity harness's way: ``runner.resolve_python``
and ``runner.worker_env``; no framework is imported here), and writes
``<out>/conventions/<part>.md`` for every part of :data:`PARTS`: one markdown table,
a row per property, the columns Canonical | PyTorch | Flax NNX | Keras 3 | MXNet Gluon.
The canonical column comes from the spec, the canonical parameter table and the NumPy
reference (torchvision's names, NCHW activations, OIHW kernels, PyTorch's BN and SGD
conventions); its BN facts are measured on :func:`densenet_multi.reference.batch_norm`
the way introspect measures each framework's. The raw facts go to
``<out>/conventions/introspect.json``.

``python -m densenet_multi.guide.conventions --out docs/generated`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._files import source_root, write_text_atomic
from ..backend import BACKENDS as BACKEND_TABLE
from ..params import ModuleRef, ParamInfo, init_params, module_table
from ..reference import batch_norm
from ..spec import GROWTH_CONV, ConvGeometry
from . import introspect as I

__all__ = ["PARTS", "BACKENDS", "TITLES", "ROWS", "ConventionsError", "collect", "render",
           "canonical_facts", "generate", "main"]

PARTS = ("conv_block", "dense_layer", "dense_block", "transition", "stem_and_head", "network")
BACKENDS = I.BACKENDS
TITLES = {"torch": "PyTorch", "flax": "Flax NNX", "keras": "Keras 3", "gluon": "MXNet Gluon"}
PACKAGES = {"torch": "torch", "flax": "flax", "keras": "keras", "gluon": "mxnet"}
ROOT = source_root()
#: seconds one backend's introspection may take (it takes 3 to 30 on two CPU cores)
TIMEOUT_S = 600

#: each part's rows: (label, fact key); a key every backend's introspection reports
ROWS: dict[str, tuple[tuple[str, str], ...]] = {
    "conv_block": (
        ("Derives from", "base"),
        ("Children", "layers"),
        ("Trainable parameters, as stored", "trainable"),
        ("Stored, not trained", "non_trainable"),
        ("Input → output (activation layout)", "shapes"),
        ("Conv kernel layout", "kernel"),
        ("Conv padding", "conv_padding"),
        ("Conv bias", "conv_bias"),
        ("BN epsilon", "bn_eps"),
        ("BN momentum", "bn_momentum"),
        ("BN running variance", "bn_running_var"),
        ("Train / eval switch", "train_eval"),
        ("Initialisers (the part built alone)", "init"),
    ),
    "dense_layer": (
        ("Derives from", "base"),
        ("Trainable parameters, as stored", "trainable"),
        ("Stored, not trained", "non_trainable"),
        ("Input → new maps (activation layout)", "shapes"),
        ("Earlier maps passed as", "maps"),
        ("Dropout", "dropout"),
    ),
    "dense_block": (
        ("Derives from", "base"),
        ("Layers held as", "layers"),
        ("Trainable parameters, as stored", "trainable"),
        ("Stored, not trained", "non_trainable"),
        ("Input → output (activation layout)", "shapes"),
        ("Concatenation", "concat"),
    ),
    "transition": (
        ("Derives from", "base"),
        ("Children", "layers"),
        ("Trainable parameters, as stored", "trainable"),
        ("Stored, not trained", "non_trainable"),
        ("Input → output (activation layout)", "shapes"),
        ("Conv kernel layout", "kernel"),
        ("Conv padding", "conv_padding"),
        ("Pooling", "pool"),
    ),
    "stem_and_head": (
        ("Stem layers", "stem_layers"),
        ("Stem parameters, as stored", "stem_params"),
        ("Stem conv kernel layout", "stem_kernel"),
        ("Stem conv padding", "stem_padding"),
        ("Stem max-pool", "stem_pool"),
        ("Stem: input → output", "stem_shapes"),
        ("Head parameters (norm5, classifier)", "head_params"),
        ("Head: stored, not trained", "head_stats"),
        ("Head pooling", "head_pool"),
        ("Classifier weight layout", "classifier"),
        ("Classifier initialisers", "classifier_init"),
    ),
    "network": (
        ("Derives from", "base"),
        ("Trainable parameters", "trainable_count"),
        ("Stored tensors", "stored"),
        ("Names", "name_map"),
        ("`features.conv0.weight` is stored as", "name:features.conv0.weight"),
        ("`features.denseblock1.denselayer1.norm.weight`",
         "name:features.denseblock1.denselayer1.norm.weight"),
        ("`features.denseblock1.denselayer1.norm.running_var`",
         "name:features.denseblock1.denselayer1.norm.running_var"),
        ("`classifier.weight`", "name:classifier.weight"),
        ("Input → output", "shapes"),
        ("Train / eval switch", "train_eval"),
        ("Conv initialiser (as the class builds `conv0`)", "conv_init"),
        ("SGD with momentum", "sgd"),
    ),
}

#: what each part's table is built from, said under the table
SOURCES = {
    "conv_block": "`ConvBlock(spec, 3, 10, spec.growth_conv)` with "
                  "`spec = get_spec(\"d2l\", growth_rate=10)`, run on a 4×3×8×8 batch (mean 1, std 2) "
                  "in eval and then train mode",
    "dense_layer": "`DenseLayer(spec, 3)`, and `DenseLayer(spec, 13)` as the block's second layer",
    "dense_block": "`DenseBlock(spec, 3, 2)`: the chapter's 2-layer block with growth rate 10",
    "transition": "`Transition(spec, 23, 10)` on the dense block's 23-channel output",
    "stem_and_head": "the `d2l` network (`get_spec(\"d2l\")`) on a 2×1×96×96 batch; the head on a "
                     "3×5 map",
    "network": "the `d2l` network (`get_spec(\"d2l\")`) on a 2×1×96×96 batch",
}


class ConventionsError(RuntimeError):
    """A backend's introspection could not run (its environment is missing, or it failed)."""


# ---------------------------------------------------------------------- running the backends
def _python(backend: str, root: Path) -> str:
    """The interpreter of ``backend``'s environment; a clear error naming its tox env if missing."""
    from ..parity.runner import resolve_python

    python, origin = resolve_python(backend, root=root)
    if not python or not Path(python).is_file():
        raise ConventionsError(
            f"{TITLES[backend]}: no interpreter at {python or '(none)'} ({origin}); create the "
            f"backend's environment with `tox -e {BACKEND_TABLE[backend][2]} --notest`, or point "
            f"DENSENET_MULTI_PYTHON_{backend.upper()} at a Python that has it")
    return python


def _run_one(backend: str, root: Path, timeout: float) -> dict[str, Any]:
    from ..parity.runner import worker_env

    env_name = BACKEND_TABLE[backend][2]
    python = _python(backend, root)
    with tempfile.TemporaryDirectory(prefix=f"introspect-{backend}-") as tmp:
        out = Path(tmp) / "facts.json"
        cmd = [python, "-m", "densenet_multi.guide.introspect", backend, "--out", str(out)]
        try:
            proc = subprocess.run(cmd, cwd=root, env=worker_env(backend, ["cpu"], False, root),
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ConventionsError(f"{TITLES[backend]}: introspection ran past {timeout:.0f} s "
                                   f"(tox env {env_name!r})") from e
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
            raise ConventionsError(f"{TITLES[backend]}: `{' '.join(cmd[1:4])}` in tox env "
                                   f"{env_name!r} exited {proc.returncode}:\n{tail}")
        return json.loads(out.read_text(encoding="utf-8"))


def collect(backends: Sequence[str] = BACKENDS, *, root: Path | None = None, jobs: int = 4,
            timeout: float = TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Every backend's introspection facts, the backends run side by side (``jobs`` at once)."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; known: {list(BACKENDS)}")
    root = ROOT if root is None else Path(root)
    missing = []
    for b in backends:  # every interpreter first: a missing one fails before anything runs
        try:
            _python(b, root)
        except ConventionsError as e:
            missing.append(str(e))
    if missing:
        raise ConventionsError("\n".join(missing))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {b: pool.submit(_run_one, b, root, timeout) for b in backends}
        errors, facts = [], {}
        for b, f in futures.items():
            try:
                facts[b] = f.result()
            except ConventionsError as e:
                errors.append(str(e))
    if errors:
        raise ConventionsError("\n\n".join(errors))
    return facts


# ---------------------------------------------------------------------- the canonical column
def _names(refs: Sequence[ModuleRef], trainable: bool, strip: str = "") -> str:
    infos: list[ParamInfo] = [p for m in refs for p in m.params if p.trainable == trainable]
    return "<br>".join(f"`{p.name.removeprefix(strip)}` {I.shape_text(p.shape)}" for p in infos)


def _conv_ref(prefix: str, cout: int, cin: int, g: ConvGeometry, bias: bool) -> ModuleRef:
    ps = [ParamInfo(f"{prefix}.weight", (cout, cin, g.kernel, g.kernel), "conv_weight", "weight")]
    if bias:
        ps.append(ParamInfo(f"{prefix}.bias", (cout,), "conv_bias", "bias"))
    return ModuleRef(prefix, "conv", (), tuple(ps), g)


def _bn_ref(prefix: str, c: int) -> ModuleRef:
    kinds = ("bn_weight", "bn_bias", "bn_running_mean", "bn_running_var")
    attrs = ("weight", "bias", "running_mean", "running_var")
    return ModuleRef(prefix, "bn", (), tuple(ParamInfo(f"{prefix}.{a}", (c,), k, a)
                                             for k, a in zip(kinds, attrs, strict=True)))


def _geometry(g: ConvGeometry) -> str:
    return f"{g.padding} on every side (kernel {g.kernel}, stride {g.stride})"


def canonical_facts() -> dict[str, dict[str, str]]:
    """The canonical column: the spec, the canonical names and the NumPy reference."""
    spec, net = I.chapter_spec(), I.network_spec()
    bias, cin, k = spec.conv_bias, I.IN_CHANNELS, I.GROWTH
    plan = spec.block_plan(cin, I.BLOCK_LAYERS)
    tcin, tout = plan.out_channels, I.TRANSITION_OUT
    conv_block = [_bn_ref("norm", cin), _conv_ref("conv", k, cin, GROWTH_CONV, bias)]
    block = [r for i, c in enumerate(plan.layer_in_channels, start=1)
             for r in (_bn_ref(f"denselayer{i}.norm", c),
                       _conv_ref(f"denselayer{i}.conv", k, c, spec.growth_conv, bias))]
    trans = [_bn_ref("norm", tcin), _conv_ref("conv", tout, tcin, spec.transition_conv, bias)]
    n, s = I.BATCH, I.SIZE
    half = spec.transition_pool.out_size(s)

    # BN, measured on the reference the way introspect measures a framework's layer
    x = I.chapter_input()
    p = {"norm.weight": np.ones(cin, np.float32), "norm.bias": np.zeros(cin, np.float32),
         "norm.running_mean": np.zeros(cin, np.float32), "norm.running_var": np.ones(cin, np.float32)}
    running: dict[str, np.ndarray] = {}
    y_train = batch_norm(x, p, "norm", spec, True, running)
    y_eval = batch_norm(x, p, "norm", spec, False, None)
    bn = I._bn_update_facts("bn_momentum", spec.bn_momentum, x, 1,
                            (p["norm.running_mean"], p["norm.running_var"]),
                            (running["norm.running_mean"], running["norm.running_var"]))
    diff = float(np.max(np.abs(y_train - y_eval)))

    refs = module_table(net)
    nplan = net.channel_plan
    stem = [r for r in refs if r.part[0] == "stem"]
    head = [r for r in refs if r.part[0] in ("norm5", "classifier")]
    shapes = net.stage_shapes(*I.NET_INPUT[2:])
    params = init_params(net, 0)
    w0 = params["features.conv0.weight"]
    ratio = float(w0.std() / math.sqrt(2.0 / math.prod(w0.shape[1:])))
    infos = [q for r in refs for q in r.params]
    mu, (lr1, lr2) = I.SGD_CHECK["momentum"], I.SGD_CHECK["lrs"]
    sgd_after = (1 - lr1) - lr2 * (mu + 1)
    return {
        "conv_block": {
            "base": "—", "layers": "`norm` (BatchNorm), `conv` (convolution)",
            "trainable": _names(conv_block, True), "non_trainable": _names(conv_block, False),
            "shapes": f"{n}×{cin}×{s}×{s} → {n}×{k}×{s}×{s} (NCHW)",
            "kernel": f"`conv.weight` {k}×{cin}×3×3: OIHW (out, in, kh, kw)",
            "conv_padding": _geometry(GROWTH_CONV),
            "conv_bias": f"{'yes' if bias else 'no'} (`conv_bias={bias}`: the chapter's convs have one, "
                         "torchvision's do not)",
            "bn_eps": f"`bn_eps={spec.bn_eps}`",
            "bn_momentum": bn["bn_momentum"]["text"],
            "bn_running_var": bn["bn_running_var"]["text"] + " (`reference.batch_norm`; the other "
                              "rule is converted by `batchnorm.canonical_running_var`)",
            "train_eval": f"`reference.forward(..., train=True / False)`: batch statistics / running "
                          f"statistics (max |Δ| {diff:.2g} here)",
            "init": "`params.init_params`: conv N(0, 2/fan_in), conv bias U(±1/√fan_in), BN weight 1, "
                    "bias 0, running mean 0, running var 1; every `runtime.build()` loads these",
        },
        "dense_layer": {
            "base": "—", "trainable": _names(conv_block, True), "non_trainable": _names(conv_block, False),
            "shapes": f"{n}×{cin}×{s}×{s} → {n}×{k}×{s}×{s} (NCHW): only the {k} new maps",
            "maps": f"the concatenation of the block input and every earlier layer's maps: the second "
                    f"layer sees {cin} + {k} = {cin + k} channels",
            "dropout": f"`drop_rate={spec.drop_rate}`",
        },
        "dense_block": {
            "base": "—", "layers": ", ".join(f"`denselayer{i}`" for i in range(1, I.BLOCK_LAYERS + 1)),
            "trainable": _names(block, True), "non_trainable": _names(block, False),
            "shapes": f"{n}×{cin}×{s}×{s} → {n}×{plan.out_channels}×{s}×{s} (NCHW)",
            "concat": f"axis 1 (the C of NCHW): {cin} + {I.BLOCK_LAYERS}×{k} = {plan.out_channels}",
        },
        "transition": {
            "base": "a conv block (BN-ReLU-1×1 conv) followed by a pool",
            "layers": "`norm`, `conv`, `pool`",
            "trainable": _names(trans, True), "non_trainable": _names(trans, False),
            "shapes": f"{n}×{tcin}×{s}×{s} → {n}×{tout}×{half}×{half} (NCHW)",
            "kernel": f"`conv.weight` {tout}×{tcin}×1×1: OIHW",
            "conv_padding": _geometry(spec.transition_conv),
            "pool": f"average, {spec.transition_pool.kernel}×{spec.transition_pool.kernel} window, "
                    f"stride {spec.transition_pool.stride}, padding {spec.transition_pool.padding}",
        },
        "stem_and_head": {
            "stem_layers": "`conv0`, `norm0`, `relu0`, `pool0` (torchvision's)",
            "stem_params": _names(stem, True),
            "stem_kernel": f"`features.conv0.weight` {nplan.stem_channels}×{net.in_channels}×"
                           f"{net.stem_conv.kernel}×{net.stem_conv.kernel}: OIHW",
            "stem_padding": f"`conv0`: {_geometry(net.stem_conv)}",
            "stem_pool": f"max, {net.stem_pool.kernel}×{net.stem_pool.kernel} window, stride "
                         f"{net.stem_pool.stride}, padding {net.stem_pool.padding} that never wins "
                         "(`reference.max_pool` pads with −∞)",
            "stem_shapes": f"{I.shape_text(I.NET_INPUT)} → {I.NET_INPUT[0]}×{I.shape_text(shapes['stem'])} "
                           "(NCHW)",
            "head_params": _names(head, True), "head_stats": _names(head, False),
            "head_pool": "global average: the mean over H and W, at any size",
            "classifier": f"`classifier.weight` {net.num_classes}×{nplan.final_channels}: (out, in)",
            "classifier_init": "`init_params`: weight U(±1/√in), bias 0",
        },
        "network": {
            "base": "—",
            "trainable_count": f"{net.num_params():,} (`spec.num_params()`)",
            "stored": f"{sum(q.trainable for q in infos)} trainable + "
                      f"{sum(not q.trainable for q in infos)} running statistics",
            "name_map": f"{len(infos)} canonical names: torchvision's `state_dict` keys",
            **{f"name:{q}": f"`{q}`" for q in (
                "features.conv0.weight", "features.denseblock1.denselayer1.norm.weight",
                "features.denseblock1.denselayer1.norm.running_var", "classifier.weight")},
            "shapes": f"{I.shape_text(I.NET_INPUT)} → {I.NET_INPUT[0]}×{net.num_classes} (logits)",
            "train_eval": "`reference.forward(..., train=True / False)`",
            "conv_init": f"N(0, 2/fan_in) (`init_params`): std of `conv0` ÷ √(2/fan_in) = {ratio:.2f}",
            "sgd": f"v ← μ·v + g; p ← p − lr·v, no dampening, no weight decay: PyTorch's form, which the "
                   f"runtimes' `train_steps` follow. From p = 1, gradient 1, lr 0.1 then 0.05: p = "
                   f"{1 - lr1:.6g}, then {sgd_after:.6g}",
        },
    }


# ---------------------------------------------------------------------- rendering
def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(part: str, facts: Mapping[str, Mapping[str, Any]],
           canonical: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The markdown table of ``part`` from every backend's facts (keyed by backend name)."""
    if part not in ROWS:
        raise ValueError(f"unknown part {part!r}; the parts are {', '.join(PARTS)}")
    canonical = canonical_facts() if canonical is None else canonical
    backends = [b for b in BACKENDS if b in facts]
    if not backends:
        raise ValueError("no backend's facts to render")
    head = ["Property", "Canonical (spec)", *(TITLES[b] for b in backends)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key in ROWS[part]:
        cells = [label, canonical[part].get(key, "—")]
        for b in backends:
            fact = facts[b]["parts"].get(part, {}).get(key)
            if fact is None:
                raise KeyError(f"{TITLES[b]}'s facts have no {part}.{key}")
            cells.append(fact["text"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    versions = ", ".join(f"{PACKAGES[b]} {facts[b]['version']}" for b in backends)
    note = (f"Read from {SOURCES[part]}, as built by each backend's own classes ({versions}); "
            "generated by `densenet_multi.guide.conventions`.")
    return "\n".join(lines) + "\n\n" + f"<small>{note}</small>\n"


def _write(path: Path, text: str) -> Path:
    return write_text_atomic(path, text)


def generate(out_dir: Path, *, facts: Mapping[str, Mapping[str, Any]] | None = None,
             jobs: int = 4, log: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``out_dir/conventions/<part>.md`` for every part and ``introspect.json`` (the
    raw facts); returns the paths written. ``facts`` (the JSON of an earlier run) skips
    running the backends."""
    t0 = time.perf_counter()
    if facts is None:
        facts = collect(jobs=jobs)
    missing = [b for b in BACKENDS if b not in facts]
    if missing:
        raise ConventionsError(f"no facts for {missing}: every backend's column is required")
    folder = Path(out_dir) / "conventions"
    canonical = canonical_facts()
    written = [_write(folder / "introspect.json", json.dumps(facts, indent=1, ensure_ascii=False) + "\n")]
    for part in PARTS:
        written.append(_write(folder / f"{part}.md", render(part, facts, canonical)))
    if log is not None:
        took = ", ".join(f"{b} {facts[b].get('seconds', '?')} s" for b in BACKENDS)
        log(f"conventions: {len(written)} files in {time.perf_counter() - t0:.1f} s "
            f"(in-process introspection: {took})")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densenet_multi.guide.conventions",
                                description="Write the guide's conventions tables.")
    p.add_argument("--out", type=Path, required=True, help="e.g. docs/generated")
    p.add_argument("--facts", type=Path, help="render an earlier introspect.json instead of running")
    p.add_argument("--jobs", type=int, default=4)
    args = p.parse_args(argv)
    facts = json.loads(args.facts.read_text(encoding="utf-8")) if args.facts else None
    try:
        paths = generate(args.out, facts=facts, jobs=args.jobs, log=print)
    except ConventionsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
