"""`reproduce-locvtp`: data → ingest → mini CLIP → frozen prefix → LocVTP pre-training → clip features → 2D-TAN
grounding → evaluate → registry, plus retrieval transfer and (``ablations=True``) the paper's ablation table.

LocVTP (Cao et al., ECCV 2022; METHODS §5) is judged downstream: the same grounding head (2D-TAN) is trained on the
clip features of the pre-trained encoder and on those of the **baseline**, the same encoder without LocVTP
pre-training (at init exactly per-frame mini CLIP mean-pooled over each clip's frames,
`pipelines.features.locvtp_clips`). Both heads get the same query features (the frozen mini CLIP's sentence feature),
so they differ only in their clip features. Retrieval transfer is text↔moment retrieval on the held-out queries from
each feature stage (`recipes.locvtp.moment_retrieval`). Every stage and job is reused on rerun; the frozen prefix (CLIP
stem + first L−k blocks on every 4th frame) is computed once for every variant.

**Budget and sizes**: ``recipes/configs/locvtp/mini-grounding.yaml`` (small: ~10 min on 2 quiet cores, most of it
the mini CLIP and LocVTP). Overrides follow the one grammar (`recipes.overrides`): a dotted key reaches every job
that has it (``train.seed=1``), ``pretrain.`` / ``grounding.`` / ``miniclip.`` one kind of job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows import stages
from flows.ingest import ingest_flow
from flows.runtime import cached_task
from flows.tasks import locvtp_clip_features, locvtp_prefix_tokens, locvtp_retrieval_transfer, log_locvtp_summary
from infra.jobs import run_name, training_job, was_finished
from infra.settings import Resources
from infra.summaries import JobResult, MiniClip, StageRef, World
from models.config import merge, to_dict
from pipelines import storage
from recipes.experiments import locvtp as experiment
from recipes.experiments.locvtp import (
    GROUNDING_METRIC,
    PAPER,
    PRETRAIN_METRIC,
    SPEC,
    grounding_config,
    job_configs,
    pretrain_config,
)


@flow(name="reproduce-locvtp", log_prints=True)
def reproduce_locvtp(
    dataset: str = "mini-grounding",
    root: str = "runs",
    size: str = "small",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    ablations: bool = False,
    cpus_per_worker: float | None = None,
    parallel_jobs: int | None = None,
) -> dict[str, Any]:
    start = time.monotonic()
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)  # its jobs run one at a time: all CPUs each
    if dataset != SPEC.dataset:
        raise ValueError(f"the LocVTP DAG runs on {SPEC.dataset} here (got {dataset!r}); real datasets: the recipes")
    SPEC.check_size(size)
    user = stages.route_overrides(overrides, job_configs(size, ablations=ablations))  # the one grammar, before work
    t, key = stages.cached(root), stages.dataset_key(dataset, size, seed)
    prefix_task, features_task = cached_task(locvtp_prefix_tokens, root), cached_task(locvtp_clip_features, root)
    retrieval_task = cached_task(locvtp_retrieval_transfer, root)
    world = t["make_data"](dataset, root, size, seed)
    frames = StageRef.of(ingest_flow(World.of(world).sources_csv, root, key, **stages.MINI_INGEST[dataset]))
    clip_overrides = stages.mini_clip_overrides(size, user["miniclip"])
    clip = t["pretrain_mini_clip"](root, key, World.of(world).image_text, clip_overrides, resources.cpus_per_worker)
    test_queries = World.of(world).extra_files["charades_sta_test"]

    def job(
        name: str, recipe: str, method: str, metric: str, config: dict[str, Any], stage: str, register: bool
    ) -> Any:
        fields = training_job(
            paper=PAPER,
            method=method,
            recipe=recipe,
            config=config,
            root=root,
            metric=metric,
            part=name,
            data=key,
            num_workers=num_workers,
            cpus_per_worker=resources.cpus_per_worker,
            register=register,
            dataset_stage=stage,
            tags={"vlrepro.variant": name},
        )
        reused = was_finished(fields)  # before training: a persisted task result cannot say so
        return JobResult.of(t["train"](fields), reused)

    def pretrain(name: str, variant: dict[str, Any], register: bool) -> dict[str, Any]:
        """Prefix stage (shared by all variants), pre-training job, clip features of its final model."""
        cfg = pretrain_config(clip, world, size, user["pretrain"], variant)
        prefix = StageRef.of(prefix_task(frames.uri, root, key, to_dict(cfg.model)))
        config = to_dict(merge(cfg, {"data.stage": prefix.uri}))
        result = job(name, "locvtp", PAPER, PRETRAIN_METRIC, config, prefix.uri, register)
        checkpoint = str(Path(str(result.model_dir)) / "model.pt")
        feats = StageRef.of(features_task(prefix.uri, root, key, config["model"], checkpoint))
        return {"prefix": prefix.uri, "config": config, "job": result.summary(), "features": feats.uri}

    def ground(name: str, method: str, features_uri: str, query_uri: str, register: bool) -> dict[str, Any]:
        config = grounding_config(features_uri, query_uri, world, size, user["grounding"])
        return job(name, "grounding", method, GROUNDING_METRIC, config, features_uri, register).summary()

    main = pretrain("full", {}, register=True)
    # the baseline: the very same encoder config at init (no LocVTP checkpoint) on the same prefix stage
    query_uri = StageRef.of(features_task(main["prefix"], root, key, main["config"]["model"], None)).uri
    # both heads read the frozen mini CLIP's sentence features (query_uri)
    grounding = {
        "locvtp": ground("full", "locvtp-grounding", main["features"], query_uri, register=True),
        "baseline": ground("baseline", "clip-grounding", query_uri, query_uri, register=True),
    }
    retrieval = {
        "locvtp": retrieval_task(main["features"], test_queries),
        "baseline": retrieval_task(query_uri, test_queries),
    }
    table = None
    if ablations:
        table = experiment.ablation_table(
            pretrain, ground, retrieval_task, test_queries, query_uri, main, grounding, retrieval
        )
    results = experiment.results(main, grounding, retrieval)
    summary_key = run_name(PAPER, {"results": results, "ablations": table}, part="summary", data=key)
    jobs = experiment.job_names(main, grounding, table)
    summary = {"dataset": key, "jobs": jobs, "results": results, "ablations": table}
    summary_run = cached_task(log_locvtp_summary, root)(root, summary_key, summary)
    stage_uris = {"frames_stage": frames.uri, "prefix_stage": main["prefix"], "baseline_features": query_uri}
    out = experiment.dag_result(key, stage_uris, main, grounding, retrieval, table)
    out.update(mini_clip=MiniClip.of(clip).summary(), summary_run_id=summary_run)
    return {**out, "seconds": round(time.monotonic() - start, 1), "root": storage.join(root)}
