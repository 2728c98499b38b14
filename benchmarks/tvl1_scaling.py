"""TV-L1 flow throughput and its scaling from 1 to 2 workers, on the same frames of a generated mini-wtal video.

Usage::

    .venv/bin/python benchmarks/tvl1_scaling.py [--pairs 400] [--root /tmp/tvl1-bench] [--size 64]

Generates the tiny mini-wtal world (cached in ``--root``), ingests it at 25 fps / 64 px like the DCC DAG
(`flows.stages.MINI_INGEST`), takes the first ``--pairs`` + 1 frames of one video and computes their TV-L1 flow
(`pipelines.features.tvl1.compute_flow`, OpenCV's defaults, one OpenCV thread per worker) three ways:

- ``1``: in this process;
- ``2``: a spawned 2-process pool (`tvl1.make_pool`, what ``extract_flow(workers=2)`` uses);
- ``2-threads``: 2 threads of this process (what the DAG's mapped shard tasks do; OpenCV releases the GIL).

Each way is timed on a warm run (pool started and one chunk computed first); the outputs must be bit-identical.
Prints one JSON object: pairs/s per way, the ratios to 1 worker, the CPU count, and the load average before and
after — on a shared machine the load says how much of the 2 cores the benchmark actually had.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import shards  # noqa: E402
from pipelines.decode import DecodeConfig  # noqa: E402
from pipelines.features.tvl1 import TVL1Config, compute_flow, make_pool  # noqa: E402
from pipelines.ingest import IngestConfig, ingest  # noqa: E402
from pipelines.miniworld import make_world  # noqa: E402


def frames_of_one_video(root: Path, n_frames: int, size: int) -> tuple[str, np.ndarray]:
    world = make_world("mini-wtal", root / "world", seed=0, size="tiny", workers=1)
    cfg = IngestConfig(decode=DecodeConfig(fps=25.0, short_side=size, crop=size), samples_per_shard=4)
    result = ingest(world["sources_csv"], str(root / "runs"), "mini-wtal-tiny-s0", cfg)
    key, members = next(shards.iter_stage(result.stage_uri))
    frames = members["npy"]
    if len(frames) < n_frames:
        raise SystemExit(f"{key} has only {len(frames)} frames; ask for fewer --pairs")
    return key, frames[:n_frames]


def timed(frames: np.ndarray, cfg: TVL1Config, pool: object | None) -> tuple[float, np.ndarray]:
    compute_flow(frames[: cfg.chunk_pairs + 1], cfg, pool)  # type: ignore[arg-type]  # warm-up: pool started
    start = time.perf_counter()
    flow = compute_flow(frames, cfg, pool)  # type: ignore[arg-type]
    return time.perf_counter() - start, flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--root", default="/tmp/vlrepro-tvl1-bench")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--chunk-pairs", type=int, default=25)
    args = parser.parse_args()

    key, frames = frames_of_one_video(Path(args.root), args.pairs + 1, args.size)
    cfg = TVL1Config(chunk_pairs=args.chunk_pairs)
    load_before = os.getloadavg()
    seconds: dict[str, float] = {}
    seconds["1"], reference = timed(frames, cfg, None)
    pool = make_pool(2)
    try:
        seconds["2"], flow2 = timed(frames, cfg, pool)
    finally:
        pool.shutdown()
    with ThreadPoolExecutor(max_workers=2) as threads:
        seconds["2-threads"], flow_t = timed(frames, cfg, threads)
    load_after = os.getloadavg()
    pairs = len(reference)
    rate = {k: round(pairs / s, 2) for k, s in seconds.items()}
    print(
        json.dumps(
            {
                "video": key,
                "frames": list(frames.shape),
                "pairs": pairs,
                "seconds": {k: round(s, 3) for k, s in seconds.items()},
                "pairs_per_second": rate,
                "ratio_2_vs_1": round(rate["2"] / rate["1"], 3),
                "ratio_2threads_vs_1": round(rate["2-threads"] / rate["1"], 3),
                "identical": bool(np.array_equal(reference, flow2) and np.array_equal(reference, flow_t)),
                "cpu_count": os.cpu_count(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in load_after],
            }
        )
    )


if __name__ == "__main__":
    main()
