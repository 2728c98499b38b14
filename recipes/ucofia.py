"""UCoFiA training recipe: the `models.ucofia` network on retrieval shards (frames, or frozen-CLIP frame tokens), with
the paper's test-time Sinkhorn normalisation (SK-norm) per alignment level.

Evaluation (official `eval_t2v/main_ucofia.py` and `eval_v2t/main_ucofia.py`, paper-code-notes §3.5): every caption of
every test video is a query. Each level's (captions × videos) similarities are computed separately; with
`model.sinkhorn` on, a bank of **training** queries — never the test queries — gives each level a Sinkhorn prior:
- t2v: training captions × test videos → a per-video prior added to that level's columns;
- v2t: test captions × training videos → a per-caption prior (transposed construction) added to its rows;
then the levels are averaged (`models.ucofia.sinkhorn_fuse`). t2v metrics come from the t2v-normalised matrix and v2t
metrics from the v2t-normalised one (a per-video prior cannot change any video's caption ranking, so one matrix
cannot serve both). The report also carries the un-normalised scores (`no_sinkhorn/…`) and each level on its own
(`level-<name>/…`, un-normalised) so ablations read off one run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from models.common.clip import tokenize
from models.common.metrics.retrieval import BLOCK_RANKS, recall_metrics, retrieval_ranks
from models.config import ConfigError
from models.config import build as build_config
from models.engine.loop import Batch, TrainConfig
from models.ucofia import UCoFiA, UCoFiAConfig, sinkhorn_fuse
from models.ucofia import build as build_model
from pipelines.datasets.retrieval_data import EvalSet, RetrievalData, RetrievalDataConfig, concat_reprs, flatten, report

Repr = dict[str, torch.Tensor]


@dataclass(frozen=True)
class UCoFiARecipeConfig:
    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    model: UCoFiAConfig = field(default_factory=UCoFiAConfig)
    # official train_msrvtt.sh: 15 epochs, batch 128 (global, 4 GPUs), CLIP4Clip's optimiser otherwise
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15))
    # training captions (t2v) and training videos (v2t) in the Sinkhorn banks: 0 = all of them (official: all ~180k
    # MSR-VTT training captions); n > 0 = a seeded subsample of n each, to bound the bank × gallery scoring cost.
    sinkhorn_bank: int = 0

    def __post_init__(self) -> None:
        if self.sinkhorn_bank < 0:
            raise ConfigError(f"sinkhorn_bank must be >= 0, got {self.sinkhorn_bank}")


class UCoFiARecipe:
    def __init__(self, cfg: UCoFiARecipeConfig) -> None:
        # the data side follows the model's input mode and frame/word budget: one source of truth
        m = cfg.model
        data = replace(cfg.data, input=m.input, max_frames=m.max_frames, max_words=m.max_words, arch=m.clip.arch)
        self.cfg = replace(cfg, data=data)
        self.train: TrainConfig = cfg.train
        self.last_report: dict[str, Any] = {}

    @cached_property
    def data(self) -> RetrievalData:
        return RetrievalData(self.cfg.data, self.train.batch_size, self.train.seed)

    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model)

    def steps_per_epoch(self, world_size: int) -> int:
        return self.data.steps_per_epoch(world_size)

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        return self.data.batches(epoch, rank, world_size, start)

    def bank(self) -> EvalSet:
        """The Sinkhorn query bank: the **training** split's captions and videos (subsampled per `sinkhorn_bank`)."""
        ev = self.data.eval_set(self.cfg.data.train_split)
        n = self.cfg.sinkhorn_bank
        rng = np.random.default_rng(self.train.seed)
        captions = ev.captions
        if 0 < n < len(captions):
            captions = [captions[i] for i in np.sort(rng.choice(len(captions), n, replace=False))]
        keys, videos = ev.keys, ev.videos
        if 0 < n < len(videos):
            keep = np.sort(rng.choice(len(videos), n, replace=False))
            keys, videos = [keys[i] for i in keep], [videos[i] for i in keep]
        # caption_video no longer indexes `videos` after subsampling and no metric reads it for a bank
        return EvalSet(keys, videos, captions, np.full(len(captions), -1, dtype=np.int64))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.last_report = self.evaluate_full(model)  # kept for the driver's report, plots (rank arrays) and tables
        return flatten(self.last_report)

    def evaluate_full(self, model: nn.Module) -> dict[str, Any]:
        if not isinstance(model, UCoFiA):
            raise TypeError(f"the UCoFiA recipe evaluates UCoFiA models, got {type(model).__name__}")
        ev = self.data.eval_set()
        was_training = model.training
        model.eval()  # deterministic patch selection
        try:
            return evaluate_retrieval(
                model, self.data, ev, self.bank() if model.cfg.sinkhorn else None, self.cfg.data.subsets
            )
        finally:
            model.train(was_training)


