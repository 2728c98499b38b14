"""The STAN DAG on the tiny world end to end, and the ablation-table helper's rows, markdown and MLflow summary run.

`stan_tiny` is session-scoped so that the UCoFiA DAG test (tests/flows/test_reproduce_ucofia.py) runs *after* it on
the same root and checks that the shared stages are reused, without a second STAN run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import assert_paths_absolute, relative_root
from tests.golden import check_golden, job_metrics

pytestmark = pytest.mark.usefixtures("prefect_harness")


_STAN_TINY: dict[str, tuple[str, dict[str, Any]]] = {}


@pytest.fixture(scope="session")
def stan_tiny(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[str, dict[str, Any]]:
    """One tiny STAN DAG (main variant: 6 steps on the 96 training clips) on a fresh root: (absolute root, output).

    Run as a new user would after a failure: from a working directory that is not the repository, with the relative
    root ``runs``; the first attempt fails right after the mini CLIP (feature extraction raises), the second, with the
    same root spelled differently (absolute, ``/./``, trailing slash) and from another directory, recovers with no
    file deleted by hand and reuses the mini CLIP the failed attempt trained (`RECOVERY` records what it saw).

    Imported by the UCoFiA test module, where pytest registers it as a second fixture; the module-level cache keeps
    it to one STAN run per session.
    """
    if "run" not in _STAN_TINY:
        import torch

        from flows.reproduce_stan import reproduce_stan
        from pipelines.features import clip_frames

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        base = tmp_path_factory.mktemp("retrieval")
        try:
            with relative_root(base) as (spelled, absolute), pytest.MonkeyPatch.context() as mp:

                def broken(*args: Any, **kwargs: Any) -> Any:
                    raise ValueError("injected: feature extraction fails after the mini CLIP")

                mp.setattr(clip_frames, "extract", broken)
                with pytest.raises(ValueError, match="injected"):
                    reproduce_stan(root=spelled, size="tiny")
            (clip_record,) = absolute.glob("jobs/miniclip-*.json")
            RECOVERY["clip_record"] = clip_record.read_bytes()
            with relative_root(base, cwd="another"):
                out = reproduce_stan(root=f"{base}/elsewhere/./runs/", size="tiny")
            RECOVERY["clip_record_after"] = clip_record.read_bytes()
            _STAN_TINY["run"] = str(absolute), out
        finally:
            torch.set_num_threads(threads)
    return _STAN_TINY["run"]


#: what the failed first attempt of `stan_tiny` left, to check the recovery reused it
RECOVERY: dict[str, bytes] = {}


def assert_retrieval_block(block: dict[str, Any]) -> None:
    for direction in ("t2v", "v2t"):
        m = block[direction]
        assert set(m) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
        assert all(math.isfinite(v) for v in m.values())
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_stan_dag_trains_evaluates_recognition_and_registers(stan_tiny: tuple[str, dict[str, Any]]) -> None:
    from infra.registry import Registry
    from infra.tracking import Tracker

    root, out = stan_tiny
    assert out["paper"] == "stan" and out["dataset"] == "mini-retrieval-tiny-s0" and out["main"] == "stan"
    assert "/clip-blocks2/" in out["features_stage"]  # the mini YAML's K = 2
    assert set(out["variants"]) == {"stan"} and "ablations" not in out
    head = out["variants"]["stan"]
    for block in ("overall", "order"):
        assert_retrieval_block(head[block])
    # tiny world: 48 test videos, 12 action classes; recognition over the 48 labelled test videos
    assert head["overall"]["t2v"]["MnR"] <= 48
    rec = head["recognition"]
    assert set(rec) == {"top1", "top5"} and 0 <= rec["top1"] <= rec["top5"] <= 100
    assert head["run_id"] and head["model_version"] == 1 and head["reused"] is False
    tracker = Tracker.for_run_root(root)
    champion = Registry(tracker).champion("stan")
    assert champion is not None and champion["run_id"] == head["run_id"] and champion["metric_name"] == "t2v/R@1"
    job = json.loads(Path(root, "jobs", f"{head['run_name']}.json").read_text())
    assert job["metrics"]["recognition/top1"] == pytest.approx(rec["top1"])
    trained = head["recognition_trained"]  # the class-prompt cross-entropy fitted on the training videos
    assert set(trained) == {"top1", "top5"} and job["metrics"]["recognition_trained/top1"] == trained["top1"]
    assert head["chance"]["order"]["motion_blind"] == 25.0  # 4 reversal-twin labels per colour and shape
    # the motion-aware text tower: CLIP4Clip's seqTransf job of the same root, trained first, loaded frozen
    (tower,) = out["borrowed"].values()
    assert tower["run_name"].startswith("clip4clip-seqTransf-") and tower["reused"] is False
    model = json.loads(Path(job["model_dir"], "job.json").read_text())["config"]["model"]
    assert model["text_init"] == f"{root}/models/{tower['run_name']}/model.pt" and model["freeze_text"] is True
    check_golden("stan-tiny", job_metrics(root, "stan", "miniclip", "clip4clip"))


@pytest.mark.slow
def test_a_relative_root_rerun_after_a_failure_recovers_and_records_absolute_paths(
    stan_tiny: tuple[str, dict[str, Any]],
) -> None:
    root, out = stan_tiny
    assert out["root"] == root and Path(root).is_absolute() and Path(root).name == "runs"
    # the mini CLIP the failed attempt trained was reused, not retrained: its record is byte-identical
    assert RECOVERY["clip_record"] == RECOVERY["clip_record_after"]
    clip = json.loads(RECOVERY["clip_record"])
    assert clip["model_dir"].startswith(root + "/models/miniclip-")
    assert_paths_absolute(Path(root), out)


def test_ablation_table_rows_markdown_and_one_mlflow_summary_run(tmp_path: Path) -> None:
    from flows.tasks import log_ablation_table as log_table
    from infra.results import markdown_table
    from infra.tracking import Tracker
    from recipes.experiments.retrieval import Row, build_table

    def report(r1: float) -> dict[str, Any]:
        block = {"R@1": r1, "R@5": r1 + 10, "R@10": r1 + 20, "MdR": 2.0, "MnR": 3.0}
        return {"overall": {"t2v": block, "v2t": block}, "order": {"t2v": block, "v2t": block}}

    results = {
        "full": {"run_name": "p-full-d-1", "run_id": "a", "report": {**report(50.0), "raw": report(40.0)["overall"]}},
        "ablated": {"run_name": "p-ablated-d-2", "run_id": "b", "report": report(30.0)},
    }
    rows = [Row("g", "ablated", "ablated"), Row("g", "full", "full"), Row("raw", "no norm", "full", block="raw")]
    table = build_table(rows, results, lambda row, rec: {"extra": len(row.label)})
    assert [r["t2v R@1"] for r in table] == [30.0, 50.0, 40.0]
    assert table[2]["order t2v R@1"] is None and table[1]["order t2v R@1"] == 50.0  # a block row has no subsets
    assert [r["extra"] for r in table] == [7, 4, 7] and table[0]["run_name"] == "p-ablated-d-2"
    md = markdown_table(table).splitlines()
    assert md[0].startswith("| group | label | variant | t2v R@1 |") and "run_name" not in md[0]
    assert md[3] == "| g | full | full | 50.0 | 60.0 | 50.0 | 50.0 | 50.0 | 4 |"

    root = str(tmp_path / "runs")
    first = log_table.fn(root, "paper", "data", table, {"g": "full > ablated"})
    again = log_table.fn(root, "paper", "data", table, {"g": "full > ablated"})
    assert first == again  # one summary run per (paper, dataset, jobs), reused on rerun
    tracker = Tracker.for_run_root(root)
    runs = tracker.client.search_runs([tracker.get_or_create_experiment("paper")])
    assert [r.info.run_id for r in runs] == [first["run_id"]] and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert metrics["ablation/ablated/t2v R_at_1"] == 30.0 and metrics["ablation/full.raw/t2v R_at_1"] == 40.0
    local = Path(tracker.client.download_artifacts(first["run_id"], "tables", str(tmp_path / "dl")))
    assert json.loads((local / "ablations.json").read_text())["rows"] == table
    assert (local / "ablations.md").read_text().startswith("\n".join(md[:2]))
    ui = json.loads((local / "ablations_table.json").read_text())
    assert ui["columns"][:3] == ["group", "label", "variant"] and len(ui["data"]) == 3
