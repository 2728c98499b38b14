"""STAN configuration: one frozen dataclass whose defaults are the paper's (Liu et al., CVPR 2023).

Provenance tags: "paper" = Liu et al. 2023, "Revisiting Temporal Modeling for CLIP-based Image-to-Video Knowledge
Transferring" (STAN); "official" = farewellthree/STAN (`mmaction/models/backbones/clip_stan_hf.py`,
`configs/exp/stan/stan_msrvtt_b32_hf.py`); METHODS §2 and paper-code-notes §2 summarise both. Cross-field checks that
need no weights run in `__post_init__` and raise `models.config.ConfigError`; checks that need the built backbone
(depth vs CLIP blocks, widths, head counts) run in `models.stan.build`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from models.common.clip import ClipConfig
from models.common.losses import STAN_TEMPERATURE
from models.config import ConfigError

VariantName = Literal["stan", "posterior", "baseline"]
CrossFrameName = Literal["attention", "conv", "none"]
InputName = Literal["pixels", "blocks"]


@dataclass(frozen=True)
class StanConfig:
    """STAN: CLIP + a K-layer spatial-temporal branch on the last K CLIP blocks, summed symmetric InfoNCE."""

    # The CLIP backbone (paper §4: ViT-B/32 and B/16, OpenAI weights). `context_length` must be None (then
    # `max_words` sets it) or equal `max_words`.
    clip: ClipConfig = field(default_factory=ClipConfig)
    # Ablation of paper Table 6 (issue 4 of the project asks for the switches):
    # "stan"      = the branch fed by the last K CLIP blocks (multi-level; the method);
    # "posterior" = the same K STAN layers stacked *after* CLIP, fed by the final block output only: layer 0 builds its
    #               input from the last block, later layers get no CLIP level added (no branch, no multi-level);
    # "baseline"  = no branch: mean over frames of CLIP's projected frame CLS (the paper's CLIP baseline, meanP).
    # See `models.stan.model` for the reading of "posterior" and its provenance.
    variant: VariantName = "stan"
    # Cross-frame (temporal) module of each STAN layer (paper §3.3): "attention" = self-attention along time per
    # spatial position (official `CLIPLayer_AttnTime`), "conv" = Down 1×1 → Conv3d (3,1,1) → Up 1×1 (paper; the
    # official `CLIPLayer_ConvTime` is not in the released repository), "none" = no cross-frame module (Table 6 row
    # "w/o cross-frame"). Ignored by variant "baseline".
    cross_frame: CrossFrameName = "attention"
    # "pixels": CLIP-normalised frames through the CLIP visual tower, which trains at the base lr (the paper);
    # "blocks": frozen-CLIP mode over the precomputed outputs of the last K' >= depth CLIP blocks, float16
    # (T, K', 1+N, W) per video from `pipelines/features/clip_frames.py` (output "blocks"); the visual tower is
    # dropped except class_embedding, positional_embedding, ln_post and proj (project addition for 2 CPU cores).
    input: InputName = "pixels"
    # K, the number of STAN layers = CLIP blocks feeding the branch (paper §4.1 / official `depth=4`: blocks 8–11 of
    # ViT-B). Must not exceed the CLIP vision depth.
    depth: int = 4
    # Frames per video T (paper / official UniformSample `clip_len=12`; 64 for DiDeMo).
    max_frames: int = 12
    # Rows of the learnable temporal embedding (official `nn.Embedding(64, D)`): the branch takes at most 64 frames.
    temporal_positions: int = 64
    # Std of the temporal embedding's normal init. Not in the paper; the official `nn.Embedding` keeps PyTorch's
    # default N(0, 1), which dwarfs the residual stream of a small CLIP; 0.02 is the ViT/BERT convention for learned
    # position tables. Set 1.0 to match the official code.
    temporal_embedding_std: float = 0.02
    # Tokens per caption L incl. SOT/EOT (official `max_length=32` for MSR-VTT; 77 for DiDeMo).
    max_words: int = 32
    # Fixed softmax temperature τ of the summed symmetric InfoNCE (official `NormSoftmaxLoss`: 0.01 for B/32 on
    # MSR-VTT, 0.02 for B/16, 0.05 for DiDeMo). Not learnable.
    temperature: float = STAN_TEMPERATURE
    # Largest drop-path rate; layer k uses linspace(0, drop_path, depth)[k] (official `dpr`). Applied, as in the
    # official code, to the cross-frame attention/conv output and to the intra-frame attention output.
    drop_path: float = 0.1
    # Channel reduction r of the 3D-conv cross-frame module (Down W → W/r, Up W/r → W). Not given in the paper; r = 2
    # follows ST-Adapter (Pan et al., NeurIPS 2022), whose Down → (3,1,1) conv → Up adapter this module mirrors
    # (bottleneck 384 for width 768).
    conv_reduction: int = 2
    # Heads of the cross-frame self-attention; None = CLIP's vision heads (official: HF `CLIPAttention` built from the
    # vision config, 12 heads for ViT-B).
    cross_frame_heads: int | None = None
    # lr multiplier of the STAN branch (official `paramwise_cfg` lr_mult 10 on `STAN_*` parameters: 2e-6 × 10). The
    # base lr (`train.optim.lr`, 2e-6 in the paper) is CLIP's; everything under `branch.` trains at base × this.
    branch_lr_scale: float = 10.0
    # Freeze the CLIP visual parameters (project option). pixels: the whole visual tower; blocks: the kept
    # class_embedding / positional_embedding / ln_post / proj. Paper: everything trains (False).
    freeze_clip_visual: bool = False
    # Freeze the whole CLIP text tower (project option; paper: it trains).
    freeze_text: bool = False
    # A ``model.pt`` of a retrieval job (CLIP4Clip, STAN: keys ``clip.model.*``) whose CLIP text tower replaces the
    # backbone's after its weights load (`models.clip4clip.model.load_text_tower`; the visual tower and the logit
    # scale are kept). Project option (not in the paper), as CLIP4Clip's `text_init`: the mini CLIP has never read a
    # motion word ("left", "then", "before"); real CLIP's web-scale text pre-training knows them. With `freeze_text`
    # the loaded tower stays as it is (CLIP4Clip's ``tightTransf-seqText`` does the same).
    text_init: str | None = None
    # Linear recognition head over the L2-normalised video embedding with this many classes (paper §4.3 fine-tunes a
    # classifier for K400/SSv2); 0 = none, recognition then scores class-name prompts through the text tower only.
    num_classes: int = 0
    # Weight of the head's cross-entropy (on `batch["label"]`) added to the retrieval loss when `num_classes > 0`.
    recognition_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")
        if self.max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.temporal_positions < self.max_frames:
            raise ConfigError(
                f"max_frames={self.max_frames} exceeds the temporal embedding's {self.temporal_positions} positions"
            )
        if self.temporal_embedding_std < 0:
            raise ConfigError(f"temporal_embedding_std must be >= 0, got {self.temporal_embedding_std}")
        if self.max_words < 2:
            raise ConfigError(f"max_words must be >= 2 (SOT and EOT), got {self.max_words}")
        if self.clip.context_length is not None and self.clip.context_length != self.max_words:
            raise ConfigError(
                f"clip.context_length={self.clip.context_length} disagrees with max_words={self.max_words}; "
                "leave clip.context_length unset (max_words sets it)"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"drop_path must lie in [0, 1), got {self.drop_path}")
        if self.conv_reduction < 1:
            raise ConfigError(f"conv_reduction must be >= 1, got {self.conv_reduction}")
        if self.cross_frame_heads is not None and self.cross_frame_heads < 1:
            raise ConfigError(f"cross_frame_heads must be >= 1 or None, got {self.cross_frame_heads}")
        if self.branch_lr_scale < 0:
            raise ConfigError(f"branch_lr_scale must be >= 0, got {self.branch_lr_scale}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.recognition_loss_weight < 0:
            raise ConfigError(f"recognition_loss_weight must be >= 0, got {self.recognition_loss_weight}")

    @property
    def clip_config(self) -> ClipConfig:
        """The backbone config with `context_length = max_words` (what `build` passes to `build_clip`)."""
        return dataclasses.replace(self.clip, context_length=self.max_words)

    @property
    def drop_path_rates(self) -> list[float]:
        """Per-layer drop-path rates, official `np.linspace(0, 0.1, depth)`."""
        if self.depth == 1:
            return [0.0]
        return [self.drop_path * k / (self.depth - 1) for k in range(self.depth)]

    @classmethod
    def tiny(cls) -> StanConfig:
        """Random-init `vlrepro-tiny` CLIP (2 vision blocks, width 32, 2×2 patches) for tests: K = 2, 4 frames."""
        return cls(clip=ClipConfig(arch="vlrepro-tiny", pretrained=None), depth=2, max_frames=4, max_words=16)
