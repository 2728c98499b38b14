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
extraction. `find_released` finds them by video id wherever they were unpacked (`RELEASED_LAYOUTS`) and
`import_feature_files` imports what it found, with a failed manifest row for every wanted video it did not find.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
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
    files = {k: ReleasedFeature(rgb_files[k], flow_files.get(k), "folders") for k in rgb_files}
    config = {"imported_from": str(folder), "flow_folder": str(flow_folder) if flow_folder else None}
    return import_feature_files(files, root, dataset, config, meta, samples_per_shard, mode, snippet, fps)


def import_feature_files(
    files: Mapping[str, ReleasedFeature],
    root: str,
    dataset: str,
    config: Mapping[str, Any],
    meta: Mapping[str, Mapping[str, Any]] | None = None,
    samples_per_shard: int = 64,
    mode: shards.Mode = "incremental",
    snippet: int = 16,
    fps: float = 25.0,
    missing: Mapping[str, str] | None = None,
    feature_dim: int | None = None,
    max_snippets: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Per-video released files (key → `ReleasedFeature`) → an ``i3d-features`` stage; `config` is recorded.

    missing: keys wanted but not found (key → why): each becomes a failed manifest row, so the stage has one row per
    wanted video. feature_dim: the width every video must have (RGB + flow: 2048 for the paper's I3D); a video of
    another width is a failed row. max_snippets: key → the most snippets its frames cover (``⌊frames / 16⌋``): a
    released array longer than that (another decode of the video) is cut to it, and the row says by how much, so the
    snippet-pooled CLIP features of the same video line up with it. The stage hash digests every file's content (and
    the missing keys, the width and the cuts when given).
    """
    missing = dict(missing or {})
    cuts = dict(max_snippets or {})
    for key in [*files, *missing]:
        storage.check_key(key)
    if set(files) & set(missing):
        raise ValueError(f"keys both found and missing: {sorted(set(files) & set(missing))[:5]}")
    keys = sorted([*files, *missing])
    contents = {k: [file_digest(f.rgb)] + ([file_digest(f.flow)] if f.flow else []) for k, f in sorted(files.items())}
    hashed: dict[str, Any] = {"imported": contents, "snippet": snippet, "fps": fps}
    if missing:
        hashed["missing"] = sorted(missing)
    if feature_dim is not None:
        hashed["feature_dim"] = feature_dim
    if cuts:
        hashed["max_snippets"] = {k: cuts[k] for k in sorted(cuts) if k in files}
    h = config_hash(hashed)
    cfg = I3DFeatureConfig(snippet=snippet, fps=fps)
    meta = meta or {}

    def load(shard: derived.Shard[None], key: str, inputs: tuple[Members, ...]) -> derived.Item:
        extra = dict(meta.get(key, {}))
        row = derived.sample_row(key, str(extra.get("split", "")), label=str(extra.get("label", "")))
        if key in missing:
            return derived.failed(row, missing[key])
        found = files[key]
        try:
            feats = _load_feature_file(found.rgb, found.flow)
        except ValueError as exc:
            return derived.failed(row, str(exc))
        if feature_dim is not None and feats.shape[1] != feature_dim:
            return derived.failed(
                row, f"{found.rgb}: {feats.shape[1]}-d snippet features; the spec's two-stream I3D gives {feature_dim}"
            )
        cut = 0
        if key in cuts and len(feats) > cuts[key]:
            cut, feats = len(feats) - cuts[key], feats[: cuts[key]]
        row.update(n_snippets=len(feats), shape=list(feats.shape), source=str(found.rgb), config_hash=h)
        if cuts:
            row["snippets_cut"] = cut
        sample_meta = {"key": key, "source": str(found.rgb), "fps": fps, **extra}
        if found.flow is not None:
            sample_meta["flow_source"] = str(found.flow)
        sample_meta["i3d"] = _feature_meta(cfg, int(feats.shape[1]), imported=True)
        return row, {"npy": feats, "json": sample_meta}

    stage: derived.DerivedStage[None] = derived.DerivedStage(
        name=STAGE,
        uri=shards.stage_uri(root, dataset, STAGE, h),
        config_hash=h,
        config={**config, "snippet": snippet, "fps": fps},
        per_item=load,
        layout=dict(enumerate(shards.plan_shards(keys, samples_per_shard))),  # no input stage: shards by key order
        commit_extra=dict(config),
    )
    return derived.run_derived_stage(stage, mode).summary(status_counts=True)


# How the W-TAL repositories lay their per-video feature files out; `find_released` recognises each of them under the
# folder the user names, at any depth:
#: - "folders": the streams in separate folders, ``…/rgb/<video>.npy`` and ``…/flow/<video>.npy``, ``(T, 1024)`` each
#:   (UM / BaSNet ``dataset/THUMOS14/features/{train,test}/{rgb,flow}/``; a folder counts as a stream's when its name
#:   contains ``rgb`` / ``flow``);
#: - "suffix": ``<video>_rgb.npy`` beside ``<video>_flow.npy`` (v-iashin/video_features' I3D output names);
#: - "joint": one ``<video>.npy`` of ``(T, 2048)``, RGB then flow, outside any stream folder.
#: W-TALC and CO2-Net ship one pickled object array for the whole dataset (``*-I3D-JOINTFeatures.npy``) instead: it is
#: not read (it needs unpickling); convert it to per-video files first.
RELEASED_LAYOUTS: tuple[str, ...] = ("folders", "suffix", "joint")
_STREAMS: tuple[str, ...] = ("rgb", "flow")


@dataclass(frozen=True)
class ReleasedFeature:
    """One video's released feature files: ``rgb`` and ``flow`` (T, D) arrays, or one joint (T, 2·D) file in ``rgb``
    with ``flow`` None; `layout` names the convention they follow (`RELEASED_LAYOUTS`)."""

    rgb: Path
    flow: Path | None
    layout: str


def _stream_of(path: Path, folder: Path) -> tuple[str, str]:
    """(video name, stream: "rgb" / "flow" / "joint") of a released ``.npy`` file under `folder`."""
    stem = path.stem
    for stream in _STREAMS:
        if stem.lower().endswith("_" + stream):
            return stem[: -len(stream) - 1], stream
    for part in reversed(path.relative_to(folder).parts[:-1]):  # the nearest stream folder wins
        name = part.lower()
        hits = [s for s in _STREAMS if s in name]
        if len(hits) == 1:
            return stem, hits[0]
    return stem, "joint"


def find_released(
    folder: str | Path, video_ids: Sequence[str], names: Callable[[str], Sequence[str]] | None = None
) -> tuple[dict[str, ReleasedFeature], dict[str, str]]:
    """Each video's released feature files under `folder` (`RELEASED_LAYOUTS`), looked up by the names
    `names(video_id)` a file may carry (default: the id): (video id → its files, video id → why it has none). Two
    streams win over a joint file; of several files for one (name, stream), the first by path is used."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--features {root}: not a folder")
    index: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(root.rglob("*.npy")):
        if path.is_file():
            index.setdefault(_stream_of(path, root), []).append(path)
    found: dict[str, ReleasedFeature] = {}
    missing: dict[str, str] = {}
    for vid in video_ids:
        tried = list(names(vid)) if names is not None else [vid]
        for name in tried:
            rgb, flow, joint = (index.get((name, s), [None])[0] for s in (*_STREAMS, "joint"))
            if rgb is not None and flow is not None:
                layout = "suffix" if rgb.stem.lower().endswith("_rgb") else "folders"
                found[vid] = ReleasedFeature(rgb, flow, layout)
                break
            if joint is not None:
                found[vid] = ReleasedFeature(joint, None, "joint")
                break
        else:
            alone = [s for name in tried for s in _STREAMS if (name, s) in index]
            names_ = " or ".join(repr(n) for n in tried)
            missing[vid] = (
                f"only the {alone[0]} features of {names_} under {root} (the other stream is missing)"
                if alone
                else f"no released feature file for {names_} under {root} (<id>.npy, <id>_rgb.npy + <id>_flow.npy, "
                "or rgb/ and flow/ folders)"
            )
    return found, missing


