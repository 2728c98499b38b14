"""Render and encode a list of `VideoJob`s into ``videos/<key>.mp4``, in parallel processes, crash-safe.

- Videos are encoded by `pipelines.ffmpeg.encode_video` (x264 with ``threads=1``) to hidden temporary names
  (``videos/.<key>...partial.mp4``) and renamed when ffmpeg has finished, so a crash never leaves a half-written
  mp4 under its final name.
- Videos are encoded in fixed batches of up to `MAX_BATCH` videos per ffmpeg call (see `write_batch`); this makes
  mini-retrieval ~3x cheaper. A batch whose final files all exist is skipped on a rerun; `world.make_world`
  only keeps such files when the interrupted run had the same (name, seed, size, version).
- Rendering happens in the worker from the job alone (its own background seed), so the output does not depend on
  the number of workers or on the order in which jobs finish. Workers are started with ``spawn`` (safe next to
  threads, Ray and Prefect in the parent).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.ffmpeg import EncodeError, encode_video
from pipelines.miniworld.render import VideoJob, render_frames

CRF = 18  # non-intra videos: visually lossless for 64×64 flat-shaded content (mean abs error ~1.5/255)
MAX_BATCH = 48  # videos per ffmpeg call
MAX_BATCH_FRAMES = 2400  # frames per ffmpeg call (~30 MB of raw frames), so that long videos still spread over workers


def video_path(videos_dir: Path, key: str) -> Path:
    return videos_dir / f"{key}.mp4"


def batches(
    jobs: Sequence[VideoJob], max_batch: int = MAX_BATCH, max_frames: int = MAX_BATCH_FRAMES
) -> list[list[VideoJob]]:
    """Split jobs, in plan order, into runs of equal (fps, intra_only), at most `max_batch` videos and `max_frames`
    frames each (a longer video is a batch of its own).

    The batches depend on the plan alone (never on `workers`, nor on which videos already exist), so every video is
    always encoded in the same company and comes out byte-identical.
    """
    out: list[list[VideoJob]] = []
    for job in jobs:
        last = out[-1] if out else None
        if (
            last is not None
            and (last[0].fps, last[0].intra_only) == (job.fps, job.intra_only)
            and len(last) < max_batch
            and sum(j.n_frames for j in last) + job.n_frames <= max_frames
        ):
            last.append(job)
        else:
            out.append([job])
    return out


def write_batch(jobs: list[VideoJob], videos_dir: str) -> list[str]:
    """Render and encode a batch; returns the keys. Top-level so that spawned workers can import it.

    ffmpeg starts up in ~25 ms, longer than it takes to encode a 3-second 64×64 clip, so a batch is encoded by one
    ffmpeg call: the videos' frames are concatenated, a key frame is forced at each video's first frame and ffmpeg's
    segment muxer cuts one MP4 per video there (timestamps reset, so each file is a normal video starting at 0).
    """
    folder = Path(videos_dir)
    frames = np.concatenate([render_frames(job) for job in jobs])  # (sum T, H, W, 3)
    if len(jobs) == 1:
        partials = [folder / f".{jobs[0].key}.partial.mp4"]
        encode_video(frames, partials[0], fps=jobs[0].fps, crf=CRF, intra_only=jobs[0].intra_only)
    else:
        cuts = np.cumsum([job.n_frames for job in jobs])[:-1].tolist()  # first frame of every video but the first
        pattern = folder / f".{jobs[0].key}.batch-%04d.partial.mp4"
        segments = {
            "f": "segment",
            "segment_format": "mp4",
            "segment_format_options": "movflags=+faststart",
            "segment_frames": ",".join(str(c) for c in cuts),
            "force_key_frames": "expr:" + "+".join(f"eq(n,{c})" for c in [0, *cuts]),
            "reset_timestamps": "1",
        }
        encode_video(frames, pattern, fps=jobs[0].fps, crf=CRF, intra_only=jobs[0].intra_only, extra=segments)
        partials = [folder / f".{jobs[0].key}.batch-{i:04d}.partial.mp4" for i in range(len(jobs))]
        missing = [p.name for p in partials if not p.exists()]
        if missing:
            raise EncodeError(f"the segment muxer did not write {missing}")
    for job, partial in zip(jobs, partials):
        os.replace(partial, video_path(folder, job.key))
    return [job.key for job in jobs]


def write_videos(
    jobs: Sequence[VideoJob],
    videos_dir: Path,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    side_task: tuple[Callable[..., Any], tuple[Any, ...]] | None = None,
) -> Any:
    """Write every batch of jobs whose videos are not all there yet; `progress(done, total)` after each batch.

    `side_task` = (top-level function, arguments) runs in the same worker pool alongside the encoding (inline after
    it when `workers` <= 1); its result is returned. make_world builds the image–caption set that way.
    """
    videos_dir.mkdir(parents=True, exist_ok=True)
    for stale in videos_dir.glob(".*.partial.mp4"):
        stale.unlink()
    todo = [b for b in batches(jobs) if not all(video_path(videos_dir, job.key).exists() for job in b)]
    total = len(jobs)
    done = total - sum(len(b) for b in todo)
    if progress is not None:
        progress(done, total)
    if workers <= 1:
        for batch in todo:
            write_batch(batch, str(videos_dir))
            done += len(batch)
            if progress is not None:
                progress(done, total)
        return side_task[0](*side_task[1]) if side_task is not None else None
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        side = pool.submit(side_task[0], *side_task[1]) if side_task is not None else None
        futures = {pool.submit(write_batch, batch, str(videos_dir)): len(batch) for batch in todo}
        try:
            for fut in as_completed(futures):
                fut.result()  # re-raise an encoding error here, in the caller
                done += futures[fut]
                if progress is not None:
                    progress(done, total)
            return side.result() if side is not None else None
        except BrokenProcessPool as exc:
            raise RuntimeError(
                "a mini-world worker process died (killed, out of memory, or a script without a main guard: "
                "workers are started with 'spawn', which re-imports the calling script, so call make_world under "
                "`if __name__ == '__main__':` or pass workers=1)"
            ) from exc
        except BaseException:
            for fut in [*futures, *([side] if side is not None else [])]:
                fut.cancel()
            raise
