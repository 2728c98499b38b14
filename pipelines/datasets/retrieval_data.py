"""Text–video retrieval data shared by CLIP4Clip, STAN and UCoFiA: training batches from shards, evaluation sets.

A training example is one video (frames, or frozen-CLIP frame features) with one of its captions, chosen by the
batch's seeded generator. Frames follow CLIP4Clip's sampler (`uniform_indices` to `max_frames`, padded, with a
mask). An "epoch" may be several passes over the training videos (`repeats_per_epoch`): on the mini world one pass is
only ~13 steps, and a checkpoint per pass would cost more than the training.

Evaluation is multi-caption: every caption of every evaluation video is a query (t2v), and v2t scores a video
against each caption group by its best caption (`models.common.metrics.retrieval`). Named subsets (e.g. the mini
world's order-dependent twins) are scored on their own sub-matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch

from models.common.clip import arch_image_size, preprocess_frames, tokenize
from models.common.metrics.retrieval import BLOCK_RANKS, recall_metrics, retrieval_ranks
from pipelines import shards
from pipelines.loaders import EpochPlan, ShardIndex
from pipelines.sampling import segment_indices, uniform_indices


@dataclass(frozen=True)
class RetrievalDataConfig:
    stage: str = ""  # committed stage URI: ingest frames (pixels) or a CLIP feature stage (features/tokens/blocks)
    input: Literal["pixels", "features", "tokens", "blocks"] = "features"  # pixels are CLIP-normalised, others cast
    sampler: Literal["uniform", "segment"] = "uniform"  # CLIP4Clip: uniform linspace; STAN: random per segment
    arch: str = "vlrepro-mini"  # CLIP architecture: tokenizer and input resolution
    max_frames: int = 12  # CLIP4Clip: 12 frames (MSR-VTT), 64 for ActivityNet/DiDeMo
    max_words: int = 32  # CLIP4Clip: 32 words
    train_split: str = "train"
    eval_split: str = "test"
    repeats_per_epoch: int = 1  # passes over the training videos per epoch
    subsets: dict[str, list[str]] = field(default_factory=dict)  # name → eval video keys scored separately
    eval_batch: int = 128


def _split_keys(uri: str, split: str) -> set[str]:
    return {
        r["key"] for r in shards.read_manifest(uri) if r.get("split") == split and r.get("status") in shards.OK_STATUSES
    }


@dataclass
class EvalSet:
    keys: list[str]
    videos: list[np.ndarray]  # per video: (T, ...) features or (T, H, W, 3) frames
    captions: list[str]
    caption_video: np.ndarray  # (C,) index of each caption's video
    labels: list[Any] = field(default_factory=list)  # per video: its action label (recognition), "" if none


class RetrievalData:
    """Batches and evaluation sets for one retrieval stage."""

    def __init__(self, cfg: RetrievalDataConfig, global_batch: int, seed: int) -> None:
        if not cfg.stage:
            raise ValueError("RetrievalDataConfig.stage must be a committed stage URI")
        self.cfg = cfg
        train_keys = _split_keys(cfg.stage, cfg.train_split)
        if not train_keys:
            raise ValueError(f"no usable {cfg.train_split!r} videos in {cfg.stage}")
        self.plan = EpochPlan(ShardIndex.from_stage(cfg.stage, keys=train_keys), global_batch, seed)
        self.seed = seed

    # ------------------------------------------------------------------------------------------------- training
    def steps_per_epoch(self, world_size: int) -> int:
        return self.plan.steps(world_size) * self.cfg.repeats_per_epoch

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[dict[str, Any]]:
        per_pass = self.plan.steps(world_size)
        for r in range(start // per_pass, self.cfg.repeats_per_epoch):
            offset = start - r * per_pass if r == start // per_pass else 0
            yield from self.plan.batches(
                epoch * self.cfg.repeats_per_epoch + r, rank, world_size, self.collate, start=offset
            )

    def frame_indices(self, n: int, rng: np.random.Generator | None) -> np.ndarray:
        """Which of a video's n frames to use: CLIP4Clip's uniform linspace, or STAN's segment sampler (a random
        frame per segment when training with `rng`, the segment middle at evaluation)."""
        if self.cfg.sampler == "segment":
            return segment_indices(n, self.cfg.max_frames, rng)
        return uniform_indices(n, self.cfg.max_frames)

    def video_tensor(
        self, arrays: Sequence[np.ndarray], rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Videos → ``(B, T, ...)`` per-frame arrays as float (pixel input: ``(B, T, 3, S, S)`` CLIP-normalised
        frames), and the ``(B, T)`` bool mask (True = real frame)."""
        t = self.cfg.max_frames
        out, mask = [], torch.zeros(len(arrays), t, dtype=torch.bool)
        for i, arr in enumerate(arrays):
            idx = self.frame_indices(len(arr), rng)
            x = torch.from_numpy(np.ascontiguousarray(arr[idx]))
            if self.cfg.input == "pixels":
                x = preprocess_frames(x, arch_image_size(self.cfg.arch))  # (t, 3, S, S)
            else:
                x = x.float()  # (t, ...): CLS features, tokens or block outputs
            pad = torch.zeros((t - x.shape[0], *x.shape[1:]), dtype=x.dtype)
            out.append(torch.cat([x, pad]))
            mask[i, : len(idx)] = True
        return torch.stack(out), mask

    def collate(self, samples: list[tuple[str, dict[str, Any]]], rng: np.random.Generator) -> dict[str, Any]:
        video, mask = self.video_tensor([m["npy"] for _, m in samples], rng)
        captions = []
        for key, m in samples:
            caps = m["json"].get("captions") or []
            if not caps:
                raise ValueError(f"training video {key} has no caption")
            captions.append(caps[int(rng.integers(len(caps)))])
        return {
            "video": video,
            "video_mask": mask,
            "text": tokenize(self.cfg.arch, captions, self.cfg.max_words),
            "keys": [k for k, _ in samples],
        }

    # ----------------------------------------------------------------------------------------------- evaluation
    @cached_property
    def _stage(self) -> tuple[list[str], list[np.ndarray], list[dict[str, Any]]]:
        return shards.load_stage(self.cfg.stage)  # read once: evaluation needs the test split and the train bank

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = split or self.cfg.eval_split
        keys, arrays, metas = self._stage
        sel = [i for i, m in enumerate(metas) if m.get("split") == split]
        captions, owner = [], []
        for j, i in enumerate(sel):
            for c in metas[i].get("captions") or []:
                captions.append(c)
                owner.append(j)
        return EvalSet(
            [keys[i] for i in sel],
            [arrays[i] for i in sel],
            captions,
            np.asarray(owner, dtype=np.int64),
            [metas[i].get("label", "") for i in sel],
        )


SimilarityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def similarity_matrix(model: Any, data: RetrievalData, ev: EvalSet) -> np.ndarray:
    """(captions, videos) similarities from a model's eval API (`encode_text_for_eval`, `encode_video_for_eval`,
    `similarity`), computed in batches."""
    b = data.cfg.eval_batch
    device = next(model.parameters()).device  # evaluation may run on a worker's GPU
    texts = [
        model.encode_text_for_eval(tokenize(data.cfg.arch, ev.captions[i : i + b], data.cfg.max_words).to(device))
        for i in range(0, len(ev.captions), b)
    ]
    vids = []
    for i in range(0, len(ev.videos), b):
        video, mask = data.video_tensor(ev.videos[i : i + b])
        vids.append(model.encode_video_for_eval(video.to(device), mask.to(device)))
    text_repr = concat_reprs(texts)
    video_repr = concat_reprs(vids)
    return model.similarity(text_repr, video_repr).float().cpu().numpy()


def concat_reprs(parts: list[Any]) -> Any:
    """Concatenate per-batch representations along dim 0: tensors, or tuples / dicts of tensors."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], tuple):
        return tuple(concat_reprs([p[i] for p in parts]) for i in range(len(parts[0])))
    if isinstance(parts[0], dict):
        return {k: concat_reprs([p[k] for p in parts]) for k in parts[0]}
    raise TypeError(f"cannot concatenate {type(parts[0]).__name__}")


def report(sim: np.ndarray, ev: EvalSet, subsets: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Full retrieval report: overall and per subset, plus the per-query rank arrays: the overall ones for plots
    (``ranks``: {"t2v", "v2t"}) and each subset's (``block_ranks``: subset → {"t2v", "v2t"}) for the claims' paired
    bootstrap (`recipes.evaluation.claims`); neither is a metric (`flatten` skips them)."""
    overall = retrieval_ranks(sim, ev.caption_video)
    out: dict[str, Any] = {"overall": {d: recall_metrics(r) for d, r in overall.items()}, "ranks": overall}
    block_ranks: dict[str, dict[str, np.ndarray]] = {}
    pos = {k: i for i, k in enumerate(ev.keys)}
    for name, keys in subsets.items():
        vids = np.array(sorted(pos[k] for k in keys if k in pos), dtype=np.int64)
        if len(vids) < 2:
            continue
        caps = np.flatnonzero(np.isin(ev.caption_video, vids))
        remap = {v: i for i, v in enumerate(vids.tolist())}
        sub = sim[np.ix_(caps, vids)]
        block_ranks[name] = retrieval_ranks(sub, np.array([remap[int(v)] for v in ev.caption_video[caps]]))
        out[name] = {d: recall_metrics(r) for d, r in block_ranks[name].items()}
    out[BLOCK_RANKS] = block_ranks
    return out


def flatten(rep: Mapping[str, Any]) -> dict[str, float]:
    """``{"overall": {"t2v": {"R@1": x}}}`` → ``{"t2v/R@1": x}``, subsets prefixed by their name."""
    flat: dict[str, float] = {}
    for name, block in rep.items():
        if name in ("ranks", BLOCK_RANKS):
            continue
        prefix = "" if name == "overall" else f"{name}/"
        for direction, metrics in block.items():
            for k, v in metrics.items():
                flat[f"{prefix}{direction}/{k}"] = float(v)
    return flat


__all__ = [
    "EvalSet",
    "RetrievalData",
    "RetrievalDataConfig",
    "flatten",
    "recall_metrics",
    "report",
    "similarity_matrix",
]
