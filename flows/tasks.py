"""The paper DAGs' own tasks (DCC, LocVTP): thin wrappers over the functions below them, in one module; the stages
every DAG shares are in `flows/stages.py`. A task's name is what Prefect shows and what its persisted result is
keyed by (with its inputs and source), so renaming one makes a rerun recompute it once.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import task

from flows.runtime import is_transient
from models.config import build
from models.dcc import VARIANT_EVAL_BRANCH
from pipelines.features.i3d import I3DFeatureConfig
from pipelines.features.tvl1 import TVL1Config
from recipes.experiments import dcc as dcc_experiment
from recipes.experiments import locvtp as locvtp_experiment

# ----- DCC: the TV-L1 flow, fanned out per shard -------------------------------------------------------------


@task(name="tvl1-plan", retries=1, retry_condition_fn=is_transient)
def tvl1_plan(frames_uri: str, root: str, dataset: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Create / check the flow stage; one job per committed frames shard."""
    from pipelines.features.tvl1 import plan_flow

    uri, jobs = plan_flow(frames_uri, root, dataset, build(TVL1Config, cfg))
    return {"stage_uri": uri, "jobs": [j.to_dict() for j in jobs]}


@task(name="tvl1-shard", retries=1, retry_condition_fn=is_transient, tags=["tvl1"])
def tvl1_shard(job: dict[str, Any], frames_uri: str, cfg: dict[str, Any], workers: int) -> dict[str, Any]:
    """TV-L1 flow of one frames shard (idempotent: a committed shard is skipped); where it runs: `infra.fanout`."""
    from infra import fanout
    from pipelines.features.tvl1 import flow_shard_json

    return fanout.run_shard(flow_shard_json, job, frames_uri, cfg, slots=workers)


@task(name="tvl1-commit", retries=1, retry_condition_fn=is_transient)
def tvl1_commit(plan: dict[str, Any], frames_uri: str, cfg: dict[str, Any], summaries: list[Any]) -> dict[str, Any]:
    """Commit the flow stage once every shard is; summarise pairs and throughput."""
    from pipelines.features.tvl1 import commit_flow_stage

    return commit_flow_stage(plan["stage_uri"], frames_uri, cfg, summaries)


