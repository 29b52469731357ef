"""Train a DenseNet the Keras way: ``compile``, ``fit`` with callbacks, ``evaluate``.

The default trains the d2l chapter's network on scikit-learn's bundled digits
(upsampled to 32x32, no download) to over 99% test accuracy on a CPU in a few
minutes::

    densenet-multi train --backend keras --preset d2l --epochs 10
    python -m densenet_multi.keras.train --data fashion-mnist --data-dir ~/data/fashion-mnist

The data comes from :mod:`densenet_multi.data` in the canonical NCHW layout and
is transposed once to Keras's NHWC by :mod:`densenet_multi.layouts`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import keras

from .. import layouts
from ..data import add_training_arguments, dataset_from_args
from ..distributed import fit_data_parallel
from ..spec import get_spec
from .runtime import build

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="densenet-multi train --backend keras",
        description="Train a DenseNet with Keras 3 (compile + fit) on digits or Fashion-MNIST.",
    )
    # --lr is the peak learning rate of SGD (momentum 0.9), cosine-decayed per epoch
    add_training_arguments(p)
    p.add_argument("--save", metavar="PATH.keras", help="save the best model (test accuracy) here")
    p.add_argument("--min-accuracy", type=float,
                   help="exit with status 1 if the final test accuracy is below this")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel replicas: MirroredStrategy over N logical CPUs, "
                        "synchronised BatchNorm, constant lr (docs/guide/data-parallel.md)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="Keras's progress output: 0 silent, 1 progress bar, 2 one line per epoch")
    args = p.parse_args(argv)
    args.dataset = dataset_from_args(args, p)  # errors (e.g. no --data-dir) through the parser
    return args


def cosine_schedule(peak: float, epochs: int):
    """Learning rate per epoch: cosine decay from ``peak`` towards zero."""
    def schedule(epoch: int, lr: float) -> float:
        return 0.5 * peak * (1.0 + math.cos(math.pi * epoch / epochs))
    return schedule


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.devices > 1:  # before TensorFlow starts: it splits the CPU into N logical ones
        from .distributed import logical_cpus

        logical_cpus(args.devices)
    keras.utils.set_random_seed(args.seed)
    data = args.dataset
    x_train, x_test = layouts.nchw_to_nhwc(data.x_train), layouts.nchw_to_nhwc(data.x_test)
    y_train, y_test = data.y_train, data.y_test
    spec = get_spec(args.preset, in_channels=x_train.shape[-1], num_classes=data.num_classes)
    # the canonical seeded weights, as every backend's training entry point starts from
    model = build(spec, seed=args.seed)
    if args.devices > 1:  # MirroredStrategy steps (distributed.py), synchronised BatchNorm
        history = fit_data_parallel("keras", model, data, epochs=args.epochs,
                                    batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                                    devices=args.devices, seed=args.seed)
        accuracy = history[-1].test_acc
        print(f"test accuracy {accuracy:.4f} after {args.epochs} epoch(s)")
        return 0 if args.min_accuracy is None or accuracy >= args.min_accuracy else 1
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.LearningRateScheduler(cosine_schedule(args.lr, args.epochs)),
        keras.callbacks.TerminateOnNaN(),
    ]
    if args.save:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            args.save, monitor="val_accuracy", save_best_only=True))
    print(f"{spec.describe()}: {spec.num_params():,} parameters; {args.data}: "
          f"{len(x_train)} train / {len(x_test)} test images of {x_train.shape[1:]} (NHWC); "
          f"Keras {keras.__version__} on {keras.backend.backend()}")
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_data=(x_test, y_test), shuffle=True, callbacks=callbacks,
              verbose=args.verbose)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    print(f"test accuracy {accuracy:.4f}, test loss {loss:.4f}, "
          f"{args.epochs} epoch(s) in {seconds:.1f} s")
    if args.min_accuracy is not None and not accuracy >= args.min_accuracy:
        print(f"test accuracy {accuracy:.4f} is below --min-accuracy {args.min_accuracy}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
