"""`reproduce-dcc`: data → ingest at 25 fps → TV-L1 flow (per shard) → I3D RGB+flow features ∥ CLIP → CLIP
frame features → CBP warm-up → alternating B/F steps → inference → evaluation → registry, plus (``ablations=True``)
the paper's table: CBP only, VLP only, only F steps, only B steps, full alternation.

DCC (Ju et al., CVPR 2023; METHODS §4) on the mini-wtal world (`pipelines.miniworld.wtal`, the default) or on a real
benchmark the user downloaded (``dataset="thumos14"`` / ``"activitynet12"``, ``data_dir=…``): the same DAG, only its
first stages differ. Every stage and job is reused on rerun (Prefect's persisted results under ``<root>/.prefect``,
and each stage's own commit marker or job record). The motion branch (`flows.tasks.motion_features`: TV-L1 fanned
out per frames shard, then I3D) runs in Prefect's worker threads while this thread trains the mini CLIP (mini world)
and extracts the CLIP frame features.

**Steps are jobs** (`flows.chains`): the warm-up and every B / F step is its own training job (recipe ``dcc``), a
child MLflow run of the DAG's parent run, started from the previous step's final weights; a crash in step k resumes
at step k. Only the main chain's final step is registered (model ``dcc``, champion metric ``METRIC``). Inference is
on the branch `models.dcc.VARIANT_EVAL_BRANCH` names; tables, timeline plots and claims go to the parent run.

**Real benchmarks** (spec ``recipes/configs/dcc/<dataset>.yaml``: the paper's config, sizes ``paper`` and ``smoke``):
the adapter's annotations → ground truth and a sources CSV of the videos found (`pipelines.datasets.wtal_sources`) →
ingest at 25 fps → TV-L1 → I3D from pytorch-i3d files, or, with ``features=DIR``, the released per-video I3D files
found by video id (`pipelines.features.i3d.find_released`) in place of TV-L1 → I3D. The VLP branch needs the videos'
frames (CLIP ViT-B/16 features), so released features still need the videos, unless the run trains the CBP branch
alone (``--set dcc.model.stages.variant=cbp_only``: the paper's "CBP only" row, not DCC, never compared with its
numbers or registered); without videos otherwise it stops with an error saying so. Test-subset predictions are scored
on every annotated test video with the benchmark's protocol (THUMOS14: tIoU 0.1:0.7 and its official Ambiguous rule;
`recipes.evaluation.detection.score_wtal_benchmark`); missing or broken videos are ledger rows
(`pipelines.datasets.wtal_sources.wtal_ledger`), never failures; ``paper_vs_ours`` sets the paper's numbers beside
ours (percent).

**Budget and sizes**: ``recipes/configs/dcc/mini-wtal.yaml`` (small: 16 training + 8 test videos of 30–40 s, ~10 min
on 2 quiet cores). Overrides follow the one grammar (`recipes.overrides`): ``dcc.`` (``dcc.model.stages.rounds=3``),
``miniclip.`` (mini world), ``i3d.`` (``i3d.rgb_weights=/path/rgb_imagenet.pt``) or ``tvl1.``; ``--print-config``
resolves them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows import stages
from flows.ingest import ingest_flow
from flows.runtime import cached_task
from flows.scheduling import StepChains, motion_features
from flows.tasks import (
    dcc_ledger,
    import_released_i3d,
    log_dcc_results,
    mark_failed,
    open_dcc_parent_run,
    score_benchmark,
    score_predictions,
    wtal_benchmark_data,
)
from infra.jobs import run_name
from infra.settings import Resources
from infra.summaries import MiniClip, StageRef, World
from models.dcc import VARIANT_EVAL_BRANCH, stage_schedule
from pipelines import storage
from recipes.experiments import dcc as experiment
from recipes.experiments.dcc import ABLATIONS, MAIN_VARIANT, METRIC, PAPER, final_file, job_configs, table_row


@flow(name="reproduce-dcc", log_prints=True)
def reproduce_dcc(
    dataset: str = "mini-wtal",
    root: str = "runs",
    size: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    ablations: bool = False,
    flow_workers: int = 2,
    cpus_per_worker: float | None = None,
    parallel_jobs: int | None = None,
    data_dir: str | None = None,
    video_dir: str | None = None,
    features: str | None = None,
) -> dict[str, Any]:
    start = time.monotonic()
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)  # its jobs run one at a time: all CPUs each
    size = experiment.check_request(dataset, size, flow_workers, data_dir, features, video_dir)
    user = stages.route_overrides(overrides, job_configs(size, dataset=dataset))  # the one grammar, before any work
    tvl1_cfg, i3d_cfg = experiment.feature_configs(size, user, dataset)
    t = stages.cached(root)
    if experiment.is_benchmark(dataset):
        assert data_dir is not None  # check_request
        data = _benchmark(dataset, root, size, user, data_dir, video_dir, features, (tvl1_cfg, i3d_cfg), flow_workers)
    else:
        data = _mini_world(dataset, root, size, seed, user, (tvl1_cfg, i3d_cfg), flow_workers, resources)
    key, base, variant = data.key, data.base, data.variant
    if ablations and not data.stages["clip_features_stage"]:
        raise ValueError("the ablation table trains the VLP branch: it needs the videos' CLIP frame features")
    parent_id = open_dcc_parent_run(
        root, run_name(PAPER, base, part="dag", data=key), {"dataset": key, "size": size, "config": base}
    )
    chains = StepChains(
        train=t["train"],
        config=lambda stage, previous: experiment.step_config(base, stage, previous),
        record=experiment.step_record,
        job={
            "paper": PAPER,
            "recipe": "dcc",
            "root": root,
            "metric": data.metric,
            "data": key,
            "num_workers": num_workers,
            "cpus_per_worker": resources.cpus_per_worker,
            "dataset_stage": data.stages["i3d_stage"],
        },
        tags={"mlflow.parentRunId": parent_id, "vlrepro.dataset": key},
    )
    rounds = int(base["model"]["stages"]["rounds"])
    try:
        main = chains.run(stage_schedule(variant, rounds), register=variant == MAIN_VARIANT)
        predictions = final_file(main, f"predictions_{VARIANT_EVAL_BRANCH[variant]}.json")
        scored = data.score(root, predictions)
        timelines = {variant: final_file(main, "timeline.json")}
        table = None
        if ablations:
            chained = {v: chains.run(stage_schedule(v, rounds), register=False) for v in ABLATIONS}
            table = [table_row(v, steps) for v, steps in chained.items()]
            timelines.update({v: final_file(steps, "timeline.json") for v, steps in chained.items()})
            create_table_artifact(key=f"dcc-ablations-{key.lower()}"[:60], table=table, description="DCC ablations")
        summary = experiment.parent_summary(key, main, scored, table)
        if data.ledger is not None:
            summary |= {"benchmark": dataset, "variant": variant, "ledger": data.ledger}
            summary["paper_vs_ours"] = experiment.spec_of(dataset).paper_vs_ours(
                {variant: experiment.percent_metrics(scored, variant)}
            )
        logged = log_dcc_results(root, parent_id, summary, timelines)
    except BaseException:
        mark_failed(root, parent_id)
        raise
    if data.ledger is not None:
        out = experiment.benchmark_result(dataset, key, data.stages, main, scored, variant, data.ledger)
    else:
        out = experiment.dag_result(key, data.stages, main, scored, data.ground_truth)
    out.update(data.extra, parent_run_id=parent_id, plots=logged["plots"])
    if table is not None:
        out["ablations"] = table
    return {**out, "seconds": round(time.monotonic() - start, 1), "root": storage.join(root)}


@dataclass
class DagData:
    """What the DAG's first stages hand to its training and evaluation, on the mini world or a benchmark."""

    key: str  # the dataset's stage folder and run-name tag
    base: dict[str, Any]  # the DCC config every step derives from
    stages: dict[str, Any]  # stage URIs (``i3d_stage`` among them)
    ground_truth: str
    variant: str  # the main chain's variant
    metric: str  # the registry's champion metric
    ground_truth_format: str = "mini-wtal"
    ledger: dict[str, Any] | None = None  # a benchmark run's reproduction ledger
    extra: dict[str, Any] = field(default_factory=dict)  # more of the DAG's result

    def score(self, root: str, predictions: str) -> dict[str, Any]:
        """The main chain's prediction file scored against the ground truth (cached: same inputs, same scores)."""
        if self.ledger is None:
            return dict(cached_task(score_predictions, root)(predictions, self.ground_truth))
        return dict(cached_task(score_benchmark, root)(predictions, self.ground_truth, self.ground_truth_format))


