"""The ingest flow: plan shards → one mapped, cached task per shard → commit the stage → table artifact."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, get_args

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact

from flows.runtime import cached_task, is_transient
from models.config import build
from pipelines import ingest as ing
from pipelines import shards, storage
from pipelines.decode import DecodeConfig


@task(name="ingest-shard", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=is_transient, tags=["ffmpeg"])
def ingest_shard_task(job: dict[str, Any], cfg: dict[str, Any], code_version: str) -> dict[str, Any]:
    """Decode and commit one shard; inputs are plain data so the cache key is their hash (+ task source)."""
    del code_version  # only part of the cache key: new decode code → new key
    return ing.ingest_shard(shards.ShardJob.from_dict(job), build(ing.IngestConfig, cfg)).as_dict()


def _is_summary(summary: Any, index: int) -> bool:
    """Whether a (possibly cached) task result is shard `index`'s `shards.ShardSummary` dict."""
    ok = (
        isinstance(summary, dict)
        and summary.get("index") == index
        and summary.get("action") in get_args(shards.Action)
        and isinstance(summary.get("status_counts"), dict)
        and isinstance(summary.get("n_samples"), int)
    )
    if not ok:
        get_run_logger().warning("shard %d: its cached summary is not one (%.80r); running it again", index, summary)
    return ok


@flow(name="ingest", log_prints=True)
def ingest_flow(
    source: str,
    root: str = "runs",
    dataset: str = "videos",
    fps: float = 1.0,
    size: int = 224,
    crop: int = 224,
    samples_per_shard: int = 64,
    mode: shards.Mode = "incremental",
    timeout_s: float = 600.0,
    max_frames: int = 0,
    max_duration_s: float = 0.0,
    max_sample_bytes: int | None = None,
) -> dict[str, Any]:
    """Ingest `source` (folder or CSV of videos) into `<root>/<dataset>/frames/<config-hash>/` shards.
    `max_sample_bytes`: the per-video frame budget (None = `DecodeConfig`'s; 25 fps runs of long videos raise it)."""
    start = time.monotonic()
    root = storage.resolve_root(root)
    if storage.is_local(source):
        source = str(storage.local_path(source).resolve())
    decode = DecodeConfig(
        fps=fps,
        short_side=size,
        crop=crop,
        timeout_s=timeout_s,
        max_frames=max_frames,
        max_duration_s=max_duration_s,
    )
    if max_sample_bytes is not None:
        decode = dataclasses.replace(decode, max_sample_bytes=max_sample_bytes)
    cfg = ing.IngestConfig(decode=decode, samples_per_shard=samples_per_shard)
    uri, jobs = ing.plan_ingest(ing.read_sources(source), root, dataset, cfg, mode)
    task_ = cached_task(ingest_shard_task, root).with_options(refresh_cache=mode != "incremental")
    cfg_dict = {"decode": vars(cfg.decode), "samples_per_shard": cfg.samples_per_shard}
    summaries = [
        f.result() for f in task_.map([j.to_dict() for j in jobs], unmapped(cfg_dict), unmapped(ing.code_version()))
    ]
    # A cached summary is only as good as the files behind it: redo shards whose marker vanished since, and any whose
    # cached summary is not this shard's summary (a result file replaced by valid JSON of another shape or shard).
    stale = [
        j for j, s in zip(jobs, summaries) if not _is_summary(s, j.index) or shards.shard_stats(uri, j.index) is None
    ]
    if stale:
        redo = task_.with_options(refresh_cache=True).map(
            [j.to_dict() for j in stale], unmapped(cfg_dict), unmapped(ing.code_version())
        )
        fresh = {r["index"]: r for r in (f.result() for f in redo)}
        summaries = [fresh.get(j.index, s) for j, s in zip(jobs, summaries)]
    result = ing.finish_ingest(uri, cfg, summaries, time.monotonic() - start)
    create_table_artifact(
        key=f"ingest-{dataset.lower()}"[:60].replace("_", "-"),
        table=[{"shard": s["index"], "action": s["action"], **s["status_counts"]} for s in summaries],
        description=f"Ingest of {source} → {uri}",
    )
    return result.as_dict()
