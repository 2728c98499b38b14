"""LocVTP: "Video-Text Pre-training for Temporal Localization" (Cao et al., ECCV 2022) — the paper, not the code.

Working spec: METHODS §5; seed review 004; paper-code-notes §4 (the official mengcaopku/LocVTP code is "uncleaned",
uses C3D + DistilBERT, an argmax positive, additive warping and a shift-prediction loss — none of which is followed).

| paper piece | here |
|---|---|
| f_v: divided space-time ViT, temporal attention zero-init, T clips → v^t | `SpaceTimeEncoder` (`encode_clips`) |
| f_q: word features q^s (DistilBERT) | CLIP text tower, `ClipBackbone.encode_words` content tokens (`encode_text`) |
| L_c: video–sentence InfoNCE on mean-pooled v̄, q̄, τ = 0.07 | `losses.COARSE_LOSSES` over `ContrastiveLoss.logits` |
| correspondence discovery, q^t_+ = avgpool(top-K words), K = 3 | `losses.POSITIVE_SELECTORS`, `positive_features` |
| L_f: clip vs all words of the batch | `losses.fine_loss` |
| context warping head z^t = ReLU(W[v^{t+δ}; sgn δ; abs δ]), δmax = 4 | `warping.ContextWarpingHead`, `sample_offsets` |
| L_t: L_f with z^t for v^t (cross-modal); intra-modal ablation | `_warp_cross_modal` / `_warp_intra_modal` |
| L = 0.5 L_c + L_f + L_t | `training_step` |

Batch (a mapping): ``"frames"`` float (B, T, F, 3, S, S) CLIP-normalised frames (`preprocess_frames`) with
``input="pixels"``, or (B, T, F, 1+N, W) precomputed `frame_tokens` with ``input="tokens"``; F frames per clip
(<= `frames_per_clip`), any values at padded clips; ``"clip_mask"`` bool (B, T), True = real clip (any pattern;
δ only lands on real clips); ``"text"`` long (B, L) tokens from `tokenize` (L <= max_words), sentence b describes
video b. Padded clips are never run through the encoder.

Variants are chosen in `__init__` from dicts (`COARSE_LOSSES`, `SENTENCE_POOLS`, `POSITIVE_SELECTORS`,
`WARP_TARGETS`); `forward` never branches on a string. The model never talks to torch.distributed itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.common.clip import ClipBackbone, build_clip
from models.common.distributed import all_gather_with_grad
from models.common.losses import ContrastiveLoss
from models.common.temporal import masked_mean
from models.locvtp.config import LocVTPConfig
from models.locvtp.encoder import SpaceTimeEncoder
from models.locvtp.losses import COARSE_LOSSES, POSITIVE_SELECTORS, fine_loss, positive_features
from models.locvtp.warping import ContextWarpingHead, sample_offsets

Batch = Mapping[str, Any]


@dataclass(frozen=True)
class TextFeatures:
    """Encoded sentences. words: (B, L, D) unit word features (every position; only `word_mask` ones are words);
    word_mask: (B, L) bool, True on content tokens strictly between SOT and EOT; sentence: (B, D) unit q̄."""

    words: torch.Tensor
    word_mask: torch.Tensor
    sentence: torch.Tensor


def _sentence_mean_words(words: torch.Tensor, word_mask: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Paper: q̄ = average pooling of the word features along the word axis (re-normalised)."""
    return F.normalize(masked_mean(words, word_mask), dim=-1)


def _sentence_eot(words: torch.Tensor, word_mask: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """CLIP's sentence feature: the (unit) word feature at EOT (`ClipBackbone.encode_text`)."""
    return words[torch.arange(words.shape[0], device=words.device), eot]


SENTENCE_POOLS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean_words": _sentence_mean_words,
    "eot": _sentence_eot,
}


@dataclass(frozen=True)
class _Context:
    """What the warping targets may read: clip features and mask, positives, the gathered word bank."""

    clips: torch.Tensor  # (B, T, D) unit v^t
    clip_mask: torch.Tensor  # (B, T)
    positives: torch.Tensor  # (B, T, D) unit q^t_+
    has_positive: torch.Tensor  # (B, T)
    words: torch.Tensor  # (M, L, D) unit words of the global batch
    word_mask: torch.Tensor  # (M, L)


