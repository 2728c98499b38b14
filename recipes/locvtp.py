"""LocVTP pre-training recipe: the `models.locvtp` model on mini-grounding videos and their Charades-STA sentences.

**What a training "video" is.** LocVTP pre-trains on video–narration pairs (HowTo100M: a stretch of video with the
ASR sentences spoken over it; the official ``HowtoDataset`` samples T clips × 16 frames over each captioned span).
A mini-grounding video has 3–6 non-overlapping events, each with one query sentence. A training example here is a
**run of `sentences` (3) consecutive queries of one video with the span they cover**, ``[first.start, last.end)``,
and the text is those sentences in temporal order joined by ". " — a short narrated stretch. Why not a single
query's moment (``sentences=1``, kept as an option): every clip of one event is described by the same few words, so
the clip–word correspondence (L_f) degenerates into the video–sentence term, and the context-warping target (L_t, clip
t's words predicted from clip t+δ) has nothing to predict; within a run of three events, different clips are
described by different words of the same paragraph, which is the correspondence LocVTP is about. Why not the whole
video with all its sentences: 4–6 queries need up to 53 tokens, beyond the mini CLIP's context of 32; three always fit
(at most 26 tokens; a run is shortened if it would not).

**Sampling.** T clips over the span with `pipelines.sampling.clip_windows` (random offsets in training), F frames per
clip every s-th frame (`pipelines.features.locvtp_clips`). No pixel augmentation: a horizontal flip would contradict
"left"/"right" in the sentences, and with ``input="tokens"`` the frozen prefix is precomputed. Batches come from
`pipelines.loaders.EpochPlan` over the training videos (equal steps on every rank; the run, the clip offsets and the
order are drawn from (seed, epoch, rank, batch)); a batch never holds two runs of one video (no false negatives from
shared sentences). One pass over 96 training videos is only 6 steps at batch 16, so an epoch is `repeats_per_epoch`
passes.

**Evaluation** (a cheap proxy of localisation quality, METHODS §5 "retrieval"): moment retrieval on the held-out
queries. Each test video is encoded densely (consecutive 16-frame clips, as the grounding features are); a moment's
feature is the re-normalised mean of the clips whose centre lies in it; a query's is q̄. Reported: text→moment and
moment→text over all test moments (`retrieval_report`, keys ``t2v/R@1`` …) and ``within/R@1``: the query's moment
ranked first among the moments of its own video (localisation by retrieval).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from models.common.clip import arch_image_size, tokenize
from models.common.metrics.retrieval import ranks, recall_metrics, retrieval_report
from models.config import build as build_config
from models.engine.loop import Batch, TrainConfig
from models.engine.optim import OptimConfig
from models.locvtp import LocVTP, LocVTPConfig
from models.locvtp import build as build_model
from pipelines import shards
from pipelines.datasets.grounding import GroundingQuery, parse_charades_sta
from pipelines.features.locvtp_clips import (
    clip_frame_indices,
    encode_dense_clips,
    encode_sentences,
    frame_stride,
    gather_clips,
    moment_clips,
    stored_stride,
    video_fps,
)
from pipelines.loaders import EpochPlan, Sample, ShardIndex

SEPARATOR = ". "


@dataclass(frozen=True)
class LocVTPDataConfig:
    stage: str = ""  # a prefix-token stage (model.input "tokens") or the frames stage ("pixels")
    train_queries: str = ""  # Charades-STA file of the training queries (charades_sta_train.txt)
    test_queries: str = ""  # Charades-STA file of the held-out queries (evaluation)
    sentences: int = 3  # consecutive queries per example (module docstring); 1 = one query and its moment
    repeats_per_epoch: int = 1  # passes over the training videos per epoch
    # examples (sentence runs at distinct starts) drawn from each sampled video into the same batch: > 1 puts
    # negatives that share the video's appearance, and differ only in what moves, into every contrastive term
    examples_per_video: int = 1
    train_split: str = "train"
    eval_split: str = "test"
    batch_clips: int = 256  # clips per encoder forward at evaluation


def _pretrain() -> TrainConfig:
    # the mini config's values (recipes/configs/locvtp/mini-grounding.yaml)
    return TrainConfig(
        epochs=10, batch_size=16, seed=42, optim=OptimConfig(lr=1e-3, weight_decay=0.2, warmup_fraction=0.1)
    )


@dataclass(frozen=True)
class LocVTPRecipeConfig:
    data: LocVTPDataConfig = field(default_factory=LocVTPDataConfig)
    model: LocVTPConfig = field(default_factory=LocVTPConfig)
    train: TrainConfig = field(default_factory=_pretrain)


def queries_by_video(queries: Sequence[GroundingQuery]) -> dict[str, list[GroundingQuery]]:
    """Queries grouped per video, each video's in temporal order."""
    out: dict[str, list[GroundingQuery]] = defaultdict(list)
    for q in queries:
        out[q.video].append(q)
    return {k: sorted(v, key=lambda q: (q.start, q.end)) for k, v in out.items()}


