"""CLIP4Clip configuration: one frozen dataclass whose defaults are the paper's (Luo et al., Neurocomputing 2022).

Provenance tags: "paper §x" = Luo et al. 2022; "official" = ArrowLuo/CLIP4Clip (`modules/modeling.py`,
`modules/module_cross.py`, `modules/cross-base/cross_config.json`, `main_task_retrieval.py`); METHODS §1 and
paper-code-notes §1 summarise both. Cross-field checks that need no weights run in `__post_init__` and raise
`models.config.ConfigError`; checks that need the built backbone (widths, head counts) run in `build`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from models.common.clip import ClipConfig
from models.config import ConfigError

HeadName = Literal["meanP", "seqLSTM", "seqTransf", "tightTransf"]
PatchName = Literal["2d", "3d"]
InputName = Literal["pixels", "features"]
TemporalInit = Literal["clip_text", "random"]


@dataclass(frozen=True)
class Clip4ClipConfig:
    """CLIP4Clip: CLIP frame and text encoders, one similarity calculator, symmetric InfoNCE."""

    # The CLIP backbone (paper §4.1: ViT-B/32 OpenAI weights; B/16 in the paper's ablation). Its `context_length`
    # must be None (then `max_words` sets it) or equal `max_words`.
    clip: ClipConfig = field(default_factory=ClipConfig)
    # Similarity calculator (paper §3.3, official `--sim_header`): parameter-free "meanP", sequential "seqLSTM" /
    # "seqTransf" (loose type: independent encoders, cosine similarity) or the cross encoder "tightTransf" (tight type).
    head: HeadName = "meanP"
    # Patch stem (paper §3.1, official `--linear_patch`): "2d" = CLIP's conv1 per frame; "3d" = Conv3d with kernel
    # (3, p, p) over the clip, centre slice initialised from conv1 and outer slices zero (equals "2d" at init).
    patch: PatchName = "2d"
    # "pixels": end-to-end from CLIP-normalised frames (the paper's setting, CLIP trains at lr × clip_lr_scale);
    # "features": frozen-CLIP mode over precomputed frame CLS features (B, T, D) — the visual tower is not built,
    # so "3d" is invalid (project addition: the shared frame features of ARCHITECTURE §1).
    input: InputName = "pixels"
    # Frames per video T (paper §4.1 / official `--max_frames 12`; 64 for ActivityNet / DiDeMo). Sizes the frame
    # position tables; videos with more frames are rejected.
    max_frames: int = 12
    # Tokens per caption L incl. SOT/EOT (official `--max_words 32`; 64 for ActivityNet / DiDeMo); CLIP uses the
    # first L rows of its text position table (module_clip.py), see `ClipConfig.context_length`.
    max_words: int = 32
    # Freeze the whole CLIP text tower (project option for cheap frozen-CLIP baselines; paper: everything trains).
    freeze_text: bool = False
    # A CLIP4Clip ``model.pt`` whose CLIP text tower (keys ``clip.model.*`` outside the visual tower and the logit
    # scale) replaces the backbone's after its weights load and before the head is built, so `temporal_init` copies
    # the replaced blocks. Project option (not in the paper): on the mini world the mini CLIP has never read a motion
    # word, and the tight head's only path to teach them is through its cross encoder; starting from a text tower a
    # loose head has already adapted plays the part real CLIP's web-scale text pre-training plays in the paper.
    text_init: str | None = None
    # Official-code gotcha (paper-code-notes §1.4, main_task_retrieval.py with `--freeze_layer_num 0`): conv1,
    # class_embedding, both positional embeddings, ln_pre and token_embedding get requires_grad=False in 2D mode.
    # The code *means* the same in 3D mode (its Conv3d stem trains) but a `name.find("conv2.")` truthiness bug freezes
    # nothing there; True here freezes those parameters in both modes. Paper default: everything trains (False).
    freeze_clip_embeddings: bool = False
    # Depth of the seqTransf temporal transformer and of the tightTransf cross encoder (official
    # `--cross_num_hidden_layers 4`; both initialised from CLIP text blocks 0..3 when `temporal_init="clip_text"`).
    cross_layers: int = 4
    # Attention heads of those transformers; None = the CLIP text tower's heads (official: text width // 64 = 8).
    cross_heads: int | None = None
    # Dropout on the tightTransf input embeddings (cross_config.json `hidden_dropout_prob` 0.1, CrossEmbeddings).
    cross_dropout: float = 0.1
    # Initialisation of seqTransf / tightTransf (official `from_pretrained` "initialization trick"): "clip_text" copies
    # CLIP text blocks 0..cross_layers-1 and the first rows of the text positional embedding; it needs embed dim ==
    # text width (true for every OpenAI ViT CLIP: 512/512, 768/768). "random" = open_clip's init (needed on
    # architectures whose embed dim differs from the text width, e.g. the project's vlrepro-tiny / -mini).
    temporal_init: TemporalInit = "clip_text"
    # Most (text, video) pairs per tightTransf cross-encoder forward (official `_cross_similarity` step_size = all
    # texts at once); only bounds memory, results do not depend on it.
    pair_chunk_size: int = 4096
    # lr multiplier of CLIP parameters (paper §4.1 / official `--coef_lr 1e-3`: 1e-4 × 1e-3 = 1e-7). The official
    # code also gives it to the 3D stem (`clip.visual.conv2`) and the logit scale (`clip.logit_scale`), so do we.
    clip_lr_scale: float = 1e-3
    # Initial log logit scale of the loose heads; None = the backbone's own (≈ ln 100 in OpenAI's weights, as the
    # official code reuses `clip.logit_scale`; ln(1/0.07) for random init). Clamped at ln 100 after each step.
    init_logit_scale: float | None = None

    def __post_init__(self) -> None:
        if self.patch == "3d" and self.input == "features":
            raise ConfigError(
                "patch='3d' needs input='pixels': in 'features' mode the frame features are precomputed by a 2D CLIP "
                "and there is no visual tower whose stem could be replaced"
            )
        if self.max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.max_words < 2:
            raise ConfigError(f"max_words must be >= 2 (SOT and EOT), got {self.max_words}")
        if self.clip.context_length is not None and self.clip.context_length != self.max_words:
            raise ConfigError(
                f"clip.context_length={self.clip.context_length} disagrees with max_words={self.max_words}; "
                "leave clip.context_length unset (max_words sets it)"
            )
        if self.cross_layers < 1:
            raise ConfigError(f"cross_layers must be >= 1, got {self.cross_layers}")
        if self.cross_heads is not None and self.cross_heads < 1:
            raise ConfigError(f"cross_heads must be >= 1 or None, got {self.cross_heads}")
        if not 0.0 <= self.cross_dropout < 1.0:
            raise ConfigError(f"cross_dropout must lie in [0, 1), got {self.cross_dropout}")
        if self.pair_chunk_size < 1:
            raise ConfigError(f"pair_chunk_size must be >= 1, got {self.pair_chunk_size}")
        if self.clip_lr_scale < 0:
            raise ConfigError(f"clip_lr_scale must be >= 0, got {self.clip_lr_scale}")

    @property
    def clip_config(self) -> ClipConfig:
        """The backbone config with `context_length = max_words` (what `build` passes to `build_clip`)."""
        return dataclasses.replace(self.clip, context_length=self.max_words)

    @classmethod
    def tiny(cls) -> Clip4ClipConfig:
        """Random-init `vlrepro-tiny` CLIP (embed 16, text width 32) for tests: 4 frames, 16 words, 2 cross layers.

        `temporal_init="random"` because the tiny CLIP's embed dim (16) differs from its text width (32).
        """
        return cls(
            clip=ClipConfig(arch="vlrepro-tiny", pretrained=None),
            max_frames=4,
            max_words=16,
            cross_layers=2,
            temporal_init="random",
        )
