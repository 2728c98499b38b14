"""LocVTP's objectives: clip–word correspondence discovery, the fine-grained clip–word InfoNCE, the coarse term.

Paper (Cao et al., ECCV 2022; seed review 004; METHODS §5). Letters: B videos (each with its own sentence), T clips,
L word slots, D channels, M sentences in the (global) batch. Every feature is L2-normalised before a similarity
(paper: "all features are l2-normalised before computing similarities in the losses").

**Correspondence discovery.** For the pair (video b, sentence b) the clip–word cosine matrix ``s_b(t, s) = v^t·q^s``
(valid clips × real words) selects (clip, word) pairs; the clip's positive is the re-normalised mean of its selected
words, ``q^t_+ = norm(avgpool{q^s : (t, s) selected})``. Selectors (`POSITIVE_SELECTORS`, the paper's ablation as the
review describes it: "random = K random words per clip; 2d-topk = K×T clip–word pairs; word-topk = conversely, each
word picks its K most similar clips; clip-topk = each clip picks its K most similar words, the adopted setting"):

- ``clip_topk`` (paper): clip t selects its top-min(K, S_b) words;
- ``word_topk``: word s selects its top-min(K, T_b) clips; a clip's positive words are those that selected it, and a
  clip no word selected has **no positive and leaves the fine and temporal terms** (this is what "each word forcibly
  picks K clips" means for a per-clip InfoNCE);
- ``2d_topk``: the top min(K·T_b, T_b·S_b) entries of the whole T_b × S_b matrix;
- ``random``: K random words of the clip's own sentence (uniform, without replacement).

Selection is an argtopk, so it carries no gradient; gradients flow through the selected word features into q^t_+ (and
through v^t). The official code instead takes the *argmax* word and 4 random words of the same sentence as negatives
(paper-code-notes §4.2); not followed.

**Fine loss** (paper Eq. for L_f), per video–sentence pair, averaged over the batch:
``L_f = (1/T) Σ_t −log exp(v^t·q^t_+/τ) / Σ_i Σ_s exp(v^t·q_i^s/τ)``, where i runs over all M sentences of the batch
(gathered from every rank) and s over each sentence's real words (padding masked). Following the equation, the
denominator holds the actual words only: q^t_+, a mean of words, is **not** one of its terms. So this is not a
softmax cross-entropy and the loss is not bounded below by 0. (1/T) averages over the clips that have a positive
(all valid clips for clip_topk / random / 2d_topk); videos without any such clip are left out of the batch mean.

Words are the content tokens of a CLIP caption, strictly between SOT and EOT (official: DistilBERT tokens ``[1:-1]``).

**Coarse loss** (paper Eq. for L_c): ``−log exp(v̄·q̄/τ) / Σ_i exp(v̄·q̄_i/τ)`` with v̄, q̄ the (re-normalised) means of
the clip and word features — each video against every sentence of the global batch ("v2t"); "symmetric" averages both
directions (official ``ClipLoss``).

**Distributed.** Word features are gathered with `all_gather_with_grad`; each rank's fine loss is the mean over its own
clips, so after the engine's gradient averaging every parameter gets the gradient of the mean over ranks (the gather's
backward sums each rank's contribution, `models.common.distributed`). The coarse term uses `ContrastiveLoss.logits`
(the global matrix on every rank).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.common.losses import symmetric_infonce

# (sim (B, T, L), clip_mask (B, T), word_mask (B, L), k, generator) → selected (clip, word) pairs (B, T, L) bool
PositiveSelector = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Generator | None], torch.Tensor]


def _pair_mask(clip_mask: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    return clip_mask[:, :, None] & word_mask[:, None, :]  # (B, T, L): valid clip × real word


def _topk_along(scores: torch.Tensor, valid: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Mark the top-min(k, #valid) valid entries along `dim` of `scores` (B, T, L) → bool (B, T, L)."""
    k = min(k, scores.shape[dim])
    masked = scores.masked_fill(~valid, float("-inf"))
    index = masked.topk(k, dim=dim).indices
    # where fewer than k entries are valid, topk also returns masked ones; `& valid` drops them
    return torch.zeros_like(valid).scatter(dim, index, True) & valid


