"""DCC losses: top-k MIL warm-up, the distillation loss ``L_kd`` and the foreground–background contrastive ``L_fb``.

Paper (Ju et al., CVPR 2023, via the review, METHODS §4); every B/F step minimises ``L_kd(H', P) + λ·L_fb``.

- **MIL** (warm-up of CBP; also the optional VLP warm-up): video score = mean of the top-k snippets per class,
  k = max(1, T_valid // 8) (`models.common.losses.mil_topk_scores`, per video so padding never counts).
  ``"bce"``: ``BCE(topk-mean(p_{·,c}), y_c)`` over the C action classes, p = per-snippet probabilities (the review's
  "warm-up with BCE"). ``"ce"``: ``−Σ_c ȳ_c log softmax(topk-mean(z))_c`` over C + 1 logits z with ȳ = [y, 1]
  normalised (the review's equation with σ = softmax; CO2-Net ``topkloss`` with the background appended).
- **L_kd** = ``(1/O) Σ_{t confident} Σ_c D_KL(h'_{t,c} ‖ p_{t,c})``: the review's per-class form, i.e. a Bernoulli KL
  per (snippet, class) entry between the hard pseudo-label and the student's probability, summed over classes and
  averaged over the O confident snippets. Entries with ``h' = −1`` inside a confident snippet are skipped. Computed
  with the shared `kl_distillation` on ``[p, 1 − p]`` pairs.
- **L_fb** = ``−log Σ_{m∈Ψ+_i} exp(f_i·f_m/τ) / Σ_{j∈Ψ+_i∪Ψ−} exp(f_i·f_j/τ)`` per anchor i, with f the L2-normalised
  snippet features of the branch being trained. Per video and labelled class c: anchors and positives Ψ+ = snippets
  with ``h'_{t,c} = 1`` (the anchor itself excluded, as in supervised contrastive learning; with itself among the
  positives the loss would be trivially small), negatives Ψ− = the video's confident background snippets. An anchor
  counts when it has at least one positive and one negative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.common.losses import kl_distillation, mil_topk_count, mil_topk_scores
from models.dcc.pseudo_labels import IGNORE

_PROB_EPS = 1e-6  # keeps log(1 − p) and BCE finite at saturated probabilities


def video_scores(cas: torch.Tensor, mask: torch.Tensor, ratio: int) -> torch.Tensor:
    """Top-k MIL video scores per video over its valid snippets: cas (B, T, K), mask (B, T) → (B, K).

    k = max(1, T_valid // ratio) per video (CO2-Net: T // 8). A video without valid snippets raises.
    """
    rows = []
    for b in range(cas.shape[0]):
        valid = cas[b][mask[b].bool()]  # (T_b, K)
        if valid.shape[0] == 0:
            raise ValueError(f"video {b} of the batch has no valid snippet")
        rows.append(mil_topk_scores(valid[None], mil_topk_count(valid.shape[0], ratio))[0])
    return torch.stack(rows)  # (B, K)


def mil_bce(logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, ratio: int) -> torch.Tensor:
    """BCE between the top-k mean snippet probabilities of the C action classes and the video labels.

    logits: (B, T, C + 1) CAS logits (background last); mask: (B, T); labels: (B, C) multi-hot. Mean over B·C.
    """
    probs = logits.softmax(dim=-1)[..., :-1]  # (B, T, C)
    scores = video_scores(probs, mask, ratio).clamp(_PROB_EPS, 1.0 - _PROB_EPS)  # (B, C)
    return F.binary_cross_entropy(scores, labels.to(scores.dtype))


def mil_ce(logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, ratio: int) -> torch.Tensor:
    """Cross-entropy between softmax(top-k mean logits) over C + 1 and the normalised [y, 1] (CO2-Net base branch)."""
    video_logits = video_scores(logits, mask, ratio)  # (B, C + 1)
    target = torch.cat([labels.to(logits.dtype), labels.new_ones(labels.shape[0], 1).to(logits.dtype)], dim=1)
    target = target / target.sum(dim=1, keepdim=True)  # (B, C + 1)
    return -(target * video_logits.log_softmax(dim=-1)).sum(dim=-1).mean()


MilLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
MIL_LOSSES: dict[str, MilLoss] = {"bce": mil_bce, "ce": mil_ce}


def kd_loss(log_probs: torch.Tensor, h: torch.Tensor, snippets: torch.Tensor) -> torch.Tensor:
    """``L_kd``: per-entry Bernoulli KL(h' ‖ p), summed over classes, averaged over the selected snippets.

    log_probs: (B, T, C + 1) student log-probabilities (background last; only the C action columns are distilled);
    h: (B, T, C) teacher pseudo-labels in {1, 0, −1}; snippets: (B, T) bool, the confident snippets to distil.
    Returns a scalar, 0 (attached) when nothing is selected.
    """
    log_p = log_probs[..., :-1]  # (B, T, C)
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1.0 - _PROB_EPS))  # (B, T, C) log(1 − p)
    student = torch.stack([log_p, log_not_p], dim=-1)  # (B, T, C, 2)
    target = h.clamp(min=0).to(log_p.dtype)
    teacher = torch.stack([target, 1.0 - target], dim=-1)  # (B, T, C, 2)
    entries = snippets.bool()[..., None] & (h != IGNORE)  # (B, T, C)
    n_snippets = int(snippets.bool().sum())
    if n_snippets == 0:
        return log_p.new_zeros(()) + log_p.sum() * 0.0
    # kl_distillation averages over entries; × entries / snippets turns that into Σ_c per snippet, / O
    return kl_distillation(student, teacher, entries) * (int(entries.sum()) / n_snippets)


def fb_contrastive_loss(
    features: torch.Tensor,
    h: torch.Tensor,
    background: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    reduction: str = "mean",
) -> tuple[torch.Tensor, int]:
    """``L_fb`` (see the module docstring) and the number of anchors used.

    features: (B, T, D) snippet features of the branch being trained (normalised here); h: (B, T, C) teacher
    pseudo-labels; background: (B, T) bool confident background; labels: (B, C) multi-hot. reduction "mean" = mean
    over all anchors of the batch; "sum" = Σ over each video's anchors, averaged over the B videos. 0 (attached) when
    no anchor qualifies.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    z = F.normalize(features, dim=-1)  # (B, T, D)
    terms: list[torch.Tensor] = []
    for b in range(z.shape[0]):
        neg = background[b].bool().nonzero().squeeze(1)  # (N,)
        if neg.numel() == 0:
            continue
        for c in (labels[b] > 0.5).nonzero().squeeze(1).tolist():
            pos = (h[b, :, c] == 1).nonzero().squeeze(1)  # (P,)
            if pos.numel() < 2:
                continue
            anchors = z[b, pos]  # (P, D)
            sim_pos = anchors @ anchors.T / temperature  # (P, P)
            sim_pos = sim_pos.masked_fill(torch.eye(len(pos), dtype=torch.bool, device=z.device), float("-inf"))
            sim_neg = anchors @ z[b, neg].T / temperature  # (P, N)
            numerator = torch.logsumexp(sim_pos, dim=1)  # (P,)
            denominator = torch.logsumexp(torch.cat([sim_pos, sim_neg], dim=1), dim=1)  # (P,)
            terms.append(denominator - numerator)
    if not terms:
        return features.new_zeros(()) + features.sum() * 0.0, 0  # attached; +0 avoids printing −0
    per_anchor = torch.cat(terms)  # (A,)
    loss = per_anchor.mean() if reduction == "mean" else per_anchor.sum() / z.shape[0]
    return loss, int(per_anchor.numel())
