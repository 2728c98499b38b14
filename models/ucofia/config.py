"""UCoFiA configuration: one frozen dataclass whose defaults are the paper's (Wang et al., ICCV 2023).

Provenance tags: "paper" = Wang et al. 2023 (METHODS §3 summarises it); "official" = Ziyang412/UCoFiA
(`train/modules/modeling_ucofia.py`, `train/modules/differential_topk.py`, `train/scripts/train_msrvtt.sh`,
`eval_t2v/main_ucofia.py`), paper-code-notes §3. Cross-field checks that need no weights run in `__post_init__` and
raise `models.config.ConfigError`; checks that need the built backbone (widths, patch count) run in `build`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from models.common.clip import ClipConfig
from models.config import ConfigError

Level = Literal["video_sentence", "sentence_frame", "patch_word"]
AggregationName = Literal["isa", "softmax", "mean"]
InputName = Literal["pixels", "tokens"]
TemporalInit = Literal["clip_text", "random"]

#: the three alignment levels of the paper, in the order the official code sums them
LEVELS: tuple[Level, ...] = ("video_sentence", "sentence_frame", "patch_word")


@dataclass(frozen=True)
class UCoFiAConfig:
    """UCoFiA: CLIP frame/patch/word features, three alignment levels aggregated by ISA, symmetric InfoNCE."""

    # The CLIP backbone (paper / official: ViT-B/32 OpenAI weights). Its `context_length` must be None (then
    # `max_words` sets it) or equal `max_words`.
    clip: ClipConfig = field(default_factory=ClipConfig)
    # "pixels": end-to-end from CLIP-normalised frames (the paper's setting; CLIP trains at lr × clip_lr_scale);
    # "tokens": frozen visual tower over precomputed per-frame tokens (T, 1+N, D) = CLS + projected patches
    # (`pipelines/features/clip_frames.py`, output="tokens"); the visual tower is not built, the text tower trains.
    input: InputName = "pixels"
    # Frames per video T (official train_msrvtt.sh `--max_frames 12`). Sizes the frame-ISA weight (T×T) and the
    # patch-ISA weights (T·(1+topk))² as in the official code (`frame_logit_weight`, `pixel_mat_weight`).
    max_frames: int = 12
    # Tokens per caption L incl. SOT/EOT (official `--max_words 32`); sizes the word-ISA weights (L×L).
    max_words: int = 32
    # seqTransf video encoder depth (official `--cross_num_hidden_layers 4`, CLIP4Clip's seqTransf).
    temporal_layers: int = 4
    # its attention heads; None = the CLIP text tower's (official: text width // 64).
    temporal_heads: int | None = None
    # "clip_text" = CLIP4Clip's init trick (text blocks 0..n−1 and text positions, official `from_pretrained`);
    # needs embed dim == text width. "random" = open_clip init.
    temporal_init: TemporalInit = "clip_text"
    # Patches kept per frame (official `VisualTokenSelection(topk=3)`, hence `num_pixel = 4` tokens per frame).
    topk: int = 3
    # Perturbed top-K (Berthet et al. 2020; official `PerturbedTopK(num_samples=500, sigma=0.05)`), training only.
    topk_samples: int = 500
    topk_sigma: float = 0.05
    # ISA temperature τ (official `/1e-2` in both softmaxes).
    tau: float = 0.01
    # Alignment levels used (paper ablation Table "levels"); training logits and `similarity` average the chosen ones.
    levels: tuple[Level, ...] = LEVELS
    # Aggregation over frames / words / patches (paper ablation): "isa" = the paper's Interactive Similarity
    # Aggregation; "softmax" = X-CLIP's AOSM Σ s ⊙ (softmax(s/τ) W), W learnable identity-initialised (ISA without the
    # outer softmax); "mean" = parameter-free mean pooling over the valid positions.
    aggregation: AggregationName = "isa"
    # Test-time Sinkhorn-Knopp normalisation per level with a bank of *training* queries (paper "SK-norm", official
    # eval_t2v / eval_v2t `main_ucofia.py`); applied by the recipe's evaluation, never in training.
    sinkhorn: bool = True
    sinkhorn_iters: int = 4  # official `sinkhorn_knopp(..., n_iters=4)`
    # Training logits over the global batch: every feature (coarse and fine) is all-gathered and each rank scores the
    # (world·B)² pairs, as the official `_loose_similarity` does (`allgather` of all five feature sets). False = each
    # rank scores only its local B² pairs (O(world²) cheaper fine-grained cost, fewer negatives). Equal on one process.
    gather_global: bool = True
    # Most (text, video) pairs per patch–word block (bounds the (q, g, L, P) memory; results do not depend on it).
    pair_chunk_size: int = 4096
    # lr multiplier of CLIP and the logit scale (official `--coef_lr 1e-3`; the logit scale is `clip.logit_scale`).
    clip_lr_scale: float = 1e-3
    # Initial log logit scale ℓ; None = the backbone's own (≈ ln 100 for OpenAI weights, as the official code reuses
    # `clip.logit_scale`). Clamped at ln 100 after each step (CLIP4Clip's loop, which the official code keeps).
    init_logit_scale: float | None = None

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.max_words < 2:
            raise ConfigError(f"max_words must be >= 2 (SOT and EOT), got {self.max_words}")
        if self.clip.context_length is not None and self.clip.context_length != self.max_words:
            raise ConfigError(
                f"clip.context_length={self.clip.context_length} disagrees with max_words={self.max_words}; "
                "leave clip.context_length unset (max_words sets it)"
            )
        if not self.levels:
            raise ConfigError("levels must name at least one of " + ", ".join(LEVELS))
        if len(set(self.levels)) != len(self.levels):
            raise ConfigError(f"levels has duplicates: {list(self.levels)}")
        if self.temporal_layers < 1:
            raise ConfigError(f"temporal_layers must be >= 1, got {self.temporal_layers}")
        if self.temporal_heads is not None and self.temporal_heads < 1:
            raise ConfigError(f"temporal_heads must be >= 1 or None, got {self.temporal_heads}")
        if self.topk < 1 or self.topk_samples < 1:
            raise ConfigError(f"topk and topk_samples must be >= 1, got {self.topk}, {self.topk_samples}")
        if self.topk_sigma <= 0 or self.tau <= 0:
            raise ConfigError(f"topk_sigma and tau must be > 0, got {self.topk_sigma}, {self.tau}")
        if self.sinkhorn_iters < 1:
            raise ConfigError(f"sinkhorn_iters must be >= 1, got {self.sinkhorn_iters}")
        if self.pair_chunk_size < 1:
            raise ConfigError(f"pair_chunk_size must be >= 1, got {self.pair_chunk_size}")
        if self.clip_lr_scale < 0:
            raise ConfigError(f"clip_lr_scale must be >= 0, got {self.clip_lr_scale}")

    @property
    def clip_config(self) -> ClipConfig:
        """The backbone config with `context_length = max_words` (what `build` passes to `build_clip`)."""
        return dataclasses.replace(self.clip, context_length=self.max_words)

    @property
    def tokens_per_frame(self) -> int:
        """Patch–word tokens per frame: ``[CLS ; topk selected patches]`` (official `num_pixel = 4`)."""
        return 1 + self.topk

    @classmethod
    def tiny(cls) -> UCoFiAConfig:
        """Random-init `vlrepro-tiny` CLIP (embed 32, 4 patches) for tests: 4 frames, 16 words, topk 2, 2 layers."""
        return cls(
            clip=ClipConfig(arch="vlrepro-tiny", pretrained=None),
            max_frames=4,
            max_words=16,
            temporal_layers=2,
            topk=2,
            topk_samples=64,
            temporal_init="random",
        )
