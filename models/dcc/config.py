"""DCC configuration: frozen dataclasses whose defaults are the paper's (Ju et al., CVPR 2023).

Provenance tags: "paper" = Ju et al. 2023 as summarised by the review (seed 003, METHODS §4); "EP" = the first
author's ECCV'22 code ``ju-chen/Efficient-Prompt`` (`src/model.py`, `src/train.py`), the VLP-branch template
(paper-code-notes §5.2); "UM" / "CO2-Net" / "ASM-Loc" = the W-TAL code bases of the CBP branch and the protocol
(paper-code-notes §5.3); "project" = a choice made here where DCC has no official code (paper-code-notes §5.1) — each
such choice says why. Cross-field checks that need no weights run in `__post_init__` (`ConfigError`); checks that need
the CLIP backbone or the class names (prompt length vs text context) run in `models.dcc.model.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.common.clip import ClipConfig
from models.common.losses import MIL_TOPK_RATIO
from models.config import ConfigError
from models.engine.optim import OptimConfig

MilLossName = Literal["bce", "ce"]
KdSnippets = Literal["confident", "role"]
FbReduction = Literal["mean", "sum"]

SNIPPET_FRAMES = 16  # W-TAL protocol: non-overlapping 16-frame I3D snippets (UM, CO2-Net, ASM-Loc; METHODS §4)
SNIPPET_FPS = 25.0  # videos resampled to 25 fps, so snippet i starts at i·16/25 s


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class CBPConfig:
    """Classification-based pre-training branch: I3D snippet features → transformer → CAS over C + 1 classes."""

    # Snippet feature width: two-stream I3D, 1024 RGB + 1024 TV-L1 flow after Mixed_5c pooling (paper; UM/CO2-Net).
    # The mini world's I3D is narrower: set it from the feature stage's manifest.
    input_dim: int = 2048
    # Embedding: Conv1d(input_dim → width, kernel 3, zero padding) + ReLU — UM `CAS_Module.conv` / CO2-Net's embedding
    # (both kernel 3, width 2048). Width 512 here (project): the paper says only "transformer (MHSA, LN, MLP)"; a
    # 2048-wide transformer would be ~50 M parameters per layer for 200 training videos.
    width: int = 512
    embed_kernel: int = 3
    # Transformer depth / heads (project): the paper gives no depth; 2 layers, the depth of its own VLP temporal
    # transformer, 8 heads of 64 like CLIP's blocks. CLIP-style pre-LN blocks (`TemporalTransformer`).
    layers: int = 2
    heads: int = 8
    # Dropout before the classifier (UM `CAS_Module.drop_out` p = 0.7; CO2-Net 0.7).
    dropout: float = 0.7
    # Self-attention span: None = global (the paper's literal "transformer"); w = each snippet attends to snippets
    # at most w away (a band mask). Project finding (see models/dcc/cbp.py): trained with video-level MIL, global
    # attention lets every snippet read the whole video and the CAS learns to broadcast the video label to all
    # snippets (background included), the opposite of the incomplete CBP the paper describes; a band of ±2 keeps
    # the CAS local. The mini config uses it.
    attention_window: int | None = None
    # Learned absolute positions (project default False): UM / CO2-Net use none (the kernel-3 embedding carries local
    # order), and training crops random windows while testing runs whole videos, so absolute positions would not mean
    # the same thing at test time. False = a frozen all-zero position table.
    positional_embedding: bool = False
    # Longest sequence one forward takes; longer videos run in consecutive chunks of this many snippets. THUMOS14's
    # longest test video has ~2,400 snippets.
    max_snippets: int = 8192

    def __post_init__(self) -> None:
        for name in ("input_dim", "width", "heads", "max_snippets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cbp.{name} must be >= 1, got {getattr(self, name)}")
        if self.layers < 0:
            raise ConfigError(f"cbp.layers must be >= 0, got {self.layers}")
        if self.width % self.heads:
            raise ConfigError(f"cbp.width={self.width} is not divisible by cbp.heads={self.heads}")
        if self.attention_window is not None and self.attention_window < 0:
            raise ConfigError(f"cbp.attention_window must be >= 0 or None, got {self.attention_window}")
        if self.embed_kernel < 1 or self.embed_kernel % 2 == 0:
            raise ConfigError(f"cbp.embed_kernel must be odd and >= 1 (same-length output), got {self.embed_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"cbp.dropout must lie in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class VLPConfig:
    """Vision-language pre-training branch: frozen CLIP frame features + prompt-learned frozen CLIP text encoder."""

    # Frozen CLIP (paper: ViT-B/16 image and text encoders; OpenAI weights need the -quickgelu name). Frame features
    # arrive precomputed (`batch["clip"]`, the CLS feature after ln_post @ proj), so the vision tower is not kept.
    clip: ClipConfig = field(default_factory=lambda: ClipConfig(arch="ViT-B-16-quickgelu", pretrained="openai"))
    # Temporal transformer Φ_temp (paper: 2 layers; EP `TemporalModelling`: CLIP ResidualAttentionBlocks, 8 heads,
    # dropout 0, width = CLIP embed dim) with a learnable temporal embedding N(0, 0.01) (EP `temporalEmbedding`).
    layers: int = 2
    heads: int = 8
    # Rows of the temporal embedding = the longest window one forward takes (paper: training windows of 1000
    # snippets on THUMOS14, 400 on ActivityNet1.2); longer videos run in consecutive chunks of this length.
    max_snippets: int = 1000
    # Learnable prompt vectors around the class-name tokens: [SOT][prefix][name][postfix][EOT] (paper: 16 prepended
    # and 16 appended, init N(0, 0.01); EP `--prefix 16 --postfix 16`, shared by all classes). Must fit the CLIP text
    # context together with the longest class name (checked at build): the mini CLIP has 32 positions.
    prefix_length: int = 16
    postfix_length: int = 16
    prompt_init_std: float = 0.01
    # P_vl = softmax(cos(F_vid, F_txt) / τ) (EP `train.py` with `featnorm`: normalised features / 0.07).
    temperature: float = 0.07
    # Name of the extra background "class" whose prompt (same learnable vectors) completes the softmax over C + 1
    # (project: DCC needs per-class probabilities that can *all* be low on background snippets — the B step distils
    # confident background into this branch — which a softmax over the C action prompts alone cannot express).
    background_prompt: str = "background"

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "max_snippets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"vlp.{name} must be >= 1, got {getattr(self, name)}")
        if self.prefix_length < 0 or self.postfix_length < 0:
            raise ConfigError("vlp.prefix_length and vlp.postfix_length must be >= 0")
        if self.prompt_init_std < 0:
            raise ConfigError(f"vlp.prompt_init_std must be >= 0, got {self.prompt_init_std}")
        if self.temperature <= 0:
            raise ConfigError(f"vlp.temperature must be > 0, got {self.temperature}")
        if not self.background_prompt.strip():
            raise ConfigError("vlp.background_prompt must be a non-empty class name")


@dataclass(frozen=True)
class DistillConfig:
    """Pseudo-labels and the B/F-step losses ``L = L_kd(H', P) + λ·L_fb``."""

    # Confident pseudo-label thresholds (paper, grid-searched): 1 if p > δ_h for a video label, 0 if p < δ_l or not a
    # label, −1 (ignored) otherwise.
    high: float = 0.3
    low: float = 0.1
    # λ (paper 0.05) and τ of the foreground–background contrastive loss (paper 0.07, on L2-normalised snippet
    # features — a temperature of 0.07 is the cosine-similarity convention).
    fb_weight: float = 0.05
    fb_temperature: float = 0.07
    # L_fb over anchors: the review writes Σ_i; "mean" (default, project) averages over anchors so that λ = 0.05 keeps
    # L_fb on the scale of L_kd, which the paper averages over confident snippets (a 1000-snippet THUMOS window has
    # hundreds of anchors). "sum" is the literal Σ_i (per video, summed over the batch's videos, divided by B).
    fb_reduction: FbReduction = "mean"
    # Which teacher snippets L_kd distils: "confident" (default) = every confident snippet, foreground and background —
    # the review: the pseudo-label "has two kinds of confident frames, foreground and background", and L_fb needs both
    # Ψ+ and Ψ− from the same H'; "role" = only the kind the step is named after (B: background from CBP; F:
    # foreground from VLP), an ablation.
    kd_snippets: KdSnippets = "confident"
    # Weight of the MIL classification loss on the student during B/F steps. Paper (review): after the CBP warm-up
    # "each branch is trained only with the pseudo-labels the branches produce" → 0. > 0 is an ablation.
    mil_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_unit("distill.high", self.high)
        _check_unit("distill.low", self.low)
        if not self.low < self.high:
            raise ConfigError(f"distill.low={self.low} must be < distill.high={self.high}")
        if self.fb_weight < 0 or self.mil_weight < 0:
            raise ConfigError("distill.fb_weight and distill.mil_weight must be >= 0")
        if self.fb_temperature <= 0:
            raise ConfigError(f"distill.fb_temperature must be > 0, got {self.fb_temperature}")


@dataclass(frozen=True)
class InferenceConfig:
    """Proposal generation from the CBP branch's CAS (paper: CBP only, since VLP cannot use flow)."""

    # Keep classes whose video score (top-k mean of the snippet probabilities) exceeds θ_cls (paper 0.85); if none
    # does, keep the arg-max class (UM / CO2-Net).
    class_threshold: float = 0.85
    # Snippets whose class probability exceeds θ_loc form proposals (contiguous runs) — paper 0.45; several values
    # pool their proposals before soft-NMS (UM / CO2-Net multi-threshold).
    loc_thresholds: tuple[float, ...] = (0.45,)
    # Outer-inner-contrast score mean(inner) − mean(outer) + γ·video score, outer = λ·len each side (UM
    # `get_proposal_oic`: λ = 0.25, γ = 0.2).
    outer_ratio: float = 0.25
    video_score_weight: float = 0.2
    # Linear up-sampling of the CAS before thresholding (UM 24, ASM-Loc 20, CO2-Net 1); DCC unstated → 1.
    upsample: int = 1
    # Runs shorter than this many (up-sampled) positions are dropped (UM drops < 2 at 24×); 1 keeps every run.
    min_length: int = 1
    # Gaussian soft-NMS per class, σ = 0.3 (CO2-Net `soft_nms`; paper: soft-NMS); scores may be negative, so none are
    # dropped by a score threshold. `max_proposals` keeps the best N per video afterwards (None = all).
    nms_sigma: float = 0.3
    max_proposals: int | None = None
    # Snippet ↔ seconds: snippet i covers [i·16/25, (i+1)·16/25) s (METHODS §4).
    snippet_frames: int = SNIPPET_FRAMES
    fps: float = SNIPPET_FPS

    def __post_init__(self) -> None:
        _check_unit("inference.class_threshold", self.class_threshold)
        if not self.loc_thresholds:
            raise ConfigError("inference.loc_thresholds must name at least one threshold")
        for t in self.loc_thresholds:
            _check_unit("inference.loc_thresholds[*]", t)
        if self.outer_ratio < 0:
            raise ConfigError(f"inference.outer_ratio must be >= 0, got {self.outer_ratio}")
        if self.upsample < 1 or self.min_length < 1:
            raise ConfigError("inference.upsample and inference.min_length must be >= 1")
        if self.nms_sigma <= 0:
            raise ConfigError(f"inference.nms_sigma must be > 0, got {self.nms_sigma}")
        if self.max_proposals is not None and self.max_proposals < 1:
            raise ConfigError(f"inference.max_proposals must be >= 1 or None, got {self.max_proposals}")
        if self.snippet_frames < 1 or self.fps <= 0:
            raise ConfigError("inference.snippet_frames must be >= 1 and inference.fps > 0")

    @property
    def seconds_per_snippet(self) -> float:
        return self.snippet_frames / self.fps


VariantName = Literal["cbp_only", "vlp_only", "only_f", "only_b", "full"]


@dataclass(frozen=True)
class StagesConfig:
    """How the staged recipe runs the stages (`models.dcc.model.stage_schedule`). The paper reports none of these
    numbers; the defaults follow the closest open analogue of its alternation, ASM-Loc's multi-step refinement
    (`num_steps` 3, `epochs_per_step` 100) and UM's batch of 16 videos."""

    # "full" = warm-up, then (B, F) × rounds (paper); the ablations of METHODS §4: "cbp_only", "vlp_only", "only_f",
    # "only_b".
    variant: VariantName = "full"
    rounds: int = 3
    warmup_epochs: int = 100
    step_epochs: int = 100  # per B or F stage
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("rounds", "warmup_epochs", "step_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"stages.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"stages.batch_size must be >= 1, got {self.batch_size}")


def _paper_optim() -> OptimConfig:
    # Adam, lr 1e-4 (paper). The engine's AdamW with weight decay 0 is Adam; PyTorch's Adam defaults for β and ε;
    # no schedule, warm-up or clipping is reported.
    return OptimConfig(
        lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, warmup_fraction=0.0, schedule="constant", grad_clip=0.0
    )


@dataclass(frozen=True)
class DCCConfig:
    """DCC: CBP and VLP branches, MIL warm-up of CBP, alternating B/F distillation steps, CBP-only inference."""

    cbp: CBPConfig = field(default_factory=CBPConfig)
    vlp: VLPConfig = field(default_factory=VLPConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Warm-up (and optional VLP warm-up) MIL loss on the top-k video scores, k = max(1, T // ratio) (CO2-Net r = 8):
    # "bce" (default) = BCE(top-k mean of snippet probabilities, y) — the review's text ("warm-up with BCE"); it trains
    # exactly the video score that inference thresholds at θ_cls = 0.85. "ce" = the review's equation / CO2-Net:
    # softmax over C + 1 of the top-k mean *logits*, cross-entropy against the normalised [y, 1] (background present).
    mil_loss: MilLossName = "bce"
    mil_topk_ratio: int = MIL_TOPK_RATIO
    # Training window T in snippets (paper: 1000 THUMOS14, 400 ActivityNet1.2; random consecutive crops) — the data
    # side crops; the model only needs windows <= vlp.max_snippets.
    window: int = 1000
    # Optimiser for every stage (paper: Adam, lr 1e-4) — recipes pass it to the engine's TrainConfig.
    optim: OptimConfig = field(default_factory=_paper_optim)
    stages: StagesConfig = field(default_factory=StagesConfig)

    def __post_init__(self) -> None:
        if self.mil_topk_ratio < 1:
            raise ConfigError(f"mil_topk_ratio must be >= 1, got {self.mil_topk_ratio}")
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        if self.window > self.vlp.max_snippets:
            raise ConfigError(
                f"window={self.window} exceeds vlp.max_snippets={self.vlp.max_snippets} (rows of the learnable "
                "temporal embedding); raise vlp.max_snippets"
            )

    @classmethod
    def tiny(cls) -> DCCConfig:
        """Random-init `vlrepro-tiny` CLIP (embed 32, text context 16) and a 2-layer width-16 CBP, for tests.

        Prompts 3 + 3 so that [SOT][3][name][3][EOT] fits 16 positions for names of up to 8 tokens.
        """
        return cls(
            cbp=CBPConfig(input_dim=24, width=16, layers=2, heads=2, dropout=0.5, max_snippets=64),
            vlp=VLPConfig(
                clip=ClipConfig(arch="vlrepro-tiny", pretrained=None),
                layers=2,
                heads=2,
                max_snippets=32,
                prefix_length=3,
                postfix_length=3,
            ),
            window=32,
        )
