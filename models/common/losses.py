"""Shared training losses: symmetric InfoNCE over the global batch, KL distillation, top-k MIL pooling.

Sources:
- symmetric InfoNCE — CLIP4Clip ``modules/until_module.py::CrossEn`` (average of the two directions, learnable
  ``logit_scale`` clamped at ln 100 after each optimiser step) and STAN (sum of the two directions, fixed
  temperature τ = 0.01 for B/32); METHODS §0–§2, paper-code-notes §1.3 / §9;
- `kl_distillation` — DCC's ``L_kd`` (METHODS §4): KL between the other branch's pseudo-label distribution and the
  current prediction, averaged over confident snippets only;
- `mil_topk_scores` — the W-TAL top-k multiple-instance pooling (video score = mean of the top-k snippets per class,
  k = max(1, T // 8)); METHODS §4.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.common.distributed import all_gather_with_grad

Reduction = Literal["mean", "sum"]

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initialisation (Radford et al. 2021)
CLIP4CLIP_MAX_LOGIT_SCALE = math.log(100.0)  # main_task_retrieval.py clamps logit_scale.data at ln(100)
STAN_TEMPERATURE = 0.01  # STAN, ViT-B/32 (0.02 for B/16, 0.05 DiDeMo)
MIL_TOPK_RATIO = 8  # k = max(1, T // 8), METHODS §4 (CBP branch video score)


def symmetric_infonce(logits: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy with diagonal targets, text→video over rows and video→text over columns.

    logits: (B, B) scaled similarities, row i = text i, column j = video j, pair (i, i) positive.
    reduction: "mean" averages the two directions (CLIP4Clip ``CrossEn``), "sum" adds them (STAN). Each direction is
    the mean over the B anchors. Returns a scalar.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"symmetric InfoNCE needs square (B, B) logits, positives on the diagonal; got {logits.shape}")
    targets = torch.arange(logits.shape[0], device=logits.device)
    text_to_video = F.cross_entropy(logits, targets)
    video_to_text = F.cross_entropy(logits.T, targets)
    total = text_to_video + video_to_text
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / 2
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over the **global** batch (all ranks), with a learnable or fixed logit scale.

    Scale, chosen at construction:
    - ``temperature=None`` (CLIP4Clip): a learnable ``logit_scale`` parameter (``scale = exp(logit_scale)``),
      initialised at `init_logit_scale`; call `clamp_()` after every optimiser step to keep it ``<= max_logit_scale``
      (ln 100), as CLIP4Clip's training loop does;
    - ``temperature=τ`` (STAN: 0.01): ``scale = 1/τ``, no parameter.
    Embeddings are L2-normalised here when ``normalize=True`` (default; pass already-normalised features with
    ``normalize=False`` to skip the redundant work — normalising twice is harmless).

    Distributed: text and video embeddings are gathered from every rank with `all_gather_with_grad`, and every rank
    computes the **full global** (world·B, world·B) logit matrix, as CLIP4Clip does, so the loss value on each rank is
    the single-process loss of the concatenated batch; with DDP's gradient averaging the parameters receive the
    single-process gradient (see `models.common.distributed`). O((world·B)²) per rank — cheap at B ≤ 128 per rank.
    """

    logit_scale: torch.Tensor

    def __init__(
        self,
        *,
        temperature: float | None = None,
        init_logit_scale: float = CLIP_INIT_LOGIT_SCALE,
        max_logit_scale: float = CLIP4CLIP_MAX_LOGIT_SCALE,
        reduction: Reduction = "mean",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.learnable_scale = temperature is None
        self.max_logit_scale = max_logit_scale
        self.reduction: Reduction = reduction
        self.normalize = normalize
        if temperature is None:
            self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        else:
            # A buffer, not a parameter: follows .to(device) and state_dict but never trains.
            self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / temperature)))
        self._fixed_scale = None if temperature is None else 1.0 / temperature

    def scale(self) -> torch.Tensor:
        """The multiplier applied to cosine similarities (``exp(logit_scale)`` or ``1/τ``)."""
        if self._fixed_scale is not None:
            return torch.tensor(self._fixed_scale, dtype=self.logit_scale.dtype, device=self.logit_scale.device)
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the learnable ``logit_scale`` at `max_logit_scale`; call after each optimiser step (no-op if fixed)."""
        if self.learnable_scale:
            self.logit_scale.clamp_(max=self.max_logit_scale)

    def logits(self, text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Global (world·B, world·B) logits ``scale · t̂ v̂ᵀ`` from local text (B, D) and video (B, D) embeddings."""
        if self.normalize:
            text = F.normalize(text, dim=-1)
            video = F.normalize(video, dim=-1)
        all_text = all_gather_with_grad(text)  # (world·B, D)
        all_video = all_gather_with_grad(video)  # (world·B, D)
        return self.scale() * all_text @ all_video.T  # (world·B, world·B)

    def forward(self, text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """text: (B, D), video: (B, D) — this rank's pairs, row i of each matched. Returns the scalar global loss."""
        if text.shape[0] != video.shape[0]:
            raise ValueError(f"text and video batches differ: {text.shape[0]} vs {video.shape[0]}")
        return symmetric_infonce(self.logits(text, video), self.reduction)


def kl_distillation(
    student_log_probs: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``KL(teacher ‖ student)`` over the last axis, averaged over the positions selected by `mask`.

    student_log_probs: (..., C) log-probabilities of the branch being trained; teacher_probs: (..., C) target
    distribution (pseudo-labels; treated as constant — detached); mask: (...) bool, True where the teacher is
    confident (None = everywhere). ``0·log 0 = 0``. For per-class binary pseudo-labels, stack ``[p, 1 − p]`` on a
    last axis of size 2. Returns a scalar; 0 (still attached to the graph) when the mask selects nothing.
    """
    if student_log_probs.shape != teacher_probs.shape:
        raise ValueError(f"shapes differ: {student_log_probs.shape} vs {teacher_probs.shape}")
    teacher = teacher_probs.detach()
    # xlogy gives 0 where teacher == 0, avoiding 0·(−inf) = NaN.
    per_position = (torch.xlogy(teacher, teacher) - teacher * student_log_probs).sum(dim=-1)  # (...)
    if mask is None:
        return per_position.mean()
    mask = mask.to(torch.bool)
    if mask.shape != per_position.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must match the leading shape {tuple(per_position.shape)}")
    selected = per_position[mask]
    if selected.numel() == 0:
        return per_position.sum() * 0.0
    return selected.mean()


def mil_topk_count(num_snippets: int, ratio: int = MIL_TOPK_RATIO) -> int:
    """``k = max(1, T // ratio)`` snippets per class for top-k MIL pooling."""
    return max(1, num_snippets // ratio)


def mil_topk_scores(cas: torch.Tensor, k: int) -> torch.Tensor:
    """Video-level class scores: the mean of each class's k highest snippet activations.

    cas: (B, T, C) class activation sequence; k in [1, T]. Returns (B, C).
    """
    if cas.ndim != 3:
        raise ValueError(f"cas must be (B, T, C), got {tuple(cas.shape)}")
    if not 1 <= k <= cas.shape[1]:
        raise ValueError(f"k must lie in [1, T={cas.shape[1]}], got {k}")
    return cas.topk(k, dim=1).values.mean(dim=1)  # (B, k, C) → (B, C)
