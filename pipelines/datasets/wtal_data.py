"""Weakly-supervised temporal action localization data: per-video snippet features, training windows, evaluation set.

The W-TAL protocol (METHODS §4; UM ``thumos_features.py`` / CO2-Net ``SampleDataset``): a video is a sequence of
non-overlapping 16-frame snippets at 25 fps (snippet i ↔ ``[i·16/25, (i+1)·16/25)`` s) with

- ``features`` (T, D_i3d): the two-stream I3D features of an ``i3d-features`` stage (`pipelines.features.i3d`,
  extracted or imported; 2048-d with real weights, the tiny width in the mini world);
- ``clip`` (T, D_clip): frozen CLIP frame features of a ``clip-features`` stage (`pipelines.features.clip_frames`,
  output ``cls``) **mean-pooled over each snippet's 16 frames** — the same frames the I3D snippet saw, so both
  branches see the same T snippets. A clip stage that already holds one row per snippet is used as is;
- ``labels`` (C,): the video-level multi-hot labels (the only supervision), from the ground-truth file.

The ground truth (an ActivityNet-format JSON: the mini world's ``annotations.json``, THUMOS14 ``gt.json``,
ActivityNet1.2) decides the split (`pipelines.datasets.wtal.Protocol`: mini-wtal / THUMOS14 train on "validation" and
test on "test"), the class order, and the evaluation ground truth. Every video of the feature stage that the ground
truth lists in the training (test) subset is a training (test) video; the rest are ignored (counted).

**Training batches** (`WTALData.batches`): each epoch the training videos are permuted from ``(seed, epoch, pass)``,
rank r takes every world-th video, and each rank's list is cut into batches of ``global_batch / world`` videos, so
every rank yields exactly `steps_per_epoch` batches (a trailing partial batch is dropped; with
``repeats_per_epoch > 1`` an epoch is that many passes, which keeps checkpoints per step bounded on tiny worlds). A
video longer than the window T contributes a random consecutive crop of T snippets (paper: T = 1000 on THUMOS14,
UM ``utils.random_extract``), the offset drawn from ``(seed, epoch, rank, batch)`` — so a batch is a pure function of
those and a resumed job replays it exactly. Batches pad to the longest window in the batch::

    {"features": (B, T, D_i3d) float32, "clip": (B, T, D_clip) float32, "mask": (B, T) bool, "labels": (B, C) float32}

(the batch format of `models.dcc.model`; padded snippets are zero and masked out).

**Evaluation** (`WTALData.eval_set`): whole test videos (no crop) with their ground-truth foreground per snippet
(`models.dcc.inference.snippet_mask`: snippet centre inside an instance) and — for the mini world, whose annotations
carry each instance's phases — a per-snippet phase category (`PHASE_CATEGORIES`), the probe that shows *where* a
branch fires: the action core, its run-up / follow-through edges, the static context of the object before and after
the action, a still distractor object, or empty background.

All features are held in memory (as UM / CO2-Net do): THUMOS14 at 2048-d is ~1 GB of float32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.dcc.inference import seconds_per_snippet, snippet_mask
from pipelines import shards
from pipelines.datasets.wtal import WTALDataset, load_activitynet12, load_mini_wtal, load_thumos14

GroundTruthFormat = Literal["mini-wtal", "thumos14", "activitynet1.2"]
LOADERS = {"mini-wtal": load_mini_wtal, "thumos14": load_thumos14, "activitynet1.2": load_activitynet12}

#: per-snippet phase categories of the mini world (evaluation probe), in plotting order
PHASE_CATEGORIES: tuple[str, ...] = ("core", "edges", "context", "distractor", "empty")
_PHASE_OF = {
    "core": "core",
    "run_up": "edges",
    "follow_through": "edges",
    "context_before": "context",
    "context_after": "context",
}


@dataclass(frozen=True)
class WTALDataConfig:
    i3d_stage: str = ""  # an ``i3d-features`` stage URI (extracted or `import_features`)
    clip_stage: str = ""  # a ``clip-features`` stage of the same frames ("" = no VLP input: CBP-only stages)
    ground_truth: str = ""  # ActivityNet-format ground-truth JSON
    ground_truth_format: GroundTruthFormat = "mini-wtal"
    window: int = 1000  # training window T in snippets (the recipe sets it from the model config)
    snippet: int = 16  # frames per snippet (I3D protocol)
    fps: float = 25.0  # frame rate of the snippet protocol
    repeats_per_epoch: int = 1  # passes over the training videos per epoch

    def __post_init__(self) -> None:
        if self.window < 1 or self.snippet < 1 or self.repeats_per_epoch < 1:
            raise ValueError("window, snippet and repeats_per_epoch must be >= 1")


@dataclass(frozen=True)
class Video:
    """One video's snippet-level inputs (whole video)."""

    key: str
    features: np.ndarray  # (T, D_i3d) float32
    clip: np.ndarray | None  # (T, D_clip) float32 or None without a clip stage
    labels: np.ndarray  # (C,) float32 multi-hot
    duration: float | None  # seconds

    @property
    def n_snippets(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class EvalVideo:
    """A test video with what evaluation needs besides its inputs."""

    video: Video
    gt_foreground: np.ndarray  # (T,) bool: snippet centre inside some instance
    phases: np.ndarray | None  # (T,) int index into PHASE_CATEGORIES (mini world only)
    instances: tuple[tuple[float, float, int], ...]  # (start s, end s, class index)


def pool_snippets(frames: np.ndarray, n_snippets: int, snippet: int = 16) -> np.ndarray:
    """Per-frame features (F, D) → (n_snippets, D): the mean of each snippet's `snippet` frames.

    An array that already has one row per snippet (F == n_snippets) is returned as is; fewer than
    ``n_snippets·snippet`` frames otherwise is an error (the stage does not match the I3D snippets).
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2:
        raise ValueError(f"expected per-frame features (F, D), got shape {frames.shape}")
    if frames.shape[0] == n_snippets:
        return frames
    need = n_snippets * snippet
    if frames.shape[0] < need:
        raise ValueError(f"{frames.shape[0]} frame features cannot cover {n_snippets} snippets of {snippet} frames")
    return frames[:need].reshape(n_snippets, snippet, -1).mean(axis=1)  # (T, D)


def crop_window(n: int, window: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random consecutive ``[start, start + window)`` of a length-n sequence (the whole of it if shorter)."""
    if n <= window:
        return 0, n
    start = int(rng.integers(0, n - window + 1))
    return start, start + window


def collate(
    items: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]], with_clip: bool
) -> dict[str, torch.Tensor]:
    """[(features (T_i, D), clip (T_i, Dc) | None, labels (C,))] → the padded batch (module docstring)."""
    t = max(f.shape[0] for f, _, _ in items)
    b = len(items)
    feats = np.zeros((b, t, items[0][0].shape[1]), dtype=np.float32)
    mask = np.zeros((b, t), dtype=bool)
    for i, (f, _, _) in enumerate(items):
        feats[i, : len(f)] = f
        mask[i, : len(f)] = True
    out = {
        "features": torch.from_numpy(feats),
        "mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(np.stack([y for _, _, y in items]).astype(np.float32)),
    }
    if with_clip:
        first = items[0][1]
        assert first is not None
        clip = np.zeros((b, t, first.shape[1]), dtype=np.float32)
        for i, (_, c, _) in enumerate(items):
            assert c is not None
            clip[i, : len(c)] = c
        out["clip"] = torch.from_numpy(clip)
    return out


