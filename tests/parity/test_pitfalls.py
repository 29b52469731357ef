"""The porting-pitfalls table (densenet_multi.guide.pitfalls): its key rows, measured through
the real harness on a subset of the variants, and its completeness.

The variants run in their frameworks' environments (the tox envs the harness finds, as
for the real backends); a row is skipped only where that environment's interpreter is
missing here. The subset run is the d2l case's shapes, eval and train checks (no copy:
the copy phase would start every worker a second time) for five variants.
"""

from __future__ import annotations

import ast
from fractions import Fraction
from pathlib import Path

import pytest

from densenet_multi.guide import pitfalls
from densenet_multi.guide.pitfall_backends._base import InitialWidthSpec, IntWidthSpec
from densenet_multi.parity.status import Status
from densenet_multi.spec import get_spec
from densenet_multi.testing import tolerance

PASS, FAIL = str(Status.PASS), str(Status.FAIL)
#: The rows the subset run measures: one per framework family of mistake.
SUBSET = ("same_padding", "initial_width", "eps_default", "eps_applications", "momentum_torch")
BY_KEY = {p.key: p for p in pitfalls.CATALOG}


def _python_missing(p: pitfalls.Pitfall) -> str | None:
    python = pitfalls.variant_python(p.backend)
    if python and Path(python).exists():
        return None
    return (f"row {p.label} ({p.key}) runs in the {p.backend} backend's environment, whose "
            f"interpreter is missing here ({python or 'none found'})")


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    chosen = [BY_KEY[k] for k in SUBSET if _python_missing(BY_KEY[k]) is None]
    if not chosen:
        pytest.skip("no backend environment interpreter here: " +
                    "; ".join(filter(None, (_python_missing(BY_KEY[k]) for k in SUBSET))))
    pr = pitfalls.run(tmp_path_factory.mktemp("pitfalls"), chosen, real=False,
                      case_names=["d2l"], checks=("shapes", "eval", "train"))
    return pr, pitfalls.rows(pr.ccs)


def row(subset, key: str, case: str = "d2l") -> dict:
    why = _python_missing(BY_KEY[key])
    if why:
        pytest.skip(why)
    _, table_rows = subset
    found = [r for r in table_rows if r["key"] == key and r["case"] == case]
    assert len(found) == 1, (key, case)
    return found[0]


def test_same_padding_fails_eval_at_the_stem(subset):
    r = row(subset, "same_padding")
    assert r["backend"] == "keras"
    assert r["checks"]["shapes"]["status"] == PASS  # (2, 3) padding keeps the sizes
    c = r["caught"]
    assert (c["check"], c["status"], c["item"]) == ("eval", FAIL, "stem")
    assert c["rel"] > 0.1 and c["tol"] == tolerance("eval", "float32")
    assert r["checks"]["train"]["first_fail"]["item"] == "stem"


def test_wrong_running_width_fails_shapes_at_transition2(subset):
    r = row(subset, "initial_width")
    c = r["caught"]
    assert (c["check"], c["status"], c["item"]) == ("shapes", FAIL, "transition2")
    assert c["expected_shape"] == [4, 112, 6, 6] and c["actual_shape"] == [4, 96, 6, 6]
    # its weights do not even load into the canonical widths: an error, never a pass
    assert r["checks"]["eval"]["status"] == str(Status.ERROR)


def test_keras_default_epsilon_fails_and_keras_applications_epsilon_passes(subset):
    bad = row(subset, "eps_default")
    assert bad["status"] == FAIL
    c = bad["caught"]
    assert (c["check"], c["item"]) == ("eval", "stem")  # norm0 is the first BatchNorm
    assert c["rel"] > 10 * c["tol"]
    good = row(subset, "eps_applications")
    assert good["status"] == PASS and good["caught"] is None
    for check in ("eval", "train"):
        s = good["checks"][check]
        assert s["status"] == PASS and 0 < s["worst_rel"] < tolerance(check, "float32")


def test_momentum_in_the_other_convention_fails_only_the_running_statistics(subset):
    r = row(subset, "momentum_torch")
    assert r["checks"]["eval"]["status"] == PASS
    c = r["caught"]
    assert (c["check"], c["status"]) == ("train", FAIL)
    assert c["item"].startswith("features.") and ".running_" in c["item"]
    assert c["tol"] == tolerance("running", "float32")
    # the train-mode stages themselves (batch statistics) are right
    assert c["item"] not in get_spec("d2l").stage_names


def test_every_catalog_row_gets_a_row_and_a_table_line(subset):
    """No pitfall disappears: every (pitfall, case) of the catalog is a row, the ones the
    subset did not run say so ("missing" for the d2l case, "not run" for a case not run),
    the ones it ran have a cell for every check, and each row is one line of the table."""
    pr, table_rows = subset
    want = [(p.label, c) for p in pitfalls.CATALOG for c in p.cases]
    assert [(r["label"], r["case"]) for r in table_rows] == want
    ran = {b.name for b in pr.result.backends}
    for r in table_rows:
        if r["variant"] in ran and r["case"] == "d2l":
            assert set(r["checks"]) == {"shapes", "eval", "train"}
            assert all(s["status"] != "missing" for s in r["checks"].values()), r
        elif r["case"] == "d2l":
            assert r["status"] == "missing", r
        else:
            assert r["status"] == "not run", r
    table = pitfalls.render_table(table_rows)
    assert len(table.strip().splitlines()) == 2 + len(table_rows)


def test_every_catalog_row_names_a_variant_that_exists():
    """Each row's target is an attribute of its framework's variant module (read from the
    source: importing it would import the framework)."""
    for p in pitfalls.CATALOG:
        module, attr = p.target.split(":")
        path = Path(pitfalls.__file__).parent.joinpath(*module.split(".")[2:]).with_suffix(".py")
        tree = ast.parse(path.read_text())
        names = {t.id for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        assert attr in names, (p.label, p.target)
        assert f'Variant("{p.backend}", "{attr}"' in path.read_text(), (p.label, p.target)


def test_the_compression_where_int_differs_is_found_and_d2l_as_shipped_is_immune():
    theta = pitfalls.theta_where_int_differs()
    assert theta == Fraction(13, 45)
    spec = get_spec("d2l", compression=float(theta))
    good = [t.out_channels for t in spec.channel_plan.transitions]
    bad = [t.out_channels for t in IntWidthSpec.of(spec).channel_plan.transitions]
    assert good != bad and good[:2] == bad[:2]  # the third transition: 180 * 13/45 = 52
    d2l = get_spec("d2l")
    assert [t.out_channels for t in IntWidthSpec.of(d2l).channel_plan.transitions] == \
        [t.out_channels for t in d2l.channel_plan.transitions] == [96, 112, 120]
    assert [t.out_channels for t in InitialWidthSpec.of(d2l).channel_plan.transitions] == \
        [96, 96, 96]
