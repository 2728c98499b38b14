"""`reproduce-dcc`: data → ingest at 25 fps → TV-L1 flow (per shard) → I3D RGB+flow features ∥ mini CLIP → CLIP
frame features → CBP warm-up → alternating B/F steps → inference → evaluation → registry, plus (``ablations=True``)
the paper's table: CBP only, VLP only, only F steps, only B steps, full alternation.

DCC (Ju et al., CVPR 2023; METHODS §4) on the mini-wtal world (`pipelines.miniworld.wtal`). Every stage and job is
reused on rerun (Prefect's persisted results under ``<root>/.prefect``, and each stage's own commit marker or job
record). The motion branch (`flows.tasks.motion_features`: TV-L1 fanned out per frames shard, then I3D) runs in
Prefect's worker threads while this thread trains the mini CLIP and extracts its frame features.

**Steps are jobs** (`flows.chains`): the warm-up and every B / F step is its own training job (recipe ``dcc``), a
child MLflow run of the DAG's parent run, started from the previous step's final weights; a crash in step k resumes
at step k. Only the main chain's final step is registered (model ``dcc``, champion metric ``METRIC``). Inference is
on the branch `models.dcc.VARIANT_EVAL_BRANCH` names; tables, timeline plots and claims go to the parent run.

**Budget and sizes**: ``recipes/configs/dcc/mini-wtal.yaml`` (small: 16 training + 8 test videos of 30–40 s, ~10 min
on 2 quiet cores). Overrides follow the one grammar (`recipes.overrides`): ``dcc.`` (``dcc.model.stages.rounds=3``),
``miniclip.``, ``i3d.`` (``i3d.rgb_weights=/path/rgb_imagenet.pt``) or ``tvl1.``; ``--print-config`` resolves them.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows import stages
from flows.ingest import ingest_flow
from flows.runtime import cached_task
from flows.scheduling import StepChains, motion_features
from flows.tasks import log_dcc_results, mark_failed, open_dcc_parent_run, score_predictions
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
    size: str = "small",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    ablations: bool = False,
    flow_workers: int = 2,
    cpus_per_worker: float | None = None,
    parallel_jobs: int | None = None,
) -> dict[str, Any]:
    start = time.monotonic()
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)  # its jobs run one at a time: all CPUs each
    experiment.check_request(dataset, size, flow_workers)
    user = stages.route_overrides(overrides, job_configs(size))  # the one grammar, before any work
    tvl1_cfg, i3d_cfg = experiment.feature_configs(size, user)
    t, key = stages.cached(root), stages.dataset_key(dataset, size, seed)
    world_out = t["make_data"](dataset, root, size, seed)
    world = World.of(world_out)
    frames = StageRef.of(ingest_flow(world.sources_csv, root, key, **stages.MINI_INGEST[dataset]))
    flow_future, i3d_future = motion_features(root, frames.uri, key, tvl1_cfg, i3d_cfg, flow_workers)
    clip_out = t["pretrain_mini_clip"](
        root, key, world.image_text, stages.mini_clip_overrides(size, user["miniclip"]), resources.cpus_per_worker
    )
    clip = MiniClip.of(clip_out)
    clip_feats_out = t["extract_clip_features"](frames.uri, root, key, clip.arch, clip.checkpoint)
    flow_stage, i3d_out = flow_future.result(), i3d_future.result()
    base = experiment.base_config(world_out, i3d_out, clip_feats_out, clip_out, size, user["dcc"])
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
            "metric": METRIC,
            "data": key,
            "num_workers": num_workers,
            "cpus_per_worker": resources.cpus_per_worker,
            "dataset_stage": i3d_out["stage_uri"],
        },
        tags={"mlflow.parentRunId": parent_id, "vlrepro.dataset": key},
    )
    rounds = int(base["model"]["stages"]["rounds"])
    try:
        main = chains.run(stage_schedule(MAIN_VARIANT, rounds), register=True)
        predictions = final_file(main, f"predictions_{VARIANT_EVAL_BRANCH[MAIN_VARIANT]}.json")
        scored = cached_task(score_predictions, root)(predictions, world.annotations)
        timelines = {MAIN_VARIANT: final_file(main, "timeline.json")}
        table = None
        if ablations:
            chained = {v: chains.run(stage_schedule(v, rounds), register=False) for v in ABLATIONS}
            table = [table_row(v, steps) for v, steps in chained.items()]
            timelines.update({v: final_file(steps, "timeline.json") for v, steps in chained.items()})
            create_table_artifact(key=f"dcc-ablations-{key.lower()}"[:60], table=table, description="DCC ablations")
        logged = log_dcc_results(root, parent_id, experiment.parent_summary(key, main, scored, table), timelines)
    except BaseException:
        mark_failed(root, parent_id)
        raise
    stage_uris = {"frames_stage": frames.uri, "flow_stage": flow_stage, "i3d_stage": i3d_out["stage_uri"]}
    out = experiment.dag_result(
        key, {**stage_uris, "clip_features_stage": clip_feats_out["stage_uri"]}, main, scored, world.annotations
    )
    out.update(mini_clip=clip.summary(), parent_run_id=parent_id, plots=logged["plots"])
    if table is not None:
        out["ablations"] = table
    return {**out, "seconds": round(time.monotonic() - start, 1), "root": storage.join(root)}