def _mini_world(
    dataset: str,
    root: str,
    size: str,
    seed: int,
    user: dict[str, dict[str, Any]],
    feature_cfgs: tuple[dict[str, Any], dict[str, Any]],
    flow_workers: int,
    resources: Resources,
) -> DagData:
    """The generated world → ingest → TV-L1 → I3D ∥ mini CLIP → its frame features → the DCC base config."""
    t = stages.cached(root)
    key = stages.dataset_key(dataset, size, seed)
    world_out = t["make_data"](dataset, root, size, seed)
    world = World.of(world_out)
    frames = StageRef.of(ingest_flow(world.sources_csv, root, key, **stages.MINI_INGEST[dataset]))
    flow_future, i3d_future = motion_features(root, frames.uri, key, *feature_cfgs, flow_workers)
    clip_out = t["pretrain_mini_clip"](
        root, key, world.image_text, stages.mini_clip_overrides(size, user["miniclip"]), resources.cpus_per_worker
    )
    clip = MiniClip.of(clip_out)
    clip_feats_out = t["extract_clip_features"](frames.uri, root, key, clip.arch, clip.checkpoint)
    flow_stage, i3d_out = flow_future.result(), i3d_future.result()
    base = experiment.base_config(world_out, i3d_out, clip_feats_out, clip_out, size, user["dcc"])
    stage_uris = {"frames_stage": frames.uri, "flow_stage": flow_stage, "i3d_stage": i3d_out["stage_uri"]}
    return DagData(
        key=key,
        base=base,
        stages={**stage_uris, "clip_features_stage": clip_feats_out["stage_uri"]},
        ground_truth=world.annotations,
        variant=MAIN_VARIANT,
        metric=METRIC,
        extra={"mini_clip": clip.summary()},
    )