# ----- evaluation ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_captions(model: UCoFiA, data: RetrievalData, captions: Sequence[str]) -> Repr:
    """Caption representations in batches of `eval_batch`, on the model's device (evaluation may run on a GPU)."""
    b, device = data.cfg.eval_batch, next(model.parameters()).device
    parts = [
        model.encode_text_for_eval(tokenize(data.cfg.arch, list(captions[i : i + b]), data.cfg.max_words).to(device))
        for i in range(0, len(captions), b)
    ]
    return concat_reprs(parts)


@torch.no_grad()
def encode_videos(model: UCoFiA, data: RetrievalData, videos: Sequence[np.ndarray]) -> Repr:
    """Video representations in batches of `eval_batch` (deterministic frame sampling), on the model's device."""
    b, device = data.cfg.eval_batch, next(model.parameters()).device
    parts = []
    for i in range(0, len(videos), b):
        video, mask = data.video_tensor(videos[i : i + b])
        parts.append(model.encode_video_for_eval(video.to(device), mask.to(device)))
    return concat_reprs(parts)


@torch.no_grad()
def level_similarities(model: UCoFiA, text: Repr, video: Repr) -> dict[str, torch.Tensor]:
    """(Q, G) per level, float32 (the model chunks the pairwise patch–word level itself)."""
    return {k: v.float() for k, v in model.similarity_levels(text, video).items()}


def _merge_directions(t2v: Mapping[str, Any], v2t: Mapping[str, Any]) -> dict[str, Any]:
    """Reports of the t2v- and the v2t-normalised matrices → t2v metrics from the first, v2t from the second."""
    out: dict[str, Any] = {}
    for name, block in t2v.items():
        out[name] = {"t2v": block["t2v"], "v2t": v2t[name]["v2t"]}
    return out


@torch.no_grad()
def evaluate_retrieval(
    model: UCoFiA,
    data: RetrievalData,
    ev: EvalSet,
    bank: EvalSet | None,
    subsets: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """Full retrieval report of `model` on `ev` (see the module docstring); `bank` = training captions and videos for
    SK-norm, None = no normalisation."""
    text = encode_captions(model, data, ev.captions)
    video = encode_videos(model, data, ev.videos)
    levels = level_similarities(model, text, video)  # level → (Q, G)
    raw = sinkhorn_fuse(levels, None)
    if bank is None:
        sim_t2v = sim_v2t = raw
    else:
        n_iters = model.cfg.sinkhorn_iters
        bank_text = level_similarities(model, encode_captions(model, data, bank.captions), video)  # (M, G)
        bank_video = level_similarities(model, text, encode_videos(model, data, bank.videos))  # (Q, M')
        sim_t2v = sinkhorn_fuse(levels, bank_text, n_iters, bank="text")
        sim_v2t = sinkhorn_fuse(levels, bank_video, n_iters, bank="video")
    t2v_rep = report(sim_t2v.cpu().numpy(), ev, subsets)
    v2t_rep = report(sim_v2t.cpu().numpy(), ev, subsets)
    ranks = {"t2v": t2v_rep.pop("ranks")["t2v"], "v2t": v2t_rep.pop("ranks")["v2t"]}
    t2v_blocks, v2t_blocks = t2v_rep.pop(BLOCK_RANKS), v2t_rep.pop(BLOCK_RANKS)
    block_ranks = {name: {"t2v": t2v_blocks[name]["t2v"], "v2t": v2t_blocks[name]["v2t"]} for name in t2v_blocks}
    out = _merge_directions(t2v_rep, v2t_rep)
    scorings = {"no_sinkhorn": raw} if bank is not None else {}
    if len(levels) > 1:
        scorings.update({f"level-{name}": sim for name, sim in levels.items()})
    for name, sim in scorings.items():  # per-query ranks kept for the claims' paired bootstrap
        block_ranks[name] = retrieval_ranks(sim.cpu().numpy(), ev.caption_video)
        out[name] = {direction: recall_metrics(r) for direction, r in block_ranks[name].items()}
    out["ranks"] = ranks
    out[BLOCK_RANKS] = block_ranks
    return out


def build(config: Mapping[str, Any]) -> UCoFiARecipe:
    return UCoFiARecipe(build_config(UCoFiARecipeConfig, config))
