"""DCC confident pseudo-labels (paper Eq. for ``h_{t,c}``, METHODS §4) and the foreground/background snippet masks.

``h_{t,c} = 1`` if ``p_{t,c} > δ_h`` and c is a video label; ``0`` if ``p_{t,c} < δ_l`` or c is not a label; ``−1``
(uncertain, ignored) otherwise; δ_h = 0.3, δ_l = 0.1 (paper). From ``H`` (project definitions, the review's words
"confident foreground / background frames"):

- a **foreground** snippet has ``h_{t,c} = 1`` for at least one video label c;
- a **background** snippet has ``h_{t,c} = 0`` for every video label (all labelled classes below δ_l);
- every other valid snippet is **uncertain**; padded snippets are neither (and get ``h = −1`` everywhere).

The B step distils the frozen CBP branch's ``H^cb`` into VLP, the F step the frozen VLP branch's ``H^vl`` into CBP;
`foreground_background` also gives the per-branch masks whose mIoU against the ground truth the paper reports.
"""

from __future__ import annotations

import torch

IGNORE = -1  # h value of uncertain (and padded) entries


def confident_labels(
    probs: torch.Tensor, labels: torch.Tensor, high: float, low: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Pseudo-labels ``H`` in {1, 0, −1}.

    probs: (B, T, C) per-snippet class probabilities; labels: (B, C) video-level multi-hot (> 0.5 = label);
    mask: (B, T) bool, True = real snippet (None = all). Returns (B, T, C) int64. Requires low < high.
    """
    if not low < high:
        raise ValueError(f"need low < high, got low={low}, high={high}")
    if probs.ndim != 3 or labels.shape != (probs.shape[0], probs.shape[2]):
        raise ValueError(f"probs (B, T, C) and labels (B, C) disagree: {tuple(probs.shape)} vs {tuple(labels.shape)}")
    is_label = (labels > 0.5)[:, None, :]  # (B, 1, C)
    h = torch.full(probs.shape, IGNORE, dtype=torch.long, device=probs.device)
    h[(probs < low) | ~is_label.expand_as(probs)] = 0
    h[(probs > high) & is_label] = 1
    if mask is not None:
        h[~mask.bool()] = IGNORE
    return h


def foreground_background(
    h: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confident foreground and background snippet masks from ``H``.

    h: (B, T, C) from `confident_labels`; labels: (B, C) multi-hot; mask: (B, T) bool or None.
    Returns (fg (B, T) bool, bg (B, T) bool), disjoint, both False on padded snippets. A video without labels has
    no foreground; all its valid snippets are background.
    """
    is_label = (labels > 0.5)[:, None, :]  # (B, 1, C)
    fg = ((h == 1) & is_label).any(dim=-1)  # (B, T)
    bg = ((h == 0) | ~is_label).all(dim=-1)  # (B, T): every label confidently 0
    valid = (h != IGNORE).any(dim=-1) if mask is None else mask.bool()  # padded rows are all −1
    return fg & valid, bg & valid & ~fg
