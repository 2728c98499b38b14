"""UCoFiA's patch selection: a per-token score predictor and a differentiable (perturbed) top-K.

Sources: official `train/modules/differential_topk.py` (adapted there from TS2-Net): `PredictorLG`,
`PerturbedTopK` (Berthet et al., "Learning with differentiable perturbed optimizers", NeurIPS 2020, as used by
Cordonnier et al. 2021), `VisualTokenSelection`; paper-code-notes §3.2.

- `ScorePredictor` (official `PredictorLG`): ``LN → Linear(D, D/2, no bias) → GELU`` per token, concatenated with the
  same vector of the frame's CLS token, then ``Linear(D, D/2, no bias) → GELU → Linear(D/2, 1, no bias) → tanh``.
  Only the N patch scores are kept (the CLS token is always kept, never selected).
- `perturbed_topk` (training): forward = the mean over `n` Gaussian perturbations ``x + σ·Z`` of the one-hot top-K
  indicators ``(K, N)`` (the K selected indices sorted ascending, i.e. in patch order, as official); backward = the
  Berthet et al. Jacobian estimate ``∂E[Y]/∂x = E[Y ⊗ Z] / σ`` (sample mean over the n draws).
  **Code divergence:** the UCoFiA repository's backward is ``einsum("bnkd,bnd->bkd")``, i.e. only the *diagonal*
  ``E[Y_kd Z_d]/σ`` of that Jacobian; TS2-Net's (and the paper's reference) is the full outer product
  ``einsum("bnkd,bne->bkde")``. We implement the full estimator, without materialising the (n, K, N) one-hots:
  ``grad_x[e] = Σ_n Z[n, e] · Σ_k grad_Y[k, idx[n, k]] / (n·σ)``, which is the same sum reordered.
- `hard_topk` (evaluation): plain top-K one-hots. The official selector ignores its `training` flag and stays
  stochastic at test time; here evaluation is deterministic (METHODS §3) — the σ → 0 limit of the training forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _sorted_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of the last axis, sorted ascending (patch order), int64."""
    return torch.sort(torch.topk(x, k, dim=-1, sorted=False).indices, dim=-1).values


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, k: int, n_samples: int, sigma: float) -> torch.Tensor:
        m, n = scores.shape
        noise = torch.randn(m, n_samples, n, dtype=scores.dtype, device=scores.device)  # (M, S, N)
        idx = _sorted_topk(scores[:, None, :] + sigma * noise, k)  # (M, S, K)
        counts = scores.new_zeros(m, k, n)  # (M, K, N)
        counts.scatter_add_(2, idx.transpose(1, 2), scores.new_ones(m, k, n_samples))
        ctx.save_for_backward(noise, idx)
        ctx.sigma = sigma
        return counts / n_samples  # (M, K, N): slot j = mean one-hot of the j-th selected (ascending) patch

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        noise, idx = ctx.saved_tensors  # (M, S, N), (M, S, K)
        n_samples = noise.shape[1]
        # Σ_{k,d} grad[k, d] · onehot[s, k, d] = Σ_k grad[k, idx[s, k]]  → (M, S)
        picked = grad.gather(2, idx.transpose(1, 2)).sum(dim=1)  # (M, K, S) → (M, S)
        grad_scores = torch.einsum("ms,msn->mn", picked, noise) / (n_samples * ctx.sigma)  # (M, N)
        return grad_scores, None, None, None


def perturbed_topk(scores: torch.Tensor, k: int, n_samples: int = 500, sigma: float = 0.05) -> torch.Tensor:
    """scores (M, N) → soft top-K indicators (M, K, N), differentiable (see the module docstring). Draws its noise from
    torch's global generator."""
    if scores.ndim != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"need scores (M, N) with 1 <= k <= N; got {tuple(scores.shape)}, k={k}")
    out = _PerturbedTopK.apply(scores, k, n_samples, sigma)
    assert isinstance(out, torch.Tensor)
    return out


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores (M, N) → one-hot top-K indicators (M, K, N), slots in ascending patch order; no gradient to scores."""
    if scores.ndim != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"need scores (M, N) with 1 <= k <= N; got {tuple(scores.shape)}, k={k}")
    return F.one_hot(_sorted_topk(scores, k), scores.shape[1]).to(scores.dtype)  # (M, K, N)


class ScorePredictor(nn.Module):
    """Official `PredictorLG`: tokens (M, 1+N, D), CLS first → patch scores (M, N) in [−1, 1]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"the score predictor halves the width; got odd dim {dim}")
        half = dim // 2
        self.local = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, half, bias=False), nn.GELU())
        self.out = nn.Sequential(nn.Linear(dim, half, bias=False), nn.GELU(), nn.Linear(half, 1, bias=False), nn.Tanh())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.local(tokens)  # (M, 1+N, D/2)
        frame = x[:, :1].expand_as(x)  # (M, 1+N, D/2): the CLS token's vector for every token
        return self.out(torch.cat([x, frame], dim=-1))[:, 1:, 0]  # (M, N)


class PatchSelector(nn.Module):
    """Official `VisualTokenSelection`: per frame ``[CLS ; K selected patches]``, soft in training, hard in eval."""

    def __init__(self, dim: int, k: int, n_samples: int, sigma: float) -> None:
        super().__init__()
        self.k = k
        self.n_samples = n_samples
        self.sigma = sigma
        self.scorer = ScorePredictor(dim)

    def indicators(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (M, 1+N, D) → selection indicators (M, K, N) (perturbed in training, one-hot in eval)."""
        scores = self.scorer(tokens)  # (M, N)
        if self.training:
            return perturbed_topk(scores, self.k, self.n_samples, self.sigma)
        return hard_topk(scores, self.k)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (M, 1+N, D) → (M, 1+K, D): the CLS token then the K selected patch tokens (ascending order)."""
        if tokens.ndim != 3 or tokens.shape[1] < self.k + 1:
            raise ValueError(f"need tokens (M, 1+N, D) with N >= {self.k}; got {tuple(tokens.shape)}")
        chosen = torch.einsum("mkn,mnd->mkd", self.indicators(tokens), tokens[:, 1:])  # (M, K, D)
        return torch.cat([tokens[:, :1], chosen], dim=1)
