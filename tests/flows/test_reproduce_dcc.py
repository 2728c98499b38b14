"""The DCC DAG on the tiny world: a crash injected between the alternation steps resumes at the crashed step (earlier
steps reused: no retraining, same MLflow runs), the DAG's results and tracking structure, and the ablation table on the
same run root (chains sharing a prefix with the main chain reuse its jobs)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import assert_paths_absolute, relative_root
from tests.golden import check_golden, job_metrics

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

CRASH_STEP = "2"  # tiny schedule: warm-up (0), B (1), F (2)


class InjectedCrash(ValueError):
    """Deterministic (not retried by the tasks' retry condition), like a bug or a bad input at step k."""


def _fraction(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The README's relative root ``runs``, from a working directory that is not the repository."""
    with relative_root(tmp_path_factory.mktemp("dcc")) as (spelled, absolute):
        yield spelled
    assert_paths_absolute(absolute)


@pytest.mark.timeout(1500)
def test_a_crash_between_steps_resumes_at_the_crashed_step(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.reproduce_dcc import reproduce_dcc
    from infra import training_job
    from infra.registry import Registry
    from infra.tracking import Tracker

    real = training_job.run_job
    calls: list[str] = []
    armed = [True]

    def crashing(job: training_job.TrainingJob, ray_address: str | None = None) -> dict[str, Any]:
        if job.recipe == "dcc":
            calls.append(job.tags["vlrepro.step"])
            if armed[0] and job.tags["vlrepro.step"] == CRASH_STEP:
                raise InjectedCrash(f"injected crash before step {CRASH_STEP}")
        return real(job, ray_address)

    monkeypatch.setattr(training_job, "run_job", crashing)
    with pytest.raises(InjectedCrash):
        reproduce_dcc(root=root, size="tiny")
    assert calls == ["0", "1", "2"]
    tracker = Tracker.for_run_root(root)
    experiment = tracker.get_or_create_experiment("dcc")

    def step_runs() -> dict[str, Any]:
        runs = tracker.client.search_runs([experiment], filter_string="tags.`vlrepro.stage` != ''")
        return {r.data.tags["vlrepro.step"]: r for r in runs}

    before = step_runs()
    assert sorted(before) == ["0", "1"]  # the crash came before step 2 started: no run, no checkpoint for it
    assert before["0"].info.status == before["1"].info.status == "FINISHED"
    (parent,) = tracker.client.search_runs([experiment], filter_string="tags.`vlrepro.kind` = 'dag'")
    assert parent.info.status == "FAILED"

    armed[0] = False
    calls.clear()
    out = reproduce_dcc(root=root, size="tiny")
    assert calls == [CRASH_STEP]  # steps 0 and 1 come back from the Prefect cache: no job, no training
    assert [(s["stage"], s["reused"]) for s in out["steps"]] == [("warmup", True), ("B", True), ("F", False)]
    after = step_runs()
    assert {k: after[k].info.run_id for k in before} == {k: r.info.run_id for k, r in before.items()}
    assert [s["run_id"] for s in out["steps"]] == [after[k].info.run_id for k in ("0", "1", "2")]
    assert all(r.info.status == "FINISHED" for r in after.values())
    assert all(r.data.tags["mlflow.parentRunId"] == out["parent_run_id"] for r in after.values())
    assert tracker.client.get_run(out["parent_run_id"]).info.status == "FINISHED"
    assert len(tracker.client.search_runs([experiment])) == 4  # parent + 3 steps, none duplicated by the rerun

    # each step started from its predecessor's final weights: the configs chain by init_from
    configs = [json.loads((Path(s["model"]).parent / "job.json").read_text())["config"] for s in out["steps"]]
    assert [c["init_from"] for c in configs] == [None, out["steps"][0]["model"], out["steps"][1]["model"]]
    assert [c["stage"] for c in configs] == ["warmup", "B", "F"]
    # results: THUMOS and ActivityNet mAP of the scored prediction file, per-branch pseudo-label mIoU, phases
    res = out["results"]
    assert set(res["thumos"]) == {f"mAP@0.{i}" for i in range(1, 8)} | {"AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)"}
    assert all(_fraction(v) for v in [*res["thumos"].values(), *res["anet"].values()])
    assert all(_fraction(v) for v in res["pseudo_miou"].values())
    assert all(_fraction(v) for b in res["phase_fg"].values() for k, v in b.items() if k != "distractor")
    assert Path(res["predictions"]).exists() and out["model_version"] == 1
    assert Registry(tracker).champion("dcc") is not None
    artifacts = {a.path for a in tracker.client.list_artifacts(out["parent_run_id"], "plots")}
    assert artifacts == {"plots/timeline_full.png"}


@pytest.mark.timeout(1500)
def test_tiny_dag_with_ablations_reuses_shared_steps_and_reports_the_table(root: str) -> None:
    from flows.reproduce_dcc import reproduce_dcc
    from infra.tracking import Tracker

    out = reproduce_dcc(root=root, size="tiny", ablations=True)
    table = out["ablations"]
    assert [r["variant"] for r in table] == ["cbp_only", "vlp_only", "only_f", "only_b", "full"]
    assert [r["schedule"] for r in table] == ["warmup", "vlp_warmup", "warmup F", "warmup B", "warmup B F"]
    assert [r["branch"] for r in table] == ["cbp", "vlp", "fused", "fused", "cbp"]
    for row in table:
        assert all(_fraction(row[k]) for k in ("AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)", "cbp_miou", "vlp_miou"))
    full = table[-1]
    assert full["AVG(0.1:0.7)"] == pytest.approx(out["results"]["thumos"]["AVG(0.1:0.7)"])  # job metric = file score
    assert full["run_name"] == out["steps"][-1]["run_name"]
    check_golden("dcc-tiny", job_metrics(root))
    tracker = Tracker.for_run_root(root)
    experiment = tracker.get_or_create_experiment("dcc")
    runs = tracker.client.search_runs([experiment])
    # parent + warm-up, B, F of the main chain (shared by cbp_only / only_b / full) + VLP warm-up + only-F's F
    assert len(runs) == 6
    parent = tracker.client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    tables = {a.path for a in tracker.client.list_artifacts(out["parent_run_id"], "tables")}
    assert {"tables/ablations.json", "tables/results.json"} <= tables
    assert all(
        r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs if r.info.run_id != parent.info.run_id
    )
