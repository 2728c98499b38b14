"""Retrieval ranks / recall against brute-force loops, hand-made matrices, ties and NaNs."""

from __future__ import annotations

import numpy as np
import pytest

from models.common.metrics.retrieval import (
    ranks,
    recall_at_k_curve,
    recall_metrics,
    retrieval_report,
    video_to_caption_group_sim,
)


def brute_force_rank(row: list[float], gt: int) -> int:
    """Pessimistic rank by looping: count the other items scoring at least as high (NaN = −inf)."""
    clean = [float("-inf") if np.isnan(v) else v for v in row]
    return sum(1 for j, v in enumerate(clean) if j != gt and v >= clean[gt])


def brute_force_metrics(rank_list: list[int]) -> dict[str, float]:
    n = len(rank_list)
    ordered = sorted(rank_list)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return {
        "R@1": 100.0 * sum(r < 1 for r in rank_list) / n,
        "R@5": 100.0 * sum(r < 5 for r in rank_list) / n,
        "R@10": 100.0 * sum(r < 10 for r in rank_list) / n,
        "MdR": median + 1,
        "MnR": sum(rank_list) / n + 1,
    }


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_brute_force_on_tied_integer_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 4, size=(37, 23)).astype(float)  # 4 values over 23 columns: ties everywhere
    gt = rng.integers(0, 23, size=37)
    expected = [brute_force_rank(list(sim[q]), int(gt[q])) for q in range(37)]
    np.testing.assert_array_equal(ranks(sim, gt), expected)
    assert recall_metrics(ranks(sim, gt)) == pytest.approx(brute_force_metrics(expected))


def test_ranks_default_to_the_diagonal() -> None:
    rng = np.random.default_rng(1)
    sim = rng.integers(0, 3, size=(12, 12)).astype(float)
    expected = [brute_force_rank(list(sim[q]), q) for q in range(12)]
    np.testing.assert_array_equal(ranks(sim), expected)


def test_identity_is_perfect() -> None:
    metrics = recall_metrics(ranks(np.eye(7)))
    assert metrics == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "MdR": 1.0, "MnR": 1.0}


def test_constant_matrix_gets_no_credit() -> None:
    # CLIP4Clip's np.where rule would credit every query with rank 0 among its ties; the pessimistic rule gives G−1.
    np.testing.assert_array_equal(ranks(np.full((6, 6), 0.3)), [5] * 6)
    metrics = recall_metrics(ranks(np.full((6, 6), 0.3)))
    assert metrics["R@1"] == 0.0
    assert metrics["R@5"] == 0.0
    assert metrics["MdR"] == 6.0


def test_hand_made_ranks_and_metrics() -> None:
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],  # gt first: rank 0
            [0.5, 0.4, 0.3, 0.6],  # 2 items above: rank 2
            [0.1, 0.1, 0.1, 0.0],  # ties with two others: rank 2 (pessimistic)
            [0.2, 0.3, 0.4, 0.1],  # worst: rank 3
        ]
    )
    r = ranks(sim)
    np.testing.assert_array_equal(r, [0, 2, 2, 3])
    metrics = recall_metrics(r)
    assert metrics["R@1"] == 25.0
    assert metrics["R@5"] == 100.0
    assert metrics["MdR"] == 3.0  # median(0, 2, 2, 3) = 2, +1
    assert metrics["MnR"] == pytest.approx(2.75)  # mean(0, 2, 2, 3) = 1.75, +1


def test_nan_scores_count_as_minus_infinity() -> None:
    sim = np.array(
        [
            [0.5, np.nan, 0.1],  # NaN competitor is below everything: rank 0
            [0.2, np.nan, 0.1],  # NaN ground truth: worst rank
            [np.nan, np.nan, np.nan],  # all NaN: ties at −inf, worst rank
        ]
    )
    np.testing.assert_array_equal(ranks(sim), [0, 2, 2])


def test_recall_at_k_curve_is_monotone_and_matches_definition() -> None:
    r = np.array([0, 1, 1, 4, 9, 20])
    curve = recall_at_k_curve(r, [1, 2, 5, 10, 50])
    assert curve == pytest.approx([100 / 6, 300 / 6, 400 / 6, 500 / 6, 100.0])


def brute_force_multi_caption(sim: np.ndarray, caption_video: np.ndarray) -> tuple[list[int], list[int]]:
    n_caption = sim.shape[0]
    t2v = [brute_force_rank(list(sim[c]), int(caption_video[c])) for c in range(n_caption)]
    videos = sorted(set(caption_video.tolist()))
    v2t = []
    for query_video in videos:
        group_scores = [max(sim[c, query_video] for c in range(n_caption) if caption_video[c] == g) for g in videos]
        v2t.append(brute_force_rank(group_scores, videos.index(query_video)))
    return t2v, v2t


@pytest.mark.parametrize("seed", range(4))
def test_multi_caption_report_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_video = 9
    caption_video = rng.integers(0, n_video, size=30)  # uneven groups, some videos possibly without captions
    sim = rng.integers(0, 5, size=(30, n_video)).astype(float)
    t2v, v2t = brute_force_multi_caption(sim, caption_video)
    report = retrieval_report(sim, caption_video)
    assert report["t2v"] == pytest.approx(brute_force_metrics(t2v))
    assert report["v2t"] == pytest.approx(brute_force_metrics(v2t))


def test_multi_caption_v2t_takes_the_max_over_a_videos_captions() -> None:
    # Video 0 has captions 0, 1; video 1 has caption 2. Columns are videos.
    sim = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4]])
    caption_video = np.array([0, 0, 1])
    group_sim, videos = video_to_caption_group_sim(sim, caption_video)
    np.testing.assert_array_equal(videos, [0, 1])
    # query video 0: group 0 = max(0.1, 0.8), group 1 = 0.3; query video 1: group 0 = max(0.9, 0.2), group 1 = 0.4
    np.testing.assert_allclose(group_sim, [[0.8, 0.3], [0.9, 0.4]])
    report = retrieval_report(sim, caption_video)
    assert report["v2t"]["R@1"] == 50.0
    # t2v: caption 0 ranks video 0 below video 1 (rank 1), caption 1 rank 0, caption 2 rank 0.
    assert report["t2v"]["R@1"] == pytest.approx(200 / 3)


def test_single_caption_report_uses_the_transpose_for_v2t() -> None:
    sim = np.array([[0.9, 0.8, 0.0], [0.95, 0.5, 0.0], [0.1, 0.2, 0.3]])
    report = retrieval_report(sim)
    np.testing.assert_array_equal(ranks(sim), [0, 1, 0])
    np.testing.assert_array_equal(ranks(sim.T), [1, 1, 0])  # video 1's column: 0.8 (text 0) beats 0.5
    assert report["t2v"]["R@1"] == pytest.approx(200 / 3)
    assert report["v2t"]["R@1"] == pytest.approx(100 / 3)
    assert report["v2t"]["MnR"] == pytest.approx(5 / 3)


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        retrieval_report(np.zeros((3, 4)))  # not square, no caption map
    with pytest.raises(ValueError):
        ranks(np.zeros((2, 3)), np.array([0, 3]))  # gt out of range