def select_clip_topk(
    sim: torch.Tensor, clip_mask: torch.Tensor, word_mask: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Each valid clip selects its top-min(K, S_b) words (the paper's correspondence discovery)."""
    return _topk_along(sim, _pair_mask(clip_mask, word_mask), k, dim=2)


def select_word_topk(
    sim: torch.Tensor, clip_mask: torch.Tensor, word_mask: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Each real word selects its top-min(K, T_b) clips (ablation "word-topk")."""
    return _topk_along(sim, _pair_mask(clip_mask, word_mask), k, dim=1)


def select_2d_topk(
    sim: torch.Tensor, clip_mask: torch.Tensor, word_mask: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """The top min(K·T_b, T_b·S_b) (clip, word) pairs of each video's whole matrix (ablation "2d-topk")."""
    valid = _pair_mask(clip_mask, word_mask)  # (B, T, L)
    b, t, length = valid.shape
    flat = sim.masked_fill(~valid, float("-inf")).reshape(b, t * length)  # (B, T·L)
    order = flat.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(t * length, device=sim.device).expand(b, -1))
    budget = torch.minimum(k * clip_mask.sum(1), valid.flatten(1).sum(1))  # (B,)
    return (rank < budget[:, None]).view(b, t, length) & valid


def select_random(
    sim: torch.Tensor, clip_mask: torch.Tensor, word_mask: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Each valid clip takes K random words of its own sentence (ablation "random"); `sim` only gives the shape."""
    noise = torch.rand(sim.shape, generator=generator, device=sim.device)
    return _topk_along(noise, _pair_mask(clip_mask, word_mask), k, dim=2)


POSITIVE_SELECTORS: dict[str, PositiveSelector] = {
    "clip_topk": select_clip_topk,
    "word_topk": select_word_topk,
    "2d_topk": select_2d_topk,
    "random": select_random,
}


def positive_features(pairs: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q^t_+ = norm(mean of the words selected for clip t).

    pairs: (B, T, L) bool from a selector; words: (B, L, D) unit word features of each video's own sentence.
    Returns (positives (B, T, D) unit — zero where a clip has none, has_positive (B, T) bool).
    """
    weight = pairs.to(words.dtype)  # (B, T, L)
    summed = torch.einsum("btl,bld->btd", weight, words)  # (B, T, D)
    count = weight.sum(dim=2, keepdim=True).clamp(min=1.0)  # (B, T, 1)
    return F.normalize(summed / count, dim=-1), pairs.any(dim=2)


def per_video_mean(per_clip: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(1/T_b) Σ_t over each video's valid clips, then the mean over videos with at least one (0 if none).

    per_clip: (B, T) losses (any value where invalid); valid: (B, T) bool.
    """
    weight = valid.to(per_clip.dtype)
    count = weight.sum(dim=1)  # (B,)
    per_video = torch.where(valid, per_clip, torch.zeros_like(per_clip)).sum(dim=1) / count.clamp(min=1.0)  # (B,)
    present = count > 0
    if not bool(present.any()):
        return (per_clip.nan_to_num() * 0.0).sum()  # 0, still attached to the graph
    return per_video[present].mean()


def fine_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    valid: torch.Tensor,
    bank: torch.Tensor,
    bank_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``mean_b (1/T_b) Σ_t −log exp(a^t·p^t/τ) / Σ_i Σ_s exp(a^t·bank_i^s/τ)`` (paper L_f; L_t with a = z).

    anchors: (B, T, D) unit clip (or warped) features; positives: (B, T, D) unit targets; valid: (B, T) bool anchors
    that take part; bank: (M, L, D) unit features forming the denominator (all words of all sentences of the global
    batch, or all clips for the intra-modal variant); bank_mask: (M, L) bool real entries. Scalar.
    """
    if not bool(bank_mask.any()):  # nothing to contrast against (no word in the whole batch)
        return (anchors * 0.0).sum()
    pos = (anchors * positives).sum(dim=-1) / temperature  # (B, T)
    logits = torch.einsum("btd,mld->btml", anchors, bank).flatten(2) / temperature  # (B, T, M·L)
    logits = logits.masked_fill(~bank_mask.reshape(1, 1, -1), float("-inf"))
    return per_video_mean(torch.logsumexp(logits, dim=-1) - pos, valid)


def coarse_v2t(logits: torch.Tensor) -> torch.Tensor:
    """The paper's L_c: each video (column) against every sentence (row) of `logits` (sentences, videos)."""
    targets = torch.arange(logits.shape[1], device=logits.device)
    return F.cross_entropy(logits.T, targets)


def coarse_symmetric(logits: torch.Tensor) -> torch.Tensor:
    """Average of the video→sentence and sentence→video directions (official ClipLoss, CLIP)."""
    return symmetric_infonce(logits, reduction="mean")


COARSE_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "v2t": coarse_v2t,
    "symmetric": coarse_symmetric,
}
