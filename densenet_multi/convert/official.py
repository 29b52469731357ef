"""Files written by the official libraries themselves, for the tests and the matrix.

Each is made in its library's own environment (the parity harness's interpreter
resolution and worker environment), by that library's own calls, with no
pretrained weights (nothing is downloaded):

* ``torchvision``: ``torch.save(torchvision.models.densenet121().state_dict(), f)``
  (env ``torch-zoo``: torchvision is not in the ``torch`` env);
* ``keras-applications`` / ``keras-applications-weights``:
  ``keras.applications.DenseNet121(weights=None)`` saved with ``save`` / ``save_weights``;
* ``gluon-zoo``: the zoo's ``densenet121()``, initialised, ``save_parameters``;
* ``flax``: ``ocp.StandardCheckpointer().save(f, nnx.state(model))`` of our Flax model
  (Flax has no DenseNet of its own; this is Flax's and Orbax's own saving API).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["OFFICIAL", "make_official"]

#: kind -> (environment / worker name, file name, script taking the path as argv[1])
OFFICIAL: dict[str, tuple[str, str, str]] = {
    "torchvision": ("torch-zoo", "torchvision_densenet121.pth", (
        "import sys, torch, torchvision\n"
        "torch.manual_seed(0)\n"
        "torch.save(torchvision.models.densenet121().state_dict(), sys.argv[1])\n")),
    "keras-applications": ("keras", "keras_applications_densenet121.keras", (
        "import sys, keras\n"
        "keras.utils.set_random_seed(0)\n"
        "keras.applications.DenseNet121(weights=None).save(sys.argv[1])\n")),
    "keras-applications-weights": ("keras", "keras_applications_densenet121.weights.h5", (
        "import sys, keras\n"
        "keras.utils.set_random_seed(1)\n"
        "keras.applications.DenseNet121(weights=None).save_weights(sys.argv[1])\n")),
    "gluon-zoo": ("gluon", "gluon_zoo_densenet121.params", (
        "import sys, mxnet as mx\n"
        "from mxnet.gluon.model_zoo import vision\n"
        "mx.random.seed(0)\n"
        "net = vision.densenet121()\n"
        "net.initialize(mx.init.Xavier())\n"
        "net(mx.nd.zeros((1, 3, 224, 224)))\n"
        "net.save_parameters(sys.argv[1])\n")),
    "flax": ("flax", "flax_densenet121.orbax", (
        "import sys, orbax.checkpoint as ocp\n"
        "from flax import nnx\n"
        "from densenet_multi.flax import DenseNet\n"
        "from densenet_multi.spec import get_spec\n"
        "model = DenseNet(get_spec('densenet121'), rngs=nnx.Rngs(0))\n"
        "ckpt = ocp.StandardCheckpointer()\n"
        "ckpt.save(sys.argv[1], nnx.state(model))\n"
        "ckpt.wait_until_finished()\n")),
}


def make_official(kind: str, folder: str | Path, *, timeout: float = 600) -> Path:
    """Write the official file ``kind`` into ``folder`` (once: an existing one is kept)."""
    from ..parity.runner import find_project_root, resolve_python, worker_env

    env_name, name, script = OFFICIAL[kind]
    out = Path(folder).resolve() / name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    root = find_project_root()
    python, origin = resolve_python(env_name, None, root)
    if env_name == "torch-zoo" and origin == "this interpreter" and root is not None:
        python = str(root / ".tox" / "torch-zoo" / "bin" / "python")  # not a harness backend
    if not Path(python).exists():
        raise FileNotFoundError(f"no interpreter for {env_name} at {python}: build it with "
                                f"`tox -e {env_name} --notest`")
    worker = "torch" if env_name == "torch-zoo" else env_name
    proc = subprocess.run([python, "-c", script, str(out)], env=worker_env(worker, ["cpu"], False,
                          root), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"making the {kind} file failed ({python}):\n{proc.stderr[-3000:]}")
    return out
