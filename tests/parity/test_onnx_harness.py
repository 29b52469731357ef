"""The harness with exported ONNX graphs as backends (onnxruntime, the fifth runtime).

One run on a tiny ImageNet-stem net with the Gluon backend (its exporter, MXNet's,
takes under a second), its exported graph ``onnx-gluon``, and two graphs with a
fault: a wrong stem BatchNorm epsilon edited into the file, and an exporter that
fails. The graph passes against the reference and against the backend that
exported it; the faults fail (at the stem; with the exporter's message); train
mode, and a float64 graph (onnxruntime's CPU provider has no float64 Conv), are
"unsupported", which ``--require-all`` fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from parity_helpers import TINY_IMAGENET, cell, run

from densenet_multi.parity.cases import Case
from densenet_multi.parity.report import exit_status
from densenet_multi.parity.runner import BackendTarget, find_project_root, parse_backends
from densenet_multi.parity.status import Status, fails_run

ROOT = find_project_root() or Path.cwd()
MXNET = ROOT / ".tox" / "mxnet" / "bin" / "python"
FAULTS = "densenet_multi.export.faults"

pytestmark = pytest.mark.skipif(not MXNET.exists(), reason="needs the mxnet env (tox -e mxnet --notest)")


def test_onnx_names_map_to_their_backends_env_and_target():
    (t,) = parse_backends(["onnx-flax"])
    assert t == BackendTarget("onnx-flax", "densenet_multi.export.ort_backend:flax")
    with pytest.raises(ValueError, match="onnx-<backend>"):
        parse_backends(["onnx-nope"])


def test_exported_graph_in_the_harness(tmp_path):
    case = Case("tiny", TINY_IMAGENET, (32, 32), batch=3, checks=("shapes", "eval", "train"))
    case64 = Case("tiny64", TINY_IMAGENET, (32, 32), batch=2, dtype="float64", checks=("eval",))
    backends = [BackendTarget("gluon"), *parse_backends(["onnx-gluon"]),
                BackendTarget("bad-eps", f"{FAULTS}:wrong_epsilon_gluon"),
                BackendTarget("broken", f"{FAULTS}:failing_export_gluon")]
    result, ccs = run(tmp_path, [case, case64], backends,
                      pythons={"bad-eps": str(MXNET), "broken": str(MXNET)})
    assert result.pythons["onnx-gluon"] == str(MXNET)  # onnx-B runs in B's env
    cc = ccs["tiny"]
    # the exported graph: shapes, every stage vs the float64 reference and vs Gluon itself
    for check, subject, against in (("shapes", "onnx-gluon", "spec"),
                                    ("eval", "onnx-gluon", "reference"),
                                    ("eval", "gluon~onnx-gluon", "onnx-gluon")):
        c = cell(cc, check, subject)
        assert (c.against, c.status) == (against, Status.PASS), (c.message, c.first_fail)
    ev = cell(cc, "eval", "onnx-gluon")
    assert [i.item for i in ev.items][:2] == ["stem", "block1"] and ev.worst_rel < 1e-5
    # an inference graph has no train mode: unsupported, which --require-all fails
    tr = cell(cc, "train", "onnx-gluon")
    assert tr.status == Status.UNSUPPORTED and "inference graph" in tr.message
    assert fails_run(tr.status, require_all=True) and not fails_run(tr.status)
    # a wrong epsilon in the graph: FAIL, first diverging at the stem, alone and paired
    bad = cell(cc, "eval", "bad-eps")
    assert bad.status == Status.FAIL and bad.first_fail.item == "stem", bad.first_fail
    assert cell(cc, "eval", "gluon~bad-eps").first_fail.item == "stem"
    # an exporter that fails: error with the exporter's message, never a pass
    broken = cell(cc, "eval", "broken")
    assert broken.status == Status.ERROR and "expected one per stage" in broken.message
    assert exit_status(list(ccs.values()), result.outcomes) != 0
    # float64: the exporter writes it, onnxruntime's CPU provider has no float64 Conv
    c64 = cell(ccs["tiny64"], "eval", "onnx-gluon")
    assert c64.status == Status.UNSUPPORTED and "Conv" in c64.message, c64.message
    assert cell(ccs["tiny64"], "eval", "gluon").status == Status.PASS
