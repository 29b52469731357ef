"""The textbook's tabs and the blogs' networks under the harness
(densenet_multi.textbook): where each first diverges, measured through the real harness,
that every fix chain ends in a network that passes, and the catalog's completeness.

The reconstructions run in their frameworks' environments (the tox envs the harness
finds, as for the real backends); an entry is skipped only where its environment's
interpreter is missing here, and the skip says which. The subset run is one harness
run of the four tabs as written, the TensorFlow tab once it runs under Keras 3, the
last link of every chain and two blogs as written, on the shapes, eval and train
checks (no copy: the copy phase would start every worker a second time; the full
report, ``python -m densenet_multi.textbook.report``, runs it).

Every expectation below is what the harness measured (docs/textbook.md): a change that
hides a tab's drift, or moves where it first shows, fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet_multi.parity.status import Status
from densenet_multi.spec import get_spec
from densenet_multi.testing import tolerance
from densenet_multi.textbook import catalog, report
from densenet_multi.textbook.catalog import CATALOG, CatalogError, read_chain

PASS, FAIL, ERROR = str(Status.PASS), str(Status.FAIL), str(Status.ERROR)
CHECKS = ("shapes", "eval", "train")
BY_KEY = {s.key: s for s in CATALOG}


def _last(key: str) -> str:
    return BY_KEY[key].chain[-1][0]


#: (source, link) of the subset run: every tab as written, the TensorFlow tab once it
#: constructs under Keras 3, two blogs as written, and the last link of every chain.
SUBSET = tuple(dict.fromkeys([
    ("d2l-pytorch", "backend"), ("d2l-mxnet", "backend"), ("d2l-jax", "backend"),
    ("d2l-tensorflow", "backend"), ("d2l-tensorflow", "fix_keras3"),
    ("blog-002", "backend"), ("blog-004", "backend"),
    *((s.key, _last(s.key)) for s in CATALOG),
]))


def _missing(key: str) -> str | None:
    src = BY_KEY[key]
    python = report.interpreter(src)
    if python and Path(python).exists():
        return None
    return (f"{src.title} runs in the {src.env} environment, whose interpreter is missing "
            f"here ({python or 'none found'})")


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    by_name = {(s.key, ln.attr): (s, ln) for s, ln in catalog.links()}
    chosen = [by_name[k] for k in SUBSET if _missing(k[0]) is None]
    if not chosen:
        pytest.skip("no framework environment here: " +
                    "; ".join(sorted({m for k in SUBSET if (m := _missing(k[0]))})))
    tr = report.run(tmp_path_factory.mktemp("textbook"), chosen, checks=CHECKS)
    return tr, {(r["source"], r["link"]): r for r in report.rows(tr)}


def row(subset, key: str, link: str) -> dict:
    why = _missing(key)
    if why:
        pytest.skip(why)
    return subset[1][(key, link)]


# ---------------------------------------------------------------------- the four tabs
@pytest.mark.parametrize("key", ["d2l-pytorch", "d2l-mxnet"])
def test_pytorch_and_mxnet_tabs_are_the_canonical_network(subset, key):
    r = row(subset, key, "backend")
    assert r["divergence"] is None and r["status"] == PASS
    for check in ("eval", "train"):
        s = r["checks"][check]
        assert s["status"] == PASS and 0 < s["worst_rel"] < tolerance(check, "float32")
        assert set(r["stages"][check]) == set(get_spec("d2l").stage_names)


def test_jax_tab_first_diverges_in_shapes_at_transition2(subset):
    r = row(subset, "d2l-jax", "backend")
    d = r["divergence"]
    assert (d["check"], d["status"], d["item"]) == ("shapes", FAIL, "transition2")
    # 96 channels from the initial width where the running width gives 112
    assert d["actual_shape"] == [4, 96, 6, 6] and d["expected_shape"] == [4, 112, 6, 6]
    # its weights do not fit: an error, never a pass
    assert r["checks"]["eval"]["status"] == ERROR and r["stages"]["eval"] is None


def test_tensorflow_tab_does_not_run_under_keras3_and_then_diverges_in_eval_at_the_stem(subset):
    r = row(subset, "d2l-tensorflow", "backend")
    d = r["divergence"]
    assert (d["check"], d["status"]) == ("shapes", ERROR)
    assert "Keras 3" in d["message"] and "Sequential" in d["message"]
    r = row(subset, "d2l-tensorflow", "fix_keras3")
    d = r["divergence"]
    assert r["checks"]["shapes"]["status"] == PASS  # 'same' keeps the sizes
    assert (d["check"], d["status"], d["item"]) == ("eval", FAIL, "stem")
    assert d["rel"] > 0.1 and d["tol"] == tolerance("eval", "float32")
    assert r["checks"]["train"]["first_fail"]["item"] == "stem"


# ---------------------------------------------------------------------- the blogs
def test_korean_blog_as_written_does_not_construct(subset):
    d = row(subset, "blog-002", "backend")["divergence"]
    assert (d["check"], d["status"]) == ("shapes", ERROR)
    assert d["message"].startswith("TypeError: ConvLayer.__init__()")


def test_torchvision_walk_through_is_torchvision(subset):
    r = row(subset, "blog-004", "backend")
    assert r["status"] == PASS and r["chain_length"] == 1


@pytest.mark.parametrize("key", [s.key for s in CATALOG])
def test_the_last_link_of_every_chain_passes(subset, key):
    r = row(subset, key, _last(key))
    assert r["status"] == PASS, (r["name"], r["divergence"])
    assert all(s["status"] == PASS for s in r["checks"].values())


def test_every_entry_of_the_run_produced_cells_on_its_case_and_only_there(subset):
    """Each link has a cell for every check on its own case; on the run's other cases it
    is "unsupported" (build raises NotImplementedError for a network it is not)."""
    tr, _ = subset
    for src, ln in tr.entries:
        for name, cc in tr.ccs.items():
            cells = {c.check: c for c in cc.cells if c.subject == ln.name}
            assert set(cells) == set(CHECKS), (ln.name, name)
            statuses = {str(c.status) for c in cells.values()}
            if name == src.case:
                assert str(Status.MISSING) not in statuses and \
                    str(Status.UNSUPPORTED) not in statuses, (ln.name, statuses)
            else:
                assert statuses == {str(Status.UNSUPPORTED)}, (ln.name, name, statuses)


def test_the_tables_and_the_figure_come_from_the_run(subset, tmp_path):
    tr, by = subset
    rows = report.rows(tr)
    text = report.render(rows)
    for r in rows:
        assert f"`{r['link']}`" in text or r["chain_length"] == 1
    as_written = [r for r in rows if r["chain_index"] == 0]
    assert len([ln for ln in text.split("### The fix chains")[0].splitlines()
                if ln.startswith("| ") and not ln.startswith("| network")]) == len(as_written)
    png = report.stages_figure(rows, get_spec("d2l").stage_names, tolerance("eval", "float32"),
                               tmp_path / "stages.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- the catalog
def test_every_catalog_entry_names_objects_its_module_defines():
    """The chains are the modules' own CHAIN constants (read from their source), each
    starting with the source as written; every name is unique and runs in the tox env
    of its framework."""
    names = [ln.name for _, ln in catalog.links()]
    assert len(names) == len(set(names))
    envs = {"pytorch": "torch", "mxnet": "mxnet", "jax": "jax", "tensorflow": "tensorflow"}
    for src in CATALOG:
        chain = src.chain
        assert chain[0][0] in ("backend", "chapter"), src.key
        assert all(a.startswith("fix_") for a, _ in chain[1:]), src.key
        assert src.env == envs[src.framework]
        assert src.case in catalog.cases()
        assert src.seed_file.startswith(src.seed + "_")
    assert {s.key for s in CATALOG if s.kind == "tab"} == {
        "d2l-pytorch", "d2l-mxnet", "d2l-jax", "d2l-tensorflow"}


def test_a_chain_that_names_what_its_module_lacks_is_refused(tmp_path, monkeypatch):
    read_chain.cache_clear()
    monkeypatch.setattr(catalog, "HERE", tmp_path)
    (tmp_path / "good.py").write_text('CHAIN = (("backend", "as written"),)\nbackend = 1\n')
    (tmp_path / "absent.py").write_text('CHAIN = (("backend", "x"), ("fix_a", "y"))\nbackend = 1\n')
    (tmp_path / "nochain.py").write_text("backend = 1\n")
    (tmp_path / "computed.py").write_text('CHAIN = tuple(make())\nbackend = 1\n')
    try:
        assert read_chain("good") == (("backend", "as written"),)
        with pytest.raises(CatalogError, match=r"names \['fix_a'\]"):
            read_chain("absent")
        with pytest.raises(CatalogError, match="defines no CHAIN"):
            read_chain("nochain")
        with pytest.raises(CatalogError, match="not a literal tuple"):
            read_chain("computed")
        with pytest.raises(CatalogError, match="does not exist"):
            read_chain("nowhere")
    finally:
        read_chain.cache_clear()


def test_unknown_cases_and_empty_runs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown textbook case"):
        catalog.cases(["d2l", "densenet999"])
    with pytest.raises(ValueError, match="no catalog entry"):
        report.run(tmp_path, [])
