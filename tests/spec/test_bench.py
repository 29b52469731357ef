"""The benchmark harness in the core environment: plans, a crashing configuration reported
as failed (not a ratio), and the report's ratios and table against its JSON. The real
measurement (torch and torchvision, --tiny) is tests/torch/test_bench.py."""

from __future__ import annotations

import json
import sys

import pytest

from densenet_multi.bench import cli, report
from densenet_multi.bench.harness import memory_plan, plan, run_pairs
from densenet_multi.bench.probe import Config


def _rec(backend, net, ips, peak=1000.0, build=500.0, step=0.5):
    return {"backend": backend, "net": net, "status": "ok", "ips_median": ips, "ips_min": ips * 0.9,
            "ips_max": ips * 1.1, "rss_peak_mib": peak, "rss_build_mib": build,
            "step_seconds_median": step}


def test_plan_pairs_each_backend_with_its_reference():
    pairs = plan(["torch", "flax", "gluon"], ["infer", "train"],
                 [("densenet121", 224), ("densenet_bc_100_k12", 32)], 8, 10, 3)
    by = {p.key: p for p in pairs}
    t = by["torch compile densenet121@224 b8 train"]
    assert t.reference.official and t.reference.backend == "torch" and t.reference.mode == "compile"
    # Flax has no official net: torchvision eager, or ours-torch eager where torchvision has no preset
    f = by["flax jit densenet121@224 b8 infer"]
    assert (f.reference.backend, f.reference.official, f.reference.mode) == ("torch", True, "eager")
    f32 = by["flax jit densenet_bc_100_k12@32 b8 infer"]
    assert (f32.reference.backend, f32.reference.official) == ("torch", False)
    # the Gluon zoo's fixed 7x7 head: no reference at 32x32, and the row says why
    g = by["gluon hybridized densenet_bc_100_k12@32 b8 train"]
    assert g.reference is None and "no official gluon" in g.note
    assert len(pairs) == (3 + 2 + 1) * 2 * 2  # torch 3 modes, flax 2, gluon 1
    mem = memory_plan(["torch", "keras"], "densenet121", 224, 16, 10, 3)
    assert [(p.ours.backend, p.ours.memory_efficient, p.reference is not None) for p in mem] == [
        ("torch", False, True), ("torch", True, True), ("keras", False, True), ("keras", True, False)]


@pytest.mark.parametrize("kw, message", [
    ({"backend": "caffe"}, "backend must be one of"),
    ({"backend": "torch", "mode": "jit"}, "mode of torch must be one of"),
    ({"backend": "gluon", "official": True, "size": 32}, "fixed 7x7 pool"),
    ({"backend": "flax", "official": True}, "no official flax net"),
    ({"backend": "torch", "batch": 0}, "batch must be a positive integer"),
])
def test_config_refuses_bad_settings_by_name(kw, message):
    with pytest.raises(ValueError, match=message):
        Config(**kw)


@pytest.mark.parametrize("argv, message", [
    (["--presets", "densenet121@x"], "PRESET@SIZE"),
    (["--backends", "torch,caffe"], "--backends expects"),
    (["--modes", "torch=jit"], "--modes expects"),
])
def test_cli_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_crashing_configuration_is_reported_failed_without_a_ratio(tmp_path, capsys):
    # This interpreter (the core env) has no torch: the probe process fails importing it,
    # a real crash of a real probe process. The run must report it with its reason, give
    # it no ratio, write every output, and exit 1.
    rc = cli.main(["--tiny", "--backends", "torch", "--what", "throughput", "--rounds", "1",
                   "--modes", "torch=eager", "--python", f"torch={sys.executable}",
                   "--out", str(tmp_path), "--no-figure"])
    assert rc == 1
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["throughput"]
    assert len(rows) == 2
    for row in rows:
        (rnd,) = row["rounds"]
        assert rnd["ratio"] is None and rnd["status"] == "failed: ours, reference"
        for side in ("ours", "reference"):
            assert rnd[side]["status"] == "failed"
            assert "No module named 'torch'" in rnd[side]["reason"]
    table = (tmp_path / "ratios.md").read_text()
    assert report.table_disagreements(table, data) == []  # the ratio cells say FAILED
    assert table.count("No module named 'torch'") == 4  # each failed side, with its reason
    assert "configuration round(s) failed" in capsys.readouterr().err


def test_a_missing_interpreter_is_a_failed_row(tmp_path):
    rows = run_pairs(plan(["keras"], ["infer"], [("densenet121", 32)], 2, 1, 0,
                          {"keras": ("graph",)}), rounds=1, threads=1,
                     pythons={"keras": str(tmp_path / "no-python")})
    rnd = rows[0]["rounds"][0]
    assert rnd["ours"]["status"] == rnd["reference"]["status"] == "failed"
    assert "no-python does not exist" in rnd["ours"]["reason"]


