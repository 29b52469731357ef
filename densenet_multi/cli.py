"""``densenet-multi``: info | init | parity | train | convert | export | bench.

* ``info PRESET [--input-size H W]``: channel plan, per-stage shapes, parameter
  count and multiply-accumulates, as tables.
* ``init PRESET OUT.safetensors --seed N``: a seeded canonical checkpoint.
* ``parity ...``: the cross-framework parity report (see ``densenet_multi.parity``).
* ``train --backend B ...``: the digits / Fashion-MNIST training entry point of one backend.
* ``convert SRC DST ...``: any framework's DenseNet file to any other's, verified
  (see ``densenet_multi.convert``).
* ``export --format onnx SRC OUT.onnx``: an ONNX graph through a framework's own
  exporter (see ``densenet_multi.export``).
* ``bench ...``: throughput and memory against the official nets (see ``densenet_multi.bench``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .backend import BACKENDS
from .spec import PRESETS, DenseNetSpec, InputError, SpecError, get_spec


def _spec_from_args(args: argparse.Namespace) -> DenseNetSpec:
    changes = {}
    for f in ("num_classes", "in_channels", "bn_eps"):
        v = getattr(args, f, None)
        if v is not None:
            changes[f] = v
    return get_spec(args.preset, **changes)


#: Subcommands whose module's ``main(argv) -> int`` gets the rest of the command line.
SUBCOMMANDS = {
    "parity": ".parity.cli",
    "convert": ".convert.cli",
    "export": ".export.cli",
    "bench": ".bench.cli",
}


def cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    spec = _spec_from_args(args)
    h, w = args.input_size if args.input_size else (224, 224) if spec.stem == "imagenet" else (32, 32)
    shapes = spec.stage_shapes(h, w)
    console = Console()
    console.print(f"[bold]{spec.describe()}[/bold]")

    t = Table(title="DenseNetSpec")
    t.add_column("field")
    t.add_column("value")
    for k, v in spec.to_dict().items():
        t.add_row(k, repr(v))
    console.print(t)

    plan = spec.channel_plan
    t = Table(title="Channel plan")
    for c in ("part", "layers", "input width", "layer input widths", "output width"):
        t.add_column(c)
    t.add_row("stem", "", str(spec.in_channels), "", str(plan.stem_channels))
    for bp in plan.blocks:
        widths = ", ".join(map(str, bp.layer_in_channels))
        t.add_row(f"denseblock{bp.index}", str(bp.num_layers), str(bp.in_channels), widths,
                  str(bp.out_channels))
        if bp.index < spec.num_blocks:
            tp = plan.transitions[bp.index - 1]
            t.add_row(f"transition{tp.index}", "", str(tp.in_channels), "", str(tp.out_channels))
    console.print(t)

    t = Table(title=f"Stage outputs for a 1x{spec.in_channels}x{h}x{w} input (NCHW)")
    t.add_column("stage")
    t.add_column("shape", justify="right")
    for name, shp in shapes.items():
        t.add_row(name, "x".join(map(str, (1, *shp))))
    console.print(t)

    t = Table(title="Counts")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("trainable parameters", f"{spec.num_params():,}")
    t.add_row("parameters + BN buffers", f"{spec.num_params(trainable_only=False):,}")
    t.add_row(f"multiply-accumulates at {h}x{w}", f"{spec.macs(h, w):,}")
    t.add_row("smallest input size", f"{spec.min_input_size()}x{spec.min_input_size()}")
    console.print(t)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from . import checkpoint
    from .params import init_params

    spec = _spec_from_args(args)
    params = init_params(spec, args.seed, nontrivial_bn=args.nontrivial_bn)
    path = checkpoint.save(args.out, params, spec, overwrite=args.overwrite)
    print(f"wrote {path}: {spec.describe()}, seed {args.seed}, {len(params)} tensors")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands implemented elsewhere get the rest of the command line.
    if argv and argv[0] in SUBCOMMANDS:
        mod = importlib.import_module(SUBCOMMANDS[argv[0]], __package__)
        return int(mod.main(argv[1:]) or 0)
    if argv and argv[0] == "train":
        return _train(argv[1:])

    p = argparse.ArgumentParser(prog="densenet-multi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add_spec_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("preset", help=f"one of {', '.join(PRESETS)}")
        sp.add_argument("--num-classes", type=int, dest="num_classes")
        sp.add_argument("--in-channels", type=int, dest="in_channels")
        sp.add_argument("--bn-eps", type=float, dest="bn_eps")

    sp = sub.add_parser("info", help="channel plan, stage shapes, parameters, MACs")
    add_spec_args(sp)
    sp.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    sp.set_defaults(fn=cmd_info)

    sp = sub.add_parser("init", help="write a seeded canonical checkpoint")
    add_spec_args(sp)
    sp.add_argument("out", help="output .safetensors path")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--nontrivial-bn", action="store_true",
                    help="draw BN weights/biases/running statistics instead of 1/0/0/1")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(fn=cmd_init)

    sub.add_parser("parity", help="cross-framework parity report (see: parity --help)")
    sub.add_parser("convert", help="convert a DenseNet file between frameworks, verified "
                                   "(see: convert --help)")
    sub.add_parser("export", help="export to ONNX through a framework's exporter (see: export --help)")
    sub.add_parser("bench", help="throughput and memory vs the official nets (see: bench --help)")
    sub.add_parser("train", help="train a backend on digits / Fashion-MNIST (see: train --help)")

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (SpecError, InputError, FileExistsError, ValueError) as e:
        print(f"densenet-multi {args.cmd}: error: {e}", file=sys.stderr)
        return 2


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="densenet-multi train", add_help=False)
    p.add_argument("--backend", choices=sorted(BACKENDS))
    known, rest = p.parse_known_args(argv)
    if known.backend is None:
        if {"-h", "--help"} & set(rest):  # help without a backend: the shared options
            _train_help_parser().print_help()
            return 0
        p.error(f"the following arguments are required: --backend (one of "
                f"{', '.join(sorted(BACKENDS))}); `train --backend B --help` shows B's options")
    mod = importlib.import_module(f"{BACKENDS[known.backend][0]}.train")
    return int(mod.main(rest) or 0)


def _train_help_parser() -> argparse.ArgumentParser:
    from .data import add_training_arguments

    p = argparse.ArgumentParser(
        prog="densenet-multi train --backend {" + ",".join(sorted(BACKENDS)) + "}",
        description="Train the d2l DenseNet in one backend's own idiom on scikit-learn's digits "
                    "(offline) or Fashion-MNIST IDX files. These options are shared by all "
                    "four; `densenet-multi train --backend B --help` adds B's own.")
    add_training_arguments(p)
    return p


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
