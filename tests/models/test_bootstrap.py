"""The paired bootstrap of a metric difference (`models.common.metrics.bootstrap`): oracles and exact distributions."""

from __future__ import annotations

import numpy as np
import pytest

from models.common.metrics.bootstrap import (
    WITHIN_NOISE,
    bootstrap_replicates,
    chance_recall,
    paired_bootstrap,
    recall_hits,
    verdict,
)


def test_the_verdict_rule() -> None:
    assert verdict(0.1, 3.0) is True
    assert verdict(-3.0, -0.1) is False
    assert verdict(-1.0, 1.0) == WITHIN_NOISE
    assert verdict(0.0, 2.0) == WITHIN_NOISE  # an interval that touches 0 is not outside noise
    assert verdict(-2.0, 0.0) == WITHIN_NOISE


def test_recall_hits_and_chance() -> None:
    ranks = np.array([0, 1, 4, 5, 9])
    np.testing.assert_array_equal(recall_hits(ranks, 5), [100, 100, 100, 0, 0])
    assert recall_hits(ranks, 1).mean() == 20.0  # R@1 of these ranks, in %
    assert chance_recall(216, 1) == pytest.approx(100 / 216)
    assert chance_recall(4, 5) == 100.0  # K beyond the gallery: always a hit
    with pytest.raises(ValueError):
        recall_hits(ranks, 0)


def test_identical_systems_are_within_noise() -> None:
    rng = np.random.default_rng(1)
    scores = recall_hits(rng.integers(0, 20, size=300), 1)
    interval = paired_bootstrap(scores, scores, n_boot=500)
    assert interval.mean_diff == 0.0 and interval.lo <= 0.0 <= interval.hi
    assert interval.verdict == WITHIN_NOISE
    # three seeds of the same models, seeds resampled independently on each side: still centred on 0
    seeded = recall_hits(rng.integers(0, 20, size=(3, 300)), 1)
    interval = paired_bootstrap(seeded, seeded, n_boot=500)
    assert interval.mean_diff == 0.0 and interval.lo < 0.0 < interval.hi
    assert interval.verdict == WITHIN_NOISE


def test_better_on_every_query_is_reproduced_and_the_reverse_refuted() -> None:
    better = recall_hits(np.zeros(50, dtype=int), 1)  # every query at rank 0
    worse = recall_hits(np.full(50, 7), 1)  # every query missed
    up = paired_bootstrap(better, worse, n_boot=300)
    assert (up.mean_diff, up.lo, up.hi, up.verdict) == (pytest.approx(100.0), pytest.approx(100.0), 100.0, True)
    down = paired_bootstrap(worse, better, n_boot=300)
    assert down.hi == pytest.approx(-100.0) and down.verdict is False


def test_pairing_cancels_what_both_systems_share() -> None:
    """A is B plus 5 queries it gets right that B misses: paired, the difference is never negative, though each
    system's own R@1 varies far more than 5 points over the resamples."""
    rng = np.random.default_rng(3)
    worse = (rng.random(200) < 0.5).astype(float) * 100
    better = worse.copy()
    better[np.flatnonzero(worse == 0)[:5]] = 100.0
    interval = paired_bootstrap(better, worse, n_boot=2000, seed=0)
    assert interval.mean_diff == pytest.approx(2.5)  # 5 of 200 queries, in %
    assert interval.lo > 0 and interval.verdict is True


def test_a_small_example_by_hand() -> None:
    """Per-query differences d = (100, 0, 0): a replicate's mean is 100·N/3 with N ~ Binomial(3, 1/3), so
    P(0) = 8/27, P(33.3) = 12/27, P(66.7) = 6/27, P(100) = 1/27; the 2.5 % quantile is 0 and the 97.5 % quantile
    100 (P(N ≤ 2) = 26/27 < 0.975): interval [0, 100] around the observed 33.3 — within noise."""
    better, worse = np.array([100.0, 0.0, 0.0]), np.zeros(3)
    reps = bootstrap_replicates(better, worse, n_boot=20_000, seed=0)
    values, counts = np.unique(np.round(reps, 6), return_counts=True)
    np.testing.assert_allclose(values, [0.0, 100 / 3, 200 / 3, 100.0], atol=1e-4)
    np.testing.assert_allclose(counts / len(reps), np.array([8, 12, 6, 1]) / 27, atol=0.01)
    interval = paired_bootstrap(better, worse, n_boot=20_000, seed=0)
    assert (interval.mean_diff, interval.lo, interval.hi) == (pytest.approx(100 / 3), 0.0, pytest.approx(100.0))
    assert interval.verdict == WITHIN_NOISE


def test_seed_resampling_by_hand() -> None:
    """One query, better has seeds scoring (100, 0), worse one seed scoring 0: with seeds resampled a replicate is
    the mean of two seed draws — 100, 50, 0 with probabilities 1/4, 1/2, 1/4; with seeds fixed it is always 50."""
    better, worse = np.array([[100.0], [0.0]]), np.array([[0.0]])
    reps = bootstrap_replicates(better, worse, n_boot=20_000, seed=0)
    values, counts = np.unique(np.round(reps, 6), return_counts=True)
    np.testing.assert_allclose(values, [0.0, 50.0, 100.0])
    np.testing.assert_allclose(counts / len(reps), [0.25, 0.5, 0.25], atol=0.01)
    fixed = bootstrap_replicates(better, worse, n_boot=100, seed=0, seeds="fixed")
    np.testing.assert_allclose(fixed, 50.0)
    # paired seeds: two scorings of the same two models, 10 points apart on each: the difference never moves
    a = np.array([[60.0, 40.0], [10.0, 30.0]])
    paired = paired_bootstrap(a, a - 10.0, n_boot=200, seeds="paired")
    assert paired.lo == pytest.approx(10.0) and paired.hi == pytest.approx(10.0)
    with pytest.raises(ValueError):
        bootstrap_replicates(a, a[:1], seeds="paired")


def test_deterministic_under_the_seed() -> None:
    rng = np.random.default_rng(7)
    a = recall_hits(rng.integers(0, 10, size=(3, 120)), 1)
    b = recall_hits(rng.integers(0, 10, size=(2, 120)), 1)
    first, again = paired_bootstrap(a, b, seed=11), paired_bootstrap(a, b, seed=11)
    assert first == again
    other = paired_bootstrap(a, b, seed=12)
    assert other.mean_diff == first.mean_diff and (other.lo, other.hi) != (first.lo, first.hi)


def test_unpaired_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(np.array([np.nan, 1.0]), np.zeros(2))
