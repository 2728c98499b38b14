"""Temporal grounding recipe: the 2D-TAN head (`models.grounding`) on precomputed clip features — LocVTP's downstream
experiment ("replace 2D-TAN's input features with LocVTP's", paper-code-notes §4.3).

**Inputs.** `data.stage`: a ``locvtp-clips`` stage (`pipelines.features.locvtp_clips`): per video unit clip features
(C, D), one per consecutive 16-frame clip covering the video, and ``text.npy`` sentence features of the video's
captions. Queries come from Charades-STA files (`pipelines.datasets.grounding`), moments clamped to the video.

**Video side** (2D-TAN ``average_to_fixed_length``, microsoft/VideoX `2D-TAN/lib/datasets/__init__.py`): the C clip
features are resampled to N = `model.num_clips` by averaging source clips ``[round(i·C/N), round((i+1)·C/N))``, both
bounds clamped to C − 1, one source clip when the range is empty (upsampling). The clamp is 2D-TAN's and means the
last source clip only counts when the range would be empty; kept for fidelity. The head then reads moment (i, j) as
``[i, j+1)·duration/N``.

**Query side.** 2D-TAN encodes the sentence itself (GloVe + LSTM) and LocVTP's grounding experiments keep that, only
swapping the video features. Here the query is a precomputed sentence feature taken from `data.query_stage`'s
``text.npy`` (default: `data.stage` itself). The LocVTP DAG points both the LocVTP run and the baseline run at the
*baseline* stage, i.e. the frozen mini CLIP's EOT sentence feature, so the two runs differ only in their clip
features (the paper's comparison).

**Training.** One example per training query; scaled-IoU BCE (the head's `training_step`). Batches are drawn from a
(seed, epoch) permutation of all training queries, rank r taking its slice of every global batch: equal steps on every
rank, deterministic, replayable from any batch. Everything is held in memory (features are tiny).

**Evaluation.** Every test query, R@{1,5} × IoU@{0.3,0.5,0.7} after NMS at `model.nms_threshold`
(`models.grounding.evaluate` → `models.common.metrics.grounding.grounding_recall`; keys ``"R@1,IoU@0.5"`` …, percent).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from models.config import build as build_config
from models.engine.loop import Batch, TrainConfig
from models.engine.optim import OptimConfig
from models.grounding import GroundingHeadConfig
from models.grounding import build as build_head
from models.grounding import evaluate as grounding_evaluate
from models.grounding.tan import GroundingHead
from pipelines.datasets.grounding import GroundingQuery
from pipelines.features.locvtp_clips import iter_features
from recipes.locvtp import read_queries


@dataclass(frozen=True)
class GroundingDataConfig:
    stage: str = ""  # a ``locvtp-clips`` stage: clip features (and sentence features) per video
    query_stage: str = ""  # stage whose ``text.npy`` gives the query features ("" = `stage`)
    train_queries: str = ""  # Charades-STA file of the training queries
    test_queries: str = ""  # Charades-STA file of the test queries
    train_split: str = "train"
    eval_split: str = "test"
    eval_batch: int = 64


def _head_train() -> TrainConfig:
    # the mini config's `grounding_train` (2D-TAN: Adam, no weight decay)
    return TrainConfig(
        epochs=30, batch_size=32, seed=42, optim=OptimConfig(lr=1e-3, weight_decay=0.0, warmup_fraction=0.05)
    )


@dataclass(frozen=True)
class GroundingRecipeConfig:
    data: GroundingDataConfig = field(default_factory=GroundingDataConfig)
    model: GroundingHeadConfig = field(default_factory=GroundingHeadConfig)
    train: TrainConfig = field(default_factory=_head_train)


def average_to_fixed_length(clips: np.ndarray, n: int) -> np.ndarray:
    """2D-TAN ``average_to_fixed_length``: (C, D) → (n, D) (see the module docstring for the clamp)."""
    c = len(clips)
    if c == 0:
        raise ValueError("a video without clip features")
    idx = np.minimum(np.round(np.arange(n + 1, dtype=np.float64) / n * c).astype(np.int64), c - 1)  # (n+1,)
    out = [clips[idx[i] : idx[i + 1]].mean(axis=0) if idx[i] < idx[i + 1] else clips[idx[i]] for i in range(n)]
    return np.stack(out).astype(np.float32)


@dataclass
class QuerySet:
    """One split's queries with their inputs, aligned: clips (Q, N, D), query (Q, Dq), moments (Q, 2), duration (Q,)."""

    queries: list[GroundingQuery]
    clips: np.ndarray
    query: np.ndarray
    moments: np.ndarray
    duration: np.ndarray

    def batch(self, index: np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(index, dtype=np.int64)
        clips = torch.from_numpy(self.clips[idx])  # (B, N, D)
        return {
            "clips": clips,
            "clip_mask": torch.ones(clips.shape[:2], dtype=torch.bool),
            "query": torch.from_numpy(self.query[idx]),
            "moments": torch.from_numpy(self.moments[idx]),
            "duration": torch.from_numpy(self.duration[idx]),
        }


def _stage_features(uri: str) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(clip features per video, {video: {caption: sentence feature}}, metadata per video) of a clip stage."""
    clips, text, metas = {}, {}, {}
    for key, c, t, meta in iter_features(uri):
        captions = list(meta.get("captions") or [])
        if len(captions) != len(t):
            raise ValueError(f"{uri}: {key} has {len(captions)} captions but {len(t)} sentence features")
        clips[key], metas[key] = c, meta
        text[key] = dict(zip(captions, t, strict=True))
    return clips, text, metas


class HasCandidates(Protocol):
    """What the evaluation needs of a head (`GroundingHead`, or a hand-made predictor in tests)."""

    cfg: GroundingHeadConfig
    training: bool

    def candidates(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


class GroundingRecipe:
    def __init__(self, cfg: GroundingRecipeConfig) -> None:
        if not cfg.data.stage:
            raise ValueError("GroundingDataConfig.stage must be a committed clip-feature stage")
        self.cfg = cfg
        self.train: TrainConfig = cfg.train

    @cached_property
    def splits(self) -> dict[str, QuerySet]:
        d = self.cfg.data
        clips, text, metas = _stage_features(d.stage)
        query_text = text if not d.query_stage or d.query_stage == d.stage else _stage_features(d.query_stage)[1]
        out = {}
        for name, split, path in (("train", d.train_split, d.train_queries), ("test", d.eval_split, d.test_queries)):
            durations = {k: float(m["duration"]) for k, m in metas.items() if m.get("split") == split}
            queries = read_queries(path, durations)
            if not queries:
                raise ValueError(f"no {split!r} query of {path} has a video in {d.stage}")
            n = self.cfg.model.num_clips
            resampled = {k: average_to_fixed_length(clips[k], n) for k in {q.video for q in queries}}
            out[name] = QuerySet(
                queries,
                np.stack([resampled[q.video] for q in queries]),  # (Q, N, D)
                np.stack([query_text[q.video][q.sentence] for q in queries]).astype(np.float32),  # (Q, Dq)
                np.array([[q.start, q.end] for q in queries], dtype=np.float32),  # (Q, 2)
                np.array([durations[q.video] for q in queries], dtype=np.float32),  # (Q,)
            )
        return out

    def build_model(self) -> nn.Module:
        train = self.splits["train"]
        return build_head(self.cfg.model, train.clips.shape[-1], train.query.shape[-1])

    def per_rank(self, world_size: int) -> int:
        if self.train.batch_size % world_size:
            raise ValueError(f"global batch {self.train.batch_size} is not divisible by {world_size} ranks")
        return self.train.batch_size // world_size

    def steps_per_epoch(self, world_size: int) -> int:
        self.per_rank(world_size)
        return len(self.splits["train"].queries) // self.train.batch_size

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        train = self.splits["train"]
        order = np.random.default_rng([self.train.seed, epoch]).permutation(len(train.queries))
        per = self.per_rank(world_size)
        for step in range(start, self.steps_per_epoch(world_size)):
            lo = step * self.train.batch_size + rank * per
            yield train.batch(order[lo : lo + per])

    def eval_batches(self) -> Iterable[Batch]:
        test = self.splits["test"]
        b = self.cfg.data.eval_batch
        return (test.batch(np.arange(i, min(i + b, len(test.queries)))) for i in range(0, len(test.queries), b))

    def evaluate(self, model: nn.Module | HasCandidates) -> dict[str, float]:
        return grounding_evaluate(model, self.eval_batches())  # type: ignore[arg-type]


def build(config: Mapping[str, Any]) -> GroundingRecipe:
    return GroundingRecipe(build_config(GroundingRecipeConfig, config))


__all__ = [
    "GroundingDataConfig",
    "GroundingHead",
    "GroundingRecipe",
    "GroundingRecipeConfig",
    "average_to_fixed_length",
]
