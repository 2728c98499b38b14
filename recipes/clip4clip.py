"""CLIP4Clip training recipe: the `models.clip4clip` network on retrieval shards (frames or frozen-CLIP features)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from torch import nn

from models.clip4clip import Clip4ClipConfig
from models.clip4clip import build as build_model
from models.config import build as build_config
from models.engine.loop import Batch, TrainConfig
from pipelines.datasets.retrieval_data import RetrievalData, RetrievalDataConfig, flatten, report, similarity_matrix


@dataclass(frozen=True)
class Clip4ClipRecipeConfig:
    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    model: Clip4ClipConfig = field(default_factory=Clip4ClipConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # CLIP4Clip §4.1: 5 epochs, batch 128, seed 42


class Clip4ClipRecipe:
    def __init__(self, cfg: Clip4ClipRecipeConfig) -> None:
        # the data side follows the model's input mode and frame/word budget: one source of truth
        m = cfg.model
        data = replace(cfg.data, input=m.input, max_frames=m.max_frames, max_words=m.max_words, arch=m.clip.arch)
        self.cfg = replace(cfg, data=data)
        self.train: TrainConfig = cfg.train

    @cached_property
    def data(self) -> RetrievalData:
        return RetrievalData(self.cfg.data, self.train.batch_size, self.train.seed)

    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model)

    def steps_per_epoch(self, world_size: int) -> int:
        return self.data.steps_per_epoch(world_size)

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        return self.data.batches(epoch, rank, world_size, start)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.last_report = self.evaluate_full(model)  # kept for the driver's plots (rank arrays)
        return flatten(self.last_report)

    def evaluate_full(self, model: nn.Module) -> dict[str, Any]:
        ev = self.data.eval_set()
        return report(similarity_matrix(model, self.data, ev), ev, self.cfg.data.subsets)


def build(config: Mapping[str, Any]) -> Clip4ClipRecipe:
    return Clip4ClipRecipe(build_config(Clip4ClipRecipeConfig, config))