def phase_categories(entry: Mapping[str, Any], n_snippets: int, snippet_seconds: float) -> np.ndarray | None:
    """(T,) index into `PHASE_CATEGORIES` per snippet centre, from a mini-world annotation entry (None elsewhere)."""
    annotations = entry.get("annotations", [])
    if not annotations or any("phases" not in a for a in annotations):
        return None
    centres = (np.arange(n_snippets) + 0.5) * snippet_seconds
    out = np.full(n_snippets, PHASE_CATEGORIES.index("empty"), dtype=np.int64)
    for d in entry.get("distractors", []):
        start, end = d["segment"]
        out[(centres >= start) & (centres < end)] = PHASE_CATEGORIES.index("distractor")
    for a in annotations:
        for name, (start, end) in a["phases"].items():
            out[(centres >= start) & (centres < end)] = PHASE_CATEGORIES.index(_PHASE_OF[name])
    return out


class WTALData:
    """Snippet features of one feature stage (+ CLIP stage) and ground truth: training batches and evaluation set."""

    def __init__(self, cfg: WTALDataConfig, global_batch: int, seed: int) -> None:
        if not cfg.i3d_stage or not cfg.ground_truth:
            raise ValueError("WTALDataConfig needs i3d_stage and ground_truth")
        self.cfg = cfg
        self.global_batch = global_batch
        self.seed = seed

    # ----- loading ---------------------------------------------------------------------------------------------------

    @cached_property
    def dataset(self) -> WTALDataset:
        return LOADERS[self.cfg.ground_truth_format](self.cfg.ground_truth)

    @cached_property
    def raw_database(self) -> dict[str, Any]:
        """The ground-truth file's database as written (the mini world's entries carry phases and distractors)."""
        data: dict[str, Any] = json.loads(Path(self.cfg.ground_truth).read_text(encoding="utf-8"))
        database: dict[str, Any] = data.get("database", {})
        return database

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.classes

    @cached_property
    def videos(self) -> dict[str, Video]:
        """Every video of the feature stage that the ground truth lists, by key."""
        keys, feats, _ = shards.load_stage(self.cfg.i3d_stage)
        clip: dict[str, np.ndarray] = {}
        if self.cfg.clip_stage:
            ckeys, carrays, _ = shards.load_stage(self.cfg.clip_stage)
            clip = dict(zip(ckeys, carrays))
        out: dict[str, Video] = {}
        for key, f in zip(keys, feats):
            if key not in self.dataset.videos:
                continue
            f = np.asarray(f, dtype=np.float32)
            c = None
            if self.cfg.clip_stage:
                if key not in clip:
                    raise ValueError(f"{key} has I3D features but no CLIP features in {self.cfg.clip_stage}")
                c = pool_snippets(clip[key], len(f), self.cfg.snippet)
            record = self.dataset.videos[key]
            out[key] = Video(key, f, c, self.dataset.video_labels(key), record.duration)
        return out

    def split_keys(self, split: Literal["train", "test"]) -> list[str]:
        return sorted(k for k in self.videos if self.dataset.split_of(k) == split)

    @cached_property
    def train_keys(self) -> list[str]:
        keys = self.split_keys("train")
        if not keys:
            raise ValueError(f"no training videos: the ground truth's training subset is not in {self.cfg.i3d_stage}")
        return keys

    @property
    def feature_dim(self) -> int:
        return next(iter(self.videos.values())).features.shape[1]

    # ----- training --------------------------------------------------------------------------------------------------

    def per_rank_batch(self, world_size: int) -> int:
        if self.global_batch % world_size:
            raise ValueError(f"global batch {self.global_batch} is not divisible by {world_size} ranks")
        return self.global_batch // world_size

    def steps_per_pass(self, world_size: int) -> int:
        return (len(self.train_keys) // world_size) // self.per_rank_batch(world_size)

    def steps_per_epoch(self, world_size: int) -> int:
        return self.steps_per_pass(world_size) * self.cfg.repeats_per_epoch

    def batch_keys(self, epoch: int, rank: int, world_size: int) -> list[list[str]]:
        """This rank's video keys per batch for `epoch` (all passes), the same on every call."""
        per_rank, per_pass = self.per_rank_batch(world_size), self.steps_per_pass(world_size)
        out: list[list[str]] = []
        for p in range(self.cfg.repeats_per_epoch):
            perm = np.random.default_rng([self.seed, epoch, p]).permutation(len(self.train_keys))
            mine = [self.train_keys[i] for i in perm[rank::world_size]]
            out += [mine[i * per_rank : (i + 1) * per_rank] for i in range(per_pass)]
        return out

    def batches(
        self, epoch: int, rank: int, world_size: int, start: int = 0, with_clip: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Exactly `steps_per_epoch(world_size)` batches for (epoch, rank), from batch index `start` on."""
        with_clip = with_clip and bool(self.cfg.clip_stage)
        for i, keys in enumerate(self.batch_keys(epoch, rank, world_size)):
            if i < start:
                continue
            rng = np.random.default_rng([self.seed, epoch, rank, i])
            items = []
            for key in keys:
                v = self.videos[key]
                a, b = crop_window(v.n_snippets, self.cfg.window, rng)
                items.append((v.features[a:b], None if v.clip is None else v.clip[a:b], v.labels))
            yield collate(items, with_clip)

    # ----- evaluation ------------------------------------------------------------------------------------------------

    @cached_property
    def eval_set(self) -> list[EvalVideo]:
        """The test videos, whole, with their snippet-level ground truth (and phases in the mini world)."""
        step = seconds_per_snippet(self.cfg.snippet, self.cfg.fps)
        index = self.dataset.class_index
        out = []
        for key in self.split_keys("test"):
            v = self.videos[key]
            record = self.dataset.videos[key]
            segments = [(i.start, i.end) for i in record.instances]
            out.append(
                EvalVideo(
                    video=v,
                    gt_foreground=snippet_mask(segments, v.n_snippets, step),
                    phases=phase_categories(self.raw_database.get(key, {}), v.n_snippets, step),
                    instances=tuple((i.start, i.end, index[i.label]) for i in record.instances),
                )
            )
        if not out:
            raise ValueError(f"no test videos: the ground truth's test subset is not in {self.cfg.i3d_stage}")
        return out

    def ground_truth_database(self) -> dict[str, dict[str, Any]]:
        """The ActivityNet ``database`` of the evaluated test videos (input of `detection_map`)."""
        test = {e.video.key for e in self.eval_set}
        return {k: v for k, v in self.dataset.database().items() if k in test}
