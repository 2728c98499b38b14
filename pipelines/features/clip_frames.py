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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.common.clip import ClipBackbone, ClipConfig, build_clip, preprocess_frames
from models.config import config_hash
from pipelines import derived, shards
from pipelines.derived import Members

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
    device = model.conv1.weight.device  # frames go to the model (uint8: 4x less to copy), normalised there
    lengths = [len(v) for v in videos]
    flat_list = [v for v in videos if len(v)]
    if not flat_list:
        probe = encode(model, torch.zeros(1, 3, model.image_size, model.image_size, device=device), cfg)
        return [np.zeros((n, *probe.shape[1:]), probe.dtype) for n in lengths]
    flat = np.concatenate(flat_list, axis=0)  # (ΣT, H, W, 3)
    outs = []
    for i in range(0, len(flat), batch_frames):
        frames = torch.from_numpy(flat[i : i + batch_frames]).to(device)  # (b, H, W, 3) uint8
        x = preprocess_frames(frames, model.image_size)  # (b, 3, S, S)
        outs.append(encode(model, x, cfg))
    feats = np.concatenate(outs, axis=0)  # (ΣT, ...)
    return list(np.split(feats, np.cumsum(lengths)[:-1]))


def _row(key: str, members: Members, seconds: float, digest: str) -> dict[str, Any]:
    meta, f = members["json"], members["npy"]
    return derived.sample_row(
        key,
        meta.get("split", ""),
        label=meta.get("label", ""),
        n_frames=int(f.shape[0]),
        shape=list(f.shape),
        seconds=round(seconds, 4),
        config_hash=digest,
    )


def extract(
    frames_uri: str,
    root: str,
    dataset: str,
    cfg: ClipFeatureConfig,
    mode: shards.Mode = "incremental",
    model: ClipBackbone | None = None,
) -> dict[str, Any]:
    """Extract features for every committed shard of `frames_uri`; commit the `clip-features` stage; summarise."""
    h = stage_hash(derived.input_stage_hash(frames_uri), cfg)

    def encode(model: ClipBackbone, samples: list[tuple[str, Members]]) -> list[Members]:
        # one batch per shard (a shard is small), so frames of all its videos share the forward passes:
        # (T_i, H, W, 3) uint8 per video → its (T_i, ...) array (module table); metadata passed through
        feats = encode_frames(model, [m["npy"] for _, m in samples], cfg.batch_frames, cfg)
        return [{"npy": f, "json": dict(m.get("json", {}))} for (_, m), f in zip(samples, feats, strict=True)]

    stage = derived.DerivedStage(
        name=cfg.stage,
        uri=shards.stage_uri(root, dataset, cfg.stage, h),
        config_hash=h,
        config={"frames_stage": frames_uri, **asdict(cfg)},
        inputs={"frames": frames_uri},
        per_batch=derived.BatchEncoder(encode, _row),
        model=lambda: _build(cfg),
        commit_extra={"frames_stage": frames_uri},
    )
    return derived.run_derived_stage(stage, mode, model).summary()


def _build(cfg: ClipFeatureConfig) -> ClipBackbone:
    model = build_clip(cfg.clip)
    model.eval()
    return model
