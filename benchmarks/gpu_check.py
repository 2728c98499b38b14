"""GPU check: the project's GPU paths measured against the bare model, in float32 and bfloat16. Runs unchanged on any
machine with a GPU (``--device auto`` picks it); ``--quick`` is a tiny variant that runs anywhere in seconds (the test
runs it on CPU).

1. **Feature extraction ÷ bare forward** (ViT-B/16, ``ViT-B-16-quickgelu``, random weights: speed does not depend on
   them): frames/s of the extraction stage's own path (`pipelines.features.clip_frames.encode_frames`: uint8 frames
   of 224 px, as the shards store them, copied to the device, normalised there, encoded in batches of
   ``batch_frames``, features copied back) ÷ frames/s of ``encode_image`` alone on normalised frames already on the
   device. 1.0 means extraction is as fast as the model; the difference is input handling.
2. **CLIP4Clip meanP training steps/s at batch 128** (the paper's setting: ViT-B/32, 12 frames at 224 px, 32 words,
   CLIP fine-tuned), through the engine's `Trainer` (forward + symmetric InfoNCE, backward, grad clip, AdamW with
   CLIP x 1e-3) with ``train.precision`` fp32 and bf16; batches already on the device (model cost, not data loading).

Each number is the median of ``--repeats`` timed runs after a warm-up, synchronised. "fp32" is torch's default:
TF32 off for matmuls (reported) — the exact float32 path. Usage::

    .venv/bin/python benchmarks/gpu_check.py [--device auto|cpu|cuda] [--quick] [--precisions fp32,bf16]
        [--repeats 3] [--out benchmarks/out/gpu_check.json]

Prints a markdown table, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.common.clip import ClipConfig, build_clip, preprocess_frames  # noqa: E402
from models.engine.device import autocast, resolve_device  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    extract_arch: str
    frames: int  # frames per extraction run (videos x frames per video)
    frames_per_video: int
    batch_frames: int
    frame_px: int
    train_arch: str
    batch: int
    train_frames: int
    words: int
    train_steps: int  # timed steps per run (after one warm-up step)


FULL = Sizes("ViT-B-16-quickgelu", 3072, 12, 512, 224, "ViT-B-32-quickgelu", 128, 12, 32, 5)
QUICK = Sizes("vlrepro-tiny", 96, 4, 32, 32, "vlrepro-tiny", 8, 4, 16, 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` runs after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----- 1. feature extraction vs bare forward ------------------------------------------------------------------------
def extraction(sizes: Sizes, device: torch.device, precision: str, repeats: int) -> dict[str, Any]:
    from pipelines.features.clip_frames import encode_frames

    torch.manual_seed(0)
    model = build_clip(ClipConfig(arch=sizes.extract_arch, pretrained=None)).eval().to(device)
    rng = np.random.default_rng(0)
    videos = [
        rng.integers(0, 256, (sizes.frames_per_video, sizes.frame_px, sizes.frame_px, 3), dtype=np.uint8)
        for _ in range(sizes.frames // sizes.frames_per_video)
    ]
    n = sum(len(v) for v in videos)
    ready = [
        preprocess_frames(np.concatenate(videos)[i : i + sizes.batch_frames], model.image_size).to(device)
        for i in range(0, n, sizes.batch_frames)
    ]

    def extract() -> None:
        with autocast(device, precision):
            encode_frames(model, videos, sizes.batch_frames)

    @torch.no_grad()
    def bare() -> None:
        with autocast(device, precision):
            for x in ready:
                model.encode_image(x)

    extract_s, bare_s = _timed(extract, device, repeats), _timed(bare, device, repeats)
    return {
        "arch": sizes.extract_arch,
        "precision": precision,
        "frames": n,
        "batch_frames": sizes.batch_frames,
        "extract_fps": round(n / extract_s, 1),
        "bare_forward_fps": round(n / bare_s, 1),
        "extract_over_bare": round(bare_s / extract_s, 3),
    }


# ----- 2. CLIP4Clip meanP training ----------------------------------------------------------------------------------
class _FixedBatches:
    """The engine's `Recipe` over one batch already on the device (model cost only)."""

    def __init__(self, train: Any, batch: Mapping[str, Any], steps: int) -> None:
        self.train, self._batch, self._steps = train, batch, steps

    def build_model(self) -> Any:  # pragma: no cover - built by the caller
        raise NotImplementedError

    def steps_per_epoch(self, world_size: int) -> int:
        return self._steps

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Mapping[str, Any]]:
        for _ in range(start, self._steps):
            yield self._batch

    def evaluate(self, model: Any) -> dict[str, float]:
        return {}