def read_queries(path: str, durations: Mapping[str, float]) -> list[GroundingQuery]:
    """A Charades-STA file, clamped to the stage's durations, restricted to the stage's videos."""
    if not path:
        raise ValueError("the recipe needs a Charades-STA queries file (data.train_queries / data.test_queries)")
    with open(path, encoding="utf-8") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.split(" ", 1)[0] in durations]
    return parse_charades_sta("\n".join(lines), durations, source=path)


def sentence_runs(
    queries: Sequence[GroundingQuery], k: int, g: int, rng: np.random.Generator, arch: str, max_words: int
) -> list[list[GroundingQuery]]:
    """`g` runs of min(k, Q) consecutive queries, at distinct random starts while there are enough (repeated
    otherwise); a run whose joined text exceeds `max_words` tokens is shortened from its end."""
    k = min(k, len(queries))
    n_starts = len(queries) - k + 1
    starts = rng.choice(n_starts, size=g, replace=n_starts < g)
    runs = []
    for first in starts.tolist():
        run = list(queries[first : first + k])
        while len(run) > 1 and _n_tokens(arch, SEPARATOR.join(q.sentence for q in run), max_words) > max_words:
            run.pop()
        runs.append(run)
    return runs


def _n_tokens(arch: str, text: str, max_words: int) -> int:
    # tokenise with room to spare: a truncated text would look like it fits
    return int((tokenize(arch, [text], 4 * max_words) != 0).sum())


def moment_features(clips: np.ndarray, clip_seconds: float, moments: Sequence[tuple[float, float]]) -> np.ndarray:
    """Unit moment features (M, D): the re-normalised mean of the unit clip features whose centre lies in each
    moment (`moment_clips`); clips (C, D)."""
    out = []
    for start, end in moments:
        inside = moment_clips(start, end, len(clips), clip_seconds)
        v = clips[inside].mean(axis=0)
        out.append(v / max(float(np.linalg.norm(v)), 1e-12))
    return np.stack(out).astype(np.float32)


