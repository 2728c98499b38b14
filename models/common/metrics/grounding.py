"""Temporal sentence grounding recall ``R@n, IoU@m`` (2D-TAN protocol, used by LocVTP's downstream evaluation).

Source: 2D-TAN (Zhang et al., AAAI 2020) ``lib/core/eval.py::eval`` / ``nms``; LocVTP's
``clip/data/datasets/evaluation.py`` is the same evaluator (paper-code-notes §4.3). Per query:
1. sort the candidate moments by score, descending (stable: ties keep the input order);
2. greedy NMS: a moment is suppressed when its IoU with a kept one is ``> nms_threshold`` (2D-TAN keeps
   ``ovr <= thresh``);
3. the query counts for ``(n, m)`` when one of its first n surviving moments has ``IoU > m`` with the ground truth.

``>`` versus ``>=``: the 2D-TAN evaluator tests ``(overlap > t)[:r].any()`` — a **strict** inequality — and that is
what the papers' tables (2D-TAN, LocVTP) were computed with, so it is the default here (``inclusive=False``).
METHODS §0 writes "IoU ≥ m"; pass ``inclusive=True`` for that reading. The two differ only for moments whose IoU
equals m exactly, which happens on clip-quantised grids (e.g. IoU = 0.5 between a 2-clip moment and a 4-clip ground
truth).
IoU is `models.common.segments.segment_iou` (seconds, ``len = end − start``); for overlapping moments it equals
2D-TAN's ``inter / (max(e) − min(s))``, and both are 0 for disjoint ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.common.segments import Segments, nms, segment_iou


def grounding_recall(
    pred_moments: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt: np.ndarray,
    ns: Sequence[int] = (1, 5),
    ious: Sequence[float] = (0.3, 0.5, 0.7),
    nms_threshold: float = 0.5,
    *,
    inclusive: bool = False,
) -> dict[str, float]:
    """``{"R@n,IoU@m": percent}`` for every n in `ns` and m in `ious`.

    pred_moments: per query a (K_q, 2) array of candidate ``[start, end]`` seconds; pred_scores: per query (K_q,);
    gt: (Q, 2) ground-truth moment per query. nms_threshold: 2D-TAN's ``TEST.NMS_THRESH`` (0.5 in its ActivityNet
    config, 0.4 default). A query with no candidate counts as a miss.
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)  # (Q, 2)
    if not (len(pred_moments) == len(pred_scores) == len(gt)):
        raise ValueError(
            f"need one moment set and score set per query: {len(pred_moments)} moments, "
            f"{len(pred_scores)} scores, {len(gt)} ground truths"
        )
    if len(gt) == 0:
        raise ValueError("no queries")
    max_n = max(ns)
    hit = np.zeros((len(gt), len(ns), len(ious)), dtype=bool)  # (Q, n_ns, n_ious)
    thresholds = np.asarray(ious, dtype=np.float64)  # (n_ious,)
    for q, (moments, scores) in enumerate(zip(pred_moments, pred_scores)):
        moments = np.asarray(moments, dtype=np.float64).reshape(-1, 2)  # (K, 2)
        if len(moments) == 0:
            continue
        kept = nms(Segments.from_bounds(moments, score=scores), nms_threshold, class_agnostic=True)
        top = kept.bounds()[:max_n]  # (<= max_n, 2), descending score
        overlap = segment_iou(top, gt[q : q + 1])[:, 0]  # (<= max_n,)
        above = overlap[:, None] >= thresholds[None, :] if inclusive else overlap[:, None] > thresholds[None, :]
        for i, n in enumerate(ns):
            hit[q, i] = above[:n].any(axis=0)
    recall = 100.0 * hit.mean(axis=0)  # (n_ns, n_ious)
    return {f"R@{n},IoU@{m:g}": float(recall[i, j]) for i, n in enumerate(ns) for j, m in enumerate(ious)}
