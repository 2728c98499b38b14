"""Every task of every paper's DAG, in one module: thin wrappers over the functions of the layers below (`pipelines`,
`recipes`, `infra`). Flows compose them (`flows/reproduce_*.py`, `flows/retrieval.py`); `flows.stages.cached` gives a
DAG the shared ones configured to persist their results under its run root. A task's name is what Prefect shows and
what its persisted result is keyed by (with its inputs and source), so renaming one makes a rerun recompute it once.

Each wraps an idempotent function that leaves a commit marker (world.json, a stage's ``_stats.json``,
``jobs/<run>.json``), so a rerun after a crash reuses finished work twice over: Prefect returns the persisted result
of a finished task, and the function itself finds its marker.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task

from flows.runtime import is_transient
from models.common.clip import ClipConfig
from models.config import build
from models.dcc import VARIANT_EVAL_BRANCH
from pipelines import storage
from pipelines.features.i3d import I3DFeatureConfig
from pipelines.features.tvl1 import TVL1Config
from recipes.experiments import dataset_key
from recipes.experiments import dcc as dcc_experiment
from recipes.experiments import locvtp as locvtp_experiment

# ----- the stages every DAG shares: data → (ingest: `flows.ingest`) → mini CLIP → CLIP features → training jobs ---


@task(name="make-data", retries=1, retry_condition_fn=is_transient)
def make_data(name: str, root: str, size: str, seed: int) -> dict[str, Any]:
    from pipelines.miniworld import make_world

    return make_world(name, storage.join(root, "data", dataset_key(name, size, seed)), seed=seed, size=size)


@task(name="pretrain-mini-clip", retries=1, retry_condition_fn=is_transient)
def pretrain_mini_clip(
    root: str, dataset: str, image_text: str, overrides: dict[str, Any], cpus_per_worker: float | None = None
) -> dict[str, Any]:
    """The project's mini CLIP on the dataset's frame–caption pairs, registered in MLflow as ``mini-clip``."""
    from infra.jobs import mini_clip_job
    from infra.training_job import TrainingJob, run_job

    job, arch = mini_clip_job(root, dataset, image_text, overrides, cpus_per_worker)
    out = run_job(TrainingJob(**job))
    return {**out, "clip_checkpoint": str(Path(out["model_dir"]) / "clip.pt"), "clip_arch": arch}


@task(name="extract-clip-features", retries=1, retry_condition_fn=is_transient)
def extract_clip_features(
    frames_uri: str, root: str, dataset: str, arch: str, checkpoint: str, output: str = "cls", last_blocks: int = 4
) -> dict[str, Any]:
    from pipelines.features.clip_frames import ClipFeatureConfig, extract

    cfg = build(
        ClipFeatureConfig,
        {"clip": asdict(ClipConfig(arch=arch, pretrained=checkpoint)), "output": output, "last_blocks": last_blocks},
    )
    return extract(frames_uri, root, dataset, cfg)


@task(name="train", retries=1, retry_condition_fn=is_transient)
def train(job: dict[str, Any]) -> dict[str, Any]:
    """One training job (Ray Train + MLflow + registry); see `infra.training_job`."""
    from infra.training_job import TrainingJob, run_job

    result = run_job(TrainingJob(**job))
    return json.loads(json.dumps(result, default=str))


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


# ----- DCC on a real benchmark (THUMOS14, ActivityNet 1.2): its files, released features, scoring, ledger ------------


@task(name="dcc-benchmark-data", retries=1, retry_condition_fn=is_transient)
def wtal_benchmark_data(
    dataset: str,
    data_dir: str,
    video_dir: str | None,
    root: str,
    key: str,
    exclude: list[str],
    with_videos: bool,
) -> dict[str, Any]:
    """The benchmark's annotations and videos found (`pipelines.datasets.wtal_sources.prepare`): ground truth and
    sources CSV under ``<root>/data/<key>/``. Not cached: it reads the user's folders, which change."""
    from pipelines.datasets.wtal_sources import prepare

    return prepare(dataset, data_dir, video_dir, storage.join(root, "data", key), exclude, with_videos)


@task(name="dcc-import-features", retries=1, retry_condition_fn=is_transient)
def import_released_i3d(
    folder: str,
    root: str,
    key: str,
    dataset: str,
    meta: dict[str, dict[str, Any]],
    frames_uri: str | None,
    feature_dim: int,
) -> dict[str, Any]:
    """Released per-video I3D features found by video id under `folder` → the ``i3d-features`` stage
    (`pipelines.features.i3d.import_released`), in place of TV-L1 → I3D."""
    from pipelines.datasets.wtal_sources import benchmark
    from pipelines.features.i3d import import_released

    return import_released(folder, root, key, meta, benchmark(dataset).file_names, frames_uri, feature_dim)