def _warp_cross_modal(z: torch.Tensor, has_delta: torch.Tensor, ctx: _Context, temperature: float) -> torch.Tensor:
    """Paper L_t: z^t in place of v^t in L_f — positive q^t_+, denominator all words of the batch."""
    return fine_loss(z, ctx.positives, has_delta & ctx.has_positive, ctx.words, ctx.word_mask, temperature)


def _warp_intra_modal(z: torch.Tensor, has_delta: torch.Tensor, ctx: _Context, temperature: float) -> torch.Tensor:
    """Ablation: z^t aligned with v^t against every valid clip of the global batch (v^t itself is one of them)."""
    bank = all_gather_with_grad(ctx.clips)  # (M, T, D)
    bank_mask = all_gather_with_grad(ctx.clip_mask.to(ctx.clips.dtype)) > 0.5  # (M, T)
    return fine_loss(z, ctx.clips, has_delta, bank, bank_mask, temperature)


WARP_TARGETS: dict[str, Callable[[torch.Tensor, torch.Tensor, _Context, float], torch.Tensor]] = {
    "cross_modal": _warp_cross_modal,
    "intra_modal": _warp_intra_modal,
}


class LocVTP(nn.Module):
    """LocVTP pre-training model; implements the engine's `TrainableModel`. Build it with `build(cfg)`.

    Attributes: `clip` (both CLIP towers; lr × `clip_lr_scale`), `encoder` (temporal attention + time embedding),
    `warp` (the context warping head, None when `temporal_weight == 0`). CLIP's own `logit_scale` is frozen (unused:
    τ is fixed).
    """

    def __init__(self, cfg: LocVTPConfig, clip: ClipBackbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = clip
        self.encoder = SpaceTimeEncoder(clip, cfg.frames_per_clip, cfg.temporal_heads, cfg.trainable_blocks)
        self.warp = ContextWarpingHead(clip.embed_dim) if cfg.temporal_weight > 0 else None
        self.coarse_contrast = ContrastiveLoss(temperature=cfg.temperature, normalize=False)
        self._coarse = COARSE_LOSSES[cfg.coarse]
        self._sentence = SENTENCE_POOLS[cfg.sentence]
        self._select = POSITIVE_SELECTORS[cfg.positives]
        self._warp_loss = WARP_TARGETS[cfg.warp_target]
        self._clips_from_input = CLIP_INPUTS[cfg.input]
        frozen = [clip.logit_scale, *self.encoder.frozen_prefix_parameters(clip)]
        if cfg.input == "tokens":
            frozen += self.encoder.stem_parameters(clip)  # the stem ran when the tokens were precomputed
        for param in frozen:
            param.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    # ----- encoders --------------------------------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Sentences → tokens (B, max_words) int64: ``[SOT] words [EOT] 0 …``."""
        return self.clip.tokenize(texts)

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (..., 3, S, S) → the frozen prefix's output tokens (..., 1+N, W): what ``input="tokens"`` batches
        carry in ``"frames"``. Precompute them once (under ``torch.no_grad()``) with the model that will train."""
        return self.encoder.frame_tokens(self.clip, frames)

    def encode_clips(self, frames: torch.Tensor, clip_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Clip features v (B, T, D), L2-normalised unless `normalize=False`; zeros at padded clips.

        frames: (B, T, F, 3, S, S) CLIP-normalised frames (``input="pixels"``) or (B, T, F, 1+N, W) `frame_tokens`
        (``input="tokens"``), F <= frames_per_clip; clip_mask: (B, T) bool. For downstream feature extraction
        (2D-TAN input) call it under ``torch.no_grad()`` in eval mode.
        """
        if frames.shape[:2] != clip_mask.shape:
            raise ValueError(f"frames {tuple(frames.shape)} do not match clip_mask {tuple(clip_mask.shape)}")
        mask = clip_mask.bool()
        b, t = mask.shape
        out = frames.new_zeros(b, t, self.embed_dim, dtype=self.encoder.time_embed.dtype)  # (B, T, D)
        if not bool(mask.any()):
            return out
        feats = self._clips_from_input(self, frames[mask])  # (M, D), M = real clips
        if normalize:
            feats = F.normalize(feats, dim=-1)
        return out.index_put((mask,), feats)

    def encode_text(self, tokens: torch.Tensor) -> TextFeatures:
        """Tokens (B, L) → unit word features, content-word mask and the sentence feature q̄ (per `cfg.sentence`)."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.max_words:
            raise ValueError(f"expected tokens (B, L <= {self.cfg.max_words}), got {tuple(tokens.shape)}")
        words, real = self.clip.encode_words(tokens)  # (B, L, D), (B, L) SOT..EOT
        words = F.normalize(words, dim=-1)
        eot = self.clip.eot_index(tokens)  # (B,)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        word_mask = real & (positions[None, :] > 0) & (positions[None, :] < eot[:, None])  # content tokens only
        return TextFeatures(words, word_mask, self._sentence(words, word_mask, eot))

    # ----- training (engine `TrainableModel`) -----------------------------------------------------------------------

    def losses(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The unweighted terms present in the config: {"coarse", "fine", "temporal"} (scalars).

        `generator` drives the random choices (δ, random positives); None = torch's global RNG.
        """
        cfg = self.cfg
        clip_mask = batch["clip_mask"].bool()
        clips = self.encode_clips(batch["frames"], clip_mask)  # (B, T, D) unit
        text = self.encode_text(batch["text"])
        out: dict[str, torch.Tensor] = {}
        if cfg.coarse_weight > 0:
            video = F.normalize(masked_mean(clips, clip_mask), dim=-1)  # (B, D) v̄
            out["coarse"] = self._coarse(self.coarse_contrast.logits(text.sentence, video))
        if cfg.fine_weight == 0 and self.warp is None:
            return out
        with torch.no_grad():
            sim = torch.einsum("btd,bld->btl", clips, text.words)  # (B, T, L) clip–word cosines, own sentence
        pairs = self._select(sim, clip_mask, text.word_mask, cfg.top_k, generator)
        positives, has_positive = positive_features(pairs, text.words)
        ctx = _Context(
            clips=clips,
            clip_mask=clip_mask,
            positives=positives,
            has_positive=has_positive & clip_mask,
            words=all_gather_with_grad(text.words),  # (M, L, D)
            word_mask=all_gather_with_grad(text.word_mask.to(text.words.dtype)) > 0.5,  # (M, L)
        )
        if cfg.fine_weight > 0:
            out["fine"] = fine_loss(clips, positives, ctx.has_positive, ctx.words, ctx.word_mask, cfg.temperature)
        if self.warp is not None:
            delta, has_delta = sample_offsets(clip_mask, cfg.delta_max, generator)
            z = F.normalize(self.warp(clips, delta), dim=-1)  # (B, T, D)
            out["temporal"] = self._warp_loss(z, has_delta, ctx, cfg.temperature)
        return out

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": λc·Lc + λf·Lf + λt·Lt, "loss_coarse"/"loss_fine"/"loss_temporal": the unweighted terms}."""
        terms = self.losses(batch)
        weights = {"coarse": self.cfg.coarse_weight, "fine": self.cfg.fine_weight, "temporal": self.cfg.temporal_weight}
        loss = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        return {"loss": loss, **{f"loss_{name}": value.detach() for name, value in terms.items()}}

    def lr_scales(self) -> dict[str, float]:
        """CLIP (both towers) at lr × `clip_lr_scale`; temporal attention, time embedding and warping head at ×1."""
        return {"clip.": self.cfg.clip_lr_scale}

    def after_step(self) -> None:
        """Nothing to do: τ is fixed (no logit scale to clamp)."""


def _clips_from_pixels(model: LocVTP, frames: torch.Tensor) -> torch.Tensor:
    """(M, F, 3, S, S) CLIP-normalised frames → (M, D)."""
    if frames.ndim != 5:
        raise ValueError(f"input='pixels' expects frames (B, T, F, 3, S, S); got clips {tuple(frames.shape)}")
    return model.encoder(model.clip, frames)


def _clips_from_tokens(model: LocVTP, tokens: torch.Tensor) -> torch.Tensor:
    """(M, F, 1+N, W) precomputed `frame_tokens` → (M, D)."""
    return model.encoder.forward_tokens(model.clip, tokens)


CLIP_INPUTS: dict[str, Callable[[LocVTP, torch.Tensor], torch.Tensor]] = {
    "pixels": _clips_from_pixels,
    "tokens": _clips_from_tokens,
}


def build(cfg: LocVTPConfig) -> LocVTP:
    """Build LocVTP for `cfg`: the CLIP backbone (with its weights), then the new modules."""
    return LocVTP(cfg, build_clip(cfg.clip_config))
