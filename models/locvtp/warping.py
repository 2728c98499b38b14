"""LocVTP's context warping head and its temporal offsets (paper §"Temporal aware contrastive learning").

Paper (seed review 004, METHODS §5): ``z^t = g(v^{t+δ}, δ) = ReLU(W [v^{t+δ}; sgn(δ); |δ|])`` with learnable
``W ∈ R^{(D+2)×D}`` (no bias is written; none is used) and δ drawn uniformly from ``[−δmax, δmax] \\ {0}``, δmax = 4.
The warped feature z^t must reconstruct clip t's context from a clip δ away; L_t aligns it with clip t's positive
words q^t_+ (cross-modal, the paper) or with v^t (intra-modal ablation), see `losses.fine_loss`.

Offsets are drawn per (video, clip) **uniformly among the admissible ones**: 1 <= |δ| <= δmax and clip t+δ is a valid
clip of the same video (the paper only says δ is random in the range; a t+δ outside the video has no feature).
A clip without any admissible δ (a one-clip video) leaves L_t. ``|δ|`` enters as the raw integer, as written.

The official code differs (paper-code-notes §4.2): it *adds* ``Linear(1)(sgn Δ) + Linear(1)(|Δ|)`` to a randomly
indexed word/clip feature, has no ReLU, no concatenation and no δmax, and indexes with a stale loop variable.
"""

from __future__ import annotations

import torch
from torch import nn


def sample_offsets(
    clip_mask: torch.Tensor, delta_max: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """δ for every clip: uniform over {δ : 1 <= |δ| <= δmax, clip t+δ valid}.

    clip_mask: (B, T) bool. Returns (delta (B, T) int64 — 0 where no δ is admissible or the clip is padding,
    has_delta (B, T) bool). Uses `generator` (or torch's global RNG, which the engine checkpoints).
    """
    t = clip_mask.shape[1]
    device = clip_mask.device
    offsets = torch.cat([torch.arange(-delta_max, 0), torch.arange(1, delta_max + 1)]).to(device)  # (2δmax,)
    target = torch.arange(t, device=device)[:, None] + offsets[None, :]  # (T, 2δmax)
    inside = (target >= 0) & (target < t)
    target_valid = clip_mask[:, target.clamp(0, t - 1)]  # (B, T, 2δmax): is clip t+δ a real clip
    admissible = inside[None] & target_valid & clip_mask[:, :, None]  # (B, T, 2δmax)
    # argmax of i.i.d. uniforms over the admissible set = a uniform draw from it
    draws = torch.rand(admissible.shape, generator=generator, device=device).masked_fill(~admissible, -1.0)
    has_delta = admissible.any(dim=2)
    delta = torch.where(has_delta, offsets[draws.argmax(dim=2)], torch.zeros_like(offsets[:1]))
    return delta, has_delta


class ContextWarpingHead(nn.Module):
    """``forward(clips (B, T, D), delta (B, T) int) -> z (B, T, D)`` with ``z^t = ReLU(W [v^{t+δ}; sgn δ; |δ|])``.

    Entries whose t+δ falls outside [0, T) read a clamped index; callers drop them with `has_delta`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim + 2, dim, bias=False)  # W ∈ R^{(D+2)×D} (stored transposed, as nn.Linear does)

    def forward(self, clips: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        b, t, d = clips.shape
        source = (torch.arange(t, device=clips.device)[None, :] + delta).clamp(0, t - 1)  # (B, T): index t+δ
        shifted = clips.gather(1, source[:, :, None].expand(b, t, d))  # (B, T, D): v^{t+δ}
        delta_f = delta.to(clips.dtype)[:, :, None]  # (B, T, 1)
        return torch.relu(self.proj(torch.cat([shifted, delta_f.sign(), delta_f.abs()], dim=-1)))
