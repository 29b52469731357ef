"""How the runner shares the machine: workers planned longest first, a dominant backend's
cases split over several workers, each worker's threads, and the shards' outcomes merged."""

from __future__ import annotations

import os

import pytest
from parity_helpers import TINY_BC, TINY_IMAGENET, cell, fake, run

from densenet_multi.parity import compare
from densenet_multi.parity.cases import DEFAULT_CASES, Case
from densenet_multi.parity.compare import compare_run
from densenet_multi.parity.runner import (
    THREAD_VARS,
    BackendTarget,
    WorkerOutcome,
    case_cost,
    merge_outcomes,
    plan_workers,
    thread_budget,
    thread_env,
    worker_env,
)

FOUR = [BackendTarget(n) for n in ("torch", "flax", "keras", "gluon")]
#: the committed baseline's main-phase worker seconds (parity/baseline/report.json.gz)
BASELINE_SECONDS = {"flax": 466.35, "gluon": 114.72, "keras": 141.57, "torch": 138.34}


def test_a_dominant_backend_is_split_and_every_case_runs_exactly_once():
    cases = list(DEFAULT_CASES)
    plans = plan_workers(FOUR, cases, 2, BASELINE_SECONDS)
    by = {}
    for p in plans:
        by.setdefault(p.backend.name, []).append(p)
    # flax took 54% of the baseline run, over half of a slot's share: two workers
    assert sorted(p.shard for p in by["flax"]) == ["-1", "-2"]
    assert {n: len(ps) for n, ps in by.items()} == {"flax": 2, "torch": 1, "keras": 1, "gluon": 1}
    for name, ps in by.items():
        got = sorted(i for p in ps for i in p.cases)
        assert got == list(range(len(cases))), name  # every case, once
    # the two flax shards are balanced to within the costliest case
    costs = [sum(case_cost(cases[i]) for i in p.cases) for p in by["flax"]]
    assert abs(costs[0] - costs[1]) <= max(case_cost(c) for c in cases)
    # longest first: both flax shards before the rest
    assert [p.backend.name for p in plans[:2]] == ["flax", "flax"]
    assert [p.cost for p in plans] == sorted((p.cost for p in plans), reverse=True)


def test_without_history_or_with_one_job_nothing_is_split():
    cases = list(DEFAULT_CASES)
    for plans in (plan_workers(FOUR, cases, 2, None), plan_workers(FOUR, cases, 1, BASELINE_SECONDS)):
        assert [(p.backend.name, p.shard) for p in plans] == [(b.name, "") for b in FOUR]
        assert all(p.cases == tuple(range(len(cases))) for p in plans)
    # a backend alone is the whole run: split; a single case never is
    assert len(plan_workers(FOUR[:1], cases, 2, None)) == 2
    assert len(plan_workers(FOUR[:1], cases[:1], 2, None)) == 1


def test_case_cost_counts_layers_and_the_backward_passes():
    c = {x.name: case_cost(x) for x in DEFAULT_CASES}
    assert c["densenet121"] == 58  # 6 + 12 + 24 + 16 dense layers, forward only
    assert c["densenet121-float64"] == 58 * 3  # + a gradient
    assert c["densenet40_k12-float64"] == 36 * 4  # + a gradient and a trajectory