def training(sizes: Sizes, device: torch.device, precision: str, repeats: int) -> dict[str, Any]:
    from models.clip4clip import Clip4ClipConfig
    from models.clip4clip import build as build_clip4clip
    from models.common.clip import arch_image_size, tokenize
    from models.engine.loop import TrainConfig, Trainer

    torch.manual_seed(0)
    cfg = Clip4ClipConfig(
        clip=ClipConfig(arch=sizes.train_arch, pretrained=None),
        head="meanP",
        max_frames=sizes.train_frames,
        max_words=sizes.words,
        **({"temporal_init": "random"} if sizes is QUICK else {}),
    )
    model = build_clip4clip(cfg)
    px = arch_image_size(sizes.train_arch)
    g = torch.Generator().manual_seed(0)
    captions = [f"a red circle moves left, then up, number {i}" for i in range(sizes.batch)]
    batch = {
        "video": torch.randn(sizes.batch, sizes.train_frames, 3, px, px, generator=g).to(device),
        "video_mask": torch.ones(sizes.batch, sizes.train_frames, dtype=torch.bool, device=device),
        "text": tokenize(sizes.train_arch, captions, sizes.words).to(device),
    }
    # CLIP4Clip's schedule (its recipe's TrainConfig defaults), run at this precision on this device
    train = replace(TrainConfig(), batch_size=sizes.batch, epochs=repeats, precision=precision)
    trainer = Trainer(_FixedBatches(train, batch, 1 + sizes.train_steps), model, device=device)
    per_step: list[float] = []
    for _ in range(repeats):  # one epoch per repeat: its first step is the warm-up
        stamps: list[float] = []

        def stamp(metrics: Mapping[str, float], step: int, stamps: list[float] = stamps) -> None:
            _sync(device)
            stamps.append(time.perf_counter())

        trainer.train_epoch(stamp)
        per_step.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    step_s = statistics.median(per_step)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "arch": sizes.train_arch,
        "precision": precision,
        "batch": sizes.batch,
        "frames": sizes.train_frames,
        "words": sizes.words,
        "steps_per_s": round(1.0 / step_s, 3),
        "step_s": round(step_s, 4),
        "videos_per_s": round(sizes.batch / step_s, 1),
        "peak_gib": None if peak is None else round(peak, 2),
    }


# ----- report -------------------------------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info.update(
            name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def table(result: Mapping[str, Any]) -> str:
    lines = [
        f"device: {result['device']['name']} ({result['device']['device']}), quick={result['quick']}",
        "",
        "| extraction | precision | frames | extract fps | bare forward fps | extract ÷ bare |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["extraction"]:
        if "error" in r:
            lines.append(f"| {result['sizes']['extract_arch']} | {r['precision']} | {r['error']} |")
            continue
        lines.append(
            f"| {r['arch']} | {r['precision']} | {r['frames']} | {r['extract_fps']} | {r['bare_forward_fps']} "
            f"| {r['extract_over_bare']} |"
        )
    lines += [
        "",
        "| CLIP4Clip meanP training | precision | batch | steps/s | videos/s | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["training"]:
        if "error" in r:
            lines.append(f"| {result['sizes']['train_arch']} | {r['precision']} | {r['error']} |")
            continue
        lines.append(
            f"| {r['arch']} {r['frames']}f | {r['precision']} | {r['batch']} | {r['steps_per_s']} | "
            f"{r['videos_per_s']} | {r['peak_gib'] if r['peak_gib'] is not None else '-'} |"
        )
    speedups = result["bf16_speedup"]
    if speedups:
        lines += ["", "bf16 ÷ fp32: " + ", ".join(f"{k} x{v}" for k, v in speedups.items())]
    return "\n".join(lines)


def _measure(
    fn: Callable[[Sizes, torch.device, str, int], dict[str, Any]],
    sizes: Sizes,
    device: torch.device,
    precision: str,
    repeats: int,
) -> dict[str, Any]:
    """One measurement; running out of GPU memory is a result (a row saying so), not the end of the check."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        return fn(sizes, device, precision, repeats)
    except torch.cuda.OutOfMemoryError as exc:
        return {"precision": precision, "error": f"out of memory: {str(exc).splitlines()[0]}"}


def _no_random_init_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No pretrained weights loaded")  # random weights are the point here


def run(device_name: str, quick: bool, precisions: list[str], repeats: int) -> dict[str, Any]:
    device = resolve_device(device_name)
    sizes = QUICK if quick else FULL
    for precision in precisions:
        autocast(device, precision)  # an unsupported precision fails before any work
    logging.getLogger().addFilter(_no_random_init_notice)
    try:
        result: dict[str, Any] = {
            "device": device_info(device),
            "quick": quick,
            "sizes": sizes.__dict__,
            "extraction": [_measure(extraction, sizes, device, p, repeats) for p in precisions],
            "training": [_measure(training, sizes, device, p, repeats) for p in precisions],
        }
    finally:
        logging.getLogger().removeFilter(_no_random_init_notice)
    speedups: dict[str, float] = {}
    for part, rate in (("extraction", "extract_fps"), ("training", "steps_per_s")):
        by_precision = {r["precision"]: r for r in result[part] if "error" not in r}
        if {"fp32", "bf16"} <= set(by_precision):
            speedups[part] = round(by_precision["bf16"][rate] / by_precision["fp32"][rate], 2)
    result["bf16_speedup"] = speedups
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny models and batches (seconds, any machine)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    result = run(args.device, args.quick, precisions, max(1, args.repeats))
    print(table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
