"""The d2l chapter's JAX tab, rebuilt in Flax linen (densenet_multi.textbook.d2l_jax),
against the float64 NumPy reference: each link of its fix chain diverges where it
should, by as much as it should, and the last one agrees.

In-process (no harness): build, load the canonical d2l weights, run on a 2x1x96x96
batch. The harness run of the same chain is densenet_multi.textbook's report.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flax.linen")

from densenet_multi import reference  # noqa: E402
from densenet_multi.params import init_params  # noqa: E402
from densenet_multi.spec import get_spec  # noqa: E402
from densenet_multi.testing import compare, tolerance  # noqa: E402
from densenet_multi.textbook import d2l_jax as tab  # noqa: E402
from densenet_multi.textbook._common import SourceMismatch  # noqa: E402

SPEC = get_spec("d2l")
PARAMS = init_params(SPEC, seed=0, nontrivial_bn=True)
X = np.random.Generator(np.random.PCG64(7)).standard_normal((2, 1, 96, 96)).astype(np.float32)

class _Run(dict):
    """One link built with the canonical weights; its eval and train outputs and its export
    computed on first use (each mode's jit compilation takes seconds)."""

    def __init__(self, link: str) -> None:
        super().__init__()
        self.be = getattr(tab, link)
        self["model"] = self.be.build(SPEC, seed=0)
        self.be.load_canonical(self["model"], PARAMS)

    def __missing__(self, key: str):
        if key == "export":
            value = self.be.export_canonical(self["model"])
        else:
            value = self.be.run(self["model"], X, train=key == "train")
        self[key] = value
        return value


_RUNS: dict[str, _Run] = {}


def _run(link: str) -> _Run:
    if link not in _RUNS:
        _RUNS[link] = _Run(link)
    return _RUNS[link]


@pytest.fixture(scope="module")
def ref() -> dict:
    return {"eval": reference.forward(SPEC, PARAMS, X, train=False, dtype="float64"),
            "train": reference.forward(SPEC, PARAMS, X, train=True, dtype="float64")}


def _rel(out, expected, name: str) -> float:
    return compare(name, out, expected, 1.0).rel


def test_chain_objects_are_named_in_order():
    names = [name for name, _ in tab.CHAIN]
    assert names[0] == "backend"
    for name, change in tab.CHAIN:
        be = getattr(tab, name)
        assert isinstance(be, tab.TabBackend) and be.name == name and be.change == change


def test_as_written_transitions_are_96_96_96_and_the_weights_do_not_fit():
    """The tab's width rule (from the initial width on every pass): 96/96/96, not the
    spec's 96/112/120; the canonical weights stop fitting at transition2."""
    be = tab.backend
    model = be.build(SPEC, seed=0)
    out = be.run(model, X)  # as built: linen's own initialisation
    widths = [out.stages[f"transition{t}"].shape[1] for t in (1, 2, 3)]
    assert widths == [96, 96, 96]
    assert [t.out_channels for t in SPEC.channel_plan.transitions] == [96, 112, 120]
    assert out.stages["block4"].shape == (2, 224, 3, 3)  # 96 + 4 * 32, not 248
    assert "features.transition2.conv.weight" in (model.build_note or "")
    with pytest.raises(SourceMismatch, match=r"features\.transition2\.conv\.weight.*\(96, 224, 1, 1\)"):
        be.load_canonical(model, PARAMS)


def test_fix_widths_stem_differs_by_same_padding(ref):
    """With the running width the weights fit; the stem's 'same' padding ((2, 3) at stride
    2) then makes the stem itself another function: far beyond any tolerance."""
    out = _run("fix_widths")["eval"]
    assert _rel(out.stages["stem"], ref["eval"].stages["stem"], "stem") > 0.1


def test_fix_widths_padding_agrees_in_eval_and_differs_in_running_stats(ref):
    """Symmetric padding: eval agrees everywhere (linen's epsilon is 1e-5); in train mode
    the stages agree, but linen's momentum 0.99 moves the running statistics ten times
    less than the canonical 0.1."""
    run = _run("fix_widths_padding")
    for name in SPEC.stage_names:
        assert _rel(run["eval"].stages[name], ref["eval"].stages[name], name) <= tolerance("eval")
        assert _rel(run["train"].stages[name], ref["train"].stages[name], name) <= \
            tolerance("train")
    mean = "features.norm0.running_mean"
    assert _rel(run["train"].running[mean], ref["train"].running[mean], mean) > 0.05


def test_last_link_passes_eval_train_and_copy(ref):
    name, _ = tab.CHAIN[-1]
    run = _run(name)
    for stage in SPEC.stage_names:
        assert _rel(run["eval"].stages[stage], ref["eval"].stages[stage], stage) <= \
            tolerance("eval"), stage
        assert _rel(run["train"].stages[stage], ref["train"].stages[stage], stage) <= \
            tolerance("train"), stage
    assert set(run["train"].running) == set(ref["train"].running)
    for k, v in ref["train"].running.items():
        assert _rel(run["train"].running[k], v, k) <= tolerance("running"), k
    assert list(run["export"]) == list(PARAMS)
    for k, v in PARAMS.items():
        assert run["export"][k].dtype == v.dtype and np.array_equal(run["export"][k], v), k


def test_run_leaves_the_model_alone_and_refuses_bad_input():
    name, _ = tab.CHAIN[-1]
    be, run = getattr(tab, name), _run(name)
    assert all(np.array_equal(be.export_canonical(run["model"])[k], v) for k, v in PARAMS.items())
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        be.run(run["model"], np.zeros((2, 96, 96, 1), np.float32))
    with pytest.raises(NotImplementedError, match="float32"):
        be.build(SPEC, dtype="float64")
    with pytest.raises(NotImplementedError, match="bottleneck"):
        be.build(get_spec("densenet121"))