def moment_retrieval(
    clips: Mapping[str, np.ndarray],
    clip_seconds: Mapping[str, float],
    queries: Sequence[GroundingQuery],
    text: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Text↔moment retrieval over the moments of `queries` (query i ↔ moment i) from unit clip features per video and
    unit sentence features `text` (Q, D): ``{"t2v", "v2t"}`` (`retrieval_report`) and ``{"within": {"R@1", ...}}``,
    each query ranked against the moments of its own video only."""
    moments = np.concatenate(
        [moment_features(clips[q.video], clip_seconds[q.video], [(q.start, q.end)]) for q in queries]
    )  # (Q, D)
    sim = text.astype(np.float64) @ moments.astype(np.float64).T  # (Q, Q)
    report = retrieval_report(sim)
    videos = np.array([q.video for q in queries])
    own = np.where(videos[:, None] == videos[None, :], sim, -np.inf)  # other videos' moments never outrank
    within = recall_metrics(ranks(own))
    return {**report, "within": {"R@1": within["R@1"], "MnR": within["MnR"]}}


def flatten_report(report: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"{block}/{k}": float(v) for block, metrics in report.items() for k, v in metrics.items()}


@dataclass
class _EvalVideos:
    keys: list[str]
    arrays: list[np.ndarray]
    metas: list[dict[str, Any]]


class LocVTPRecipe:
    def __init__(self, cfg: LocVTPRecipeConfig) -> None:
        if not cfg.data.stage:
            raise ValueError("LocVTPDataConfig.stage must be a committed stage URI")
        if min(cfg.data.sentences, cfg.data.repeats_per_epoch, cfg.data.examples_per_video) < 1:
            raise ValueError("data.sentences, data.repeats_per_epoch and data.examples_per_video must be >= 1")
        if cfg.train.batch_size % cfg.data.examples_per_video:
            raise ValueError(
                f"train.batch_size {cfg.train.batch_size} is not a multiple of "
                f"data.examples_per_video {cfg.data.examples_per_video}"
            )
        frame_stride(cfg.model)  # clip_frames must be a multiple of frames_per_clip
        self.cfg = cfg
        self.train: TrainConfig = cfg.train
        self.image_size = arch_image_size(cfg.model.clip.arch)

    # ----- data --------------------------------------------------------------------------------------------------
    @cached_property
    def rows(self) -> dict[str, dict[str, Any]]:
        return {r["key"]: r for r in shards.read_manifest(self.cfg.data.stage) if r.get("status") in shards.OK_STATUSES}

    def _durations(self, split: str) -> dict[str, float]:
        return {k: float(r["duration"]) for k, r in self.rows.items() if r.get("split") == split}

    @cached_property
    def train_queries(self) -> dict[str, list[GroundingQuery]]:
        return queries_by_video(read_queries(self.cfg.data.train_queries, self._durations(self.cfg.data.train_split)))

    @cached_property
    def test_queries(self) -> list[GroundingQuery]:
        by_video = queries_by_video(read_queries(self.cfg.data.test_queries, self._durations(self.cfg.data.eval_split)))
        return [q for key in sorted(by_video) for q in by_video[key]]

    @cached_property
    def plan(self) -> EpochPlan:
        keys = set(self.train_queries)
        if not keys:
            raise ValueError(f"no training video of {self.cfg.data.stage} has a query in {self.cfg.data.train_queries}")
        videos = self.train.batch_size // self.cfg.data.examples_per_video  # videos per global batch
        return EpochPlan(ShardIndex.from_stage(self.cfg.data.stage, keys=keys), videos, self.train.seed)

    def steps_per_epoch(self, world_size: int) -> int:
        return self.plan.steps(world_size) * self.cfg.data.repeats_per_epoch

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        per_pass = self.plan.steps(world_size)
        repeats = self.cfg.data.repeats_per_epoch
        for r in range(start // per_pass, repeats):
            offset = start - r * per_pass if r == start // per_pass else 0
            yield from self.plan.batches(epoch * repeats + r, rank, world_size, self.collate, start=offset)

    def example(
        self, array: np.ndarray, meta: Mapping[str, Any], run: Sequence[GroundingQuery], rng: np.random.Generator
    ) -> dict[str, Any]:
        """One training example: the T clips of the run's span ``[first.start, last.end)`` and the joined text."""
        m = self.cfg.model
        fps = video_fps(meta)
        stride = stored_stride(meta)
        n_source = int(meta.get("n_source_frames") or len(array) * stride)
        first = min(int(np.floor(run[0].start * fps)), n_source - 1)
        last = min(max(int(np.ceil(run[-1].end * fps)), first + 1), n_source)
        idx = clip_frame_indices(last - first, m.num_clips, m.clip_frames, m.frames_per_clip, rng, first=first)
        frames = gather_clips(array, idx, stride, m.input, self.image_size)  # (T, F, ...)
        return {"frames": frames, "text": SEPARATOR.join(q.sentence for q in run)}

    def collate(self, samples: list[Sample], rng: np.random.Generator) -> dict[str, Any]:
        """`examples_per_video` examples (sentence runs) of each sampled video, a video's examples adjacent."""
        m, d = self.cfg.model, self.cfg.data
        examples, keys = [], []
        for key, members in samples:
            for run in sentence_runs(
                self.train_queries[key], d.sentences, d.examples_per_video, rng, m.clip.arch, m.max_words
            ):
                examples.append(self.example(members["npy"], members.get("json", {}), run, rng))
                keys.append(key)
        frames = torch.stack([e["frames"] for e in examples])  # (B, T, F, ...)
        return {
            "frames": frames,
            "clip_mask": torch.ones(frames.shape[:2], dtype=torch.bool),
            "text": tokenize(m.clip.arch, [e["text"] for e in examples], m.max_words),
            "keys": keys,
        }

    # ----- model and evaluation ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model)

    @cached_property
    def eval_videos(self) -> _EvalVideos:
        wanted = {q.video for q in self.test_queries}
        items = sorted(
            (key, m) for key, m in shards.iter_stage(self.cfg.data.stage) if key in wanted
        )  # only the held-out videos are decoded into memory
        return _EvalVideos([k for k, _ in items], [m["npy"] for _, m in items], [m.get("json", {}) for _, m in items])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.last_report = self.evaluate_full(model)
        return flatten_report(self.last_report)

    @torch.no_grad()
    def evaluate_full(self, model: nn.Module) -> dict[str, dict[str, float]]:
        assert isinstance(model, LocVTP)
        ev = self.eval_videos
        feats = encode_dense_clips(model, ev.arrays, ev.metas, self.cfg.data.batch_clips)
        clips = dict(zip(ev.keys, feats, strict=True))
        seconds = {k: self.cfg.model.clip_frames / video_fps(m) for k, m in zip(ev.keys, ev.metas)}
        text = encode_sentences(model, [q.sentence for q in self.test_queries])
        return moment_retrieval(clips, seconds, self.test_queries, text)


def build(config: Mapping[str, Any]) -> LocVTPRecipe:
    return LocVTPRecipe(build_config(LocVTPRecipeConfig, config))


def retrieval_transfer(features_uri: str, test_queries: str) -> dict[str, dict[str, float]]:
    """Text↔moment retrieval on the test queries from a clip-feature stage (its clip and sentence features): the
    DAG's retrieval-transfer table (`moment_retrieval`)."""
    from pipelines.features.locvtp_clips import iter_features

    clips, text, seconds, durations = {}, {}, {}, {}
    for key, c, t, meta in iter_features(features_uri):
        clips[key], seconds[key] = c, float(meta["clip_seconds"])
        text[key] = dict(zip(meta.get("captions") or [], t, strict=True))
        if meta.get("split") == "test":
            durations[key] = float(meta["duration"])
    by_video = queries_by_video(read_queries(test_queries, durations))
    queries = [q for key in sorted(by_video) for q in by_video[key]]
    sentence = np.stack([text[q.video][q.sentence] for q in queries])  # (Q, D)
    return moment_retrieval(clips, seconds, queries, sentence)
