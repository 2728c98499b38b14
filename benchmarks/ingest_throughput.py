"""Ingest benchmark: our decode+shard vs bare ffmpeg vs CLIP4Clip-style OpenCV seek decoding; epoch reads; memory.

All rates are measured in one run on the same generated files, so the *ratios* are what to read (absolute times on a
shared 2-core machine are noise). Usage::

    .venv/bin/python benchmarks/ingest_throughput.py [--videos 8] [--seconds 20] [--out benchmarks/out]

Measures (source frames decoded per second = duration × source fps / wall time):
1. ``ours``: `pipelines.ingest.ingest` (probe + ffmpeg fps/scale/crop → raw frames → shards + parquet + markers);
2. ``ffmpeg``: ``ffmpeg -i X -vf <same filters> -f null -`` on the same files with the same concurrency;
3. ``seek``: OpenCV seek per sampled frame (``CAP_PROP_POS_FRAMES`` then ``read``, CLIP4Clip's
   ``RawVideoExtractorCV2``), the first frame of each second, resized and centre-cropped;
4. one epoch of the same frames read back from the shards vs seek-decoding them again;
5. peak RSS of an ingest of N and of 2N videos (child processes, ffmpeg included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import shards  # noqa: E402
from pipelines.decode import DecodeConfig, decode_argv  # noqa: E402
from pipelines.ffmpeg import encode_video, probe, run_command  # noqa: E402
from pipelines.ingest import IngestConfig, ingest  # noqa: E402

FPS_SRC = 30
W, H = 640, 360
SAMPLE_FPS = 1.0
SIZE = 224


def make_videos(folder: Path, n: int, seconds: int) -> list[Path]:
    """n H.264 files (default keyint 250 = a key frame every ~8 s, like typical web video)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(n):
        p = folder / f"v{i:03d}.mp4"
        if not p.exists():
            t = seconds * FPS_SRC
            frames = np.empty((t, H, W, 3), np.uint8)
            for k in range(t):
                phase = (k + 7 * i) / FPS_SRC
                frames[k, ..., 0] = (127 + 120 * np.sin(xx / 37 + phase)).astype(np.uint8)
                frames[k, ..., 1] = (127 + 120 * np.sin(yy / 23 - 1.3 * phase)).astype(np.uint8)
                frames[k, ..., 2] = ((xx + yy + 5 * k) % 255).astype(np.uint8)
            encode_video(frames, p, fps=FPS_SRC, crf=23, timeout=600)
        paths.append(p)
    return paths


def source_frames(paths: list[Path]) -> float:
    return sum(probe(p).duration * probe(p).fps for p in paths)


def bench_ours(paths: list[Path], root: Path, workers: int) -> float:
    cfg = IngestConfig(
        DecodeConfig(fps=SAMPLE_FPS, short_side=SIZE, crop=SIZE), samples_per_shard=max(1, len(paths) // workers)
    )
    start = time.monotonic()
    res = ingest(paths[0].parent, str(root), "bench", cfg, mode="overwrite", workers=workers)
    elapsed = time.monotonic() - start
    assert res.status_counts.get("ok") == len(paths), res.status_counts
    return elapsed


def bench_ffmpeg(paths: list[Path], workers: int) -> float:
    cfg = DecodeConfig(fps=SAMPLE_FPS, short_side=SIZE, crop=SIZE)

    def one(p: Path) -> None:
        argv = decode_argv(p, probe(p), cfg)
        out = argv.index("pipe:")
        fmt = max(i for i in range(out) if argv[i] == "-f")
        argv = [*argv[:fmt], "-f", "null", "-", *argv[out + 1 :]]  # same input and filters, output discarded
        assert run_command(argv, timeout=600).ok

    infos = [probe(p) for p in paths]  # probing is part of ours; give ffmpeg the same head start
    del infos
    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))
    return time.monotonic() - start


