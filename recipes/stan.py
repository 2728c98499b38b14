"""STAN training recipe: the `models.stan` network on retrieval shards (frames, or frozen-CLIP block outputs).

Mirrors `recipes/clip4clip.py` and reuses `retrieval_data` for batches and retrieval evaluation. STAN
specifics (paper-code-notes §2.3):

- optimiser defaults of the official MSR-VTT B/32 config: AdamW lr 2e-6 (CLIP; the branch ×10 via the model's
  `lr_scales`), wd 0.05, β (0.9, 0.98), ε 1e-8, grad-norm clip 5, 10 epochs, global batch 128, 12 frames. Schedule:
  warmup then cosine (METHODS §2). The official `param_scheduler` is LinearLR from 0.05 over epochs 0–10 then a
  cosine from epoch 10, which 10 epochs never reach: in effect a linear ramp over the whole run;
- frame sampler (`sampler="segment"`, official `UniformSample`): T equal segments, a random frame in each when
  training, the middle one when evaluating (CLIP4Clip's `linspace` sampler is `sampler="uniform"`);
- input "blocks" reads a `clip-blocks<K>` stage (`pipelines/features/clip_frames.py`, output "blocks"): per video
  float16 ``(T, K, 1+N, W)``;
- recognition evaluation (paper §4.3), on each eval video's ``label``: **zero-shot** against class-name prompts
  (`recognition/top1`, `recognition/top5`); **trained** (`recognition_trained/…`), the official recognition loss —
  cross-entropy over ``(1/τ)·cos(video, class-name text)`` — fitted on the training videos' embeddings of the
  retrieval model (`models.stan.recognition.fit_prompt_classifier`: the class embeddings start from the prompts and
  train, the video side is the model's); and, with `model.num_classes > 0`, the linear head trained alongside
  retrieval (`recognition_linear/…`; it trains on class indices added to every batch);
- chance levels of every retrieval block (`chance/<block>/…`): ``random`` = 100 / clips, ``motion_blind`` = 100 /
  action labels among the block's clips — what a model that reads everything in a caption but the motion scores when
  every appearance has one clip per label (the mini world's test split: 8.3 overall, 25.0 on the order subset) —
  and ``tied`` = % of t2v queries whose clip scores within `TIE_TOLERANCE` of another clip's. The pessimistic tie
  rule counts an exact tie against the true clip; order-blind pooling of the reversal twins' identical frame
  multisets ties up to float32 rounding (summed in another order), so what it scores on the order subset is
  rounding noise, not order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.common.clip import tokenize
from models.config import build as build_config
from models.engine.loop import Batch, TrainConfig
from models.engine.optim import OptimConfig
from models.stan import StanConfig, class_prompts, fit_prompt_classifier, topk_accuracy
from models.stan import build as build_model
from models.stan.recognition import DEFAULT_PROMPT
from pipelines import shards
from pipelines.datasets.retrieval_data import (
    EvalSet,
    RetrievalData,
    RetrievalDataConfig,
    flatten,
    report,
    similarity_matrix,
)

Sampler = Literal["segment", "uniform"]

#: scores closer than this count as tied in `StanRecipe.chance` (cosines in [-1, 1]; measured on the mini world's
#: order subset with the baseline: 62.5 % of the queries tie exactly, 94.4 % within 1e-7, 100 % within 1e-6)
TIE_TOLERANCE = 1e-6


def _stan_train() -> TrainConfig:
    # official configs/exp/stan/stan_msrvtt_b32_hf.py (paper-code-notes §2.3)
    optim = OptimConfig(lr=2e-6, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-8, warmup_fraction=0.1, grad_clip=5.0)
    return TrainConfig(epochs=10, batch_size=128, seed=42, optim=optim)


@dataclass(frozen=True)
class RecognitionConfig:
    enabled: bool = True  # evaluate recognition when the eval videos carry a "label"
    prompt: str = DEFAULT_PROMPT  # "{name}" = the label in words ("left-then-up" → "left, then up")
    classes: tuple[str, ...] = ()  # class labels in index order; () = the sorted labels found in the stage
    # Trained recognition (`recognition_trained`): full-batch Adam steps of the class-prompt cross-entropy at the
    # model's τ over the training split's labelled videos; 0 = zero-shot only. The paper fine-tunes the whole model
    # on K400/SSv2; here the retrieval model's video embeddings stay fixed. 300 steps at lr 0.01: on the mini world
    # (small, the baseline) test top-1 is flat from there (24.1 at 300, 23.6 at 500, 23.1 at 1000 steps) while the
    # training accuracy keeps rising (34.8 → 39.6); lr 0.003 gets there by ~500. Under 1 s on one core.
    train_steps: int = 300
    train_lr: float = 0.01


@dataclass(frozen=True)
class StanRecipeConfig:
    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    model: StanConfig = field(default_factory=StanConfig)
    train: TrainConfig = field(default_factory=_stan_train)
    sampler: Sampler = "segment"  # official UniformSample (random per segment in training, middle at test)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)


class StanData(RetrievalData):
    """`RetrievalData` with, when the linear recognition head is on, class indices in every batch."""

    def __init__(self, cfg: RetrievalDataConfig, global_batch: int, seed: int, classes: Sequence[str] = ()) -> None:
        super().__init__(cfg, global_batch, seed)
        self.class_index = {c: i for i, c in enumerate(classes)}

    def collate(self, samples: list[tuple[str, dict[str, Any]]], rng: np.random.Generator) -> dict[str, Any]:
        batch = super().collate(samples, rng)
        if self.class_index:
            batch["label"] = torch.tensor([self.class_index[m["json"]["label"]] for _, m in samples])
        return batch


def stage_labels(uri: str) -> dict[str, str]:
    """Video key → its action ``label`` from the stage manifest (no array is decoded)."""
    return {r["key"]: r["label"] for r in shards.read_manifest(uri) if isinstance(r.get("label"), str) and r["label"]}


class StanRecipe:
    def __init__(self, cfg: StanRecipeConfig) -> None:
        # the data side follows the model's input mode and frame/word budget: one source of truth
        m = cfg.model
        data = replace(
            cfg.data,
            input=m.input,
            sampler=cfg.sampler,
            max_frames=m.max_frames,
            max_words=m.max_words,
            arch=m.clip.arch,
        )
        self.cfg = replace(cfg, data=data)
        self.train: TrainConfig = cfg.train
        self.last_report: dict[str, Any] = {}

    @cached_property
    def labels(self) -> dict[str, str]:
        return stage_labels(self.cfg.data.stage)

    @cached_property
    def classes(self) -> list[str]:
        return list(self.cfg.recognition.classes) or sorted(set(self.labels.values()))

    @cached_property
    def data(self) -> StanData:
        head_classes = self.classes if self.cfg.model.num_classes else []
        if head_classes and len(head_classes) != self.cfg.model.num_classes:
            raise ValueError(f"model.num_classes={self.cfg.model.num_classes} but the stage has {len(head_classes)}")
        return StanData(self.cfg.data, self.train.batch_size, self.train.seed, head_classes)

    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model)

    def steps_per_epoch(self, world_size: int) -> int:
        return self.data.steps_per_epoch(world_size)

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        return self.data.batches(epoch, rank, world_size, start)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.last_report = self.evaluate_full(model)  # kept for the driver's plots (rank arrays)
        return flatten_all(self.last_report)

    def evaluate_full(self, model: nn.Module) -> dict[str, Any]:
        """The retrieval report (`retrieval_data.report`: "overall", subsets, "ranks"), its "chance" levels, and the
        "recognition" (zero-shot), "recognition_trained" and, with a linear head, "recognition_linear" blocks of
        top-k accuracies."""
        ev = self.data.eval_set()
        sim = similarity_matrix(model, self.data, ev)
        out = report(sim, ev, self.cfg.data.subsets)
        out["chance"] = self.chance(sim, ev)
        if self.cfg.recognition.enabled:
            out.update(self.recognition(model, ev))
        return out

    def chance(self, sim: np.ndarray, ev: EvalSet) -> dict[str, dict[str, float]]:
        """Per retrieval block ("overall" and each subset): t2v R@1 of random ranking (``random``) and of a model
        blind to motion only (``motion_blind``: 100 / the block's distinct labels, when labelled), and the % of t2v
        queries whose clip scores within `TIE_TOLERANCE` of another clip of the block (``tied``)."""
        pos = {k: i for i, k in enumerate(ev.keys)}
        blocks = {"overall": np.arange(len(ev.keys))}
        for name, keys in self.cfg.data.subsets.items():
            blocks[name] = np.array(sorted(pos[k] for k in keys if k in pos), dtype=np.int64)
        out: dict[str, dict[str, float]] = {}
        for name, vids in blocks.items():
            if len(vids) < 2:
                continue
            caps = np.flatnonzero(np.isin(ev.caption_video, vids))
            sub = sim[np.ix_(caps, vids)].astype(np.float64)
            gt = np.searchsorted(vids, ev.caption_video[caps])
            own = sub[np.arange(len(caps)), gt]
            others = np.where(np.arange(len(vids))[None, :] == gt[:, None], np.inf, sub)
            tied = (np.abs(others - own[:, None]) <= TIE_TOLERANCE).any(axis=1)
            block = {"random": 100.0 / len(vids), "tied": float(100.0 * np.mean(tied)) if len(caps) else 0.0}
            labels = {self.labels[ev.keys[i]] for i in vids.tolist() if ev.keys[i] in self.labels}
            if len(labels) > 1:
                block["motion_blind"] = 100.0 / len(labels)
            out[name] = block
        return out

    @torch.no_grad()
    def recognition(self, model: Any, ev: EvalSet) -> dict[str, dict[str, float]]:
        """Top-1/top-5 of the eval videos that have a label among `classes`: zero-shot against the class prompts
        ("recognition"), with the prompt classifier trained on the training split ("recognition_trained", when
        `recognition.train_steps` > 0) and by the linear head if any ("recognition_linear")."""
        index = {c: i for i, c in enumerate(self.classes)}
        keep = [i for i, k in enumerate(ev.keys) if self.labels.get(k) in index]
        if not keep or len(index) < 2:
            return {}
        gt = np.array([index[self.labels[ev.keys[i]]] for i in keep], dtype=np.int64)
        prompts = tokenize(
            self.cfg.data.arch, class_prompts(self.classes, self.cfg.recognition.prompt), self.cfg.data.max_words
        )
        device = next(model.parameters()).device
        class_repr = model.encode_text_for_eval(prompts.to(device))  # (C, D)
        video_repr = self._encode_videos(model, [ev.videos[i] for i in keep])  # (V, D)
        out = {"recognition": topk_accuracy(model.recognition_scores(video_repr, class_repr).float().cpu().numpy(), gt)}
        rc = self.cfg.recognition
        if rc.train_steps > 0:
            train = self.data.eval_set(self.cfg.data.train_split)
            seen = [i for i, k in enumerate(train.keys) if self.labels.get(k) in index]
            if seen:
                y = torch.tensor([index[self.labels[train.keys[i]]] for i in seen])
                x = self._encode_videos(model, [train.videos[i] for i in seen])
                weight = fit_prompt_classifier(
                    x, y, class_repr.float().cpu(), self.cfg.model.temperature, rc.train_steps, rc.train_lr
                )
                out["recognition_trained"] = topk_accuracy((video_repr.float().cpu() @ weight.T).numpy(), gt)
        if getattr(model, "recognition_head", None) is not None:
            logits = model.recognition_logits(video_repr).float().cpu().numpy()
            out["recognition_linear"] = topk_accuracy(logits, gt)
        return out

    @torch.no_grad()
    def _encode_videos(self, model: Any, videos: Sequence[np.ndarray]) -> torch.Tensor:
        """Unit video embeddings (V, D) at evaluation sampling, `data.eval_batch` at a time."""
        device = next(model.parameters()).device
        b = self.cfg.data.eval_batch
        return torch.cat(
            [
                model.encode_video_for_eval(*(t.to(device) for t in self.data.video_tensor(videos[i : i + b])))
                for i in range(0, len(videos), b)
            ]
        )


RECOGNITION_BLOCKS = ("recognition", "recognition_trained", "recognition_linear")


def flatten_all(rep: Mapping[str, Any]) -> dict[str, float]:
    """Retrieval metrics as `retrieval_data.flatten` names them (``t2v/R@1``…, chance levels as
    ``chance/order/motion_blind``), recognition as ``recognition/top1``."""
    flat = flatten({k: v for k, v in rep.items() if k not in RECOGNITION_BLOCKS})
    for name in RECOGNITION_BLOCKS:
        flat.update({f"{name}/{k}": float(v) for k, v in rep.get(name, {}).items()})
    return flat


def build(config: Mapping[str, Any]) -> StanRecipe:
    return StanRecipe(build_config(StanRecipeConfig, config))
