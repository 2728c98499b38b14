"""TV-L1 optical flow stage: decoded 25 fps frame shards → uint8 flow shards with the same keys and shard indices.

The W-TAL flow stream (METHODS §4; paper-code-notes §5.3, §5.5, §7.3): TV-L1 (Zach et al. 2007, the Dual TV-L1 of
OpenCV's contrib ``cv2.optflow.DualTVL1OpticalFlow_create``, the algorithm of ``dense_flow`` that the released
THUMOS14 features used) between consecutive **grayscale** frames, displacement clipped to ±`bound` (20) pixels and
stored as uint8 like the flow JPEGs of those pipelines::

    q = round((clip(f, −bound, bound) + bound) · 255 / (2·bound))        # x and y channels, q ∈ [0, 255]

`dequantize` maps ``q`` to ``q/255·2 − 1 ∈ [−1, 1]`` (= f/bound up to quantisation), the I3D flow input
(pytorch-i3d reads the flow JPEGs the same way). Sign convention (OpenCV's): ``frame_t(y, x) ≈ frame_{t+1}(y + fy,
x + fx)``, so content moving right/down has positive x/y flow. A video of T frames gives T−1 flow fields.

TV-L1 parameters default to OpenCV's; ``flow_size`` computes the flow on frames resized to that short side (cheaper)
and resizes the field back to the frame size with its displacements rescaled to frame pixels, so a flow stage always
matches its frames stage pixel for pixel. Timings (stack-notes): 0.54–0.66 s per 224² pair with defaults, far slower
than decoding, hence the process-pool fan-out over chunks of frame pairs (`extract_flow(..., workers=n)`), with one
OpenCV thread per process. Every pair is computed independently (no initial flow), so the output is bit-identical for
any number of workers or chunk size.

The stage hash includes the frames stage's hash and every parameter that changes the output (not `chunk_pairs`).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.config import config_hash
from pipelines import shards

STAGE = "tvl1-flow"
BOUND = 20.0  # px; dense_flow / W-TAL convention (paper-code-notes §7.3)


@dataclass(frozen=True)
class TVL1Config:
    """Dual TV-L1 parameters (defaults = OpenCV's ``DualTVL1OpticalFlow_create``) and the storage bound."""

    tau: float = 0.25  # time step of the numerical scheme
    lambda_: float = 0.15  # weight of the data term (smaller = smoother flow)
    theta: float = 0.3  # coupling between the two sub-problems
    nscales: int = 5  # pyramid levels
    warps: int = 5  # warpings per pyramid level
    epsilon: float = 0.01  # stopping threshold
    inner_iterations: int = 30  # the binding's keyword is misspelled `innnerIterations` (stack-notes)
    outer_iterations: int = 10
    scale_step: float = 0.8  # pyramid downscale factor
    gamma: float = 0.0  # weight of the illumination term (0 = plain TV-L1)
    median_filtering: int = 5  # median filter kernel applied to the flow at each warp
    flow_size: int | None = None  # compute at this short side (px), then resize back; None = frame size
    bound: float = BOUND  # storage clip in frame pixels
    chunk_pairs: int = 32  # frame pairs per pool task (speed only, not in the hash)

    def __post_init__(self) -> None:
        if self.bound <= 0:
            raise ValueError(f"bound must be positive, got {self.bound}")
        if self.flow_size is not None and self.flow_size < 8:
            raise ValueError(f"flow_size must be >= 8 px or None, got {self.flow_size}")
        if self.chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be >= 1, got {self.chunk_pairs}")

    def params(self) -> dict[str, Any]:
        """Everything that changes the stored flow (the hashed part of the config)."""
        d = asdict(self)
        d.pop("chunk_pairs")
        return d

    def create(self) -> Any:
        return cv2.optflow.DualTVL1OpticalFlow_create(  # type: ignore[attr-defined]
            tau=self.tau,
            lambda_=self.lambda_,
            theta=self.theta,
            nscales=self.nscales,
            warps=self.warps,
            epsilon=self.epsilon,
            innnerIterations=self.inner_iterations,
            outerIterations=self.outer_iterations,
            scaleStep=self.scale_step,
            gamma=self.gamma,
            medianFiltering=self.median_filtering,
            useInitialFlow=False,
        )


# --------------------------------------------------------------------------------------------- flow of frames


def quantize(flow: np.ndarray, bound: float = BOUND) -> np.ndarray:
    """float flow (..., 2) in px → uint8: ``round((clip(f, ±bound) + bound)·255/(2·bound))``."""
    f = np.clip(np.asarray(flow, dtype=np.float32), -bound, bound)
    return np.rint((f + bound) * (255.0 / (2.0 * bound))).astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint8 flow → float32 in [−1, 1] (≈ f / bound): the I3D flow-stream input."""
    return np.asarray(q, dtype=np.float32) * (2.0 / 255.0) - 1.0


def flow_pixels(q: np.ndarray, bound: float = BOUND) -> np.ndarray:
    """uint8 flow → float32 displacement in pixels (quantisation step 2·bound/255 ≈ 0.16 px at bound 20)."""
    return dequantize(q) * np.float32(bound)


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) RGB uint8 → (T, H, W) uint8 luma (OpenCV's RGB2GRAY weights)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]) if len(frames) else frames[..., 0]


def _flow_size(h: int, w: int, short: int | None) -> tuple[int, int]:
    if short is None or min(h, w) == short:
        return h, w
    scale = short / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def flow_chunk(gray: np.ndarray, cfg: TVL1Config) -> np.ndarray:
    """(n+1, H, W) grayscale → (n, H, W, 2) quantised flow of its n consecutive pairs, with one OpenCV thread.

    The unit of work sent to pool workers (module-level so that spawned processes can import it).
    """
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe the pool
    try:
        h, w = gray.shape[1:]
        fh, fw = _flow_size(h, w, cfg.flow_size)
        if (fh, fw) != (h, w):
            interp = cv2.INTER_AREA if fh < h else cv2.INTER_LINEAR
            gray = np.stack([cv2.resize(g, (fw, fh), interpolation=interp) for g in gray])
        tvl1 = cfg.create()
        out = np.empty((len(gray) - 1, h, w, 2), dtype=np.uint8)
        for i in range(len(gray) - 1):
            f = tvl1.calc(gray[i], gray[i + 1], None)  # (fh, fw, 2) float32, px at the compute size
            if (fh, fw) != (h, w):
                f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
                f = f * np.array([w / fw, h / fh], dtype=np.float32)  # displacements in frame pixels
            out[i] = quantize(f, cfg.bound)
        return out
    finally:
        cv2.setNumThreads(previous_threads)


def compute_flow(frames: np.ndarray, cfg: TVL1Config | None = None, pool: Executor | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames → (T−1, H, W, 2) uint8 quantised TV-L1 flow (module docstring).

    With a `pool`, chunks of `cfg.chunk_pairs` pairs run in its workers; the result does not depend on it.
    """
    cfg = cfg or TVL1Config()
    gray = to_gray(frames)  # (T, H, W)
    t, h, w = gray.shape
    if t < 2:
        return np.zeros((0, h, w, 2), dtype=np.uint8)
    bounds = [(a, min(a + cfg.chunk_pairs, t - 1)) for a in range(0, t - 1, cfg.chunk_pairs)]
    chunks = [gray[a : b + 1] for a, b in bounds]  # consecutive chunks share their boundary frame
    parts = (flow_chunk(c, cfg) for c in chunks) if pool is None else pool.map(flow_chunk, chunks, [cfg] * len(chunks))
    out = np.empty((t - 1, h, w, 2), dtype=np.uint8)  # filled in place: long videos hold one copy, not two
    for (a, b), part in zip(bounds, parts):
        out[a:b] = part
    return out


def _init_worker() -> None:
    cv2.setNumThreads(1)


def make_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool for `compute_flow` (spawned processes: safe beside threads of torch / pyarrow / Ray)."""
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    )


# ------------------------------------------------------------------------------------------------------- stage


def stage_hash(frames_hash: str, cfg: TVL1Config) -> str:
    return config_hash({"frames": frames_hash, "tvl1": cfg.params()})


def _frames_hash(frames_uri: str) -> str:
    stats = shards.require_stage(frames_uri)
    return str(stats.get("config_hash") or Path(frames_uri).name)


def plan_flow(
    frames_uri: str, root: str, dataset: str, cfg: TVL1Config, mode: shards.Mode = "incremental"
) -> tuple[str, list[shards.ShardJob]]:
    """Create/check the flow stage of `frames_uri`; one job per committed frames shard (same index, same keys)."""
    h = stage_hash(_frames_hash(frames_uri), cfg)
    uri = shards.stage_uri(root, dataset, STAGE, h)
    keys_by_shard = {
        i: sorted(r["key"] for r in shards.read_rows(frames_uri, i) if r["status"] in shards.OK_STATUSES)
        for i in shards.committed_shards(frames_uri)
    }
    all_keys = sorted(k for ks in keys_by_shard.values() for k in ks)
    shards.prepare_stage(
        uri, {"frames_stage": frames_uri, **cfg.params()}, h, shards.digest_keys(all_keys), len(all_keys), mode
    )
    jobs = [shards.ShardJob(uri, i, h, tuple({"key": k} for k in keys), mode) for i, keys in keys_by_shard.items()]
    return uri, jobs


def in_key_order(
    samples: Iterable[tuple[str, dict[str, Any]]], keys: Sequence[str]
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Yield ``(key, members)`` for each of `keys` in that order from a shard stream (None if it lacks the key).

    Streams when the shard is in key order (it is: shards are written in sorted key order), buffers otherwise.
    """
    wanted = set(keys)
    stream = iter(samples)
    early: dict[str, dict[str, Any]] = {}
    for key in keys:
        while key not in early:
            nxt = next(stream, None)
            if nxt is None:
                break
            if nxt[0] in wanted:
                early[nxt[0]] = nxt[1]
        yield key, early.pop(key, None)


def _flow_items(
    frames_uri: str, shard: int, keys: Sequence[str], cfg: TVL1Config, digest: str, pool: Executor | None
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    for key, members in in_key_order(shards.iter_shard(frames_uri, shard), keys):
        meta = dict((members or {}).get("json", {}))
        row: dict[str, Any] = {
            "key": key,
            "status": "ok",
            "error": "",
            "split": meta.get("split", ""),  # loaders select training/evaluation videos from these rows
            "label": meta.get("label", ""),
        }
        start = time.monotonic()
        if members is None or "npy" not in members:
            row.update(status="failed", error=f"no frames for {key} in shard {shard} of {frames_uri}")
            yield row, None
            continue
        frames = members["npy"]
        try:
            flow = compute_flow(frames, cfg, pool)
        except (ValueError, cv2.error) as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            yield row, None
            continue
        row.update(
            n_frames=len(frames),
            n_pairs=len(flow),
            shape=list(flow.shape),
            seconds=round(time.monotonic() - start, 4),
            config_hash=digest,
        )
        meta["flow"] = {
            "algorithm": "tvl1",
            "bound": cfg.bound,
            "encoding": "uint8 q = round((clip(f, -bound, bound) + bound) * 255 / (2 * bound)); channels x, y; "
            "frame_t(y, x) ~ frame_t+1(y + fy, x + fx)",
            "flow_size": cfg.flow_size,
            "frames_stage": frames_uri,
        }
        yield row, {"npy": flow, "json": meta}


def flow_shard(
    job: shards.ShardJob, frames_uri: str, cfg: TVL1Config, pool: Executor | None = None
) -> shards.ShardSummary:
    """Compute and commit one flow shard (idempotent; obeys `job.mode`); `pool` fans pairs out over processes."""

    def process_items(items: Sequence[Mapping[str, Any]]) -> Iterable[tuple[dict[str, Any], dict[str, Any] | None]]:
        return _flow_items(frames_uri, job.index, [str(it["key"]) for it in items], cfg, job.config_hash, pool)

    return shards.run_shard(job, process_items=process_items, extra_stats={"bound": cfg.bound})


def flow_shard_json(job: Mapping[str, Any], frames_uri: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`flow_shard` over JSON values (a job dict, a config dict): what a DAG's task or a Ray task on a cluster runs."""
    from models.config import build

    return flow_shard(shards.ShardJob.from_dict(job), frames_uri, build(TVL1Config, dict(cfg))).as_dict()


def commit_flow_stage(
    uri: str, frames_uri: str, cfg: Mapping[str, Any], summaries: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Commit the flow stage once every shard is (`finish_flow`); summarise samples, pairs and throughput."""
    from models.config import build

    stats = finish_flow(uri, frames_uri, build(TVL1Config, dict(cfg)), summaries)
    rows = [r for s in summaries for r in shards.read_rows(uri, s["index"])]
    pairs = sum(int(r.get("n_pairs") or 0) for r in rows)
    seconds = sum(float(r.get("seconds") or 0.0) for r in rows)
    return {
        "stage_uri": uri,
        "config_hash": stats["config_hash"],
        "n_samples": stats["n_samples"],
        "status_counts": stats["status_counts"],
        "shards": len(summaries),
        "shards_written": sum(1 for s in summaries if s["action"] != "skipped"),
        "pairs": pairs,
        "pairs_per_worker_second": round(pairs / seconds, 2) if seconds else None,  # per shard worker
    }


def finish_flow(uri: str, frames_uri: str, cfg: TVL1Config, summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Commit the flow stage (``_stats.json`` last); return its stats."""
    h = stage_hash(_frames_hash(frames_uri), cfg)
    return shards.commit_stage(
        uri, summaries, extra={"config_hash": h, "stage": STAGE, "frames_stage": frames_uri, "bound": cfg.bound}
    )


def extract_flow(
    frames_uri: str,
    root: str,
    dataset: str,
    cfg: TVL1Config | None = None,
    workers: int = 1,
    mode: shards.Mode = "incremental",
) -> dict[str, Any]:
    """TV-L1 flow for every committed shard of `frames_uri` with `workers` processes; commit the stage; summarise.

    ``workers=1`` computes in this process; more start a spawned process pool (only if some shard needs work).
    Spawned workers re-import the caller's main module, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard (Prefect / Ray task processes and pytest already have one).
    """
    cfg = cfg or TVL1Config()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.monotonic()
    uri, jobs = plan_flow(frames_uri, root, dataset, cfg, mode)
    pool: ProcessPoolExecutor | None = None
    summaries = []
    try:
        for job in jobs:
            if pool is None and workers > 1 and _needs_work(job):
                pool = make_pool(workers)
            summaries.append(flow_shard(job, frames_uri, cfg, pool).as_dict())
    finally:
        if pool is not None:
            pool.shutdown()
    stats = finish_flow(uri, frames_uri, cfg, summaries)
    seconds = time.monotonic() - start
    pairs = sum(
        int(r.get("n_pairs") or 0)
        for s in summaries
        if s["action"] != "skipped"
        for r in shards.read_rows(uri, s["index"])
    )
    return {
        "stage_uri": uri,
        "config_hash": stats["config_hash"],
        "n_samples": stats["n_samples"],
        "status_counts": stats["status_counts"],
        "seconds": round(seconds, 3),
        "shards_written": sum(1 for s in summaries if s["action"] != "skipped"),
        "pairs": pairs,
        "pairs_per_second": round(pairs / seconds, 3) if pairs else 0.0,
        "workers": workers,
    }


def _needs_work(job: shards.ShardJob) -> bool:
    existing = shards.shard_stats(job.stage_uri, job.index)
    if existing is None or job.mode == "overwrite":
        return True
    return job.mode == "retry-failed" and any(k not in shards.OK_STATUSES for k in existing.get("status_counts", {}))
