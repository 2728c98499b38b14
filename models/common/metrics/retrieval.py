"""Text–video retrieval metrics from a similarity matrix: ranks, R@K, MdR, MnR (CLIP4Clip ``metrics.py`` protocol).

Source: CLIP4Clip (Luo et al. 2022) ``metrics.py::compute_metrics`` and the multi-sentence path of
``main_task_retrieval.py`` (paper-code-notes §1.5, METHODS §0):
- t2v ranks each caption against every video; v2t ranks, for each video, the *caption groups* (one per video), a
  group scoring the **max** over its captions (``tensor_video_to_text_sim``);
- ``R@K = 100·mean(rank < K)``, ``MdR = median(rank) + 1``, ``MnR = mean(rank) + 1`` with 0-based ranks.

Tie rule — **pessimistic**: the rank of the ground truth is the number of *other* gallery items whose score is
``>=`` the ground truth's score. A model that scores the right item equal to a wrong one gets no credit for it, and a
constant similarity matrix scores ``R@1 = 0`` (rank ``G − 1`` everywhere), never 100. CLIP4Clip instead takes
``np.where(sort(-x) - diag(-x)[:, None] == 0)[1]``: on a tie ``np.where`` returns *every* tied position, so a tied
query contributes several ranks (the first of them optimistic) and the averages run over more entries than there are
queries — a query whose ground truth ties with others is partly credited with the best tied position, which inflates
R@K. NaN scores are treated as ``-inf`` (a NaN ground-truth score therefore gets the worst rank).

The count ``#{j != gt : s_j >= s_gt}`` equals the position of the ground truth in an argsort that breaks every tie
against it, so it is the "argsort rank" of METHODS §0 with the tie rule made explicit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS: tuple[int, ...] = (1, 5, 10)
#: the key under which an evaluation report keeps the per-query ranks of its blocks other than the overall one
#: (block → `retrieval_ranks`; the overall ranks are ``ranks``), for the claims' paired bootstrap
BLOCK_RANKS = "block_ranks"
# Rows per block when counting, to bound the (rows, G) temporary on large galleries.
_ROW_BLOCK = 2048


def _finite_or_neg_inf(sim: np.ndarray) -> np.ndarray:
    sim = np.asarray(sim, dtype=np.float64)
    return np.where(np.isnan(sim), -np.inf, sim)


def ranks(sim: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each query's ground-truth gallery item under the pessimistic tie rule.

    sim: (Q, G) similarities, higher is better; gt: (Q,) int gallery index of each query's match (default: the
    diagonal, which needs Q <= G). Returns (Q,) int64 in [0, G − 1].
    """
    sim = _finite_or_neg_inf(sim)  # (Q, G)
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D (Q, G), got shape {sim.shape}")
    n_query, n_gallery = sim.shape
    if gt is None:
        if n_query > n_gallery:
            raise ValueError(f"diagonal ground truth needs Q <= G, got {sim.shape}")
        gt = np.arange(n_query)
    gt = np.asarray(gt, dtype=np.int64).reshape(-1)  # (Q,)
    if len(gt) != n_query:
        raise ValueError(f"gt has {len(gt)} entries for {n_query} queries")
    if n_query and (gt.min() < 0 or gt.max() >= n_gallery):
        raise ValueError(f"gt indices must lie in [0, {n_gallery})")
    out = np.empty(n_query, dtype=np.int64)
    for lo in range(0, n_query, _ROW_BLOCK):
        block = sim[lo : lo + _ROW_BLOCK]  # (b, G)
        gt_score = block[np.arange(len(block)), gt[lo : lo + _ROW_BLOCK]]  # (b,)
        # The ground truth always satisfies s >= s_gt (also for -inf), hence the - 1.
        out[lo : lo + _ROW_BLOCK] = (block >= gt_score[:, None]).sum(axis=1) - 1
    return out


def recall_at_k_curve(ranks: np.ndarray, ks: Sequence[int]) -> list[float]:
    """``100·mean(rank < k)`` for each k in `ks` (for recall curves / plots)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks")
    return [float(100.0 * np.mean(ranks < k)) for k in ks]


def recall_metrics(ranks: np.ndarray) -> dict[str, float]:
    """``{"R@1", "R@5", "R@10", "MdR", "MnR"}`` from 0-based ranks (R@K in percent, MdR/MnR 1-based)."""
    ranks = np.asarray(ranks)
    r1, r5, r10 = recall_at_k_curve(ranks, RECALL_KS)
    return {
        "R@1": r1,
        "R@5": r5,
        "R@10": r10,
        "MdR": float(np.median(ranks) + 1),
        "MnR": float(np.mean(ranks) + 1),
    }


def video_to_caption_group_sim(sim: np.ndarray, caption_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The v2t similarity of CLIP4Clip's multi-sentence protocol.

    sim: (C, V) caption × video; caption_video: (C,) video index of each caption. Returns ``(group_sim, videos)``:
    ``videos`` (G,) the sorted video indices that have at least one caption, ``group_sim`` (G, G) with
    ``group_sim[i, j] = max over captions c of video videos[j] of sim[c, videos[i]]`` (query video i, caption group j;
    the ground truth is the diagonal). Videos without captions are neither queries nor gallery items.
    """
    sim = _finite_or_neg_inf(sim)  # (C, V)
    caption_video = np.asarray(caption_video, dtype=np.int64).reshape(-1)  # (C,)
    order = np.argsort(caption_video, kind="stable")  # captions grouped by video
    videos, group_start = np.unique(caption_video[order], return_index=True)  # (G,), (G,)
    per_group_max = np.maximum.reduceat(sim[order], group_start, axis=0)  # (G, V): group j's best score per video
    return per_group_max[:, videos].T, videos  # (G query videos, G caption groups)


def retrieval_report(sim: np.ndarray, caption_video: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """t2v and v2t `recall_metrics` of a caption × video similarity matrix.

    sim: (C, V); caption_video: (C,) int video index of each caption, or None for one caption per video (then sim
    must be square, gt is the diagonal and v2t ranks ``sim.T``). Returns ``{"t2v": {...}, "v2t": {...}}``.
    """
    return {direction: recall_metrics(r) for direction, r in retrieval_ranks(sim, caption_video).items()}


def retrieval_ranks(sim: np.ndarray, caption_video: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The per-query 0-based ranks behind `retrieval_report` (same arguments): ``{"t2v": (C,), "v2t": (G,)}``, G the
    videos that have a caption (the v2t queries, and the t2v gallery when every video has one)."""
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D (C, V), got shape {sim.shape}")
    n_caption, n_video = sim.shape
    if caption_video is None:
        if n_caption != n_video:
            raise ValueError(f"without caption_video the similarity must be square, got {sim.shape}")
        return {"t2v": ranks(sim), "v2t": ranks(sim.T)}
    caption_video = np.asarray(caption_video, dtype=np.int64).reshape(-1)  # (C,)
    if len(caption_video) != n_caption:
        raise ValueError(f"caption_video has {len(caption_video)} entries for {n_caption} captions")
    if n_caption and (caption_video.min() < 0 or caption_video.max() >= n_video):
        raise ValueError(f"caption_video entries must lie in [0, {n_video})")
    group_sim, _ = video_to_caption_group_sim(sim, caption_video)  # (G, G)
    return {"t2v": ranks(sim, caption_video), "v2t": ranks(group_sim)}
