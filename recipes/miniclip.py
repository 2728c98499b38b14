"""The project's mini CLIP: contrastive image–text pre-training on the mini world's static frame–caption pairs.

Why: the papers transfer an *image* CLIP to video. No CLIP weights can be downloaded here, so the DAG pre-trains its
own on single frames with static captions ("a red circle at the top left" — no temporal words), the way CLIP was
pre-trained on images. Settings from the measured prototype (miniworld-feasibility.md): `vlrepro-mini` (patch 16),
AdamW lr 1e-3, wd 0.1, 50 warm-up steps then cosine, batches of 128 *distinct* captions (no false negatives),
~500–650 steps → frame→caption R@1 ≈ 1.0 on held-out frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.common.clip import ClipBackbone, ClipConfig, arch_image_size, build_clip, preprocess_frames, tokenize
from models.common.losses import ContrastiveLoss
from models.common.metrics.retrieval import ranks, recall_metrics
from models.config import build as build_config
from models.engine.loop import Batch, TrainConfig
from models.engine.optim import OptimConfig


@dataclass(frozen=True)
class MiniClipConfig:
    image_text: str = ""  # path of the mini world's image_text.npz (images uint8 (N,64,64,3), captions, split)
    clip: ClipConfig = field(default_factory=lambda: ClipConfig(arch="vlrepro-mini", pretrained=None))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=6,
            batch_size=128,  # distinct captions per batch (feasibility: 128)
            seed=0,
            optim=OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=50, eps=1e-6, grad_clip=1.0),  # feasibility
        )
    )
    steps_per_epoch: int = 100  # 6 × 100 = 600 steps (feasibility: 500–650)
    eval_max: int = 1000  # held-out frames scored at evaluation


class MiniClipModel(nn.Module):
    """`ClipBackbone` + CLIP's symmetric InfoNCE with a learnable logit scale (clamped at ln 100)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.clip = build_clip(cfg)
        self.loss = ContrastiveLoss()

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        img = self.clip.encode_image(batch["images"])  # (B, D)
        txt = self.clip.encode_text(batch["text"])  # (B, D)
        loss = self.loss(txt, img)
        return {"loss": loss, "logit_scale": self.loss.logit_scale.detach()}

    def lr_scales(self) -> dict[str, float]:
        return {}

    def after_step(self) -> None:
        self.loss.clamp_()


class MiniClipRecipe:
    def __init__(self, cfg: MiniClipConfig) -> None:
        if not cfg.image_text:
            raise ValueError("MiniClipConfig.image_text must point at an image_text.npz")
        self.cfg = cfg
        self.train: TrainConfig = cfg.train

    @cached_property
    def data(self) -> dict[str, Any]:
        with np.load(self.cfg.image_text, allow_pickle=False) as z:
            images, captions, split = z["images"], z["captions"].astype(str), z["split"].astype(str)
        vocab = sorted(set(captions.tolist()))
        cap_id = np.array([vocab.index(c) for c in captions])
        train = np.flatnonzero(split == "train")
        test = np.flatnonzero(split == "test")
        by_caption = {c: train[cap_id[train] == c] for c in range(len(vocab)) if np.any(cap_id[train] == c)}
        return {
            "images": images,
            "vocab": vocab,
            "cap_id": cap_id,
            "train": train,
            "test": test,
            "by_caption": by_caption,
        }

    def context_length(self) -> int:
        return self.cfg.clip.context_length or 32

    def build_model(self) -> nn.Module:
        return MiniClipModel(self.cfg.clip)

    def steps_per_epoch(self, world_size: int) -> int:
        if self.train.batch_size % world_size:
            raise ValueError(f"batch {self.train.batch_size} not divisible by {world_size} ranks")
        return self.cfg.steps_per_epoch

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        d = self.data
        captions = sorted(d["by_caption"])
        per_rank = self.train.batch_size // world_size
        n_distinct = min(self.train.batch_size, len(captions))
        for step in range(start, self.cfg.steps_per_epoch):
            # the *global* batch: distinct captions (no false negatives), one random frame each; rank r takes its slice
            rng = np.random.default_rng([self.train.seed, epoch, step])
            chosen = rng.choice(captions, size=n_distinct, replace=False)
            chosen = np.resize(chosen, self.train.batch_size)[rank * per_rank : (rank + 1) * per_rank]
            idx = np.array([rng.choice(d["by_caption"][c]) for c in chosen])
            yield {
                "images": preprocess_frames(d["images"][idx], arch_image_size(self.cfg.clip.arch)),
                "text": tokenize(self.cfg.clip.arch, [d["vocab"][c] for c in chosen], self.context_length()),
            }

    def export(self, model: nn.Module, folder: Path) -> None:
        """The backbone alone, loadable by `build_clip(ClipConfig(arch, pretrained=folder / "clip.pt"))`, with the
        logit scale the InfoNCE trained.

        The trained scale lives in the loss (`MiniClipModel.loss.logit_scale`); the backbone's own ``logit_scale``
        never gets a gradient and would export CLIP's initial ln(1/0.07) (a trained ℓ = 19.3 saved as 14.29), which
        the methods that inherit CLIP's scale (CLIP4Clip's loose heads, UCoFiA) would start from.
        """
        assert isinstance(model, MiniClipModel)
        state = model.clip.state_dict()
        (key,) = [k for k in state if k.endswith("logit_scale")]
        state[key] = model.loss.logit_scale.detach().clone().reshape(state[key].shape)
        torch.save(state, folder / "clip.pt")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Frame→caption retrieval on held-out frames against every distinct caption (R@K in percent)."""
        report = self.zero_shot(model)
        return {
            "frame2caption/R@1": report["R@1"],
            "frame2caption/R@5": report["R@5"],
            "frame2caption/MnR": report["MnR"],
        }

    @torch.no_grad()
    def zero_shot(self, model: nn.Module) -> Mapping[str, float]:
        d = self.data
        clip: ClipBackbone = model.clip  # type: ignore[assignment]
        device = next(clip.parameters()).device
        test = d["test"][: self.cfg.eval_max]
        tokens = tokenize(self.cfg.clip.arch, d["vocab"], self.context_length()).to(device)
        text = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1)
        feats = []
        for i in range(0, len(test), 256):
            x = preprocess_frames(d["images"][test[i : i + 256]], clip.image_size).to(device)
            feats.append(torch.nn.functional.normalize(clip.encode_image(x), dim=-1))
        sim = (torch.cat(feats) @ text.T).cpu().numpy()  # (frames, captions)
        return recall_metrics(ranks(sim, d["cap_id"][test]))


def build(config: Mapping[str, Any]) -> MiniClipRecipe:
    return MiniClipRecipe(build_config(MiniClipConfig, config))
