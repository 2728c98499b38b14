"""Two-stream I3D snippet features (W-TAL): frames + TV-L1 flow stages → ``(T_snippets, 2·D)`` float32 per video.

The THUMOS14 / ActivityNet1.2 feature protocol of UM, CO2-Net, ASM-Loc and DCC (METHODS §4, paper-code-notes §5.3,
§7.3–7.4): frames at **25 fps**, non-overlapping **16-frame snippets** (`pipelines.sampling.snippet_starts`; a
trailing partial snippet is dropped, so ``T_snippets = ⌊T/16⌋`` and snippet i covers ``[i·16/25, (i+1)·16/25)`` s),
one I3D per stream:

- RGB: ``x/255·2 − 1 ∈ [−1, 1]`` (pytorch-i3d ``charades_dataset_full.py``), 3 channels;
- flow: the uint8 TV-L1 fields of `pipelines.features.tvl1`, dequantised to ``[−1, 1]`` (= f/20), 2 channels (x, y).
  A video of T frames has T−1 fields; when ``T`` is a multiple of 16 the last snippet lacks its 16th field and the
  last field is repeated;

each stream's Mixed_5c map averaged over time and space (`models.i3d.I3D.extract_features`, D = 1024 at width 1.0),
concatenated **RGB then flow** → 2048-d (UM/CO2-Net order: ``concatenate((rgb, flow), axis=1)``).

Frames are used at the size the ingest stage produced them (real data: ``DecodeConfig(fps=25, short_side=224,
crop=224)``, pytorch-i3d's centre 224 crop; the mini world: 64²). Weights: pytorch-i3d ``rgb_imagenet.pt`` /
``flow_imagenet.pt`` files, or random He init from ``init_seed`` when none is given (the mini world; no I3D weights
exist offline). The stage hash includes both input stages' hashes and each stream's weights digest (or its seed).

`import_features` turns released per-video feature files (``<video_id>.npy``, ``T×2048``, or separate RGB and flow
folders of ``T×1024`` as UM ships them) into the same kind of stage, so users with released features skip
extraction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import config_hash
from models.i3d import I3D, I3DCheckpointError, I3DConfig, build_i3d, infer_config
from pipelines import derived, shards, storage
from pipelines.derived import Members
from pipelines.features.clip_frames import file_digest
from pipelines.features.tvl1 import dequantize
from pipelines.sampling import snippet_starts

STAGE = "i3d-features"


@dataclass(frozen=True)
class I3DFeatureConfig:
    """Two-stream I3D feature extraction (defaults = the W-TAL protocol with pytorch-i3d weights)."""

    rgb_weights: str | None = None  # pytorch-i3d rgb_imagenet.pt; None = random init (mini world)
    flow_weights: str | None = None  # pytorch-i3d flow_imagenet.pt; None = random init (mini world)
    width: float = 1.0  # I3D channel multiplier (real checkpoints: 1.0 → 1024-d per stream)
    snippet: int = 16  # frames per non-overlapping snippet (UM / CO2-Net / ASM-Loc)
    fps: float = 25.0  # frames stage rate the snippet↔second mapping i·16/25 assumes; other rates are refused
    init_seed: int = 0  # seed of the random init of stream k (seed + k) when it has no weights
    batch_snippets: int = 8  # snippets per forward pass (speed only, not in the hash)

    def __post_init__(self) -> None:
        if self.snippet < 1:
            raise ValueError(f"snippet must be >= 1, got {self.snippet}")
        if self.batch_snippets < 1:
            raise ValueError(f"batch_snippets must be >= 1, got {self.batch_snippets}")

    @classmethod
    def tiny(cls) -> I3DFeatureConfig:
        """Width 1/16: 64-d per stream, 128-d features (tests)."""
        return cls(width=1 / 16)


@dataclass
class TwoStreamI3D:
    """The RGB (3-channel) and flow (2-channel) I3D streams, in eval mode."""

    rgb: I3D
    flow: I3D

    @property
    def feature_dim(self) -> int:
        return self.rgb.feature_dim + self.flow.feature_dim


def _stream_config(in_channels: int, weights: str | None, cfg: I3DFeatureConfig) -> I3DConfig:
    if weights is None:
        return I3DConfig(in_channels=in_channels, width=cfg.width)
    file_cfg = infer_config(weights)
    if file_cfg.in_channels != in_channels:
        stream = "RGB" if in_channels == 3 else "flow"
        raise I3DCheckpointError(
            f"{weights} has {file_cfg.in_channels} input channels; the {stream} stream needs {in_channels}"
        )
    return I3DConfig(in_channels=in_channels, width=cfg.width, num_classes=file_cfg.num_classes)


def build_two_stream(cfg: I3DFeatureConfig) -> TwoStreamI3D:
    """Both streams, loaded from their pytorch-i3d files or randomly initialised from ``init_seed`` (+0 / +1)."""
    rgb = build_i3d(_stream_config(3, cfg.rgb_weights, cfg), cfg.rgb_weights, seed=cfg.init_seed)
    flow = build_i3d(_stream_config(2, cfg.flow_weights, cfg), cfg.flow_weights, seed=cfg.init_seed + 1)
    return TwoStreamI3D(rgb, flow)


# ---------------------------------------------------------------------------------------------- model inputs


def snippet_view(array: np.ndarray, first: int, last: int, snippet: int = 16) -> np.ndarray:
    """Snippets ``first..last−1`` of a (T, ...) array as a (last − first, snippet, ...) view (no copy)."""
    return array[first * snippet : last * snippet].reshape(last - first, snippet, *array.shape[1:])


def rgb_input(snippets: np.ndarray) -> torch.Tensor:
    """(n, S, H, W, 3) uint8 → (n, 3, S, H, W) float32 in [−1, 1]: ``x/255·2 − 1``."""
    x = torch.from_numpy(np.ascontiguousarray(snippets)).float() * (2.0 / 255.0) - 1.0
    return x.permute(0, 4, 1, 2, 3).contiguous()  # (n, 3, S, H, W)


def flow_input(snippets: np.ndarray) -> torch.Tensor:
    """(n, S, H, W, 2) uint8 quantised flow → (n, 2, S, H, W) float32 in [−1, 1] (`tvl1.dequantize`)."""
    x = torch.from_numpy(dequantize(snippets))
    return x.permute(0, 4, 1, 2, 3).contiguous()  # (n, 2, S, H, W)


def pad_flow(flow: np.ndarray, n_frames: int) -> np.ndarray:
    """(T−1, H, W, 2) → (T, H, W, 2) by repeating the last field (zero flow for a one-frame video)."""
    if len(flow) >= n_frames:
        return flow[:n_frames]
    if len(flow) == 0:
        return np.full((n_frames, *flow.shape[1:]), 128, dtype=np.uint8)  # 128 ≈ zero displacement
    tail = np.repeat(flow[-1:], n_frames - len(flow), axis=0)
    return np.concatenate([flow, tail], axis=0)


@torch.no_grad()
def encode_video(
    model: TwoStreamI3D, frames: np.ndarray, flow: np.ndarray, snippet: int = 16, batch_snippets: int = 8
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames + (T−1, H, W, 2) uint8 flow → (⌊T/snippet⌋, D_rgb + D_flow) float32 [rgb | flow]."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {frames.shape}")
    if flow.shape[1:] != (*frames.shape[1:3], 2) or len(flow) not in (len(frames) - 1, len(frames)):
        raise ValueError(f"flow {flow.shape} does not match frames {frames.shape} (need (T-1, H, W, 2))")
    n = len(snippet_starts(len(frames), snippet))  # complete non-overlapping snippets
    out = np.zeros((n, model.feature_dim), dtype=np.float32)
    d_rgb = model.rgb.feature_dim
    for a in range(0, n, batch_snippets):
        b = min(a + batch_snippets, n)
        fields = flow[a * snippet : b * snippet]  # one field short at the very end when T = 16·n
        fields = pad_flow(fields, (b - a) * snippet) if len(fields) < (b - a) * snippet else fields
        out[a:b, :d_rgb] = model.rgb.extract_features(rgb_input(snippet_view(frames, a, b, snippet))).numpy()
        out[a:b, d_rgb:] = model.flow.extract_features(flow_input(snippet_view(fields, 0, b - a, snippet))).numpy()
    return out


# ------------------------------------------------------------------------------------------------------- stage


def _weights_key(weights: str | None, seed: int) -> str:
    return file_digest(weights) if weights is not None else f"random-he-seed{seed}"


def stage_hash(frames_hash: str, flow_hash: str, cfg: I3DFeatureConfig) -> str:
    return config_hash(
        {
            "frames": frames_hash,
            "flow": flow_hash,
            "rgb_weights": _weights_key(cfg.rgb_weights, cfg.init_seed),
            "flow_weights": _weights_key(cfg.flow_weights, cfg.init_seed + 1),
            "width": cfg.width,
            "snippet": cfg.snippet,
            "fps": cfg.fps,
        }
    )


def _check_flow_stage(frames_uri: str, flow_uri: str) -> None:
    flow_stats = shards.require_stage(flow_uri)
    source = flow_stats.get("frames_stage")
    if source is not None and storage.join(str(source)) != storage.join(frames_uri):
        raise ValueError(f"{flow_uri} was computed from {source}, not from {frames_uri}")


def _feature_item(cfg: I3DFeatureConfig) -> derived.PerItem[TwoStreamI3D]:
    def item(shard: derived.Shard[TwoStreamI3D], key: str, inputs: tuple[Members, ...]) -> derived.Item:
        frame_members, flow_members = inputs
        meta = dict(frame_members.get("json", {}))
        row = derived.sample_row(key, meta.get("split", ""), label=meta.get("label", ""))
        fps = meta.get("fps")
        if fps is not None and abs(float(fps) - cfg.fps) > 1e-6:
            return derived.failed(
                row,
                f"frames at {fps} fps; the snippet protocol needs {cfg.fps:g} fps (ingest with "
                f"DecodeConfig(fps={cfg.fps:g}))",
            )
        start = time.monotonic()
        try:
            feats = encode_video(
                shard.model(), frame_members["npy"], flow_members["npy"], cfg.snippet, cfg.batch_snippets
            )
        except ValueError as exc:
            return derived.failed(row, f"ValueError: {exc}")
        row.update(
            n_frames=len(frame_members["npy"]),
            n_snippets=len(feats),
            shape=list(feats.shape),
            seconds=round(time.monotonic() - start, 4),
            config_hash=shard.config_hash,
        )
        meta["i3d"] = _feature_meta(cfg, int(feats.shape[1]), imported=False)
        return row, {"npy": feats, "json": meta}

    return item


def _feature_meta(cfg: I3DFeatureConfig, dim: int, imported: bool) -> dict[str, Any]:
    return {
        "snippet": cfg.snippet,
        "fps": cfg.fps,
        "snippet_seconds": cfg.snippet / cfg.fps,  # snippet i starts at i·snippet/fps s
        "streams": ["rgb", "flow"],
        "feature_dim": dim,
        "imported": imported,
    }


def extract(
    frames_uri: str,
    flow_uri: str,
    root: str,
    dataset: str,
    cfg: I3DFeatureConfig | None = None,
    mode: shards.Mode = "incremental",
    model: TwoStreamI3D | None = None,
) -> dict[str, Any]:
    """I3D features for every committed shard of `frames_uri` (+ its flow stage); commit the stage; summarise."""
    cfg = cfg or I3DFeatureConfig()
    _check_flow_stage(frames_uri, flow_uri)
    h = stage_hash(derived.input_stage_hash(frames_uri), derived.input_stage_hash(flow_uri), cfg)
    uri = shards.stage_uri(root, dataset, STAGE, h)
    stage = derived.DerivedStage(
        name=STAGE,
        uri=uri,
        config_hash=h,
        config={"frames_stage": frames_uri, "flow_stage": flow_uri, **asdict(cfg)},
        inputs={"frames": frames_uri, "flow": flow_uri},  # flow shard i holds the fields of frames shard i
        per_item=_feature_item(cfg),
        model=lambda: build_two_stream(cfg),
        commit_extra={"frames_stage": frames_uri, "flow_stage": flow_uri},
    )
    run = derived.run_derived_stage(stage, mode, model)
    return {**run.summary(status_counts=True), "feature_dim": _feature_dim(uri)}


def _feature_dim(uri: str) -> int | None:
    """The per-snippet feature width recorded in the stage's manifest (what a model reading the stage is built for);
    None for a stage without a decoded sample."""
    for i in shards.committed_shards(uri):
        for row in shards.read_rows(uri, i):
            if row.get("shape"):
                shape = row["shape"]  # manifest rows keep the array shape as JSON text ("[T, D]")
                return int((json.loads(shape) if isinstance(shape, str) else shape)[1])
    return None


# ------------------------------------------------------------------------------------- released feature files


def _feature_files(folder: str | Path) -> dict[str, Path]:
    files = {p.stem: p for p in sorted(Path(folder).glob("*.npy"))}
    if not files:
        raise FileNotFoundError(f"no .npy feature files in {folder}")
    for key in files:
        storage.check_key(key)
    return files


def import_features(
    folder: str | Path,
    root: str,
    dataset: str,
    flow_folder: str | Path | None = None,
    meta: Mapping[str, Mapping[str, Any]] | None = None,
    samples_per_shard: int = 64,
    mode: shards.Mode = "incremental",
    snippet: int = 16,
    fps: float = 25.0,
) -> dict[str, Any]:
    """Released features → an ``i3d-features`` stage (same layout and members as `extract` produces).

    folder: ``<video_id>.npy`` files, ``(T, 2048)`` (RGB then flow), or ``(T, 1024)`` RGB when `flow_folder` holds
    the matching ``(T, 1024)`` flow files (UM's ``features/<split>/{rgb,flow}``); the two are concatenated, trimmed
    to the shorter length if they differ. meta: optional per-video metadata (e.g. ``split``, ``duration``, ``labels``
    from `pipelines.datasets.wtal`) stored with each sample. The stage hash digests every file's content.
    """
    rgb_files = _feature_files(folder)
    flow_files = _feature_files(flow_folder) if flow_folder is not None else {}
    if flow_folder is not None and set(flow_files) != set(rgb_files):
        only = sorted(set(rgb_files) ^ set(flow_files))
        raise ValueError(f"RGB and flow folders list different videos, e.g. {only[:5]}")
    keys = sorted(rgb_files)
    contents = {k: [file_digest(rgb_files[k])] + ([file_digest(flow_files[k])] if flow_files else []) for k in keys}
    h = config_hash({"imported": contents, "snippet": snippet, "fps": fps})
    config = {"imported_from": str(folder), "flow_folder": str(flow_folder) if flow_folder else None}
    cfg = I3DFeatureConfig(snippet=snippet, fps=fps)
    meta = meta or {}

    def load(shard: derived.Shard[None], key: str, inputs: tuple[Members, ...]) -> derived.Item:
        extra = dict(meta.get(key, {}))
        row = derived.sample_row(key, str(extra.get("split", "")), label=str(extra.get("label", "")))
        try:
            feats = _load_feature_file(rgb_files[key], flow_files.get(key))
        except ValueError as exc:
            return derived.failed(row, str(exc))
        row.update(n_snippets=len(feats), shape=list(feats.shape), source=str(rgb_files[key]), config_hash=h)
        sample_meta = {"key": key, "source": str(rgb_files[key]), "fps": fps, **extra}
        sample_meta["i3d"] = _feature_meta(cfg, int(feats.shape[1]), imported=True)
        return row, {"npy": feats, "json": sample_meta}

    stage: derived.DerivedStage[None] = derived.DerivedStage(
        name=STAGE,
        uri=shards.stage_uri(root, dataset, STAGE, h),
        config_hash=h,
        config={**config, "snippet": snippet, "fps": fps},
        per_item=load,
        layout=dict(enumerate(shards.plan_shards(keys, samples_per_shard))),  # no input stage: shards by key order
        commit_extra=config,
    )
    return derived.run_derived_stage(stage, mode).summary(status_counts=True)


def _load_feature_file(rgb_path: Path, flow_path: Path | None) -> np.ndarray:
    rgb = np.load(rgb_path, allow_pickle=False)
    if rgb.ndim != 2:
        raise ValueError(f"{rgb_path}: expected a (T, D) array, got shape {rgb.shape}")
    if flow_path is None:
        return np.ascontiguousarray(rgb, dtype=np.float32)
    flow = np.load(flow_path, allow_pickle=False)
    if flow.ndim != 2:
        raise ValueError(f"{flow_path}: expected a (T, D) array, got shape {flow.shape}")
    n = min(len(rgb), len(flow))
    return np.concatenate([rgb[:n], flow[:n]], axis=1).astype(np.float32)  # (T, D_rgb + D_flow)
