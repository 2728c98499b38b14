"""`reproduce-dcc`: data → ingest at 25 fps → TV-L1 flow (per shard) → I3D RGB+flow features, and mini CLIP → CLIP
frame features → CBP warm-up → alternating B/F steps → inference → evaluation → registry, plus (``ablations=True``)
the paper's table: CBP only, VLP only, only F steps, only B steps, full alternation.

DCC (Ju et al., CVPR 2023; METHODS §4) on the mini-wtal world (`pipelines.miniworld.wtal`). Stages and jobs, each
reused on rerun (Prefect's persisted results under ``<root>/.prefect``, and each stage's own commit marker or job
record):

| stage | task | output |
|---|---|---|
| mini-wtal world, frames at 25 fps, 64 px | `stages.make_data`, `ingest_flow` | frames stage |
| TV-L1 flow, one task per frames shard | `tvl1_plan` → `tvl1_shard`.map → `tvl1_commit` | ``tvl1-flow`` stage |
| two-stream I3D, random-init tiny width | `i3d_features` | ``i3d-features`` stage |
| mini CLIP on the world's frame–caption pairs | `stages.pretrain_mini_clip` | ``mini-clip`` model |
| CLIP frame features (CLS, every 25 fps frame) | `stages.extract_clip_features` | ``clip-features`` stage |
| parent MLflow run of the DAG | `open_dcc_parent_run` | run id, tagged as every step's parent |
| warm-up, B, F, B, F … (one job each) | `stages.train` (recipe ``dcc``) | ``models/<run>/model.pt`` + predictions |
| evaluation of the final step's prediction file | `score_predictions` | mAP at THUMOS / ActivityNet tIoUs |
| tables, timeline plots, registry summary | `log_dcc_results` | artefacts on the parent run |

**Steps are jobs.** The warm-up and every B / F step is its own `infra.training_job.TrainingJob` (recipe
``recipes.dcc``, the stage chosen by ``stage``), run by its own Prefect task, with its own Ray run name (the
job key ``dcc-<i><stage>-<dataset>-<config digest>`` → resumable from its own checkpoints), its own MLflow run — a
**child** of the DAG's parent run (tag ``mlflow.parentRunId``) — and its own job record. Step i starts from step
i−1's final weights (config ``init_from`` = that job's ``model.pt``), so its key digests its predecessor's key: a
crash in step k leaves steps < k finished (job records, Prefect cache) and the rerun resumes at step k. Ablation
chains that share a prefix with the main chain (the warm-up; only-B's first B step) have the same keys for it and
reuse it. Only the main chain's final step is registered (model ``dcc``, champion metric `METRIC`).

**TV-L1 fan-out.** `tvl1_plan` lists one job per committed frames shard; `tvl1_shard` is mapped over them (Prefect
``.map``, tag ``"tvl1"``): at most ``flow_workers`` at once in this process, or one Ray task each on the cluster at
``RAY_ADDRESS`` (`infra.fanout`); across flow runs, a Prefect tag limit (``prefect concurrency-limit create tvl1 2``).

The flow → I3D branch runs in Prefect's worker threads while the main thread trains the mini CLIP (a Ray job) and
extracts the CLIP features, so the 2 cores stay busy during the single-threaded stages.

**Budget** (`SIZES`, on top of ``recipes/configs/dcc/mini-wtal.yaml``): the default DAG on ``size="small"`` (16
training + 8 test videos of 30–40 s; ~21,000 TV-L1 pairs at ~0.011 s CPU each) should take ~10 minutes on 2 quiet
CPU cores; ``ablations=True`` adds four step jobs (VLP warm-up, two F steps, one B step) — see `SIZES` for the step
sizes and why.

Overrides (`overrides`, the CLI's ``--set``) follow the one grammar (`recipes.overrides`): a dotted key reaches every
job that has it, a key prefixed by a job's name that job only: ``dcc.`` (`recipes.dcc.DCCRecipeConfig`:
``dcc.model.stages.rounds=3``, ``dcc.model.distill.high=0.4``), ``miniclip.`` (`MiniClipConfig`), ``i3d.``
(`I3DFeatureConfig`: ``i3d.rgb_weights=/path/rgb_imagenet.pt``, ``i3d.flow_weights=…``, ``i3d.width=1.0`` for users
with pytorch-i3d weights) or ``tvl1.`` (`TVL1Config`). `job_configs` resolves them all (``--print-config``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact

from flows import stages
from flows.ingest import ingest_flow
from flows.runtime import cached_task
from flows.tasks import (
    i3d_features,
    log_dcc_results,
    mark_failed,
    open_dcc_parent_run,
    score_predictions,
    tvl1_commit,
    tvl1_plan,
    tvl1_shard,
)
from infra.settings import Resources
from models.dcc import VARIANT_EVAL_BRANCH, stage_schedule
from pipelines import storage
from recipes.experiments.dcc import (
    ABLATIONS,
    MAIN_VARIANT,
    METRIC,
    PAPER,
    SPEC,
    base_config,
    feature_configs,
    job_configs,
    step_config,
    step_record,
    table_row,
)

# ----- the flow ----------------------------------------------------------------------------------------------------


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
    if dataset != "mini-wtal":
        raise ValueError(
            f"the DCC DAG runs on mini-wtal here (got {dataset!r}); real datasets: ingest at 25 fps (or "
            "pipelines.features.i3d.import_features for released features) + the dcc recipe"
        )
    SPEC.check_size(size)
    if flow_workers < 1:
        raise ValueError(f"flow_workers must be >= 1, got {flow_workers}")
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(size))
    tvl1_cfg, i3d_cfg = feature_configs(size, user)
    t = stages.cached(root)
    train = t["train"]
    key = stages.dataset_key(dataset, size, seed)

    world = t["make_data"](dataset, root, size, seed)
    frames = ingest_flow(world["sources_csv"], root, key, **stages.MINI_INGEST[dataset])
    frames_uri = frames["stage_uri"]

    # branch 1 (worker threads): TV-L1 per shard → commit → I3D
    from infra import fanout

    fanout.prepare()  # a cluster is joined from the main thread, before any shard task needs it
    plan = cached_task(tvl1_plan, root)(frames_uri, root, key, tvl1_cfg)
    shard_futures = cached_task(tvl1_shard, root).map(
        plan["jobs"], unmapped(frames_uri), unmapped(tvl1_cfg), flow_workers
    )
    flow_future = cached_task(tvl1_commit, root).submit(plan, frames_uri, tvl1_cfg, shard_futures)
    i3d_future = cached_task(i3d_features, root).submit(frames_uri, flow_future, root, key, i3d_cfg)
    # branch 2 (this thread): mini CLIP → CLIP frame features
    clip = t["pretrain_mini_clip"](
        root, key, world["image_text"], stages.mini_clip_overrides(size, user["miniclip"]), resources.cpus_per_worker
    )
    clip_feats = t["extract_clip_features"](frames_uri, root, key, clip["clip_arch"], clip["clip_checkpoint"])
    flow_stage = flow_future.result()
    i3d = i3d_future.result()

    base = base_config(world, i3d, clip_feats, clip, size, user["dcc"])
    rounds = int(base["model"]["stages"]["rounds"])
    from infra.jobs import run_name as job_name
    from infra.jobs import training_job, was_finished

    parent_key = job_name(PAPER, base, part="dag", data=key)
    parent_id = open_dcc_parent_run(root, parent_key, {"dataset": key, "size": size, "config": base})
    finished: dict[str, dict[str, Any]] = {}  # run name → step record, within this flow run

    def chain(variant: str, register: bool) -> list[dict[str, Any]]:
        """The variant's step jobs in order, each initialised from the previous one's final weights."""
        steps: list[dict[str, Any]] = []
        previous: str | None = None
        schedule = stage_schedule(variant, rounds)
        for i, stage in enumerate(schedule):
            config = step_config(base, stage, previous)
            job = training_job(
                paper=PAPER,
                recipe="dcc",
                config=config,
                root=root,
                metric=METRIC,
                part=f"{i}{stage}",
                data=key,
                num_workers=num_workers,
                cpus_per_worker=resources.cpus_per_worker,
                register=register and i == len(schedule) - 1,
                dataset_stage=i3d["stage_uri"],
                tags={
                    "mlflow.parentRunId": parent_id,
                    "vlrepro.stage": stage,
                    "vlrepro.step": str(i),
                    "vlrepro.dataset": key,
                },
            )
            run_name = job["run_name"]
            if run_name not in finished:
                reused = was_finished(job)
                result = train.with_options(task_run_name=f"dcc-step{i}-{stage}")(job)
                finished[run_name] = step_record(i, stage, result, reused)
            steps.append(finished[run_name])
            previous = finished[run_name]["model"]
        return steps

    try:
        main = chain(MAIN_VARIANT, register=True)
        branch = VARIANT_EVAL_BRANCH[MAIN_VARIANT]
        scored = cached_task(score_predictions, root)(
            str(Path(main[-1]["model_dir"]) / f"predictions_{branch}.json"), world["annotations"]
        )
        timelines = {MAIN_VARIANT: str(Path(main[-1]["model_dir"]) / "timeline.json")}
        table = None
        if ablations:
            table = []
            for variant in ABLATIONS:
                steps = chain(variant, register=False)
                table.append(table_row(variant, steps))
                timelines[variant] = str(Path(steps[-1]["model_dir"]) / "timeline.json")
            create_table_artifact(
                key=f"dcc-ablations-{key.lower()}"[:60],
                table=table,
                description="DCC ablations on the mini world: THUMOS-style average mAP of the evaluated branch, "
                "pseudo-label mIoU and phase coverage per branch",
            )
        summary = {
            "dataset": key,
            "metrics": main[-1]["metrics"],
            "scored": scored,
            "steps": [{k: s[k] for k in ("step", "stage", "run_name", "run_id")} for s in main],
            "ablations": table,
        }
        logged = log_dcc_results(root, parent_id, summary, timelines)
    except BaseException:
        mark_failed(root, parent_id)
        raise

    m = main[-1]["metrics"]
    out: dict[str, Any] = {
        "paper": PAPER,
        "dataset": key,
        "frames_stage": frames_uri,
        "flow_stage": flow_stage,
        "i3d_stage": i3d["stage_uri"],
        "clip_features_stage": clip_feats["stage_uri"],
        "mini_clip": stages.mini_clip_summary(clip),
        "parent_run_id": parent_id,
        "steps": [{k: v for k, v in s.items() if k not in ("metrics", "model_dir")} for s in main],
        "results": {
            "branch": branch,
            "thumos": scored["thumos"],
            "anet": scored["anet"],
            "pseudo_miou": {b: m.get(f"{b}/pseudo/miou") for b in ("cbp", "vlp")},
            "phase_fg": {
                b: {p: m.get(f"{b}/phase/{p}/fg") for p in ("core", "edges", "context", "distractor", "empty")}
                for b in ("cbp", "vlp")
            },
            "predictions": scored["predictions"],
            "ground_truth": world["annotations"],
        },
        "model_version": main[-1]["model_version"],
        "plots": logged["plots"],
        "seconds": round(time.monotonic() - start, 1),
        "root": storage.join(root),
    }
    if table is not None:
        out["ablations"] = table
    return out
