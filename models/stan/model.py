"""STAN (Liu et al., CVPR 2023): CLIP with a spatial-temporal auxiliary branch, for retrieval and recognition.

Paper → code (official `farewellthree/STAN`; METHODS §2, paper-code-notes §2):

- frames run through CLIP's visual tower unchanged; the outputs of its last K blocks feed the branch
  (`models.stan.branch.StanBranch`, official `VITCLIPPretrained_STAN.forward_patch`);
- video embedding (paper Eq. 9, official ``cls_token = x[:, 0] + x2[:, 0]`` → `post_layernorm` → `visual_projection`
  → mean over T): ``v = mean_t proj(ln_post(CLS_clip_last(t) + CLS_stan))`` over the valid frames;
- text: CLIP's EOT feature (official `CLIPTextPretrained`);
- loss: ``CE(S/τ) + CE(Sᵀ/τ)`` — the *sum* of the two directions with a fixed τ over the cosine matrix of the global
  batch (official `NormSoftmaxLoss` + `GatherLayer`), via `ContrastiveLoss(temperature=τ, reduction="sum")`;
- recognition (paper §4.3, K400/SSv2): class-name prompts through the text tower scored by cosine against the video
  embedding (`recognition_scores`), plus an optional linear head trained with cross-entropy (`num_classes > 0`).

Variants (Table 6 ablations, chosen when building, `LEVELS_FED`):

- ``"stan"``: the branch reads the last K blocks (multi-level) and sits beside CLIP;
- ``"posterior"``: "remove the branch structure and multi-level feature learning and apply STAN as a posterior
  structure" (the paper's Table 6 row, as the Korean review in `shared/seeds/000_…txt` paraphrases it; Fig. 1(a)
  defines a posterior structure as a temporal module on top of the frame embeddings CLIP extracted independently).
  Reading implemented: the same K STAN layers (same init: copies of blocks L−K..L−1) stacked *after* the final CLIP
  block — layer 0 builds its input from the final block output, later layers get no CLIP level added — and the
  output formula unchanged, ``mean_t proj(ln_post(CLS_clip_last + CLS_stan))``, the residual every posterior
  temporal module keeps (CLIP4Clip's seqTransf adds its input back too). Thus "stan" vs "posterior" differs only in
  *where the branch reads from* (blocks L−K..L−1 vs block L−1 only), the factor Table 6 ablates;
- ``"baseline"``: no branch, ``mean_t proj(ln_post(CLS_clip_last(t)))`` — the paper's CLIP baseline (mean pooling of
  frame embeddings; CLIP4Clip's meanP normalises each frame first, STAN's formula does not, and this is STAN's formula
  with the branch removed).

Input modes (`cfg.input`, `LEVEL_READERS`): "pixels" runs CLIP on the valid frames (the paper; CLIP trains at the
base lr); "blocks" reads the precomputed last-K' block outputs of a frozen CLIP (`pipelines/features/clip_frames.py`,
output "blocks"), and the visual tower is reduced to what the branch and the output still need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.clip4clip.model import load_text_tower
from models.common.clip import ClipBackbone, build_clip
from models.common.losses import ContrastiveLoss
from models.common.temporal import masked_mean
from models.stan.branch import StanBranch
from models.stan.config import StanConfig

Batch = Mapping[str, Any]

# How many of CLIP's last block outputs each variant feeds its branch (0 = no branch).
LEVELS_FED: dict[str, Callable[[StanConfig], int]] = {
    "stan": lambda cfg: cfg.depth,
    "posterior": lambda cfg: 1,
    "baseline": lambda cfg: 0,
}

# Visual-tower parts kept in "blocks" mode (what the branch input and the output read); the rest is removed.
_BLOCKS_MODE_DROPPED = ("conv1", "ln_pre", "transformer")


class Stan(nn.Module):
    """STAN retrieval/recognition model; implements the engine's `TrainableModel`. Build it with `build(cfg)`.

    Attributes: `clip` (the backbone; trains at the base lr), `branch` (`StanBranch`, None for "baseline"; trains at
    base lr × `branch_lr_scale`), `loss` (fixed-temperature summed InfoNCE, a buffer, never trained),
    `recognition_head` (Linear(D, C) or None).

    Never trained (`requires_grad=False`): CLIP's `logit_scale` (τ is fixed), whatever `freeze_clip_visual` /
    `freeze_text` select, and, in "blocks" mode without a branch, the unused class/positional embeddings.
    """

    _read_levels: Callable[[Stan, torch.Tensor, torch.Tensor, int], list[torch.Tensor]]

    def __init__(self, cfg: StanConfig, clip: ClipBackbone, branch: StanBranch | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_levels = LEVELS_FED[cfg.variant](cfg)
        if (branch is None) != (self.n_levels == 0):
            raise ValueError(f"variant {cfg.variant!r} needs {'no' if self.n_levels == 0 else 'a'} branch")
        # sizes read before the tower may be reduced ("blocks" mode removes conv1, which defines the width)
        self.embed_dim = clip.embed_dim
        self.width = clip.vision_width
        self.n_patches = clip.n_patches
        self.image_size = clip.image_size
        if cfg.input == "blocks":
            for name in _BLOCKS_MODE_DROPPED:
                delattr(clip.visual, name)
        self.clip = clip
        self.branch = branch
        self.loss = ContrastiveLoss(temperature=cfg.temperature, reduction="sum")
        self.recognition_head = nn.Linear(self.embed_dim, cfg.num_classes) if cfg.num_classes else None
        self._read_levels = LEVEL_READERS[cfg.input]
        self._freeze()

    def _freeze(self) -> None:
        cfg = self.cfg
        visual = self.clip.visual
        frozen: list[nn.Parameter] = [self.clip.logit_scale]  # τ is fixed (the loss holds it as a buffer)
        if cfg.freeze_clip_visual:
            frozen += list(visual.parameters())
        if cfg.input == "blocks" and self.branch is None:
            frozen += [self.clip.class_embedding, self.clip.vision_positional_embedding]  # only the branch reads them
        if cfg.freeze_text:
            frozen += [p for name, p in self.clip.model.named_parameters() if not name.startswith(("visual.", "logit"))]
        for param in frozen:
            param.requires_grad_(False)

    # ----- encoders --------------------------------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Captions → tokens (B, max_words) int64."""
        return self.clip.tokenize(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) → EOT text features (B, D), unnormalised."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.max_words:
            raise ValueError(f"expected tokens (B, L <= {self.cfg.max_words}), got {tuple(tokens.shape)}")
        return self.clip.encode_text(tokens)

    def clip_levels(self, video: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of CLIP's last max(n_levels, 1) vision blocks, each (B, T, 1+N, W), zeros at padded frames.

        video: (B, T, 3, S, S) normalised pixels or (B, T, K', 1+N, W) block outputs (per `input`); mask: (B, T).
        """
        mask = self._check(video, mask)
        return self._read_levels(self, video, mask, max(self.n_levels, 1))

    def frame_cls(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The per-frame CLS before `ln_post`, (B, T, W): CLIP's last block CLS plus (with a branch) the video CLS."""
        return self._frame_cls(video, self._check(video, mask))

    def _frame_cls(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        levels = self._read_levels(self, video, mask, max(self.n_levels, 1))
        cls = levels[-1][:, :, 0]  # (B, T, W) CLIP's own frame CLS
        if self.branch is not None:
            video_cls = self.branch(
                levels[-self.n_levels :], mask, self.clip.class_embedding, self.clip.vision_positional_embedding
            )  # (B, W)
            cls = cls + video_cls[:, None, :]  # official `x[:, 0] + x2[:, 0].repeat(T)`
        return cls

    def encode_video(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Video embedding (B, D) = mean over valid frames of ``proj(ln_post(frame_cls))``, unnormalised."""
        mask = self._check(video, mask)
        frames = self.clip.ln_post(self._frame_cls(video, mask)) @ self.clip.proj  # (B, T, D)
        return masked_mean(frames, mask)

    def _check(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape != video.shape[:2]:
            raise ValueError(f"video_mask {tuple(mask.shape)} does not match video {tuple(video.shape[:2])}")
        if video.shape[1] > self.cfg.max_frames:
            raise ValueError(f"{video.shape[1]} frames exceed max_frames={self.cfg.max_frames}")
        mask = mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every video needs at least one valid frame")
        return mask

    # ----- evaluation API ---------------------------------------------------------------------------------------------

    def encode_text_for_eval(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (Q, L) → unit text embeddings (Q, D)."""
        return F.normalize(self.encode_text(tokens), dim=-1)

    def encode_video_for_eval(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Video (G, T, …) and mask (G, T) → unit video embeddings (G, D)."""
        return F.normalize(self.encode_video(video, mask), dim=-1)

    def similarity(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        """(Q, G) cosine similarities (official `RetrievalMetric`: L2-normalised features, ``T·Vᵀ``)."""
        return text_repr @ video_repr.T

    def recognition_scores(self, video_repr: torch.Tensor, class_repr: torch.Tensor) -> torch.Tensor:
        """(G, C) cosine between unit video embeddings and unit class-prompt embeddings (`encode_text_for_eval`)."""
        return video_repr @ class_repr.T

    def recognition_logits(self, video_repr: torch.Tensor) -> torch.Tensor:
        """(G, C) logits of the linear recognition head over unit video embeddings."""
        if self.recognition_head is None:
            raise ValueError("no linear recognition head: set num_classes > 0")
        return self.recognition_head(video_repr)

    # ----- training (engine `TrainableModel`) -----------------------------------------------------------------------

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": CE(S/τ) + CE(Sᵀ/τ) over the global batch [+ w · recognition CE], and its parts}."""
        text = self.encode_text(batch["text"])  # (B, D)
        video = self.encode_video(batch["video"], batch["video_mask"])  # (B, D)
        retrieval = self.loss(text, video)
        out = {"retrieval_loss": retrieval.detach()}
        loss = retrieval
        if self.recognition_head is not None:
            if "label" not in batch:
                raise KeyError("num_classes > 0 needs class indices in batch['label']")
            logits = self.recognition_logits(F.normalize(video, dim=-1))
            recognition = F.cross_entropy(logits, torch.as_tensor(batch["label"], device=logits.device))
            loss = loss + self.cfg.recognition_loss_weight * recognition
            out["recognition_loss"] = recognition.detach()
        return {"loss": loss, **out}

    def lr_scales(self) -> dict[str, float]:
        """Parameter-name prefix → lr multiplier: the base lr is CLIP's (paper 2e-6); the branch and the recognition
        head (new modules) train at × `branch_lr_scale` (official lr_mult 10 on `STAN_*`)."""
        s = self.cfg.branch_lr_scale
        return {"branch.": s, "recognition_head.": s}

    def after_step(self) -> None:
        """Nothing to clamp: τ is fixed."""


# ----- CLIP levels per input mode (chosen by `cfg.input`) -------------------------------------------------------------


def _levels_from_pixels(model: Stan, video: torch.Tensor, mask: torch.Tensor, n: int) -> list[torch.Tensor]:
    """video (B, T, 3, S, S) → n × (B, T, 1+N, W); only valid frames run through CLIP."""
    clip = model.clip
    s = model.image_size
    if video.ndim != 5 or tuple(video.shape[2:]) != (3, s, s):
        raise ValueError(f"input='pixels' expects video (B, T, 3, {s}, {s}); got {tuple(video.shape)}")
    frames = video[mask]  # (M, 3, S, S)
    _, outs = clip.forward_blocks(clip.tokens_from_patches(clip.embed_patches(frames)), return_layers=range(-n, 0))
    b, t = mask.shape
    levels = []
    for out in outs:  # (M, 1+N, W)
        full = out.new_zeros(b, t, *out.shape[1:])  # (B, T, 1+N, W)
        levels.append(full.index_put((mask,), out))
    return levels


def _levels_from_blocks(model: Stan, video: torch.Tensor, mask: torch.Tensor, n: int) -> list[torch.Tensor]:
    """video (B, T, K', 1+N, W) precomputed block outputs (last block last) → the last n, each (B, T, 1+N, W)."""
    shape = (1 + model.n_patches, model.width)
    if video.ndim != 5 or tuple(video.shape[3:]) != shape:
        raise ValueError(f"input='blocks' expects video (B, T, K', {shape[0]}, {shape[1]}); got {tuple(video.shape)}")
    k = video.shape[2]
    if k < n:
        raise ValueError(
            f"the branch needs the last {n} CLIP blocks but the features hold {k} (extract last_blocks>={n})"
        )
    x = video.to(model.clip.proj.dtype)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(mask[:, :, None, None, None], x, zero)  # padded frames are zeros, as in pixels mode
    return [x[:, :, k - n + i] for i in range(n)]


LEVEL_READERS: dict[str, Callable[[Stan, torch.Tensor, torch.Tensor, int], list[torch.Tensor]]] = {
    "pixels": _levels_from_pixels,
    "blocks": _levels_from_blocks,
}


def build(cfg: StanConfig) -> Stan:
    """Build STAN for `cfg`: the backbone (with its weights), then the branch copying its last K blocks.

    Raises:
        ConfigError: `depth` beyond the CLIP's vision blocks, widths not divisible by heads / the conv reduction;
            a `text_init` that is missing or holds another CLIP's text tower.
    """
    clip = build_clip(cfg.clip_config)
    if cfg.text_init:
        load_text_tower(clip, cfg.text_init)  # the text tower only: the branch below copies vision blocks
    branch = StanBranch.from_clip(cfg, clip) if LEVELS_FED[cfg.variant](cfg) > 0 else None
    return Stan(cfg, clip, branch)
