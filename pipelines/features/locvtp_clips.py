"""LocVTP's clip sampling and its two feature stages: the frozen per-frame prefix, and clip features for grounding.

**Clips.** LocVTP (Cao et al., ECCV 2022; METHODS §5) encodes a video as clips of 16 frames; the encoder sees
`LocVTPConfig.frames_per_clip` = F of them. Here a clip's F frames are *every s-th frame* of its window, s =
``clip_frames // frames_per_clip`` (the mini config: 4 of 16 frames at 8 fps, i.e. 2 fps, 0.5 s apart), and window
starts lie on the same s-frame grid. So only every s-th decoded frame is ever read, which is what lets the prefix stage
store a quarter of the frames. Samplers (source-frame indices, all on the s-grid):

- `clip_frame_indices` — pre-training: `pipelines.sampling.clip_windows` (T equal segments, one 16-frame window per
  segment at a random offset when training, centred otherwise; the official ``HowtoDataset`` TSN-style sampling),
  each window's start floored to the grid;
- `dense_clip_indices` — features and evaluation: consecutive windows ``[16c, 16c+16)`` covering the whole video
  (the official test-time "dense offsets every 16 frames"); the last, partial window repeats the last grid frame, so
  N = ⌈n/16⌉ clips cover the video's duration and clip c spans ``[c, c+1)·16/fps`` seconds;
- `moment_clips` — the clips of a moment ``[start, end)``: those whose centre lies inside it (the best-overlapping
  one when none does).

**Stages** (committed WebDataset shards with the frames stage's keys, `pipelines.shards`):

| stage | per video (``npy``) | input |
|---|---|---|
| ``locvtp-prefix<L−k>`` | float16 ``(⌈n/s⌉, 1+N, W)``: `LocVTP.frame_tokens` of frames 0, s, 2s, … | frames |
| ``locvtp-clips`` | float32 ``(⌈n/16⌉, D)``: unit `encode_clips` of the dense clips, + ``text.npy`` | prefix |

The prefix stage exists because, with ``trainable_blocks = k``, CLIP's stem and first L−k vision blocks are frozen
(`models.locvtp.encoder`): computing them once instead of at every step is the model's ``input="tokens"`` mode. Its
hash covers the frames stage, the CLIP weights' digest, k and s. The clip-feature stage's hash covers its input stage
(hence the frames stage and CLIP weights), the LocVTP model config and the digest of the LocVTP checkpoint, or
``"init"`` for the **baseline**: the same encoder without LocVTP pre-training, which at init *is* per-frame mini CLIP
mean-pooled over the clip's F frames (temporal attention and time embedding start at zero; tested in
``tests/models/test_locvtp.py``), so baseline and LocVTP features differ only by the pre-training. ``text.npy`` holds
the sentence feature q̄ (`LocVTP.encode_text(...).sentence`) of each caption in the sample's ``captions`` metadata
(the mini world: the video's queries), for the retrieval transfer; at init it is the mini CLIP's EOT feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from models.common.clip import preprocess_frames
from models.config import config_hash, to_dict
from models.locvtp import LocVTP, LocVTPConfig, build
from pipelines import derived, shards
from pipelines.derived import Members
from pipelines.features.clip_frames import file_digest
from pipelines.sampling import clip_windows

PREFIX_STAGE = "locvtp-prefix"
CLIP_STAGE = "locvtp-clips"
TEXT_MEMBER = "text.npy"


# ----- clip sampling -----------------------------------------------------------------------------------------------


def frame_stride(cfg: LocVTPConfig) -> int:
    """s = clip_frames / frames_per_clip: a clip's F frames are every s-th frame of its window."""
    if cfg.clip_frames % cfg.frames_per_clip:
        raise ValueError(
            f"clip_frames={cfg.clip_frames} is not a multiple of frames_per_clip={cfg.frames_per_clip}: "
            "the clip sampler takes every s-th frame of a window"
        )
    return cfg.clip_frames // cfg.frames_per_clip