def _benchmark(
    dataset: str,
    root: str,
    size: str,
    user: dict[str, dict[str, Any]],
    data_dir: str,
    video_dir: str | None,
    features: str | None,
    feature_cfgs: tuple[dict[str, Any], dict[str, Any]],
    flow_workers: int,
) -> DagData:
    """The user's download → ground truth + videos found → ingest at 25 fps → TV-L1 → I3D (or the released I3D
    features) ∥ CLIP frame features (VLP branch) → the DCC base config and the ledger."""
    tvl1_cfg, i3d_cfg = feature_cfgs
    key = experiment.benchmark_key(dataset, data_dir, video_dir)
    variant = experiment.main_variant(dataset, user["dcc"], size)
    with_frames = experiment.needs_frames(variant, features)
    if not features:
        i3d_cfg = experiment.resolve_i3d_weights(i3d_cfg, data_dir)  # a missing weights file fails before any decode
    exclude = list(experiment.excluded_videos(dataset))
    bench = wtal_benchmark_data(dataset, data_dir, video_dir, root, key, exclude, with_frames)
    if with_frames:
        experiment.check_videos_found(dataset, bench, features)
    frames_uri = flow_uri = None
    if with_frames:
        frames_uri = StageRef.of(
            ingest_flow(bench["sources_csv"], root, key, **experiment.ingest_settings(dataset, size))
        ).uri
    if not features:
        assert frames_uri is not None
        flow_future, i3d_future = motion_features(root, frames_uri, key, tvl1_cfg, i3d_cfg, flow_workers)
    clip_uri = ""
    if variant != "cbp_only":  # the VLP branch's frozen CLIP frame features
        clip = experiment.benchmark_config(dataset, "", {"stage_uri": "", "feature_dim": 1}, "", size, user["dcc"])
        arch, weights = clip["model"]["vlp"]["clip"]["arch"], clip["model"]["vlp"]["clip"]["pretrained"]
        clip_uri = stages.cached(root)["extract_clip_features"](frames_uri, root, key, arch, weights)["stage_uri"]
    if features:
        width = experiment.i3d_feature_dim(float(i3d_cfg["width"]))
        i3d_out = import_released_i3d(features, root, key, dataset, bench["meta"], frames_uri, width)
    else:
        flow_uri, i3d_out = flow_future.result()["stage_uri"], i3d_future.result()
    base = experiment.benchmark_config(dataset, bench["ground_truth"], i3d_out, clip_uri, size, user["dcc"])
    ledger = dcc_ledger(bench, i3d_out["stage_uri"], frames_uri, clip_uri or None, features or "")
    stage_uris = {"frames_stage": frames_uri, "flow_stage": flow_uri, "i3d_stage": i3d_out["stage_uri"]}
    return DagData(
        key=key,
        base=base,
        stages={**stage_uris, "clip_features_stage": clip_uri or None, "features": features},
        ground_truth=bench["ground_truth"],
        variant=variant,
        metric=experiment.spec_of(dataset).metric,
        ground_truth_format=bench["ground_truth_format"],
        ledger=ledger,
        extra={"i3d_features": {k: i3d_out.get(k) for k in ("status_counts", "feature_dim", "found", "missing")}},
    )