@task(name="dcc-score-benchmark", retries=1, retry_condition_fn=is_transient)
def score_benchmark(predictions: str, ground_truth: str, ground_truth_format: str) -> dict[str, Any]:
    """The prediction file on the benchmark's whole test subset, THUMOS14's Ambiguous rule included
    (`recipes.evaluation.detection.score_wtal_benchmark`)."""
    from recipes.evaluation.detection import score_wtal_benchmark

    return score_wtal_benchmark(predictions, ground_truth, ground_truth_format)  # type: ignore[arg-type]


@task(name="dcc-ledger", retries=1, retry_condition_fn=is_transient)
def dcc_ledger(
    prepared: dict[str, Any], features_uri: str, frames_uri: str | None, clip_uri: str | None, features_dir: str
) -> dict[str, Any]:
    """The run's reproduction ledger (`pipelines.datasets.wtal_sources.wtal_ledger`) from the stages' manifests."""
    from pipelines import shards
    from pipelines.datasets.wtal_sources import wtal_ledger

    def rows(uri: str | None) -> list[dict[str, Any]] | None:
        return None if uri is None else shards.read_manifest(uri)

    out = wtal_ledger(prepared, rows(features_uri) or [], rows(frames_uri), rows(clip_uri), features_dir)
    return {**out, "ground_truth": prepared["ground_truth"]}


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
    """Parent run: the main chain's final metrics, the ablation table and paper-vs-ours (the one results schema), the
    timeline plots (also on the final step's own run); then the parent is marked FINISHED."""
    from infra.plots_wtal import log_timelines
    from infra.results import log_results
    from infra.tracking import Tracker

    tracker = Tracker.for_run_root(root)
    metrics = {f"final/{k}": v for k, v in summary["metrics"].items()}
    spec = dcc_experiment.spec_of(summary.get("benchmark") or dcc_experiment.SPEC.dataset)
    log_results(
        tracker,
        parent_id,
        paper=dcc_experiment.PAPER,
        dataset=summary["dataset"],
        results=summary,
        rows=summary.get("ablations"),
        claims=spec.claims,
        metrics=metrics,
        paper_vs_ours=summary.get("paper_vs_ours"),
    )
    if summary.get("ledger") is not None:  # a benchmark run: its reproduction ledger as its own artefact too
        tracker.log_dict(parent_id, summary["ledger"], "tables/ledger.json")
    main_run = summary["steps"][-1]["run_id"]
    main = summary.get("variant") or dcc_experiment.MAIN_VARIANT
    plots = log_timelines(tracker, parent_id, timelines, VARIANT_EVAL_BRANCH, main, main_run)
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
    from recipes.locvtp import retrieval_transfer

    return retrieval_transfer(features_uri, test_queries)


@task(name="locvtp-summary", retries=1, retry_condition_fn=is_transient)
def log_locvtp_summary(root: str, run_key: str, summary: dict[str, Any]) -> str:
    """One MLflow run per (dataset, results) in experiment ``locvtp`` holding the result tables (one schema)."""
    from infra.results import log_summary_run

    spec, results = locvtp_experiment.SPEC, summary["results"]
    metrics = {f"{name}/{m}": v for name, block in results["grounding"].items() for m, v in block.items()}
    return log_summary_run(
        root,
        spec.paper,
        run_key,
        dataset=summary["dataset"],
        jobs=summary["jobs"],
        kind="summary",
        results=results,
        rows=summary.get("ablations"),
        claims=spec.claims,
        metrics=metrics,
        paper_vs_ours=spec.paper_vs_ours({}),
    )


# ----- the retrieval papers' ablation table ---------------------------------------------------------------------


@task(name="log-ablation-table", retries=1, retry_condition_fn=is_transient)
def log_ablation_table(
    root: str,
    paper: str,
    dataset: str,
    table: list[dict[str, Any]],
    claims: dict[str, str],
    paper_vs_ours: list[dict[str, Any]] | None = None,
    verdicts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The table (and each claim's verdict) as the summary run of (paper, dataset, jobs) in the paper's experiment (tag
    ``vlrepro.kind=ablation-table``); idempotent: the run key digests the job keys, so the same table logs into the
    same run on rerun and a table over other jobs gets its own."""
    from infra.jobs import run_name
    from infra.results import log_summary_run

    jobs = sorted({r["run_name"] for r in table})
    key = run_name(paper, jobs, part="ablations", data=dataset)
    run_id = log_summary_run(
        root,
        paper,
        key,
        dataset=dataset,
        jobs=jobs,
        kind="ablation-table",
        rows=table,
        claims=claims,
        paper_vs_ours=paper_vs_ours,
        verdicts=verdicts,
    )
    return {"run_id": run_id, "run_key": key}


def mark_failed(root: str, run_id: str) -> None:
    """Mark a DAG's parent MLflow run FAILED; the tracking backend being down must not hide the DAG's own error."""
    from infra.tracking import Tracker

    with contextlib.suppress(Exception):
        Tracker.for_run_root(root).finish(run_id, "FAILED")
