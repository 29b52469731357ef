"""``densenet-multi bench --tiny`` for real: ours and torchvision, one fresh process each
(this interpreter: the torch-zoo env), and its outputs well formed. No timed assertion."""

from __future__ import annotations

import json
import sys

import pytest

from densenet_multi.bench import cli, report

pytestmark = pytest.mark.zoo
torchvision = pytest.importorskip("torchvision")


def test_tiny_bench_against_torchvision_writes_consistent_outputs(tmp_path):
    rc = cli.main(["--tiny", "--backends", "torch", "--what", "throughput", "--rounds", "1",
                   "--threads", "1", "--python", f"torch={sys.executable}", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["presets"] == ["densenet121@32"] and data["settings"]["batch"] == 2
    rows = data["throughput"]
    assert [(r["what"], r["mode"], r["reference"]) for r in rows] == [
        ("infer", "eager", "torchvision eager"), ("train", "eager", "torchvision eager")]
    for row in rows:
        (rnd,) = row["rounds"]
        assert rnd["status"] == "ok" and rnd["order"] == ["ours", "reference"]
        for side, net in (("ours", "ours"), ("reference", "official")):
            rec = rnd[side]
            assert rec["status"] == "ok" and rec["net"] == net and rec["what"] == row["what"]
            assert len(rec["step_seconds"]) == 2 and all(t > 0 for t in rec["step_seconds"])
            assert 0 < rec["ips_min"] <= rec["ips_median"] <= rec["ips_max"]
            # the median of the per-step img/s (2 steps: the mean of the two)
            ips = sorted(2 / t for t in rec["step_seconds"])
            assert rec["ips_median"] == pytest.approx((ips[0] + ips[1]) / 2, rel=1e-3)
            assert (rec["rss_start_mib"] <= rec["rss_import_mib"] <= rec["rss_build_mib"]
                    <= rec["rss_warm_mib"] <= rec["rss_peak_mib"])
            # the timed steps' own peak (high-water mark reset after the warm-up)
            assert 0 < rec["rss_steady_mib"] <= rec["rss_peak_mib"]
            assert rec["threads"]["torch_num_threads"] == data["settings"]["threads"]
            assert "torch" in rec["versions"]
        assert "torchvision" in rnd["reference"]["versions"]
        # the ratio is the two recorded medians'
        assert rnd["ratio"] == pytest.approx(rnd["ours"]["ips_median"] / rnd["reference"]["ips_median"])
    md = (tmp_path / "ratios.md").read_text()
    assert report.table_disagreements(md, data) == []
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