def test_thread_budget_shares_the_cores_and_leaves_the_users_settings():
    assert thread_budget(1, cpus=2) is None  # one worker at a time: the frameworks' own
    assert thread_budget(2, cpus=2) == 1
    assert thread_budget(3, cpus=2) == 1  # never zero
    assert thread_budget(2, cpus=16) == 8
    env = thread_env(1, {"OMP_NUM_THREADS": "4", "XLA_FLAGS": "--xla_foo=1"})
    assert "OMP_NUM_THREADS" not in env  # the user's own value stays
    assert env["TF_NUM_INTRAOP_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_cpu_multi_thread_eigen=false"
    assert thread_env(None, {}) == {} and "XLA_FLAGS" not in thread_env(2, {})
    full = worker_env("torch", ["cpu"], False, None, threads=1)
    assert all(full[v] == "1" for v in THREAD_VARS if v not in os.environ)


def test_merged_outcome_is_the_worst_shard_with_every_shard_listed():
    ok = WorkerOutcome("flax", "main", "ok", seconds=10.0, versions={"jax": "1"}, log="a")
    bad = WorkerOutcome("flax", "main", "crashed", reason="worker exited with status 17",
                        returncode=17, seconds=3.0, log="b")
    m = merge_outcomes([ok, bad], [["c1"], ["c2"]])
    assert m.status == "crashed" and m.returncode == 17 and "status 17" in m.reason
    assert m.seconds == 13.0 and m.versions == {"jax": "1"}
    assert [s["status"] for s in m.shards] == ["ok", "crashed"]
    assert m.shards[1]["cases"] == ["c2"] and m.shards[1]["log"] == "b"
    assert merge_outcomes([ok], [["c1"]]) is ok
    missing = WorkerOutcome("flax", "main", "missing", reason="cannot import")
    assert merge_outcomes([bad, missing], [["c1"], ["c2"]]).status == "missing"


# ---------------------------------------------------------------------- sharded runs
CASES = [Case("a", TINY_IMAGENET, (32, 32), checks=("shapes", "eval", "train", "copy")),
         Case("b", TINY_BC, (16, 16), batch=4, checks=("eval", "train", "grad", "copy"))]


def test_a_sharded_backend_runs_every_case_and_is_compared_like_one_worker(tmp_path):
    result, ccs = run(tmp_path, CASES, [fake("autograd"), fake("good")], jobs=2,
                      expected_seconds={"autograd": 100.0, "good": 1.0})
    o = result.outcomes["autograd"]["main"]
    assert o.status == "ok" and len(o.shards) == 2
    assert sorted(c for s in o.shards for c in s["cases"]) == sorted(
        p.name for p in result.case_dirs.values())
    assert result.outcomes["good"]["main"].shards == []
    for name, check in (("a", "eval"), ("a", "train"), ("b", "eval"), ("b", "grad")):
        assert cell(ccs[name], check, "autograd").status == "pass", (name, check)
    for pair in ("autograd->good", "good->autograd", "autograd~good"):
        check = "eval" if "~" in pair else "copy"
        assert cell(ccs["a"], check, pair).status == "pass", pair


def test_cases_compared_in_processes_equal_those_compared_in_one(tmp_path, monkeypatch):
    # an earlier run's workers, named by another plan, are not left beside this run's
    stale = tmp_path / "run" / "_workers" / "autograd.main-2.events.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    result, _ = run(tmp_path, CASES, [fake("autograd"), fake("good")])
    assert not stale.exists() and (stale.parent / "autograd.main.events.jsonl").exists()
    in_processes = []  # the process pool answered (compare_run falls back to one process)
    monkeypatch.setattr(compare, "_compare_in_processes",
                        lambda *a, f=compare._compare_in_processes: in_processes.append(1) or f(*a))
    one, two = compare_run(result), compare_run(result, jobs=2)
    assert in_processes == [1]
    assert [cc.case.name for cc in two] == [c.name for c in CASES]
    assert len(two[0].cells) > 10 and repr(two) == repr(one)


@pytest.mark.parametrize("backend, status", [("crash", "crashed"),
                                             ("broken", "missing")])
def test_a_failing_sharded_backend_fails_as_a_whole(tmp_path, backend, status):
    target = fake(backend) if backend == "crash" else BackendTarget(backend, "no_such_module_x")
    result, ccs = run(tmp_path, CASES, [target, fake("good")], jobs=2,
                      expected_seconds={backend: 100.0, "good": 1.0}, timeout=60)
    o = result.outcomes[backend]["main"]
    assert o.status == status and len(o.shards) == 2
    assert all(s["status"] == status for s in o.shards)
    if status == "missing":
        assert "no_such_module_x" in o.reason
    assert cell(ccs["a"], "eval", backend).status == status


def _thread_settings(_case_dir: str) -> tuple[str | None, str | None]:
    """Stands in for the reference job in a spawned process: what it was started with."""
    return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS")


def test_the_reference_process_starts_with_the_thread_budget(monkeypatch):
    from densenet_multi.parity import runner

    monkeypatch.setattr(runner, "reference_job", _thread_settings)
    expected = tuple(os.environ.get(v, "1") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    before = dict(os.environ)
    pool, futures = runner._start_references(["case"], 1)
    try:
        assert futures[0].result(timeout=120) == expected
    finally:
        if pool is not None:
            pool.shutdown()
    assert dict(os.environ) == before  # the harness's own environment is put back
