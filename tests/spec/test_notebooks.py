"""The four teaching notebooks walk the chapter cell for cell the same: the same markdown
headings in the same order, the same kinds of cells, the same shared helpers called in
the same cells; each committed .ipynb is its .py's cells (with outputs), and each title
cell says which tox env is its kernel. (Executing them is each backend's
test_<fw>_notebook.py, in that backend's environment.)"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

from densenet_multi.backend import BACKENDS
from densenet_multi.guide.notebooks import SOURCES

#: backend -> the framework's name as the notebooks write it
FRAMEWORKS = {"torch": "PyTorch", "flax": "Flax NNX", "keras": "Keras 3", "gluon": "MXNet Gluon"}
HELPER_CALL = re.compile(r"\bnbt\.(\w+)\(")
#: layout helpers a channels-last framework needs and a channels-first one does not
LAYOUT_HELPERS = {"nchw"}


def headings(cells, framework: str) -> list[list[str]]:
    """Per cell, its markdown headings (outside code fences), the framework's name
    replaced by a placeholder; [] for a code cell."""
    out = []
    for cell in cells:
        found, fenced = [], False
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("```"):
                    fenced = not fenced
                elif not fenced and line.startswith("#"):
                    found.append(line.replace(framework, "{framework}"))
        out.append(found)
    return out


def structure(path: Path, framework: str) -> list[tuple]:
    """(cell type, headings, shared helpers called) for every cell of a notebook."""
    cells = jupytext.read(path).cells
    return [(c.cell_type, tuple(h), tuple(f for f in HELPER_CALL.findall(c.source)
                                         if f not in LAYOUT_HELPERS))
            for c, h in zip(cells, headings(cells, framework), strict=True)]


def differences(a: list[tuple], b: list[tuple]) -> list[str]:
    if len(a) != len(b):
        return [f"{len(a)} cells != {len(b)} cells"]
    return [f"cell {i}: {x} != {y}" for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


def test_the_notebooks_are_the_four_backends():
    assert set(SOURCES) == set(BACKENDS) == set(FRAMEWORKS)
    for path in SOURCES.values():
        assert path.is_file() and path.with_suffix(".ipynb").is_file(), path


@pytest.mark.parametrize("backend", sorted(set(FRAMEWORKS) - {"torch"}))
def test_cell_for_cell_the_same_as_the_torch_notebook(backend):
    torch = structure(SOURCES["torch"], FRAMEWORKS["torch"])
    other = structure(SOURCES[backend], FRAMEWORKS[backend])
    assert differences(other, torch) == []
    # and the headings walk the chapter: the parts, the shape tables, the reference, training
    flat = [h for _, hs, _ in torch for h in hs]
    for expected in ("## The convolution block", "## Dense blocks", "## Transition layers",
                     "## Stage shapes at 96x96 and 224x224",
                     "## Every stage against the NumPy reference", "## Training on digits",
                     "## Loss and accuracy"):
        assert expected in flat


@pytest.mark.parametrize("backend", sorted(FRAMEWORKS))
def test_the_ipynb_has_the_cells_of_its_py(backend):
    source = SOURCES[backend]
    paired = jupytext.read(source)
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in paired.cells], (
        f"{source.with_suffix('.ipynb').name} is out of sync with {source.name}: run "
        "`python -m densenet_multi.guide.notebooks --sync --out docs/generated/notebooks` "
        "after executing the notebook")
    assert committed.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert committed.metadata["kernelspec"] == paired.metadata["kernelspec"]


@pytest.mark.parametrize("backend", sorted(FRAMEWORKS))
def test_the_committed_ipynb_carries_outputs(backend):
    committed = nbformat.read(SOURCES[backend].with_suffix(".ipynb"), as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "executed cells have execution counts"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure is saved"


@pytest.mark.parametrize("backend", sorted(FRAMEWORKS))
def test_the_title_cell_says_how_to_open_it(backend):
    env = BACKENDS[backend][2]
    nb = jupytext.read(SOURCES[backend])
    title = nb.cells[0]
    assert title.cell_type == "markdown"
    assert title.source.startswith(f"# DenseNet in {FRAMEWORKS[backend]}:")
    for needed in (f"tox -e {env} --notest",
                   f".tox/{env}/bin/python -m ipykernel install --user --name densenet-{backend}",
                   f"notebooks/{backend}_densenet.ipynb", f"`densenet-{backend}`"):
        assert needed in title.source, needed
    assert nb.metadata["kernelspec"]["name"] == f"densenet-{backend}"
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