def seek_decode(path: Path) -> list[np.ndarray]:
    """CLIP4Clip's loader: int(fps), first frame of each second by seeking, resize short side, centre crop."""
    cap = cv2.VideoCapture(str(path))
    fps = int(cap.get(cv2.CAP_PROP_FPS))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    out = []
    for idx in range(0, n, max(1, fps)):
        cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        s = SIZE / min(h, w)
        frame = cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
        y, x = (frame.shape[0] - SIZE) // 2, (frame.shape[1] - SIZE) // 2
        out.append(frame[y : y + SIZE, x : x + SIZE, ::-1])
    cap.release()
    return out


def bench_seek(paths: list[Path], workers: int) -> tuple[float, int]:
    cv2.setNumThreads(1)
    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        frames = list(pool.map(seek_decode, paths))
    return time.monotonic() - start, sum(len(f) for f in frames)


def bench_epoch(stage: str) -> tuple[float, int]:
    start = time.monotonic()
    n = 0
    for _, sample in shards.iter_stage(stage):
        n += int(sample["npy"].shape[0])
    return time.monotonic() - start, n


_RSS_CHILD = """
import json, resource, sys
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root_dir"])
from pipelines.decode import DecodeConfig
from pipelines.ingest import IngestConfig, ingest
cfg = IngestConfig(DecodeConfig(fps=args["fps"], short_side=args["size"], crop=args["size"]), 2)
ingest(args["folder"], args["runs"], "mem", cfg, workers=1)
print(json.dumps({"python_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "ffmpeg_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def peak_rss_of_ingest(folder: Path, root: Path) -> dict[str, float]:
    """Peak RSS (MB) of a child process running an ingest (the Python process, and its largest ffmpeg child)."""
    args = {"root_dir": str(ROOT), "folder": str(folder), "runs": str(root), "fps": SAMPLE_FPS, "size": SIZE}
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, json.dumps(args)], capture_output=True, text=True, check=True, timeout=1800
    )
    kb = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k.replace("_kb", "_mb"): v / 1024 for k, v in kb.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vlrepro-bench-"))
    paths = make_videos(work / "videos", args.videos, args.seconds)
    n_src = source_frames(paths)
    t_ffmpeg = bench_ffmpeg(paths, args.workers)
    t_ours = bench_ours(paths, work / "runs", args.workers)
    t_seek, n_sampled = bench_seek(paths, args.workers)
    stage = next(p for p in (work / "runs" / "bench" / "frames").iterdir() if p.is_dir())
    t_epoch, n_read = bench_epoch(str(stage))
    # memory: N vs 2N videos (copies of the same files)
    small, large = work / "mem_small", work / "mem_large"
    for d, k in ((small, args.videos // 2), (large, args.videos)):
        d.mkdir(exist_ok=True)
        for p in paths[:k]:
            (d / p.name).write_bytes(p.read_bytes())
    rss_small = peak_rss_of_ingest(small, work / "mem1")
    rss_large = peak_rss_of_ingest(large, work / "mem2")
    result = {
        "videos": args.videos,
        "seconds_each": args.seconds,
        "source": f"{W}x{H} @ {FPS_SRC} fps H.264",
        "sampling": f"{SAMPLE_FPS} fps → {SIZE}² centre crop",
        "workers": args.workers,
        "source_frames": n_src,
        "fps_ours": n_src / t_ours,
        "fps_ffmpeg": n_src / t_ffmpeg,
        "fps_seek": n_src / t_seek,
        "ours_vs_ffmpeg": t_ffmpeg / t_ours,
        "ours_vs_seek": t_seek / t_ours,
        "epoch_frames": n_read,
        "sampled_frames_seek": n_sampled,
        "epoch_read_s": t_epoch,
        "epoch_seek_s": t_seek,
        "shards_vs_seek": t_seek / t_epoch,
        "peak_rss_mb": {f"{args.videos // 2} videos": rss_small, f"{args.videos} videos": rss_large},
        "load_avg": os.getloadavg(),
    }
    (args.out / "ingest_throughput.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
