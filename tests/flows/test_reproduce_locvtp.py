"""The LocVTP DAG on the tiny world, end to end, and its rerun reusing every stage and job; the ablation table's
assembly on stub jobs; the override routing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import assert_paths_absolute, relative_root
from tests.golden import check_golden, job_metrics

GROUNDING_KEYS = {f"R@{n},IoU@{m}" for n in (1, 5) for m in ("0.3", "0.5", "0.7")}


def _percent(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 100.0


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(1800)
def test_tiny_locvtp_dag_runs_end_to_end_and_reuses_finished_stages(tmp_path: Path) -> None:
    from flows import reproduce_locvtp as flow_module
    from infra.registry import Registry
    from infra.tracking import Tracker

    kwargs: dict[str, Any] = {"size": "tiny"}
    with relative_root(tmp_path) as (spelled, absolute):  # the README's relative root, not from the repository
        out = flow_module.reproduce_locvtp(root=spelled, **kwargs)
    root = str(absolute)
    assert_paths_absolute(absolute, out)
    check_golden("locvtp-tiny", job_metrics(root))

    assert out["paper"] == "locvtp" and out["dataset"] == "mini-grounding-tiny-s0"
    assert set(out["grounding"]) == {"locvtp", "baseline"}
    for head in out["grounding"].values():
        assert set(head["metrics"]) == GROUNDING_KEYS and all(_percent(v) for v in head["metrics"].values())
        assert head["metrics"]["R@1,IoU@0.7"] <= head["metrics"]["R@1,IoU@0.5"] <= head["metrics"]["R@5,IoU@0.5"]
        assert head["run_id"] and head["model_version"] == 1 and head["reused"] is False
    for ret in out["retrieval"].values():
        assert {"t2v", "v2t", "within"} <= set(ret) and _percent(ret["t2v"]["R@1"]) and _percent(ret["within"]["R@1"])
    assert out["pretrain"]["model_version"] == 1 and _percent(out["pretrain"]["metrics"]["t2v/R@1"])
    # the job's own evaluation and the DAG's retrieval transfer compute the same thing from the same weights
    assert out["pretrain"]["metrics"]["t2v/R@1"] == pytest.approx(out["retrieval"]["locvtp"]["t2v"]["R@1"])
    assert out["features"]["locvtp"] != out["features"]["baseline"] and "ablations" not in out

    tracker = Tracker.for_run_root(root)
    registry = Registry(tracker)
    for name in ("locvtp", "locvtp-grounding", "clip-grounding", "mini-clip"):
        assert registry.champion(name) is not None
    experiment = tracker.get_or_create_experiment("locvtp")
    runs = tracker.client.search_runs([experiment])
    assert len(runs) == 4  # pre-training, 2 heads, the summary
    summary = tracker.client.get_run(out["summary_run_id"])
    assert summary.data.tags["vlrepro.kind"] == "summary"

    again = flow_module.reproduce_locvtp(root=root, **kwargs)
    assert again["pretrain"]["reused"] and all(g["reused"] for g in again["grounding"].values())
    for block in ("grounding", "retrieval", "features", "summary_run_id"):
        strip = (lambda x: x) if block != "grounding" else (lambda g: {k: {**v, "reused": None} for k, v in g.items()})
        assert strip(again[block]) == strip(out[block])
    assert len(tracker.client.search_runs([experiment])) == 4  # no new MLflow run on rerun
    assert again["seconds"] < out["seconds"]


def _stub_pretrain(name: str, variant: dict[str, Any], register: bool) -> dict[str, Any]:
    assert register is False  # ablation jobs stay out of the registry
    return {"job": {"run_name": f"pre-{name}"}, "features": f"feats-{name}", "variant": variant}


def _stub_ground(name: str, method: str, features_uri: str, query_uri: str, register: bool) -> dict[str, Any]:
    assert (method, features_uri, query_uri, register) == ("locvtp-grounding", f"feats-{name}", "base", False)
    value = float(len(name))
    return {"metrics": {k: value for k in GROUNDING_KEYS}, "run_name": f"head-{name}"}


def _stub_retrieval(features_uri: str, test_queries: str) -> dict[str, Any]:
    return {"t2v": {"R@1": 1.0}, "within": {"R@1": 2.0}}


def test_ablation_table_rows() -> None:
    from recipes.experiments.locvtp import ABLATIONS, ablation_table

    main = {"job": {"run_name": "pre-full"}}
    grounding = {
        "locvtp": {"metrics": {k: 50.0 for k in GROUNDING_KEYS}, "run_name": "head-full"},
        "baseline": {"metrics": {k: 10.0 for k in GROUNDING_KEYS}, "run_name": "head-base"},
    }
    retrieval = {"locvtp": _stub_retrieval("", ""), "baseline": _stub_retrieval("", "")}
    rows = ablation_table(_stub_pretrain, _stub_ground, _stub_retrieval, "test.txt", "base", main, grounding, retrieval)
    assert [(r["group"], r["variant"]) for r in rows] == [
        ("baseline", "no pre-training"),
        ("losses", "lc-lf-lt (full)"), ("losses", "lc"), ("losses", "lc-lf"),
        ("positives", "clip-topk (full)"), ("positives", "word-topk"), ("positives", "random"),
        ("top_k", "k3 (full)"), ("top_k", "k1"), ("top_k", "k5"),
        ("warp_target", "cross-modal (full)"), ("warp_target", "intra-modal"),
    ]  # fmt: skip
    by_variant = {r["variant"]: r for r in rows}
    assert (
        by_variant["no pre-training"]["R@1,IoU@0.5"] == 10.0 and by_variant["no pre-training"]["pretrain_run"] is None
    )
    assert by_variant["k3 (full)"]["R@1,IoU@0.5"] == 50.0 and by_variant["k3 (full)"]["pretrain_run"] == "pre-full"
    assert by_variant["word-topk"]["R@5,IoU@0.7"] == float(len("word-topk"))
    assert by_variant["intra-modal"]["grounding_run"] == "head-intra-modal"
    assert set(ABLATIONS) == {r["variant"] for r in rows if "(" not in r["variant"] and r["group"] != "baseline"}


def test_overrides_reach_their_jobs() -> None:
    from flows.reproduce_locvtp import job_configs
    from flows.stages import route_overrides

    plain = job_configs("tiny")
    out = route_overrides(
        {"pretrain.train.epochs": 2, "grounding.model.hidden": 8, "miniclip.steps_per_epoch": 3}, plain
    )
    assert out == {
        "pretrain": {"train.epochs": 2},
        "grounding": {"model.hidden": 8},
        "miniclip": {"steps_per_epoch": 3},
    }
    # a key without a job reaches every job that has it: all three train
    assert route_overrides({"train.seed": 5}, plain) == {
        k: {"train.seed": 5} for k in ("miniclip", "pretrain", "grounding")
    }
