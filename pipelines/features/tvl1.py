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
The stage runs on `pipelines.derived` either in one call (`extract_flow`, the process pool as its lazily started
"model") or fanned out as the DAG's tasks: `plan_flow` → `flow_shard_json` per job → `commit_flow_stage`.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from models.config import config_hash
from pipelines import derived, shards
from pipelines.derived import Members

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


def _stage(
    frames_uri: str, cfg: TVL1Config, uri: str, h: str, workers: int = 1
) -> derived.DerivedStage[Executor | None]:
    """The flow stage of `frames_uri` at `uri` (hash `h`); its "model" is the process pool of `workers` processes
    (None for one: flow computed in the calling process), started only if some shard needs work."""
    return derived.DerivedStage(
        name=STAGE,
        uri=uri,
        config_hash=h,
        config={"frames_stage": frames_uri, **cfg.params()},
        inputs={"frames": frames_uri},  # flow shard i holds the flow of frames shard i, same keys
        per_item=_flow_item(frames_uri, cfg),
        model=lambda: make_pool(workers) if workers > 1 else None,
        release=lambda pool: pool.shutdown() if pool is not None else None,
        commit_extra={"frames_stage": frames_uri, "bound": cfg.bound},
        shard_extra={"bound": cfg.bound},
    )


def _planned_stage(
    frames_uri: str, root: str, dataset: str, cfg: TVL1Config, workers: int = 1
) -> derived.DerivedStage[Executor | None]:
    h = stage_hash(derived.input_stage_hash(frames_uri), cfg)
    return _stage(frames_uri, cfg, shards.stage_uri(root, dataset, STAGE, h), h, workers)


def plan_flow(
    frames_uri: str, root: str, dataset: str, cfg: TVL1Config, mode: shards.Mode = "incremental"
) -> tuple[str, list[shards.ShardJob]]:
    """Create/check the flow stage of `frames_uri`; one job per committed frames shard (same index, same keys)."""
    stage = _planned_stage(frames_uri, root, dataset, cfg)
    return stage.uri, derived.plan_stage(stage, mode)


def _flow_item(frames_uri: str, cfg: TVL1Config) -> derived.PerItem[Executor | None]:
    def item(shard: derived.Shard[Executor | None], key: str, inputs: tuple[Members, ...]) -> derived.Item:
        (members,) = inputs
        meta = dict(members.get("json", {}))
        row = derived.sample_row(key, meta.get("split", ""), label=meta.get("label", ""))
        start = time.monotonic()
        if "npy" not in members:
            return derived.failed(row, f"no frames for {key} in shard {shard.index} of {frames_uri}")
        frames = members["npy"]
        try:
            flow = compute_flow(frames, cfg, shard.model())
        except (ValueError, cv2.error) as exc:
            return derived.failed(row, f"{type(exc).__name__}: {exc}")
        row.update(
            n_frames=len(frames),
            n_pairs=len(flow),
            shape=list(flow.shape),
            seconds=round(time.monotonic() - start, 4),
            config_hash=shard.config_hash,
        )
        meta["flow"] = {
            "algorithm": "tvl1",
            "bound": cfg.bound,
            "encoding": "uint8 q = round((clip(f, -bound, bound) + bound) * 255 / (2 * bound)); channels x, y; "
            "frame_t(y, x) ~ frame_t+1(y + fy, x + fx)",
            "flow_size": cfg.flow_size,
            "frames_stage": frames_uri,
        }
        return row, {"npy": flow, "json": meta}

    return item


def flow_shard(
    job: shards.ShardJob, frames_uri: str, cfg: TVL1Config, pool: Executor | None = None
) -> shards.ShardSummary:
    """Compute and commit one flow shard (idempotent; obeys `job.mode`); `pool` fans pairs out over processes."""
    stage = _stage(frames_uri, cfg, job.stage_uri, job.config_hash)  # the job carries the planner's URI and hash
    return derived.run_stage_shard(stage, job, derived.Lazy.ready(pool))


def flow_shard_json(job: Mapping[str, Any], frames_uri: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`flow_shard` over JSON values (a job dict, a config dict): what a DAG's task or a Ray task on a cluster runs."""
    from models.config import build

    return flow_shard(shards.ShardJob.from_dict(job), frames_uri, build(TVL1Config, dict(cfg))).as_dict()


def _pairs(uri: str, summaries: Sequence[Mapping[str, Any]]) -> tuple[int, float]:
    """(flow fields, seconds spent on them) over the manifest rows of the summarised shards."""
    rows = [r for s in summaries for r in shards.read_rows(uri, s["index"])]
    return sum(int(r.get("n_pairs") or 0) for r in rows), sum(float(r.get("seconds") or 0.0) for r in rows)


def commit_flow_stage(
    uri: str, frames_uri: str, cfg: Mapping[str, Any], summaries: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Commit the flow stage once every shard is; summarise samples, pairs and throughput."""
    from models.config import build

    tvl1 = build(TVL1Config, dict(cfg))
    stats = derived.commit_derived_stage(
        _stage(frames_uri, tvl1, uri, stage_hash(derived.input_stage_hash(frames_uri), tvl1)), summaries
    )
    pairs, seconds = _pairs(uri, summaries)
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
    run = derived.run_derived_stage(_planned_stage(frames_uri, root, dataset, cfg, workers), mode)
    seconds = time.monotonic() - start
    pairs, _ = _pairs(run.uri, [s for s in run.shards if s["action"] != "skipped"])
    return {
        **run.summary(status_counts=True),
        "seconds": round(seconds, 3),
        "pairs": pairs,
        "pairs_per_second": round(pairs / seconds, 3) if pairs else 0.0,
        "workers": workers,
    }
