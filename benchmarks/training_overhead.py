"""Training-spine overheads, each measured as a ratio in one run on the same work:

1. **input overhead** — CLIP4Clip training steps/s reading batches from the feature shards ÷ steps/s on the very same
   batches held in memory (target ≥ 0.9): warm (the default; decoded shards stay in the process after the first pass)
   and cold (every pass decodes the tars again, as for a stage larger than the cache budget);
2. **Ray Train overhead** — the same training run through `infra.ray_train.fit` with one worker vs the plain
   in-process loop (`models.engine.loop.fit_local`), wall time including Ray start-up, and steps/s inside the worker;
3. **feature extraction** — frames/s of the `clip-features` stage (read frame shards, batch across videos, encode,
   write feature shards) ÷ frames/s of the bare model forward on the same frames already in memory (target ≥ 0.8).

Usage::

    .venv/bin/python benchmarks/training_overhead.py [--size small] [--steps 60] [--out benchmarks/out]

Everything runs on the mini world with a randomly initialised `vlrepro-mini` CLIP (throughput does not depend on
the weights). Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.common.clip import ClipConfig, build_clip, preprocess_frames  # noqa: E402
from models.config import to_dict  # noqa: E402
from models.engine.loop import Trainer, fit_local, seed_everything  # noqa: E402
from pipelines import loaders, shards  # noqa: E402
from pipelines.decode import DecodeConfig  # noqa: E402
from pipelines.features.clip_frames import ClipFeatureConfig, extract  # noqa: E402
from pipelines.ingest import IngestConfig, ingest  # noqa: E402
from pipelines.miniworld import make_world  # noqa: E402
from recipes.clip4clip import Clip4ClipRecipe, Clip4ClipRecipeConfig  # noqa: E402


def build_stages(work: Path, size: str) -> tuple[str, str]:
    world = make_world("mini-retrieval", work / "data", seed=0, size=size)
    frames = ingest(
        world["sources_csv"], str(work / "runs"), "bench", IngestConfig(DecodeConfig(fps=4, short_side=64, crop=64), 64)
    )
    return frames.stage_uri, str(work / "runs")


def bench_features(frames_uri: str, root: str, rounds: int = 2) -> dict[str, Any]:
    cfg = ClipFeatureConfig(clip=ClipConfig(arch="vlrepro-mini", pretrained=None), batch_frames=512)
    model = build_clip(cfg.clip).eval()
    _, videos, _ = shards.load_stage(frames_uri)
    flat = np.concatenate(videos)  # (ΣT, 64, 64, 3): the same frames the stage will read
    # alternate bare / stage `rounds` times and keep each side's best time: robust to load changes on a shared box
    bare_times, stage_times = [], []
    out: dict[str, Any] = {}
    for _ in range(rounds):
        start = time.monotonic()
        with torch.no_grad():
            for i in range(0, len(flat), cfg.batch_frames):
                model.encode_image(preprocess_frames(flat[i : i + cfg.batch_frames], model.image_size))
        bare_times.append(time.monotonic() - start)
        start = time.monotonic()
        out = extract(frames_uri, root, "bench", cfg, mode="overwrite", model=model)
        stage_times.append(time.monotonic() - start)
    bare, stage = min(bare_times), min(stage_times)
    return {
        "frames": float(len(flat)),
        "bare_fps": len(flat) / bare,
        "stage_fps": len(flat) / stage,
        "ratio": bare / stage,
        "rounds": rounds,
        "features_stage": out["stage_uri"],
    }


class InMemory:
    """The same recipe with every batch precomputed: the 'data is free' reference."""

    def __init__(self, recipe: Clip4ClipRecipe, epochs: int) -> None:
        self.recipe = recipe
        self.train = recipe.train
        self.cache = {e: list(recipe.batches(e, 0, 1)) for e in range(epochs)}

    def build_model(self) -> Any:
        return self.recipe.build_model()

    def steps_per_epoch(self, world_size: int) -> int:
        return self.recipe.steps_per_epoch(world_size)

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Any]:
        return iter(self.cache[epoch][start:])

    def evaluate(self, model: Any) -> dict[str, float]:
        return {}


class ColdShards(InMemory):
    """The recipe reading its shards with the decoded-shard cache emptied before every epoch: every pass decodes
    from storage (what a stage larger than ``VLREPRO_SHARD_CACHE_MB`` costs every pass)."""

    def __init__(self, recipe: Clip4ClipRecipe) -> None:
        self.recipe = recipe
        self.train = recipe.train

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Any]:
        loaders.clear_shard_cache()
        return self.recipe.batches(epoch, rank, world_size, start)


def interleaved_steps_per_s(recipes: list[Any], epochs: int) -> list[float]:
    """Steps/s of `recipes` (same model, same batches), their epochs alternating a, b, c, a, b, c …; each side's
    fastest epoch counts, so a load change on a shared machine cannot favour the side that happened to run first."""
    trainers = []
    for recipe in recipes:
        seed_everything(recipe.train.seed)
        trainers.append(Trainer(recipe, recipe.build_model()))
    best = [float("inf")] * len(recipes)
    for _ in range(epochs):
        for i, trainer in enumerate(trainers):
            steps = trainer.progress.step
            start = time.monotonic()
            trainer.train_epoch()
            best[i] = min(best[i], (time.monotonic() - start) / max(trainer.progress.step - steps, 1))
    return [1.0 / b for b in best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="vlrepro-bench-train-"))
    frames_uri, root = build_stages(work, args.size)
    feats = bench_features(frames_uri, root)

    cfg = Clip4ClipRecipeConfig()
    cfg = replace(
        cfg,
        data=replace(cfg.data, stage=feats["features_stage"], repeats_per_epoch=1),
        model=replace(
            cfg.model,
            input="features",
            head="seqTransf",
            cross_layers=2,
            clip=ClipConfig(arch="vlrepro-mini", pretrained=None),
        ),
        train=replace(cfg.train, epochs=args.epochs, batch_size=64, eval_every_epochs=0),
    )
    recipe = Clip4ClipRecipe(cfg)
    memory = InMemory(recipe, args.epochs)  # reads every epoch's batches once: the shard cache is warm afterwards
    warm_sps, cold_sps, memory_sps = interleaved_steps_per_s([recipe, ColdShards(recipe), memory], args.epochs)
    result: dict[str, Any] = {
        "features": feats,
        "input": {
            "steps_per_s_shards": warm_sps,  # the default: decoded shards kept in the process after the first pass
            "steps_per_s_shards_cold": cold_sps,  # every pass decodes the tars again
            "steps_per_s_memory": memory_sps,
            "ratio": warm_sps / memory_sps,
            "ratio_cold": cold_sps / memory_sps,
        },
    }
    if not args.skip_ray:
        from infra.ray_train import RunSpec, ScalingSpec, connect, fit

        config = to_dict(cfg)
        start = time.monotonic()
        fit_local(Clip4ClipRecipe(cfg))
        plain = time.monotonic() - start
        connect()
        start = time.monotonic()
        res = fit(
            "recipes.clip4clip:build",
            config,
            ScalingSpec(num_workers=1),
            RunSpec(name="bench-ray", storage_path=str(work / "ray")),
        )
        ray_wall = time.monotonic() - start
        in_worker = sum(h["train/seconds"] for h in res.history)
        result["ray"] = {
            "plain_loop_s": plain,
            "ray_fit_s": ray_wall,
            "ratio_wall": plain / ray_wall,
            "train_seconds_in_worker": in_worker,
            "ratio_training_only": plain / max(in_worker, 1e-9),
        }
    result["load_avg"] = os.getloadavg()
    (args.out / "training_overhead.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