def import_released(
    folder: str | Path,
    root: str,
    dataset: str,
    meta: Mapping[str, Mapping[str, Any]],
    names: Callable[[str], Sequence[str]] | None = None,
    frames_uri: str | None = None,
    feature_dim: int | None = None,
    snippet: int = 16,
    fps: float = 25.0,
    samples_per_shard: int = 64,
) -> dict[str, Any]:
    """A benchmark's released features → its ``i3d-features`` stage: the files of every video of `meta` (sample key
    → ``video_id``, ``split``, … as `pipelines.datasets.wtal_sources.prepare` gives it) found under `folder` by the
    names `names(video_id)` a file may carry (`find_released`), one failed row per video without them.

    frames_uri: the frames stage when the run also decodes the videos (DCC's VLP branch needs their CLIP features):
    only the videos whose frames are usable are imported, each cut to the ``⌊frames / snippet⌋`` snippets its frames
    cover (released features come from other decodes, often a snippet or two longer), so both branches see the same
    snippets. feature_dim: the width the spec's I3D gives (RGB + flow), checked per video. Raises
    `FileNotFoundError` when no video has features under `folder`.
    """
    wanted = {str(k): m for k, m in meta.items()}
    cuts: dict[str, int] = {}
    if frames_uri is not None:
        rows = {str(r["key"]): r for r in shards.read_manifest(frames_uri)}
        wanted = {k: m for k, m in wanted.items() if str(rows.get(k, {}).get("status")) in shards.OK_STATUSES}
        cuts = {k: int(rows[k].get("n_frames") or 0) // snippet for k in wanted}
    ids = {k: str(m.get("video_id", k)) for k, m in wanted.items()}
    lookup = (lambda k: names(ids[k])) if names is not None else (lambda k: (ids[k],))
    found, missing = find_released(folder, sorted(wanted), lookup)
    if not found:
        raise FileNotFoundError(
            f"--features {folder}: no released feature file for any of the {len(wanted)} videos (looked for "
            "<id>.npy, <id>_rgb.npy + <id>_flow.npy, rgb/<id>.npy + flow/<id>.npy; W-TALC / CO2-Net's single "
            "*-I3D-JOINTFeatures.npy must be split into per-video files first)"
        )
    config = {
        "imported_from": str(Path(folder).expanduser().resolve()),
        "layouts": sorted({f.layout for f in found.values()}),
    }
    out = import_feature_files(
        found,
        root,
        dataset,
        config,
        meta=wanted,
        samples_per_shard=samples_per_shard,
        snippet=snippet,
        fps=fps,
        missing=missing,
        feature_dim=feature_dim,
        max_snippets=cuts or None,
    )
    return {
        **out,
        "feature_dim": _feature_dim(out["stage_uri"]) or feature_dim,
        "found": len(found),
        "missing": len(missing),
    }


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
