"""``python -m densenet_multi.bench.kernels`` for the torch backend, on a tiny network (d2l at
32x32, batch 2, one round): its JSON is well formed, it ran exactly the spec's
convolutions, and the Markdown summary's ratios are the results' own. No timed assertion."""

from __future__ import annotations

import copy
import json

import pytest

from densenet_multi.bench import kernels
from densenet_multi.spec import get_spec
from densenet_multi.testing import conv_kinds

pytest.importorskip("torch")

ARGS = ["--preset", "d2l", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0"]


def check_result(data, spec, size, batch, what):
    """The checks both backends' tests make on one result."""
    assert data["kernels"] == 1 and data["status"] == "ok" and data["what"] == what
    for part in data["parts"].values():
        assert 0 < part["ms_min"] <= part["ms_median"] <= part["ms_max"]
        assert part["cores_busy"] > 0
    counts, shapes = conv_kinds(spec)
    assert {k: v["count"] for k, v in data["kinds"].items()} == counts
    assert sorted((c["cout"], c["cin"], c["kernel"], c["kernel"]) for c in data["convs"]) == shapes
    assert len(data["convs"]) == sum(counts.values()) and all(c["ms_median"] > 0 for c in data["convs"])
    # one round: the convolutions' total is the sum over the kinds
    timed = [k for k in data["kinds"].values() if k["count"]]
    assert sum(k["ms_median"] for k in timed) == pytest.approx(data["parts"]["convs_each"]["ms_median"],
                                                               abs=0.01)
    # the multiply-accumulates are the spec's (the classifier is not a conv); training
    # runs each conv three times (forward, input and kernel gradients), the stem twice
    plan = spec.channel_plan
    conv_macs = batch * (spec.macs(size) - plan.final_channels * spec.num_classes)
    stem = batch * spec.stem_conv.out_size(size) ** 2 * plan.stem_channels * spec.in_channels \
        * spec.stem_conv.kernel**2
    want = conv_macs if what == "infer" else 3 * conv_macs - stem
    assert sum(k["macs"] for k in data["kinds"].values()) == want


def test_torch_kernels_run_the_specs_convolutions(tmp_path, capsys):
    out = tmp_path / "torch.json"
    assert kernels.main(["--backend", "torch", "--what", "train", *ARGS, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == data  # the printed line is the written one
    assert data["backend"] == "torch" and data["mode"] == "eager" and data["net"] == "ours"
    assert set(data["parts"]) == {"network", "convs_each"}  # eager: no one-program figure
    spec = get_spec("d2l")
    check_result(data, spec, 32, 2, "train")
    # the checks fail on a network the run did not measure (one layer fewer, no bias
    # change: the same kinds) and on the other what
    with pytest.raises(AssertionError):
        check_result(data, get_spec("d2l", block_config=(4, 4, 4, 3)), 32, 2, "train")
    with pytest.raises(AssertionError):
        check_result({**data, "what": "infer"}, spec, 32, 2, "infer")

    # the summary table: a flax result that took exactly twice as long in every part
    flax = copy.deepcopy(data)
    flax.update(backend="flax", mode="jit")
    for row in [*flax["parts"].values(), *flax["kinds"].values()]:
        if "ms_median" in row:
            row["ms_median"] *= 2
    md = kernels.summary_markdown(data, flax)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:4] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| part")}
    assert rows["network step"][2] == "2.00" and rows["3x3 growth convs (16)"][2] == "2.00"
    assert rows["transition 1x1 convs (3)"] == [f"{data['kinds']['transition']['ms_median']:.1f}",
                                                f"{2 * data['kinds']['transition']['ms_median']:.1f}", "2.00"]
    assert "1x1 bottleneck convs (0)" not in md  # d2l has no bottleneck
    # bad inputs name what was expected
    with pytest.raises(ValueError, match="expected the flax result, got backend 'torch'"):
        kernels.summary_markdown(data, data)
    with pytest.raises(ValueError, match="different configurations: size 32 vs 64"):
        kernels.summary_markdown(data, {**flax, "size": 64})
