"""CLIP frame features: decoded-frame shards → feature shards with the same keys, reused by every frozen-CLIP method.

One stage (`clip-features`) per (frames stage, CLIP architecture, weights): its config hash is built from the frames
stage's hash and the weights file's digest, so new weights never mix with old features. Frames of many videos are
batched into one forward pass (`batch_frames`), which is what makes extraction keep up with a bare model forward.

Per sample: ``npy`` = float32 ``(T, D)`` frame CLS features after ``ln_post @ proj`` (not normalised: methods
normalise where their paper does), ``json`` = the frame sample's metadata.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.common.clip import ClipBackbone, ClipConfig, build_clip, preprocess_frames
from models.config import config_hash
from pipelines import shards

STAGE = "clip-features"


@dataclass(frozen=True)
class ClipFeatureConfig:
    clip: ClipConfig  # architecture + weights (a local checkpoint path for the mini CLIP, or "openai")
    batch_frames: int = 512  # frames per forward pass, across videos
    samples_per_shard: int = 0  # 0 = keep the frames stage's sharding (same shard index ↔ same keys)


def file_digest(path: str | Path | None) -> str:
    """sha256 prefix of a weights file ("none" for random weights, the tag itself for hub weights)."""
    if path is None:
        return "none"
    p = Path(path)
    if not p.exists():
        return str(path)
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def stage_hash(frames_hash: str, cfg: ClipFeatureConfig) -> str:
    return config_hash({"frames": frames_hash, "arch": cfg.clip.arch, "weights": file_digest(cfg.clip.pretrained)})


@torch.no_grad()
def encode_frames(model: ClipBackbone, videos: Sequence[np.ndarray], batch_frames: int) -> list[np.ndarray]:
    """CLIP features for each video's frames, batching frames across videos. videos[i]: (T_i, H, W, 3) uint8."""
    lengths = [len(v) for v in videos]
    if not videos or sum(lengths) == 0:
        return [np.zeros((n, model.embed_dim), np.float32) for n in lengths]
    flat = np.concatenate([v for v in videos if len(v)], axis=0)  # (ΣT, H, W, 3)
    outs = []
    for i in range(0, len(flat), batch_frames):
        x = preprocess_frames(flat[i : i + batch_frames], model.image_size)  # (b, 3, S, S)
        outs.append(model.encode_image(x).float().cpu().numpy())
    feats = np.concatenate(outs, axis=0)  # (ΣT, D)
    return list(np.split(feats, np.cumsum(lengths)[:-1]))


def _process(
    model: ClipBackbone, frames_uri: str, shard: int, batch_frames: int, digest: str
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    samples = dict(shards.iter_shard(frames_uri, shard))
    # items arrive in key order = the frames shard's order; batch them all in one go (a shard is small)
    keys = sorted(samples)
    start = time.monotonic()
    feats = encode_frames(model, [samples[k]["npy"] for k in keys], batch_frames)
    per = (time.monotonic() - start) / max(1, len(keys))
    for k, f in zip(keys, feats):
        meta = dict(samples[k].get("json", {}))
        row = {
            "key": k,
            "status": "ok",
            "error": "",
            "n_frames": int(f.shape[0]),
            "dim": int(f.shape[1]),
            "seconds": round(per, 4),
            "config_hash": digest,
        }
        yield row, {"npy": f.astype(np.float32), "json": meta}


def extract(
    frames_uri: str,
    root: str,
    dataset: str,
    cfg: ClipFeatureConfig,
    mode: shards.Mode = "incremental",
    model: ClipBackbone | None = None,
) -> dict[str, Any]:
    """Extract features for every committed shard of `frames_uri`; commit the `clip-features` stage; summarise."""
    frames_stats = shards.require_stage(frames_uri)
    frames_hash = str(frames_stats.get("config_hash") or Path(frames_uri).name)
    h = stage_hash(frames_hash, cfg)
    uri = shards.stage_uri(root, dataset, STAGE, h)
    keys_by_shard = {
        i: [r["key"] for r in shards.read_rows(frames_uri, i) if r["status"] in shards.OK_STATUSES]
        for i in shards.committed_shards(frames_uri)
    }
    all_keys = sorted(k for ks in keys_by_shard.values() for k in ks)
    shards.prepare_stage(
        uri, {"frames_stage": frames_uri, **asdict(cfg)}, h, shards.digest_keys(all_keys), len(all_keys), mode
    )
    start = time.monotonic()
    lazy: list[ClipBackbone] = [model] if model is not None else []  # built only if some shard needs work

    def net() -> ClipBackbone:
        if not lazy:
            lazy.append(_build(cfg))
        return lazy[0]

    summaries = []
    for i, keys in keys_by_shard.items():
        job = shards.ShardJob(uri, i, h, tuple({"key": k} for k in sorted(keys)), mode)

        def process_items(
            items: Sequence[Mapping[str, Any]], shard: int = i
        ) -> Iterable[tuple[dict[str, Any], dict[str, Any] | None]]:
            wanted = {it["key"] for it in items}
            return (rm for rm in _process(net(), frames_uri, shard, cfg.batch_frames, h) if rm[0]["key"] in wanted)

        summaries.append(shards.run_shard(job, process_items=process_items).as_dict())
    stats = shards.commit_stage(uri, summaries, extra={"config_hash": h, "stage": STAGE, "frames_stage": frames_uri})
    return {
        "stage_uri": uri,
        "config_hash": h,
        "n_samples": stats["n_samples"],
        "seconds": round(time.monotonic() - start, 3),
        "shards_written": sum(1 for s in summaries if s["action"] != "skipped"),
    }


def _build(cfg: ClipFeatureConfig) -> ClipBackbone:
    model = build_clip(cfg.clip)
    model.eval()
    return model
