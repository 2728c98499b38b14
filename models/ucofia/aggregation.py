"""Similarity aggregation over one axis: UCoFiA's Interactive Similarity Aggregation (ISA), its two ablation
baselines, and the two-stage bidirectional Bi-ISA of the patch–word level.

Every aggregator reduces one axis of similarities ``s`` (the last, or with ``dim=-2`` the second-to-last), with a
validity mask broadcastable to ``s`` (True = a real frame / word / patch), to one score per remaining index:

| name | formula (valid positions only) | source |
|---|---|---|
| ``isa`` | ``Σ_k s_k · softmax( softmax(s/τ) W / τ )_k`` | UCoFiA paper Eq. ISA; official `_loose_similarity` |
| ``softmax`` | ``Σ_k s_k · ( softmax(s/τ) W )_k`` | X-CLIP AOSM (`_attenion_over_fine_grained_sim_matrix`) |
| ``mean`` | ``mean_k s_k`` | mean pooling (paper's ablation baseline) |

τ = 0.01 and ``W ∈ R^{n×n}`` learnable, initialised to the identity (official `torch.eye(num_frames)` etc.). At
W = I, ISA is ``Σ s · softmax(softmax(s/τ)/τ)`` and AOSM is ``Σ s · softmax(s/τ)``; so "softmax" is exactly ISA without
its outer ("interactive") softmax, the ablation the paper's ISA-vs-softmax comparison isolates.

Padding: masked positions are removed from *both* softmaxes (their logits are set to the dtype's minimum) and their
similarities are zeroed (`torch.where`, so NaN/inf junk cannot leak) before the weighted sum. The inner
probabilities are then exactly 0 at masked positions, so W's rows there are never read and its columns there are
never normalised over: the result equals aggregating the valid positions alone with the matching sub-matrix of W.
For the same reason an axis shorter than W's size uses ``W[:n, :n]``. An all-masked row aggregates to 0.

`BiAggregation` is Bi-ISA (official `_loose_similarity`, "frame-word score"), for ``M (Q, G, L words, P patches)``:
``r = ISA_w(M)`` per patch (W_word, L×L), ``c = ISA_p(M)`` per word (W_pix, P×P), then
``S_pw = ½ [ISA_p(r) (W_pix2) + ISA_w(c) (W_word2)]``. Its output is not multiplied by the logit scale (official).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _mask_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return logits
    # the dtype's minimum, not −inf: an all-masked row then stays finite (uniform) instead of NaN
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


def _zero_masked(s: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return s
    return torch.where(mask, s, torch.zeros((), dtype=s.dtype, device=s.device))


class Aggregation(nn.Module):
    """Interface: ``forward(s, mask broadcastable to s (bool) | None, dim=-1 | -2)`` reduces axis `dim` of `s`.

    ``dim=-2`` aggregates the second-to-last axis in place (Bi-ISA's word axis of ``M (Q, G, L, P)``), which avoids
    materialising a transposed copy of the largest tensor of the model.
    """

    def forward(self, s: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
        raise NotImplementedError


def _check_dim(dim: int) -> None:
    if dim not in (-1, -2):
        raise ValueError(f"aggregation axis must be -1 or -2, got {dim}")


class _WeightedAggregation(Aggregation):
    """Shared state of ISA and AOSM: τ and the identity-initialised ``W (size, size)``."""

    def __init__(self, size: int, tau: float) -> None:
        super().__init__()
        if size < 1 or tau <= 0:
            raise ValueError(f"size must be >= 1 and tau > 0, got {size}, {tau}")
        self.tau = tau
        self.weight = nn.Parameter(torch.eye(size))  # official `nn.Parameter(torch.eye(n))`

    @property
    def size(self) -> int:
        return int(self.weight.shape[0])

    def _mixed(self, s: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
        """``softmax(s/τ) W`` along axis `dim` (same shape as `s`)."""
        _check_dim(dim)
        n = s.shape[dim]
        if n > self.size:
            raise ValueError(f"aggregating {n} positions with a {self.size}×{self.size} weight")
        probs = torch.softmax(_mask_logits(s / self.tau, mask), dim=dim)  # 0 at masked positions
        weight = self.weight[:n, :n].to(s.dtype)
        # (..., n) @ W, or for the axis -2 layout (..., n, m): Wᵀ @ probs, i.e. out[k, j] = Σ_i probs[i, j] W[i, k]
        return probs @ weight if dim == -1 else weight.T @ probs


class ISA(_WeightedAggregation):
    """Interactive Similarity Aggregation: ``Σ_k s_k · softmax(softmax(s/τ) W / τ)_k`` (UCoFiA)."""

    def forward(self, s: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
        attention = torch.softmax(_mask_logits(self._mixed(s, mask, dim) / self.tau, mask), dim=dim)
        return (attention * _zero_masked(s, mask)).sum(dim=dim)


class SoftmaxAggregation(_WeightedAggregation):
    """X-CLIP's attention over similarity matrix (AOSM): ``Σ_k s_k · (softmax(s/τ) W)_k`` (no outer softmax)."""

    def forward(self, s: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
        return (self._mixed(s, mask, dim) * _zero_masked(s, mask)).sum(dim=dim)


class MeanAggregation(Aggregation):
    """Mean over the valid positions (parameter-free); all-masked rows give 0."""

    def forward(self, s: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
        _check_dim(dim)
        if mask is None:
            return s.mean(dim=dim)
        count = mask.expand_as(s).sum(dim=dim).clamp(min=1).to(s.dtype)
        return _zero_masked(s, mask).sum(dim=dim) / count


AGGREGATIONS: dict[str, Callable[[int, float], Aggregation]] = {
    "isa": ISA,
    "softmax": SoftmaxAggregation,
    "mean": lambda size, tau: MeanAggregation(),
}


class BiAggregation(nn.Module):
    """Bi-ISA over a patch–word similarity tensor (see the module docstring); built from any aggregation name."""

    def __init__(self, aggregation: str, n_words: int, n_patches: int, tau: float) -> None:
        super().__init__()
        make = AGGREGATIONS[aggregation]
        self.word_first = make(n_words, tau)  # official `word_mat_weight`: over words, for each patch
        self.patch_first = make(n_patches, tau)  # official `pixel_mat_weight`: over patches, for each word
        self.patch_second = make(n_patches, tau)  # official `pixel_mat_weight2`: sent2frame
        self.word_second = make(n_words, tau)  # official `word_mat_weight2`: video2word

    def forward(self, m: torch.Tensor, word_mask: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """m (Q, G, L, P), word_mask (Q, L), patch_mask (G, P) → (Q, G)."""
        words = word_mask[:, None, :]  # (Q, 1, L)
        patches = patch_mask[None, :, :]  # (1, G, P)
        per_patch = self.word_first(m, words[..., None], dim=-2)  # (Q, G, P): words reduced
        per_word = self.patch_first(m, patches[:, :, None, :])  # (Q, G, L): patches reduced
        sent2frame = self.patch_second(per_patch, patches)  # (Q, G)
        video2word = self.word_second(per_word, words)  # (Q, G)
        return (sent2frame + video2word) / 2
