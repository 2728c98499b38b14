"""Evaluation plots for MLflow: retrieval R@K curves and rank histograms (reliability notes Table 2, "plots").

Figures are built with the object-oriented API on an Agg canvas (`matplotlib.figure.Figure`), never through pyplot:
no GUI backend is needed on a headless worker, and nothing is registered in pyplot's global figure list, so a
long evaluation loop cannot leak figures. `infra.tracking.Tracker.log_figure` saves them as run artefacts.

Ranks are 0-based ground-truth ranks as produced by `models.common.metrics.retrieval.ranks`; curves use that module's
``R@K = 100·mean(rank < K)`` so the plot and the logged numbers cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.common.metrics.retrieval import recall_at_k_curve

#: default largest K of a recall curve (reliability notes: "recall@K curve (K=1…100)")
DEFAULT_MAX_K = 100


def _new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _checked(ranks_by_direction: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not ranks_by_direction:
        raise ValueError("no ranks to plot")
    out = {}
    for direction, ranks in ranks_by_direction.items():
        arr = np.asarray(ranks)
        if arr.ndim != 1 or arr.size == 0 or (arr < 0).any():
            raise ValueError(f"{direction}: expected a non-empty 1-D array of 0-based ranks")
        out[direction] = arr
    return out


def recall_curve_figure(
    ranks_by_direction: Mapping[str, np.ndarray],
    ks: Sequence[int] | None = None,
    title: str = "Recall@K",
) -> Figure:
    """One R@K line per direction (``{"t2v": ranks, "v2t": ranks}``), K = `ks` or 1…min(100, largest rank + 1).

    Line ``i`` holds ``(K, R@K)`` in the order of `ranks_by_direction`; its label is the direction.
    """
    ranks = _checked(ranks_by_direction)
    if ks is None:
        top = min(DEFAULT_MAX_K, max(int(r.max()) for r in ranks.values()) + 1)
        ks = range(1, top + 1)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError("ks must be positive integers")
    fig = _new_figure()
    ax = fig.add_subplot()
    for direction, r in ranks.items():
        ax.plot(ks, recall_at_k_curve(r, ks), marker="." if len(ks) <= 20 else None, label=direction)
    ax.set(xlabel="K", ylabel="R@K (%)", ylim=(0, 100.5), title=title)
    if max(ks) > 20:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def rank_histogram_figure(
    ranks_by_direction: Mapping[str, np.ndarray],
    max_rank: int | None = None,
    title: str = "Rank of the ground truth",
) -> Figure:
    """A histogram of 1-based ranks per direction (one subplot each); ranks beyond `max_rank` fall in the last bin.

    Subplot ``i``'s bars have heights ``np.bincount(min(rank, max_rank - 1))``: bar ``j`` counts queries whose ground
    truth came ``j + 1``-th.
    """
    ranks = _checked(ranks_by_direction)
    if max_rank is None:
        max_rank = max(int(r.max()) for r in ranks.values()) + 1
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    fig = _new_figure(width=4.0 * len(ranks), height=3.5)
    axes = fig.subplots(1, len(ranks), squeeze=False)[0]
    for ax, (direction, r) in zip(axes, ranks.items()):
        counts = np.bincount(np.minimum(r, max_rank - 1), minlength=max_rank)
        ax.bar(np.arange(1, max_rank + 1), counts, width=1.0)
        ax.set(xlabel="rank (1 = best)", ylabel="queries", title=f"{direction} (n={r.size})")
    fig.suptitle(title)
    return fig
