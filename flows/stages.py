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
from models.common.clip import ClipConfig
from models.config import config_hash, merge, to_dict
from pipelines import storage
from recipes.overrides import route
from recipes.spec import PaperSpec, load_spec

#: the mini CLIP every mini-world DAG pre-trains, one spec (recipes/configs/mini-clip/mini-world.yaml) for all of them,
#: so one run name (the config's hash) always means one model, whichever paper trained it first
MINI_CLIP = load_spec("mini-clip", "mini-world")
#: ingest settings of the mini datasets (frame rate by timestamp, 64 px frames = the mini CLIP's input)
MINI_INGEST: dict[str, dict[str, Any]] = MINI_CLIP.extra["ingest"]
#: the mini CLIP's overrides per world size (see the spec for the measurements behind them)
MINI_CLIP_SIZES: dict[str, dict[str, Any]] = {
    size: MINI_CLIP.size_overrides(size, "miniclip") for size in MINI_CLIP.sizes
}


def mini_clip_overrides(size: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mini CLIP's config overrides for a world size, then the user's (``--set miniclip.…``)."""
    if size not in MINI_CLIP_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(MINI_CLIP_SIZES)}")
    return {**MINI_CLIP_SIZES[size], **(user or {})}


#: stand-ins for what the DAG's stages produce, in configs resolved before anything runs (`--print-config`)
PENDING_CLIP: dict[str, str] = {"clip_arch": "vlrepro-mini", "clip_checkpoint": "<mini CLIP checkpoint (clip.pt)>"}
PENDING_WORLD: dict[str, Any] = {
    "annotations": "<the world's annotations.json>",
    "extra_files": {
        "charades_sta_train": "<the world's train queries>",
        "charades_sta_test": "<the world's test queries>",
    },
}


def pending(stage: str) -> str:
    """The stand-in of a stage's URI."""
    return f"<{stage} stage>"


def mini_clip_config(size: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mini CLIP job's config at `size` with the user's overrides (its training pairs: a stand-in)."""
    from recipes.miniclip import MiniClipConfig

    return to_dict(merge(MiniClipConfig(image_text="<the world's image_text.npz>"), mini_clip_overrides(size, user)))


def variant_job_configs(
    spec: PaperSpec, size: str, user: dict[str, dict[str, Any]] | None, chosen: list[str], config: Any
) -> dict[str, dict[str, Any]]:
    """A one-job-kind DAG's `job_configs` (STAN, UCoFiA): the mini CLIP, then ``<paper>/<variant>`` for each chosen
    variant, ``config(variant, that kind's user overrides)`` building it with stand-ins for stage outputs."""
    user = user or {}
    out = {"miniclip": mini_clip_config(size, user.get("miniclip"))}
    for variant in chosen:
        out[f"{spec.paper}/{variant}"] = config(variant, user.get(spec.paper, {}))
    return out


def route_overrides(overrides: dict[str, Any] | None, configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The user's ``--set`` overrides split among a DAG's kinds of job (`recipes.overrides.route`); `configs` is the
    flow's `job_configs` (job name → config; ``kind/variant`` names share their kind's keys)."""
    kinds: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():
        kinds.setdefault(name.split("/")[0], config)
    return route(overrides or {}, kinds)


def dataset_key(name: str, size: str, seed: int) -> str:
    """Stage folder name of a generated dataset: one per (name, size, seed)."""
    return f"{name}-{size}-s{seed}"


@task(name="make-data", retries=1, retry_condition_fn=is_transient)
def make_data(name: str, root: str, size: str, seed: int) -> dict[str, Any]:
    from pipelines.miniworld import make_world

    return make_world(name, storage.join(root, "data", dataset_key(name, size, seed)), seed=seed, size=size)


@task(name="pretrain-mini-clip", retries=1, retry_condition_fn=is_transient)
def pretrain_mini_clip(root: str, dataset: str, image_text: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The project's mini CLIP on the dataset's frame–caption pairs, registered in MLflow as ``mini-clip``."""
    from infra.training_job import TrainingJob, run_job
    from recipes.miniclip import MiniClipConfig

    cfg = merge(MiniClipConfig(image_text=image_text), overrides)
    config = to_dict(cfg)
    job = TrainingJob(
        paper="mini-clip",
        method="mini-clip",
        recipe="miniclip",
        config=config,
        run_name=f"miniclip-{dataset}-{config_hash({**config, 'image_text': Path(image_text).name})}",
        root=root,
        metric="frame2caption/R@1",
        tags={"vlrepro.dataset": dataset},
    )
    out = run_job(job)
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


def train_together(train_task: Any, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training jobs, `parallel_jobs` at a time (settings), each with its share of the CPUs; results in the order of
    `jobs`. With ``parallel_jobs`` 1 (the default) they run one after the other, as plain task calls.

    A job may name, under ``"after"``, the run names of jobs in the list that must finish first (a model it starts
    from); the key is taken out before the job reaches `train_task`. A job is started only when those have finished,
    so with one at a time they must come earlier in `jobs`.

    A window rather than handing every job to Ray at once: a Ray Train job waiting for CPUs times out its worker-group
    start (60 s) and retries, which is noise and counts against nothing we can read back. The first failure raises.

    Raises:
        ValueError: an ``"after"`` name that is not an earlier job's run name.
    """
    from infra.settings import get_settings

    names = [job["run_name"] for job in jobs]
    needs = [list(job.get("after", ())) for job in jobs]
    for i, need in enumerate(needs):
        bad = [n for n in need if n not in names[:i]]
        if bad:
            raise ValueError(f"job {names[i]} must run after {bad}, which are not earlier jobs of this list")
    plain = [{k: v for k, v in job.items() if k != "after"} for job in jobs]
    settings = get_settings()
    window = min(settings.parallel_jobs, len(jobs))
    if window <= 1:
        return [train_task(job) for job in plain]
    cpus = settings.job_cpus(len(jobs))
    logging.getLogger(__name__).info("training %d jobs, %d at a time, %g CPUs each", len(jobs), window, cpus)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    finished: set[str] = set()
    pending = [(i, {"cpus_per_worker": cpus, **job}) for i, job in enumerate(plain)]
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