@task(name="i3d-features", retries=1, retry_condition_fn=is_transient)
def i3d_features(frames_uri: str, flow: dict[str, Any], root: str, dataset: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Two-stream I3D snippet features of the frames and their flow, with the feature width."""
    from pipelines.features.i3d import extract

    return extract(frames_uri, flow["stage_uri"], root, dataset, build(I3DFeatureConfig, cfg))


# ----- tracking ------------------------------------------------------------------------------------------------------


@task(name="dcc-parent-run")
def open_dcc_parent_run(root: str, run_key: str, params: dict[str, Any]) -> str:
    """The DAG's MLflow run (same key ⇒ same run across reruns); every step job is its child. Not cached: a rerun
    must set it RUNNING again."""
    from infra.tracking import Tracker

    tracker = Tracker.for_run_root(root)
    return tracker.start_or_resume(dcc_experiment.PAPER, run_key, run_key, params=params, tags={"vlrepro.kind": "dag"})


@task(name="dcc-score-predictions", retries=1, retry_condition_fn=is_transient)
def score_predictions(predictions: str, ground_truth: str) -> dict[str, Any]:
    """Evaluation of a prediction file exactly as ``vlrepro eval detection`` does it (`recipes.evaluation`)."""
    from recipes.evaluation.detection import score_mini_wtal

    return score_mini_wtal(predictions, ground_truth)


@task(name="dcc-log-results", retries=1, retry_condition_fn=is_transient)
def log_dcc_results(root: str, parent_id: str, summary: dict[str, Any], timelines: dict[str, str]) -> dict[str, Any]:
    """Parent run: the main chain's final metrics, the ablation table (an MLflow table artefact), the timeline plots
    (also on the final step's own run); then the parent is marked FINISHED."""
    from infra.plots_wtal import timeline_figure
    from infra.results import log_results as log_tables
    from infra.tracking import Tracker
    from pipelines.storage import read_json

    tracker = Tracker.for_run_root(root)
    log_tables(
        tracker,
        parent_id,
        paper=dcc_experiment.PAPER,
        dataset=summary["dataset"],
        results=summary,
        rows=summary.get("ablations"),
        claims=dcc_experiment.SPEC.claims,
        metrics={f"final/{k}": v for k, v in summary["metrics"].items()},
    )
    plots = []
    for variant, path in timelines.items():
        branch = VARIANT_EVAL_BRANCH[variant]
        figure = timeline_figure(read_json(path), branch=branch, title=f"DCC {variant} (detections: {branch})")
        name = f"plots/timeline_{variant}.png"
        tracker.log_figure(parent_id, figure, name)
        plots.append(name)
    main = summary["steps"][-1]["run_id"]
    main_timeline = timelines.get(dcc_experiment.MAIN_VARIANT)
    if main_timeline:
        tracker.log_figure(main, timeline_figure(read_json(main_timeline)), "plots/timeline.png")
    tracker.finish(parent_id, "FINISHED")
    return {"parent_run_id": parent_id, "plots": plots}


# ----- LocVTP -------------------------------------------------------------------------------------------------------


@task(name="locvtp-prefix", retries=1, retry_condition_fn=is_transient)
def locvtp_prefix_tokens(frames_uri: str, root: str, dataset: str, model: dict[str, Any]) -> dict[str, Any]:
    """The frozen prefix (CLIP stem + first L−k blocks) of every 4th frame: the ``input="tokens"`` stage."""
    from pipelines.features.locvtp_clips import PrefixTokenConfig, extract_prefix

    return extract_prefix(frames_uri, root, dataset, build(PrefixTokenConfig, {"model": model}))


@task(name="locvtp-clip-features", retries=1, retry_condition_fn=is_transient)
def locvtp_clip_features(
    input_uri: str, root: str, dataset: str, model: dict[str, Any], checkpoint: str | None
) -> dict[str, Any]:
    """Dense clip features of the LocVTP encoder (`checkpoint`) or of the encoder at init (None: the baseline)."""
    from pipelines.features.locvtp_clips import LocVTPFeatureConfig, extract_clips

    return extract_clips(
        input_uri, root, dataset, build(LocVTPFeatureConfig, {"model": model, "checkpoint": checkpoint})
    )


@task(name="locvtp-retrieval-transfer", retries=1, retry_condition_fn=is_transient)
def locvtp_retrieval_transfer(features_uri: str, test_queries: str) -> dict[str, dict[str, float]]:
    """Text↔moment retrieval on the test queries from a clip-feature stage (its clip and sentence features)."""
    import numpy as np

    from pipelines.features.locvtp_clips import iter_features
    from recipes.locvtp import moment_retrieval, queries_by_video, read_queries

    clips, text, seconds, durations = {}, {}, {}, {}
    for key, c, t, meta in iter_features(features_uri):
        clips[key], seconds[key] = c, float(meta["clip_seconds"])
        text[key] = dict(zip(meta.get("captions") or [], t, strict=True))
        if meta.get("split") == "test":
            durations[key] = float(meta["duration"])
    by_video = queries_by_video(read_queries(test_queries, durations))
    queries = [q for key in sorted(by_video) for q in by_video[key]]
    sentence = np.stack([text[q.video][q.sentence] for q in queries])  # (Q, D)
    return moment_retrieval(clips, seconds, queries, sentence)


@task(name="locvtp-summary", retries=1, retry_condition_fn=is_transient)
def log_locvtp_summary(root: str, run_key: str, summary: dict[str, Any]) -> str:
    """One MLflow run per (dataset, results) in experiment ``locvtp`` holding the result tables as JSON artefacts."""
    from infra.results import log_results
    from infra.tracking import Tracker, run_guard

    tracker = Tracker.for_run_root(root)
    params = {"dataset": summary["dataset"], "jobs": sorted(summary["jobs"])}
    run_id = tracker.start_or_resume(
        locvtp_experiment.PAPER, run_key, run_key, params=params, tags={"vlrepro.kind": "summary"}
    )
    with run_guard(tracker, run_id):
        log_results(
            tracker,
            run_id,
            paper=locvtp_experiment.PAPER,
            dataset=summary["dataset"],
            results=summary["results"],
            rows=summary.get("ablations"),
            claims=locvtp_experiment.SPEC.claims,
            metrics={
                f"{name}/{metric}": value
                for name, block in summary["results"]["grounding"].items()
                for metric, value in block.items()
            },
        )
    return run_id


def mark_failed(root: str, run_id: str) -> None:
    """Mark a DAG's parent MLflow run FAILED; the tracking backend being down must not hide the DAG's own error."""
    from infra.tracking import Tracker

    with contextlib.suppress(Exception):
        Tracker.for_run_root(root).finish(run_id, "FAILED")
