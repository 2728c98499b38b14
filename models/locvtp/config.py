"""LocVTP configuration: one frozen dataclass whose defaults are the paper's (Cao et al., ECCV 2022).

Provenance tags: "paper" = Cao et al. 2022 as summarised by the seed review (seeds/004) and METHODS §5; "official" =
mengcaopku/LocVTP @ 229bef6 (paper-code-notes §4.2), which diverges from the paper and is *not* followed except where
a field says so; "TimeSformer" = Bertasius et al., ICML 2021 (the paper's video encoder: ViT-B/16 with divided
space-time attention, temporal attention zero-initialised); "project" = a choice made here, with its reason.
Cross-field checks that need no weights run in `__post_init__` and raise `models.config.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from models.common.clip import ClipConfig
from models.config import ConfigError

PositiveName = Literal["clip_topk", "word_topk", "2d_topk", "random"]
WarpTargetName = Literal["cross_modal", "intra_modal"]
SentenceName = Literal["mean_words", "eot"]
CoarseName = Literal["v2t", "symmetric"]
InputName = Literal["pixels", "tokens"]


@dataclass(frozen=True)
class LocVTPConfig:
    """LocVTP pre-training: CLIP-initialised divided space-time video encoder, CLIP text tower, three losses."""

    # The CLIP backbone both encoders start from (paper: ViT-B/16 ImageNet-21k + DistilBERT; METHODS §5: "a
    # CLIP-initialised variant is natural here"; ViT-B/16 as in the paper). Its `context_length` must be None (then
    # `max_words` sets it) or equal `max_words`.
    clip: ClipConfig = field(default_factory=lambda: ClipConfig(arch="ViT-B-16-quickgelu"))
    # Tokens per sentence L incl. SOT/EOT (project: CLIP4Clip's 32; the paper's DistilBERT length is not stated).
    max_words: int = 32
    # Clips per video T the data side samples (paper: 8 clips, sampled equidistantly; read by the recipe's sampler).
    num_clips: int = 8
    # Source frames per clip window (paper: 16-frame clips; read by the recipe's sampler).
    clip_frames: int = 16
    # Frames F the encoder sees per clip, evenly spaced inside the window (paper: all 16). Sizes the learned time
    # embedding; a clip may bring fewer frames, never more. On 2 CPU cores the mini config uses 4 (module docstring).
    frames_per_clip: int = 16
    # Vision blocks that train and carry temporal attention, counted from the top; None = all (paper: the whole
    # TimeSformer trains). k < L makes CLIP's stem and first L−k blocks a frozen per-frame prefix (project: CPU cost).
    trainable_blocks: int | None = None
    # "pixels": batch["frames"] is (B, T, F, 3, S, S) CLIP-normalised frames (the paper's end-to-end setting);
    # "tokens": (B, T, F, 1+N, W) outputs of that frozen prefix, precomputed once with `LocVTP.frame_tokens` (project:
    # the prefix never changes, so recomputing it every step is waste). The prefix's parameters are frozen in both
    # cases whenever it is non-empty, and the stem always in "tokens" mode.
    input: InputName = "pixels"
    # Heads of each temporal attention sublayer; None = the CLIP vision tower's heads (TimeSformer: same as spatial).
    temporal_heads: int | None = None
    # Loss weights L = λc·Lc + λf·Lf + λt·Lt (paper: 0.5, 1, 1). A weight of 0 removes the term (ablation "Lc only",
    # "+Lf"); with λt = 0 the context warping head is not built at all.
    coarse_weight: float = 0.5
    fine_weight: float = 1.0
    temporal_weight: float = 1.0
    # τ of all three InfoNCE terms (paper: 0.07; official ClipLoss uses 1.0 for the coarse term — not followed).
    temperature: float = 0.07
    # Coarse term directions: "v2t" = the paper's equation (each video against all sentences of the batch);
    # "symmetric" = the average of v→t and t→v (official ClipLoss, CLIP-style).
    coarse: CoarseName = "v2t"
    # Sentence feature q̄ of the coarse term: "mean_words" = average of the word features (paper: average pooling
    # along the word axis); "eot" = CLIP's sentence feature at EOT (project option; CLIP-aligned from the start).
    sentence: SentenceName = "mean_words"
    # Clip–word correspondence discovery (paper ablation, Table "correspondence"): "clip_topk" = each clip picks its
    # top-K words (the paper's method); "word_topk" = each word picks its top-K clips, a clip's positives are the
    # words that picked it; "2d_topk" = the top K·T (clip, word) pairs of the video–sentence matrix; "random" = K
    # random words per clip. See `losses.py` for the exact definitions.
    positives: PositiveName = "clip_topk"
    # K (paper: 3; ablation 1/3/5 with 3 best). Capped by the number of words (or clips, for word_topk) available.
    top_k: int = 3
    # Context warping offsets δ ∈ [−δmax, δmax] \ {0} with t+δ a valid clip (paper: δmax = 4, best in its ablation).
    delta_max: int = 4
    # What the warped feature z^t is aligned with (paper ablation): "cross_modal" = clip t's positive words q^t_+
    # (the paper's method); "intra_modal" = the clip feature v^t itself, against all clips of the batch.
    warp_target: WarpTargetName = "cross_modal"
    # lr multiplier of every CLIP parameter (both towers); new modules (temporal attention, time embedding, warping
    # head) train at the base lr. The paper trains its ImageNet-initialised ViT and the new temporal attention at one
    # lr (Adam 1e-4, i.e. ×1); for CLIP-initialised towers the project follows CLIP4Clip §4.1 (`coef_lr` 1e-3,
    # paper-code-notes §1.4), which keeps CLIP's alignment while the new modules learn.
    clip_lr_scale: float = 1e-3

    def __post_init__(self) -> None:
        if self.max_words < 3:
            raise ConfigError(f"max_words must be >= 3 (SOT, one word, EOT), got {self.max_words}")
        if self.clip.context_length is not None and self.clip.context_length != self.max_words:
            raise ConfigError(
                f"clip.context_length={self.clip.context_length} disagrees with max_words={self.max_words}; "
                "leave clip.context_length unset (max_words sets it)"
            )
        for name in ("num_clips", "clip_frames", "frames_per_clip", "top_k", "delta_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frames_per_clip > self.clip_frames:
            raise ConfigError(f"frames_per_clip={self.frames_per_clip} exceeds clip_frames={self.clip_frames}")
        if self.trainable_blocks is not None and self.trainable_blocks < 1:
            raise ConfigError(f"trainable_blocks must be >= 1 or None, got {self.trainable_blocks}")
        if self.temporal_heads is not None and self.temporal_heads < 1:
            raise ConfigError(f"temporal_heads must be >= 1 or None, got {self.temporal_heads}")
        weights = (self.coarse_weight, self.fine_weight, self.temporal_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ConfigError(f"loss weights must be >= 0 with at least one > 0, got {weights}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.clip_lr_scale < 0:
            raise ConfigError(f"clip_lr_scale must be >= 0, got {self.clip_lr_scale}")

    @property
    def clip_config(self) -> ClipConfig:
        """The backbone config with `context_length = max_words` (what `build` passes to `build_clip`)."""
        return dataclasses.replace(self.clip, context_length=self.max_words)

    @classmethod
    def tiny(cls) -> LocVTPConfig:
        """Random-init `vlrepro-tiny` CLIP for tests: 4 clips of 2 frames, 12 words, δmax 2."""
        return cls(
            clip=ClipConfig(arch="vlrepro-tiny", pretrained=None),
            max_words=12,
            num_clips=4,
            clip_frames=2,
            frames_per_clip=2,
            delta_max=2,
        )
