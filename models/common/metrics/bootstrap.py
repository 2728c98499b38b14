"""Paired bootstrap of a metric difference between two systems scored on the same test queries, pooled over seeds.

Each system is given as per-query scores whose mean over queries is the metric — for R@K the hits ``100·(rank < K)``
of 0-based ranks (`recall_hits`), so the mean is R@K in percent — as an array ``(Q,)`` for one trained model or
``(S, Q)`` for S training seeds of it. Both systems must score the same Q queries in the same order.

The statistic is ``mean over seeds and queries of better − the same of worse`` (with several seeds: each system's
metric averaged over its seeds). One bootstrap replicate (Efron & Tibshirani 1993, ch. 16; Koehn 2004's paired
bootstrap for test sets):

1. draws Q queries with replacement, **the same draw for both systems** (paired: a query that is hard for one system
   is hard for the other, and that shared difficulty cancels in the difference);
2. with ``seeds="independent"`` (the default) also draws each system's S seeds with replacement, independently for
   the two systems — training-seed variance then widens the interval, which averaging alone would hide (issue 16:
   seeds move UCoFiA's full model between 12.3 and 24.5 % R@1); ``"paired"`` draws one seed draw for both (the two
   "systems" are two scorings of the same models, e.g. with and without Sinkhorn normalisation; needs equal S);
   ``"fixed"`` keeps every seed (the interval then covers the test-query sampling of these very models only);
3. computes the statistic on the drawn queries and seeds.

With one seed per system every mode is the plain paired bootstrap over queries. The interval is the percentile
interval of B replicates (default 2,000; all drawn at once as multinomial counts, so B × Q numbers in memory). The
verdict of a claim "better > worse": reproduced (``True``) when the whole interval lies above 0, refuted (``False``)
when it lies below 0, else ``"within noise"`` (`verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

SeedMode = Literal["independent", "paired", "fixed"]
Verdict = bool | Literal["within noise"]
WITHIN_NOISE: Literal["within noise"] = "within noise"


@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate of ``better − worse``: the observed difference and its percentile interval."""

    mean_diff: float  # the statistic on all queries and seeds (not the mean of the replicates)
    lo: float
    hi: float
    level: float  # e.g. 0.95
    n_boot: int

    @property
    def verdict(self) -> Verdict:
        return verdict(self.lo, self.hi)


def verdict(lo: float, hi: float) -> Verdict:
    """The rule for a claim "better > worse" from the interval of ``better − worse``: ``True`` when ``lo > 0``,
    ``False`` when ``hi < 0``, ``"within noise"`` when the interval contains 0 (or touches it)."""
    if lo > 0:
        return True
    if hi < 0:
        return False
    return WITHIN_NOISE


def recall_hits(ranks: ArrayLike, k: int) -> np.ndarray:
    """Per-query R@K scores ``100·(rank < k)`` of 0-based ranks (any shape, e.g. (S, Q)): their mean is R@K in %."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return 100.0 * (np.asarray(ranks) < k).astype(np.float64)


def chance_recall(gallery: int, k: int) -> float:
    """R@K in % of a scorer that ranks a gallery of `gallery` items at random: ``100·min(k, G)/G``."""
    if gallery < 1:
        raise ValueError(f"the gallery must hold at least one item, got {gallery}")
    return 100.0 * min(k, gallery) / gallery


def _as_seeds(scores: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]  # one seed
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected (Q,) or (S, Q) scores with S, Q >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: scores must be finite")
    return arr  # (S, Q)


def _weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(B, n) bootstrap weights: the multinomial counts of n draws with replacement, divided by n (rows sum to 1)."""
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # (B, n)
    return counts / n


def bootstrap_replicates(
    better: ArrayLike,
    worse: ArrayLike,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    seeds: SeedMode = "independent",
) -> np.ndarray:
    """(B,) replicates of ``mean(better) − mean(worse)`` (module docstring: queries drawn once for both systems,
    seeds as `seeds` says). better, worse: (Q,) or (S, Q) per-query scores on the same Q queries."""
    a, b = _as_seeds(better, "better"), _as_seeds(worse, "worse")  # (Sa, Q), (Sb, Q)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired bootstrap needs the same queries: {a.shape[1]} vs {b.shape[1]}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if seeds == "paired" and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired seeds need as many seeds on both sides: {a.shape[0]} vs {b.shape[0]}")
    if seeds not in ("independent", "paired", "fixed"):
        raise ValueError(f"unknown seed mode {seeds!r}")
    rng = np.random.default_rng(seed)
    queries = _weights(rng, a.shape[1], n_boot)  # (B, Q), shared by both systems
    per_seed_a, per_seed_b = queries @ a.T, queries @ b.T  # (B, Sa), (B, Sb): each seed's metric on the draw
    if seeds == "fixed":
        return per_seed_a.mean(axis=1) - per_seed_b.mean(axis=1)  # (B,)
    seed_a = _weights(rng, a.shape[0], n_boot)  # (B, Sa)
    seed_b = seed_a if seeds == "paired" else _weights(rng, b.shape[0], n_boot)  # (B, Sb)
    return (seed_a * per_seed_a).sum(axis=1) - (seed_b * per_seed_b).sum(axis=1)  # (B,)


def paired_bootstrap(
    better: ArrayLike,
    worse: ArrayLike,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    seeds: SeedMode = "independent",
) -> Interval:
    """The observed ``mean(better) − mean(worse)`` and its `level` percentile interval over `n_boot` replicates.

    better, worse: (Q,) scores of one model each, or (S, Q) of S training seeds (the module docstring's scheme);
    the same `seed` gives the same interval.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    reps = bootstrap_replicates(better, worse, n_boot=n_boot, seed=seed, seeds=seeds)  # (B,)
    observed = float(_as_seeds(better, "better").mean() - _as_seeds(worse, "worse").mean())
    lo, hi = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(mean_diff=observed, lo=float(lo), hi=float(hi), level=level, n_boot=n_boot)


__all__ = [
    "WITHIN_NOISE",
    "Interval",
    "Verdict",
    "bootstrap_replicates",
    "chance_recall",
    "paired_bootstrap",
    "recall_hits",
    "verdict",
]