def _on_grid(starts: np.ndarray, n_frames: int, stride: int, frames_per_clip: int) -> np.ndarray:
    """(C,) window starts → (C, F) indices ``start + s·f`` on the s-grid, clamped to the last grid frame."""
    last = ((n_frames - 1) // stride) * stride
    starts = (np.asarray(starts, dtype=np.int64) // stride) * stride
    idx = starts[:, None] + stride * np.arange(frames_per_clip, dtype=np.int64)[None, :]  # (C, F)
    return np.minimum(idx, last)


def clip_frame_indices(
    n_frames: int,
    n_clips: int,
    clip_frames: int,
    frames_per_clip: int,
    rng: np.random.Generator | None = None,
    first: int = 0,
) -> np.ndarray:
    """(n_clips, F) source-frame indices of T clips sampled in frames ``[first, first + n_frames)`` of a video:
    `clip_windows` segments (random offsets with `rng`), window starts floored to the s-grid of the *video*."""
    if n_frames <= 0:
        raise ValueError(f"cannot sample clips from {n_frames} frames")
    stride = clip_frames // frames_per_clip
    windows = clip_windows(n_frames, n_clips, clip_frames, rng) + first  # (T, clip_frames)
    return _on_grid(windows[:, 0], first + n_frames, stride, frames_per_clip)


def dense_clip_indices(n_frames: int, clip_frames: int, frames_per_clip: int) -> np.ndarray:
    """(⌈n/clip_frames⌉, F) source-frame indices of consecutive windows ``[c·16, c·16+16)`` covering the video."""
    if n_frames <= 0:
        raise ValueError(f"cannot sample clips from {n_frames} frames")
    n_clips = -(-n_frames // clip_frames)
    starts = clip_frames * np.arange(n_clips, dtype=np.int64)
    return _on_grid(starts, n_frames, clip_frames // frames_per_clip, frames_per_clip)


def moment_clips(start: float, end: float, n_clips: int, clip_seconds: float) -> np.ndarray:
    """Dense clips (of `clip_seconds` each, clip c = ``[c, c+1)·clip_seconds``) of the moment ``[start, end)``:
    bool (n_clips,), True where the clip's centre lies in the moment; the most-overlapping clip if no centre does."""
    lo = np.arange(n_clips, dtype=np.float64) * clip_seconds
    centre = lo + clip_seconds / 2
    inside = (centre >= start) & (centre < end)
    if not inside.any():
        overlap = np.minimum(lo + clip_seconds, end) - np.maximum(lo, start)
        inside = np.zeros(n_clips, dtype=bool)
        inside[int(np.argmax(overlap))] = True
    return inside


# ----- stage plumbing ----------------------------------------------------------------------------------------------


def _weights_key(cfg: LocVTPConfig) -> dict[str, Any]:
    """The model config with the CLIP weights path replaced by the file's digest (paths move, contents matter)."""
    data = to_dict(cfg)
    data["clip"]["pretrained"] = file_digest(cfg.clip.pretrained)
    return data


def _row(key: str, members: Members, seconds: float, digest: str) -> dict[str, Any]:
    meta = members["json"]
    return derived.sample_row(
        key,
        meta.get("split", ""),
        duration=float(meta.get("duration") or 0.0),
        fps=float(meta.get("fps") or meta.get("fps_out") or 0.0),
        shape=list(members["npy"].shape),
        seconds=round(seconds, 4),
        config_hash=digest,
    )


# ----- the prefix stage --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefixTokenConfig:
    """The frozen prefix of LocVTP's encoder for `model` (its CLIP weights, `trainable_blocks`, frame stride)."""

    model: LocVTPConfig = field(default_factory=LocVTPConfig)
    batch_frames: int = 512  # frames per forward pass, across videos

    @property
    def stage(self) -> str:
        return f"{PREFIX_STAGE}{self.prefix_blocks}"

    @property
    def prefix_blocks(self) -> int:
        """L − k: the CLIP vision blocks inside the frozen prefix."""
        layers = int(open_clip.get_model_config(self.model.clip.arch)["vision_cfg"]["layers"])
        k = layers if self.model.trainable_blocks is None else self.model.trainable_blocks
        return layers - k


def prefix_stage_hash(frames_hash: str, cfg: PrefixTokenConfig) -> str:
    m = cfg.model
    return config_hash(
        {
            "frames": frames_hash,
            "arch": m.clip.arch,
            "weights": file_digest(m.clip.pretrained),
            "prefix_blocks": cfg.prefix_blocks,
            "stride": frame_stride(m),
        }
    )


@torch.no_grad()
def encode_prefix(model: LocVTP, videos: Sequence[np.ndarray], stride: int, batch_frames: int) -> list[np.ndarray]:
    """Per video uint8 frames (n, H, W, 3) → float16 prefix tokens (⌈n/s⌉, 1+N, W) of frames 0, s, 2s, …"""
    picked = [v[::stride] for v in videos]
    lengths = [len(v) for v in picked]
    flat = np.concatenate(picked, axis=0)  # (Σ, H, W, 3)
    size = model.clip.image_size
    outs = [
        model.frame_tokens(preprocess_frames(flat[i : i + batch_frames], size)).half().numpy()
        for i in range(0, len(flat), batch_frames)
    ]
    return list(np.split(np.concatenate(outs), np.cumsum(lengths)[:-1]))


def extract_prefix(
    frames_uri: str, root: str, dataset: str, cfg: PrefixTokenConfig, mode: shards.Mode = "incremental"
) -> dict[str, Any]:
    """Commit the ``locvtp-prefix<L−k>`` stage of `frames_uri` (module table); skip shards already committed."""
    m = cfg.model
    stride = frame_stride(m)
    h = prefix_stage_hash(derived.input_stage_hash(frames_uri), cfg)

    def encode(model: LocVTP, samples: list[tuple[str, Members]]) -> list[Members]:
        feats = encode_prefix(model, [s["npy"] for _, s in samples], stride, cfg.batch_frames)
        return [
            {"npy": f, "json": {**s.get("json", {}), "frame_stride": stride, "n_source_frames": len(s["npy"])}}
            for (_, s), f in zip(samples, feats, strict=True)
        ]

    stage = derived.DerivedStage(
        name=cfg.stage,
        uri=shards.stage_uri(root, dataset, cfg.stage, h),
        config_hash=h,
        config={"frames_stage": frames_uri, "model": _weights_key(m), "stride": stride, "blocks": cfg.prefix_blocks},
        inputs={"frames": frames_uri},
        per_batch=derived.BatchEncoder(encode, _row),
        model=lambda: _eval_model(dataclasses.replace(m, input="tokens"), None),
        commit_extra={"frame_stride": stride},
    )
    return {**derived.run_derived_stage(stage, mode).summary(), "frame_stride": stride}


# ----- the clip-feature stage --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocVTPFeatureConfig:
    """Clip features of a LocVTP encoder: `model` (as pre-trained) and its checkpoint (None = at init: baseline)."""

    model: LocVTPConfig = field(default_factory=LocVTPConfig)
    checkpoint: str | None = None  # a LocVTP ``model.pt`` (whole-model state dict); None = LocVTP at init
    batch_clips: int = 256  # clips per encoder forward, across videos


def clip_stage_hash(input_hash: str, cfg: LocVTPFeatureConfig) -> str:
    weights = "init" if cfg.checkpoint is None else file_digest(cfg.checkpoint)
    return config_hash({"input": input_hash, "model": _weights_key(cfg.model), "locvtp": weights})


def _eval_model(cfg: LocVTPConfig, checkpoint: str | None) -> LocVTP:
    model = build(cfg)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model.eval()
    return model


def video_fps(meta: Mapping[str, Any]) -> float:
    """Frames per second of a sample's decoded frames (ingest metadata ``fps``)."""
    fps = meta.get("fps") or meta.get("fps_out")
    if not fps:
        raise ValueError(f"sample {meta.get('key', '?')} has no 'fps' in its metadata")
    return float(fps)


def stored_stride(meta: Mapping[str, Any]) -> int:
    """Source frames per stored frame of a sample: s in a prefix stage, 1 in a frames stage."""
    return int(meta.get("frame_stride", 1))


def gather_clips(array: np.ndarray, idx: np.ndarray, stride: int, input: str, image_size: int) -> torch.Tensor:
    """Stored frames at source indices `idx` (..., F) → the encoder's input: (..., F, 1+N, W) float prefix tokens
    (``input="tokens"``, `array` from a prefix stage) or (..., F, 3, S, S) CLIP-normalised frames (uint8 `array`)."""
    if np.any(idx % stride):
        raise ValueError(f"clip frames {idx.ravel()[:8].tolist()} are off the stage's {stride}-frame grid")
    x = array[idx // stride]
    if input == "tokens":
        return torch.from_numpy(np.ascontiguousarray(x)).float()
    return preprocess_frames(x, image_size)


@torch.no_grad()
def encode_dense_clips(
    model: LocVTP, arrays: Sequence[np.ndarray], metas: Sequence[Mapping[str, Any]], batch_clips: int = 256
) -> list[np.ndarray]:
    """Per video: unit clip features (⌈n/16⌉, D) float32 of its consecutive 16-frame clips (`dense_clip_indices`),
    batched across videos. `arrays` are a prefix stage's tokens (``input="tokens"``) or frames."""
    cfg = model.cfg
    inputs, lengths = [], []
    for arr, meta in zip(arrays, metas, strict=True):
        stride = stored_stride(meta)
        n_source = int(meta.get("n_source_frames") or len(arr) * stride)
        idx = dense_clip_indices(n_source, cfg.clip_frames, cfg.frames_per_clip)  # (C, F)
        inputs.append(gather_clips(arr, idx, stride, cfg.input, model.clip.image_size))
        lengths.append(len(idx))
    flat = torch.cat(inputs)  # (ΣC, F, ...)
    outs = []
    for i in range(0, len(flat), batch_clips):
        chunk = flat[i : i + batch_clips][None]  # (1, c, F, ...): one "video" of c clips
        outs.append(model.encode_clips(chunk, torch.ones(chunk.shape[:2], dtype=torch.bool))[0])
    feats = torch.cat(outs).float().numpy()  # (ΣC, D)
    return list(np.split(feats, np.cumsum(lengths)[:-1]))


@torch.no_grad()
def encode_sentences(model: LocVTP, sentences: Sequence[str], batch: int = 256) -> np.ndarray:
    """(Q, D) float32 unit sentence features q̄ (`LocVTP.encode_text`, per `LocVTPConfig.sentence`)."""
    if not sentences:
        return np.zeros((0, model.embed_dim), dtype=np.float32)
    parts = [
        model.encode_text(model.tokenize(list(sentences[i : i + batch]))).sentence
        for i in range(0, len(sentences), batch)
    ]
    return F.normalize(torch.cat(parts), dim=-1).float().numpy()


def extract_clips(
    input_uri: str,
    root: str,
    dataset: str,
    cfg: LocVTPFeatureConfig,
    mode: shards.Mode = "incremental",
    model: LocVTP | None = None,
) -> dict[str, Any]:
    """Commit the ``locvtp-clips`` stage of `input_uri` (a prefix stage for ``input="tokens"``, else frames)."""
    h = clip_stage_hash(derived.input_stage_hash(input_uri), cfg)

    def encode(model: LocVTP, samples: list[tuple[str, Members]]) -> list[Members]:
        metas = [s.get("json", {}) for _, s in samples]
        feats = encode_dense_clips(model, [s["npy"] for _, s in samples], metas, cfg.batch_clips)
        out = []
        for meta, f in zip(metas, feats, strict=True):
            text = encode_sentences(model, list(meta.get("captions") or []))
            clip_seconds = cfg.model.clip_frames / video_fps(meta)
            out.append({"npy": f, TEXT_MEMBER: text, "json": {**meta, "clip_seconds": clip_seconds}})
        return out

    stage = derived.DerivedStage(
        name=CLIP_STAGE,
        uri=shards.stage_uri(root, dataset, CLIP_STAGE, h),
        config_hash=h,
        config={
            "input_stage": input_uri,
            "model": _weights_key(cfg.model),
            "checkpoint": cfg.checkpoint,
            "locvtp_weights": "init" if cfg.checkpoint is None else file_digest(cfg.checkpoint),
        },
        inputs={"input": input_uri},
        per_batch=derived.BatchEncoder(encode, _row),
        model=lambda: _eval_model(cfg.model, cfg.checkpoint),
        commit_extra={"input_stage": input_uri},
    )
    return derived.run_derived_stage(stage, mode, model).summary()


def iter_features(uri: str) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]:
    """(key, clip features (C, D), sentence features (Q, D), metadata) of every sample of a ``locvtp-clips`` stage."""
    for key, members in shards.iter_stage(uri):
        yield key, members["npy"], members[TEXT_MEMBER], members.get("json", {})


__all__ = [
    "CLIP_STAGE",
    "PREFIX_STAGE",
    "LocVTPFeatureConfig",
    "PrefixTokenConfig",
    "clip_frame_indices",
    "clip_stage_hash",
    "dense_clip_indices",
    "encode_dense_clips",
    "encode_prefix",
    "encode_sentences",
    "extract_clips",
    "extract_prefix",
    "frame_stride",
    "gather_clips",
    "iter_features",
    "moment_clips",
    "prefix_stage_hash",
    "stored_stride",
    "video_fps",
]
