"""CLIP frame features: decoded-frame shards → feature shards with the same keys, reused by every frozen-CLIP method.

One stage per (frames stage, CLIP architecture, weights, output kind): its config hash is built from the frames
stage's hash and the weights file's digest, so new weights never mix with old features. Frames of many videos are
batched into one forward pass (`batch_frames`), which is what makes extraction keep up with a bare model forward.

Output kinds (``npy`` member per sample; ``json`` = the frame sample's metadata):

| output | stage | array | used by |
|---|---|---|---|
| ``cls`` | ``clip-features`` | float32 ``(T, D)``: CLS after ``ln_post @ proj`` | CLIP4Clip (frozen), DCC VLP |
| ``tokens`` | ``clip-tokens`` | float16 ``(T, 1+N, D)``: CLS + projected patch tokens | UCoFiA (frozen) |
| ``blocks`` | ``clip-blocks<K>`` | float16 ``(T, K, 1+N, W)``: outputs of the last K vision blocks | STAN |

Features are not normalised: methods normalise where their paper does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.common.clip import ClipBackbone, ClipConfig, build_clip, preprocess_frames
from models.config import config_hash
from pipelines import shards

STAGE = "clip-features"


Output = Literal["cls", "tokens", "blocks"]


@dataclass(frozen=True)
class ClipFeatureConfig:
    clip: ClipConfig  # architecture + weights (a local checkpoint path for the mini CLIP, or "openai")
    output: Output = "cls"  # what to store per frame (module table)
    last_blocks: int = 4  # K for output="blocks" (STAN: the last K = 4 blocks feed its branch)
    batch_frames: int = 512  # frames per forward pass, across videos

    @property
    def stage(self) -> str:
        return {"cls": STAGE, "tokens": "clip-tokens", "blocks": f"clip-blocks{self.last_blocks}"}[self.output]


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
    key: dict[str, Any] = {"frames": frames_hash, "arch": cfg.clip.arch, "weights": file_digest(cfg.clip.pretrained)}
    if cfg.output != "cls":  # keeps the hash of the original (cls-only) stage unchanged
        key.update(output=cfg.output, last_blocks=cfg.last_blocks if cfg.output == "blocks" else 0)
    return config_hash(key)


def _encode_cls(model: ClipBackbone, x: torch.Tensor, cfg: ClipFeatureConfig) -> np.ndarray:
    return model.encode_image(x).float().cpu().numpy()  # (b, D)


def _encode_tokens(model: ClipBackbone, x: torch.Tensor, cfg: ClipFeatureConfig) -> np.ndarray:
    cls, patches = model.encode_image_tokens(x)  # (b, D), (b, N, D)
    return torch.cat([cls[:, None], patches], dim=1).half().cpu().numpy()  # (b, 1+N, D)


def _encode_blocks(model: ClipBackbone, x: torch.Tensor, cfg: ClipFeatureConfig) -> np.ndarray:
    k = cfg.last_blocks
    if not 1 <= k <= model.vision_layers:
        raise ValueError(f"last_blocks={k} must lie in [1, {model.vision_layers}] for {model.arch}")
    _, outs = model.forward_blocks(model.tokens_from_patches(model.embed_patches(x)), return_layers=range(-k, 0))
    return torch.stack(outs, dim=1).half().cpu().numpy()  # (b, K, 1+N, W)


_ENCODERS = {"cls": _encode_cls, "tokens": _encode_tokens, "blocks": _encode_blocks}


@torch.no_grad()
def encode_frames(
    model: ClipBackbone, videos: Sequence[np.ndarray], batch_frames: int, cfg: ClipFeatureConfig | None = None
) -> list[np.ndarray]:
    """Per-video arrays (module table) for each video's frames, batching frames across videos.

    videos[i]: (T_i, H, W, 3) uint8 → (T_i, ...) per the output kind (default: CLS features (T_i, D)).
    """
    cfg = cfg or ClipFeatureConfig(clip=ClipConfig(arch=model.arch, pretrained=None))
    encode = _ENCODERS[cfg.output]
    lengths = [len(v) for v in videos]
    flat_list = [v for v in videos if len(v)]
    if not flat_list:
        probe = encode(model, torch.zeros(1, 3, model.image_size, model.image_size), cfg)
        return [np.zeros((n, *probe.shape[1:]), probe.dtype) for n in lengths]
    flat = np.concatenate(flat_list, axis=0)  # (ΣT, H, W, 3)
    outs = []
    for i in range(0, len(flat), batch_frames):
        x = preprocess_frames(flat[i : i + batch_frames], model.image_size)  # (b, 3, S, S)
        outs.append(encode(model, x, cfg))
    feats = np.concatenate(outs, axis=0)  # (ΣT, ...)
    return list(np.split(feats, np.cumsum(lengths)[:-1]))


def _process(
    model: ClipBackbone, frames_uri: str, shard: int, cfg: ClipFeatureConfig, digest: str
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    samples = dict(shards.iter_shard(frames_uri, shard))
    # items arrive in key order = the frames shard's order; batch them all in one go (a shard is small)
    keys = sorted(samples)
    start = time.monotonic()
    feats = encode_frames(model, [samples[k]["npy"] for k in keys], cfg.batch_frames, cfg)
    per = (time.monotonic() - start) / max(1, len(keys))
    for k, f in zip(keys, feats):
        meta = dict(samples[k].get("json", {}))
        row = {
            "key": k,
            "status": "ok",
            "error": "",
            "split": meta.get("split", ""),  # loaders select training/evaluation videos from these rows
            "label": meta.get("label", ""),
            "n_frames": int(f.shape[0]),
            "shape": list(f.shape),
            "seconds": round(per, 4),
            "config_hash": digest,
        }
        yield row, {"npy": f, "json": meta}


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
    uri = shards.stage_uri(root, dataset, cfg.stage, h)
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
            return (rm for rm in _process(net(), frames_uri, shard, cfg, h) if rm[0]["key"] in wanted)

        summaries.append(shards.run_shard(job, process_items=process_items).as_dict())
    stats = shards.commit_stage(
        uri, summaries, extra={"config_hash": h, "stage": cfg.stage, "frames_stage": frames_uri}
    )
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