def _synthetic() -> dict:
    rows = [{"key": "k", "backend": "torch", "mode": "eager", "preset": "densenet121", "size": 32,
             "batch": 2, "what": "train", "memory_efficient": False, "reference": "torchvision eager",
             "note": "", "rounds": [
                 {"round": 1, "ours": _rec("torch", "ours", 3.0),
                  "reference": _rec("torch", "official", 2.0)},
                 {"round": 2, "reference": _rec("torch", "official", 4.0),
                  "ours": {"status": "failed", "reason": "RuntimeError: boom\nmore"}}]}]
    mem = [{"key": f"m{e}", "backend": "torch", "mode": "eager", "preset": "densenet121", "size": 224,
            "batch": 16, "what": "memory", "memory_efficient": e, "reference": "torchvision eager",
            "note": "", "rounds": [{"round": 1,
                                    "ours": _rec("torch", "ours", 1, 500 + (150 if e else 300), 500,
                                                 0.6 if e else 0.5),
                                    "reference": _rec("torch", "official", 1, 700 + (200 if e else 300),
                                                      700)}]}
           for e in (False, True)]
    report.add_ratios(rows, "throughput")
    report.add_ratios(mem, "memory")
    return {"command": "x", "machine": {"cpus": 2}, "settings": {"rounds": 2, "threads": 2, "steps": 2,
                                                                   "warmup": 1},
            "throughput": rows, "memory": mem, "memory_summary": report.memory_summary(mem)}


def test_ratios_come_from_the_recorded_medians_and_the_table_agrees():
    data = _synthetic()
    r1, r2 = data["throughput"][0]["rounds"]
    assert r1["ratio"] == pytest.approx(1.5) and r1["status"] == "ok"
    assert r2["ratio"] is None and r2["status"] == "failed: ours"
    assert data["memory"][0]["rounds"][0]["ratio"] == pytest.approx(300 / 300)
    assert data["memory"][1]["rounds"][0]["ratio"] == pytest.approx(150 / 200)
    (ours, ref) = data["memory_summary"]
    assert ours["net"] == "ours-torch" and ours["rounds"][0]["saving"] == pytest.approx(0.5)
    assert ours["rounds"][0]["step_time_ratio"] == pytest.approx(1.2)
    assert ref["rounds"][0]["saving"] == pytest.approx(1 - 200 / 300)
    md = report.ratios_markdown(data)
    assert "| torch eager, densenet121@32 b2, train | torchvision eager | 1.50 | FAILED |" in md
    assert "| ours-torch | 1 | 300 -> 150 | 50% | 1.20x |" in md
    assert "round 2, ours: RuntimeError: boom" in md


def test_table_check_catches_a_wrong_ratio_and_a_missing_row():
    # the agreement check used on real runs (tests/torch/test_bench.py), fed a table that
    # disagrees with its JSON
    data = _synthetic()
    md = report.ratios_markdown(data)
    assert report.table_disagreements(md, data) == []
    data["throughput"][0]["rounds"][0]["ratio"] = 1.4
    (problem,) = report.table_disagreements(md, data)
    assert "['1.50', 'FAILED'] != json ['1.40', 'FAILED']" in problem
    data["memory"].append({**data["memory"][0], "preset": "d2l"})
    assert "no table row" in report.table_disagreements(md, data)[-1]


def test_the_peak_rss_reset_forgets_a_freed_allocation():
    # what the steady-state memory reading rests on: after the reset the peak is today's
    # RSS, not the high-water mark of memory the process has since given back
    import numpy as np

    from densenet_multi.bench.probe import peak_rss_mib, reset_peak_rss

    big = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    high = peak_rss_mib()
    del big
    assert reset_peak_rss(), "this Linux cannot reset the high-water mark"
    assert peak_rss_mib() < high - 300, (peak_rss_mib(), high)
    again = np.ones(400 * 2**20 // 8)
    assert peak_rss_mib() > high - 100  # and it counts new memory again
    del again


def test_step_memory_is_the_steady_peak_where_recorded():
    rec = {"rss_peak_mib": 3000.0, "rss_build_mib": 500.0, "rss_steady_mib": 2000.0}
    assert report.net_mib(rec) == 1500.0 and report.whole_run_mib(rec) == 2500.0
    assert report.net_mib({"rss_peak_mib": 3000.0, "rss_build_mib": 500.0}) == 2500.0
