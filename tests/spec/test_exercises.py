"""The exercises that need no framework, and the rendering of every exercise's committed result.

* Table 1 (exercise 4) and the ResNet comparison (exercise 2): the counts against
  the published numbers (torchvision's model builders, the ResNet paper's FLOPs
  row), and the committed JSON against what the code computes now.
* ``exercises.render``: it renders the committed ``docs/exercises/*.json``, and a
  malformed file fails with an error naming the file and the field.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from densenet_multi.exercises import EXERCISES, render, resnet, table1
from densenet_multi.spec import get_spec

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "exercises"

# Published counts, typed in here independently of the package's own constants:
# sum(p.numel()) of torchvision's model builders, and its weights' "_ops" (GMACs).
TORCHVISION_DENSENET = {"densenet121": (7_978_856, 2.834), "densenet161": (28_681_000, 7.728),
                        "densenet169": (14_149_480, 3.36), "densenet201": (20_013_928, 4.291)}
TORCHVISION_RESNET = {"resnet18": (11_689_512, 1.814), "resnet34": (21_797_672, 3.664),
                      "resnet50": (25_557_032, 4.089), "resnet101": (44_549_160, 7.801),
                      "resnet152": (60_192_808, 11.514)}
# The ResNet paper's Table 1, FLOPs row (multiply-adds, 1e9), stride on the first 1x1 conv.
PAPER_RESNET_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6,
                       "resnet152": 11.3}


# ---------------------------------------------------------------------- 4: Table 1
def test_table1_variants_have_torchvisions_parameters_and_macs():
    rows = {r["name"]: r for r in table1.run()["variants"]}
    assert set(rows) == {"densenet121", "densenet161", "densenet169", "densenet201", "densenet264"}
    for name, (params, gmacs) in TORCHVISION_DENSENET.items():
        assert rows[name]["params"] == params == rows[name]["torchvision_params"]
        assert rows[name]["macs"] / 1e9 == pytest.approx(gmacs, abs=5e-4)
    # torchvision has no DenseNet-264; the paper's network has 33.3M parameters
    assert round(rows["densenet264"]["params"] / 1e6, 1) == 33.3
    assert rows["densenet264"]["torchvision_params"] is None


def test_table1_layouts_follow_the_paper():
    rows = {r["name"]: r for r in table1.run()["variants"]}
    for name in ("densenet121", "densenet161", "densenet169", "densenet201"):
        assert rows[name]["depth"] == int(name.removeprefix("densenet"))
    # 6+12+64+48 dense layers of two convs, the stem, 3 transitions and the classifier: 265
    assert rows["densenet264"]["depth"] == 265
    assert rows["densenet161"]["growth_rate"] == 48 and rows["densenet161"]["num_init_features"] == 96
    assert rows["densenet121"]["stage_sizes"] == {
        "stem": 56, "block1": 56, "transition1": 28, "block2": 28, "transition2": 14,
        "block3": 14, "transition3": 7, "block4": 7}
    assert rows["densenet121"]["block_out"] == [256, 512, 1024, 1024]


# ---------------------------------------------------------------------- 2: ResNet
@pytest.mark.parametrize("name", sorted(TORCHVISION_RESNET))
def test_resnet_counts_equal_torchvision_and_the_paper(name):
    params, gmacs = TORCHVISION_RESNET[name]
    assert resnet.resnet_params(name) == params == resnet.TORCHVISION_RESNET_PARAMS[name]
    assert resnet.resnet_macs(name) / 1e9 == pytest.approx(gmacs, abs=5e-4)
    # the paper's FLOPs row is rounded loosely (3.66 is listed as 3.6): within 2%
    paper = resnet.resnet_macs(name, stride_on="1x1") / 1e9
    assert paper == pytest.approx(PAPER_RESNET_GFLOPS[name], rel=0.02)
    assert resnet.RESNETS[name].depth == int(name.removeprefix("resnet"))


def test_resnet_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown ResNet 'resnet20'"):
        resnet.resnet_params("resnet20")
    with pytest.raises(ValueError, match="stride_on must be"):
        resnet.resnet_macs("resnet50", stride_on="7x7")


def test_every_densenet_has_fewer_parameters_than_its_nearest_depth_resnet():
    result = resnet.run()
    assert [p["densenet"] for p in result["pairs"]] == list(resnet.DENSENETS)
    assert all(p["param_ratio"] > 1 for p in result["pairs"])
    # DenseNet's 3x3 kernels are 4k -> k (bottleneck to growth rate); ResNet's reach 512 -> 512
    assert resnet.densenet_largest_3x3(get_spec("densenet121")) == 128 * 32 * 9
    assert resnet.resnet_largest_3x3("resnet18") == 512 * 512 * 9


@pytest.mark.parametrize("name,compute", [("table1", table1.run), ("resnet", resnet.run)])
def test_the_committed_counts_are_what_the_code_computes(name, compute):
    committed = json.loads((COMMITTED / f"{name}.json").read_text())
    fresh = compute()
    for key in fresh:
        if key not in ("environment", "command", "seconds"):
            assert committed[key] == fresh[key], (
                f"docs/exercises/{name}.json is stale in {key!r}: rerun "
                f"`python -m densenet_multi.exercises.{name} --out docs/exercises`")


# ---------------------------------------------------------------------- render
def test_render_writes_every_table_answer_and_figure_from_the_committed_json(tmp_path):
    written = render.generate(tmp_path)
    names = [n for n, _ in EXERCISES]
    expected = {tmp_path / "exercises" / f"{n}.md" for n in names}
    expected |= {tmp_path / "exercises" / f"{n}_answer.md" for n in names}
    expected |= {tmp_path / "figures" / f"exercise_{n}.png" for n in ("pooling", "resnet",
                                                                      "memory", "mlp")}
    assert set(written) == expected
    for path in expected:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else data.strip()
    t1 = (tmp_path / "exercises" / "table1.md").read_text()
    assert "| densenet121 | 121 | 32 | 64 | 6-12-24-16 |" in t1 and "7,978,856" in t1
    assert "**Measured" in (tmp_path / "exercises" / "memory_answer.md").read_text()


def test_render_imports_no_framework():
    code = ("import sys, densenet_multi.exercises.render; "
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'keras', 'mxnet') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(COMMITTED, src)
    return src


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name,change,message", [
    ("table1", lambda d: d["variants"][0].pop("params"), r"field 'variants\[0\]\.params' is missing"),
    ("pooling", lambda d: d["runs"][0].update(test_acc="high"),
     r"runs\[0\]\.test_acc' must be list"),
    ("pooling", lambda d: d["runs"][0]["loss"].append(float("nan")),
     r"runs\[0\]\.loss' must be a non-empty list of finite numbers"),
    ("mlp", lambda d: d["configs"][0].update(runs=[r for r in d["configs"][0]["runs"]
                                                  if r["model"] == "dense"]),
     r"configs\[0\]\.runs must hold both models"),
    ("memory", lambda d: d["rows"][0].pop("rss_peak_mib"), r"rows\[0\]\.rss_peak_mib' is missing"),
    ("resnet", lambda d: d.update(exercise="table1"), "holds exercise 'table1', expected 'resnet'"),
])
def test_render_names_the_file_and_field_of_a_malformed_result(tmp_path, name, change, message):
    src = _copy(tmp_path)
    _edit(src / f"{name}.json", change)
    with pytest.raises(render.ExerciseDataError, match=message) as info:
        render.generate(tmp_path / "out", source=src)
    assert f"{name}.json" in str(info.value)
    assert not (tmp_path / "out").exists()  # everything is checked before anything is written


def test_render_says_how_to_make_a_missing_or_broken_file(tmp_path):
    src = _copy(tmp_path)
    (src / "mlp.json").unlink()
    with pytest.raises(render.ExerciseDataError,
                       match=r"mlp\.json not found: write it with `python -m "
                             r"densenet_multi\.exercises\.mlp --out docs/exercises` \(in the torch env\)"):
        render.generate(tmp_path / "out", source=src)
    (src / "mlp.json").write_text('{"exercise": "mlp", ')
    with pytest.raises(render.ExerciseDataError, match=r"mlp\.json is not valid JSON"):
        render.generate(tmp_path / "out", source=src)


def test_the_page_includes_exactly_what_render_writes(tmp_path):
    page = (ROOT / "docs" / "exercises.md").read_text(encoding="utf-8")
    included = set(re.findall(r'^--8<-- "docs/generated/(exercises/\w+\.md)"', page, re.M))
    included |= set(re.findall(r"\]\(generated/(figures/exercise_\w+\.png)\)", page))
    written = {p.relative_to(tmp_path).as_posix() for p in render.generate(tmp_path)}
    assert included == written
