"""The reusable DAG stages every paper's flow composes: data → ingest → mini CLIP → features → training jobs.

Each task is a thin wrapper over an idempotent function that leaves a commit marker (world.json, stage
``_stats.json``, ``jobs/<run>.json``), so a rerun after a crash reuses finished stages twice over: Prefect returns the
persisted result of a finished task (``INPUTS + TASK_SOURCE`` under the run root), and the function itself finds its
marker. Stages are shared across papers: CLIP4Clip, STAN and UCoFiA runs on one dataset reuse the same ingest, mini
CLIP and features.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task

from flows.runtime import cached_task, is_transient
from infra.settings import Resources
from models.common.clip import ClipConfig
from models.config import merge, to_dict
from pipelines import storage

# what every mini-world DAG shares, decided in the pure layer (`recipes.experiments`); re-exported for the flows
from recipes.experiments import (
    MINI_CLIP,
    MINI_CLIP_SIZES,
    MINI_INGEST,
    PENDING_CLIP,
    PENDING_WORLD,
    dataset_key,
    job_summary,
    mini_clip_config,
    mini_clip_overrides,
    pending,
    route_overrides,
    variant_job_configs,
)


@task(name="make-data", retries=1, retry_condition_fn=is_transient)
def make_data(name: str, root: str, size: str, seed: int) -> dict[str, Any]:
    from pipelines.miniworld import make_world

    return make_world(name, storage.join(root, "data", dataset_key(name, size, seed)), seed=seed, size=size)


@task(name="pretrain-mini-clip", retries=1, retry_condition_fn=is_transient)
def pretrain_mini_clip(
    root: str, dataset: str, image_text: str, overrides: dict[str, Any], cpus_per_worker: float | None = None
) -> dict[str, Any]:
    """The project's mini CLIP on the dataset's frame–caption pairs, registered in MLflow as ``mini-clip``."""
    from infra.jobs import training_job
    from infra.training_job import TrainingJob, run_job
    from recipes.miniclip import MiniClipConfig

    cfg = merge(MiniClipConfig(image_text=image_text), overrides)
    config = to_dict(cfg)
    job = training_job(
        paper="mini-clip",
        recipe="miniclip",
        config=config,
        root=root,
        metric="frame2caption/R@1",
        who="miniclip",
        data=dataset,
        identity={**config, "image_text": Path(image_text).name},  # the same pairs under another run root
        tags={"vlrepro.dataset": dataset},
        cpus_per_worker=cpus_per_worker,  # a lone job: all of the DAG's CPUs per worker
    )
    out = run_job(TrainingJob(**job))
    out["clip_checkpoint"] = str(Path(out["model_dir"]) / "clip.pt")
    out["clip_arch"] = cfg.clip.arch
    return out


@task(name="extract-clip-features", retries=1, retry_condition_fn=is_transient)
def extract_clip_features(
    frames_uri: str, root: str, dataset: str, arch: str, checkpoint: str, output: str = "cls", last_blocks: int = 4
) -> dict[str, Any]:
    from models.config import build
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


def train_together(
    train_task: Any, jobs: list[dict[str, Any]], resources: Resources | None = None
) -> list[dict[str, Any]]:
    """Training jobs, ``resources.parallel_jobs`` at a time (default: the settings'), each with its share of
    ``resources.cpus_per_worker``; results in the order of `jobs`. With one at a time (the default) they run one after
    the other, as plain task calls, each with all of ``cpus_per_worker``.

    A job may name, under ``"after"``, the run names of jobs in the list that must finish first (a model it starts
    from); the key is taken out before the job reaches `train_task`. A job is started only when those have finished,
    so with one at a time they must come earlier in `jobs`.

    A window rather than handing every job to Ray at once: a Ray Train job waiting for CPUs times out its worker-group
    start (60 s) and retries, which is noise and counts against nothing we can read back. The first failure raises.

    Raises:
        ValueError: an ``"after"`` name that is not an earlier job's run name.
    """
    names = [job["run_name"] for job in jobs]
    needs = [list(job.get("after", ())) for job in jobs]
    for i, need in enumerate(needs):
        bad = [n for n in need if n not in names[:i]]
        if bad:
            raise ValueError(f"job {names[i]} must run after {bad}, which are not earlier jobs of this list")
    plain = [{k: v for k, v in job.items() if k != "after"} for job in jobs]
    resources = resources or Resources.resolve()
    window = min(resources.parallel_jobs, len(jobs))
    if window <= 1:
        return [train_task({**job, "cpus_per_worker": resources.cpus_per_worker}) for job in plain]
    cpus = resources.job_cpus(len(jobs))
    logging.getLogger(__name__).info("training %d jobs, %d at a time, %g CPUs each", len(jobs), window, cpus)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    finished: set[str] = set()
    pending = [(i, {**job, "cpus_per_worker": cpus}) for i, job in enumerate(plain)]
    running: dict[concurrent.futures.Future[Any], tuple[int, Any]] = {}
    while pending or running:
        ready = [p for p in pending if finished.issuperset(needs[p[0]])]
        while ready and len(running) < window:
            i, job = ready.pop(0)
            pending.remove((i, job))
            future = train_task.submit(job)
            running[future.wrapped_future] = (i, future)
        done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for wrapped in done:
            i, future = running.pop(wrapped)
            results[i] = future.result()  # raises the job's error
            finished.add(names[i])
    return [r for r in results if r is not None]


def mini_clip_summary(clip: dict[str, Any]) -> dict[str, Any]:
    """What a paper DAG reports of the mini CLIP it used: zero-shot skill, MLflow run, registered version."""
    return {
        "frame2caption_R@1": clip["metrics"].get("frame2caption/R@1"),
        "run_id": clip["run_id"],
        "model_version": (clip.get("registered") or {}).get("version"),
    }


def cached(root: str) -> dict[str, Any]:
    """The stage tasks configured to persist results and cache keys under `root`."""
    return {
        name: cached_task(t, root)
        for name, t in (
            ("make_data", make_data),
            ("pretrain_mini_clip", pretrain_mini_clip),
            ("extract_clip_features", extract_clip_features),
            ("train", train),
        )
    }


__all__ = [
    "MINI_CLIP",
    "MINI_CLIP_SIZES",
    "MINI_INGEST",
    "PENDING_CLIP",
    "PENDING_WORLD",
    "cached",
    "dataset_key",
    "job_summary",
    "make_data",
    "mini_clip_config",
    "mini_clip_overrides",
    "mini_clip_summary",
    "pending",
    "pretrain_mini_clip",
    "route_overrides",
    "train",
    "train_together",
    "variant_job_configs",
]
