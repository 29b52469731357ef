"""The teaching notebook executes top to bottom (nbclient, the current interpreter), and
the parity errors it reports are within the tolerance table."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from densenet_multi.spec import get_spec
from densenet_multi.testing import tolerance

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "torch_densenet.ipynb"
#: what the notebook prints for each compared stage: "<check> <stage> rel err <x>"
STAGE_LINE = re.compile(r"^(eval|train)\s+(\S+)\s+rel err (\S+)", re.MULTILINE)
RUNNING_LINE = re.compile(r"^running (\d+) statistics, worst rel err (\S+)", re.MULTILINE)


def test_notebook_executes_and_its_parity_errors_are_within_tolerance(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel must import this working tree, not an installed copy
    root = str(NOTEBOOK.parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see conftest.py: shared 2-core machines
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a failed assert in the notebook (its own tolerance check) fails here
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "FAIL" not in outputs
    # every stage of the d2l net, in both modes, against this table (not the notebook's)
    stages = get_spec("d2l").stage_names
    found = {(check, stage): float(err) for check, stage, err in STAGE_LINE.findall(outputs)}
    assert set(found) == {(c, s) for c in ("eval", "train") for s in stages}
    for (check, stage), err in found.items():
        assert err <= tolerance(check, "float32"), (check, stage, err)
    (count, worst), = RUNNING_LINE.findall(outputs)
    assert int(count) == 42 and float(worst) <= tolerance("running", "float32")
    # the training run, and the floor the notebook asserts
    acc = re.search(r"test accuracy (\S+)$", outputs, re.MULTILINE)
    assert acc is not None and float(acc.group(1)) >= 0.80
