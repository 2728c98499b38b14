"""`reproduce-locvtp`: data → ingest → mini CLIP → frozen prefix → LocVTP pre-training → clip features → 2D-TAN
grounding → evaluate → registry, plus retrieval transfer and (``ablations=True``) the paper's ablation table.

LocVTP (Cao et al., ECCV 2022; METHODS §5) is judged downstream: the same grounding head (2D-TAN) is trained on the
clip features of the pre-trained encoder and on those of the **baseline**, the same encoder without LocVTP
pre-training — which at init is exactly per-frame mini CLIP mean-pooled over each clip's frames
(`pipelines.features.locvtp_clips`). Both heads get the same query features (the frozen mini CLIP's sentence feature),
so they differ only in their clip features. Retrieval transfer (METHODS §5 "retrieval with the metrics above") is
text↔moment retrieval on the held-out queries from each feature stage and its own text tower
(`recipes.locvtp.moment_retrieval`).

Stages and jobs (each reused on rerun: Prefect's persisted results, and each stage's own commit marker or job record):

| stage | task | output |
|---|---|---|
| mini-grounding world, frames at 8 fps, 64 px | `stages.make_data`, `ingest_flow` | frames stage |
| mini CLIP on the world's frame–caption pairs | `stages.pretrain_mini_clip` | ``mini-clip`` model |
| CLIP stem + first L−k blocks on every 4th frame | `locvtp_prefix_tokens` | ``locvtp-prefix`` stage |
| LocVTP pre-training | `stages.train` (recipe ``locvtp``) | ``locvtp`` model, metric ``t2v/R@1`` |
| clip features, LocVTP and baseline | `locvtp_clip_features` | ``locvtp-clips`` stages |
| 2D-TAN head on each | `stages.train` (recipe ``grounding``) | ``locvtp-grounding`` / ``clip-grounding`` models |
| retrieval transfer, summary | `locvtp_retrieval_transfer`, `log_locvtp_summary` | MLflow summary run with the tables |

**Size choices** (`SIZES`, on top of ``recipes/configs/locvtp/mini-grounding.yaml``) and why — budget: the default
DAG on ``size="small"`` in ~10 minutes on 2 quiet CPU cores, most of it the mini CLIP (600 steps) and LocVTP:

- ``input: tokens``: the frozen prefix is computed once (`locvtp_prefix_tokens`), not at every step;
- pre-training is counted in *passes* over the 96 training videos (6 steps each at batch 16):
  ``repeats_per_epoch`` passes per epoch, so an epoch (one checkpoint + one evaluation) is ~24 steps; see `SIZES`;
- tiny: the test world (4 + 2 videos), a handful of steps for every job, only to prove the DAG end to end.

Overrides (`overrides`, the CLI's ``--set``) follow the one grammar (`recipes.overrides`): a dotted key reaches every
job that has it (``train.seed=1``: the mini CLIP, pre-training and the head), a key prefixed by a job's name that job
only: ``pretrain.`` (`LocVTPRecipeConfig`: ``pretrain.train.epochs=4``, ``pretrain.model.top_k=5``), ``grounding.``
(`GroundingRecipeConfig`) or ``miniclip.`` (`MiniClipConfig`). `job_configs` resolves them all (``--print-config``).
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
from infra.settings import Resources
from models.config import merge, to_dict
from pipelines import storage
from recipes.experiments.locvtp import (
    ABLATIONS,
    FULL_IN_GROUP,
    GROUNDING_METRIC,
    PAPER,
    PRETRAIN_METRIC,
    SPEC,
    grounding_config,
    job_configs,
    pretrain_config,
    table_row,
)

# ----- the flow ----------------------------------------------------------------------------------------------------


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
    from infra.jobs import run_name as job_name
    from infra.jobs import training_job, was_finished

    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)  # its jobs run one at a time: all CPUs each
    if dataset != "mini-grounding":
        raise ValueError(
            f"the LocVTP DAG runs on mini-grounding here (got {dataset!r}); real datasets: ingest + the recipes"
        )
    SPEC.check_size(size)
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(size, ablations=ablations))
    t = stages.cached(root)
    prefix_task = cached_task(locvtp_prefix_tokens, root)
    features_task = cached_task(locvtp_clip_features, root)
    retrieval_task = cached_task(locvtp_retrieval_transfer, root)
    summary_task = cached_task(log_locvtp_summary, root)

    key = stages.dataset_key(dataset, size, seed)
    world = t["make_data"](dataset, root, size, seed)
    frames = ingest_flow(world["sources_csv"], root, key, **stages.MINI_INGEST[dataset])
    clip = t["pretrain_mini_clip"](
        root, key, world["image_text"], stages.mini_clip_overrides(size, user["miniclip"]), resources.cpus_per_worker
    )
    test_queries = world["extra_files"]["charades_sta_test"]

    def pretrain(name: str, variant: dict[str, Any], register: bool) -> dict[str, Any]:
        """Prefix stage (shared by all variants), pre-training job, clip features of its final model."""
        cfg = pretrain_config(clip, world, size, user["pretrain"], variant)
        prefix = prefix_task(frames["stage_uri"], root, key, to_dict(cfg.model))
        config = to_dict(merge(cfg, {"data.stage": prefix["stage_uri"]}))
        job = training_job(
            paper=PAPER,
            recipe="locvtp",
            config=config,
            root=root,
            metric=PRETRAIN_METRIC,
            part=name,
            data=key,
            num_workers=num_workers,
            cpus_per_worker=resources.cpus_per_worker,
            register=register,
            dataset_stage=prefix["stage_uri"],
            tags=_tags(name),
        )
        reused = was_finished(job)
        result = t["train"](job)
        feats = features_task(
            prefix["stage_uri"], root, key, config["model"], str(Path(result["model_dir"]) / "model.pt")
        )
        return {"prefix": prefix, "config": config, "job": stages.job_summary(result, reused), "features": feats}

    def ground(name: str, method: str, features_uri: str, query_uri: str, register: bool) -> dict[str, Any]:
        config = grounding_config(features_uri, query_uri, world, size, user["grounding"])
        job = training_job(
            paper=PAPER,
            method=method,
            recipe="grounding",
            config=config,
            root=root,
            metric=GROUNDING_METRIC,
            part=name,
            data=key,
            num_workers=num_workers,
            cpus_per_worker=resources.cpus_per_worker,
            register=register,
            dataset_stage=features_uri,
            tags=_tags(name),
        )
        reused = was_finished(job)
        result = t["train"](job)
        return stages.job_summary(result, reused)

    main = pretrain("full", {}, register=True)
    # the baseline: the very same encoder config at init (no LocVTP checkpoint) on the same prefix stage
    base_feats = features_task(main["prefix"]["stage_uri"], root, key, main["config"]["model"], None)
    query_uri = base_feats["stage_uri"]  # both heads read the frozen mini CLIP's sentence features
    grounding = {
        "locvtp": ground("full", "locvtp-grounding", main["features"]["stage_uri"], query_uri, register=True),
        "baseline": ground("baseline", "clip-grounding", query_uri, query_uri, register=True),
    }
    retrieval = {
        "locvtp": retrieval_task(main["features"]["stage_uri"], test_queries),
        "baseline": retrieval_task(query_uri, test_queries),
    }
    table = None
    if ablations:
        table = _ablation_table(pretrain, ground, retrieval_task, test_queries, query_uri, main, grounding, retrieval)
    jobs = [main["job"]["run_name"], *(g["run_name"] for g in grounding.values())]
    if table is not None:
        jobs += [r[k] for r in table for k in ("pretrain_run", "grounding_run") if r.get(k)]
    results = {
        "grounding": {name: g["metrics"] for name, g in grounding.items()},
        "retrieval": retrieval,
        "pretrain": main["job"]["metrics"],
    }
    summary_key = job_name(PAPER, {"results": results, "ablations": table}, part="summary", data=key)
    summary_run = summary_task(
        root, summary_key, {"dataset": key, "jobs": sorted(set(jobs)), "results": results, "ablations": table}
    )
    out: dict[str, Any] = {
        "paper": PAPER,
        "dataset": key,
        "frames_stage": frames["stage_uri"],
        "prefix_stage": main["prefix"]["stage_uri"],
        "features": {"locvtp": main["features"]["stage_uri"], "baseline": query_uri},
        "mini_clip": stages.mini_clip_summary(clip),
        "pretrain": main["job"],
        "grounding": grounding,
        "retrieval": retrieval,
        "summary_run_id": summary_run,
        "seconds": round(time.monotonic() - start, 1),
        "root": storage.join(root),
    }
    if table is not None:
        out["ablations"] = table
    return out


def _tags(variant: str) -> dict[str, str]:
    return {"vlrepro.variant": variant}


def _ablation_table(
    pretrain: Any,
    ground: Any,
    retrieval_task: Any,
    test_queries: str,
    query_uri: str,
    main: dict[str, Any],
    grounding: dict[str, Any],
    retrieval: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per (group, variant): the main run in every group, each ablation a pre-training + features + head."""

    rows = [table_row("baseline", "no pre-training", None, grounding["baseline"], retrieval["baseline"])]
    done: dict[str, dict[str, Any]] = {}
    for name, (group, variant) in ABLATIONS.items():
        pre = pretrain(name, variant, register=False)
        head = ground(name, "locvtp-grounding", pre["features"]["stage_uri"], query_uri, register=False)
        done[name] = table_row(group, name, pre, head, retrieval_task(pre["features"]["stage_uri"], test_queries))
    for group, full_name in FULL_IN_GROUP.items():
        rows.append(table_row(group, f"{full_name} (full)", main, grounding["locvtp"], retrieval["locvtp"]))
        rows += [r for r in done.values() if r["group"] == group]
    return rows
