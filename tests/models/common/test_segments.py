"""1-D segment IoU, NMS and soft-NMS: properties, hand-computed decays and a brute-force NMS oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.common.segments import Segments, nms, segment_iou, soft_nms

finite_times = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False, allow_infinity=False)
positive_lengths = st.floats(min_value=1e-3, max_value=50.0, allow_nan=False, allow_infinity=False)
segment_lists = st.lists(st.tuples(finite_times, positive_lengths), min_size=1, max_size=8).map(
    lambda pairs: np.array([[s, s + length] for s, length in pairs])
)


@settings(max_examples=60, deadline=None, database=None)
@given(a=segment_lists, b=segment_lists)
def test_iou_properties(a: np.ndarray, b: np.ndarray) -> None:
    iou_ab = segment_iou(a, b)
    assert iou_ab.shape == (len(a), len(b))
    np.testing.assert_allclose(iou_ab, segment_iou(b, a).T)  # symmetric
    assert np.all((iou_ab >= 0) & (iou_ab <= 1 + 1e-12))
    np.testing.assert_allclose(np.diag(segment_iou(a, a)), 1.0)  # identical → 1
    # Disjoint (b shifted past a's end) → 0.
    shifted = b - b[:, :1].min() + a[:, 1].max() + 1.0
    np.testing.assert_array_equal(segment_iou(a, shifted), 0.0)


def test_iou_hand_values_and_end_convention() -> None:
    a = np.array([[0.0, 10.0]])
    b = np.array([[5.0, 15.0], [10.0, 20.0], [2.0, 4.0], [3.0, 3.0]])
    # half-overlap 5/15; touching at 10 has zero overlap (half-open [start, end)); contained 2/10; zero-length → 0.
    np.testing.assert_allclose(segment_iou(a, b), [[1 / 3, 0.0, 0.2, 0.0]])
    assert segment_iou(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]]))[0, 0] == 0.0  # empty union


def test_segments_validation_and_helpers() -> None:
    segs = Segments.from_bounds(np.array([[0.0, 2.0], [1.0, 4.0]]), score=np.array([0.2, 0.9]))
    np.testing.assert_array_equal(segs.length, [2.0, 3.0])
    np.testing.assert_array_equal(segs.label, [0, 0])
    np.testing.assert_array_equal(segs.sorted_by_score().start, [1.0, 0.0])
    with pytest.raises(ValueError):
        Segments(np.zeros(2), np.ones(3), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError):
        Segments(np.array([2.0]), np.array([1.0]), np.ones(1), np.zeros(1))


def brute_force_nms(bounds: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Visit in descending score (stable); keep a segment iff no kept one overlaps it by more than `threshold`."""

    def iou(i: int, j: int) -> float:
        inter = max(0.0, min(bounds[i, 1], bounds[j, 1]) - max(bounds[i, 0], bounds[j, 0]))
        union = (bounds[i, 1] - bounds[i, 0]) + (bounds[j, 1] - bounds[j, 0]) - inter
        return inter / union if union > 0 else 0.0

    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        if all(iou(i, k) <= threshold for k in kept):
            kept.append(i)
    return kept


@settings(max_examples=60, deadline=None, database=None)
@given(
    bounds=segment_lists,
    data=st.data(),
    threshold=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9]),
)
def test_hard_soft_nms_and_nms_equal_brute_force(bounds: np.ndarray, data: st.DataObject, threshold: float) -> None:
    scores = np.array(data.draw(st.lists(st.integers(1, 5), min_size=len(bounds), max_size=len(bounds))), float)
    segs = Segments.from_bounds(bounds, score=scores)
    kept = brute_force_nms(bounds, scores, threshold)
    hard = soft_nms(segs, method="hard", iou_threshold=threshold, class_agnostic=True)
    greedy = nms(segs, threshold, class_agnostic=True)
    for result in (hard, greedy):
        np.testing.assert_array_equal(result.bounds(), bounds[kept])
        np.testing.assert_array_equal(result.score, scores[kept])  # hard mode never rescales survivors


def test_nms_per_label_keeps_overlaps_of_different_classes() -> None:
    bounds = np.array([[0.0, 10.0], [1.0, 10.0], [0.0, 10.0]])
    segs = Segments.from_bounds(bounds, score=np.array([0.9, 0.8, 0.7]), label=np.array([0, 0, 1]))
    per_label = nms(segs, 0.5)
    np.testing.assert_array_equal(per_label.score, [0.9, 0.7])  # same-class duplicate gone, other class kept
    np.testing.assert_array_equal(per_label.label, [0, 1])
    agnostic = nms(segs, 0.5, class_agnostic=True)
    np.testing.assert_array_equal(agnostic.score, [0.9])


def test_gaussian_soft_nms_hand_computed() -> None:
    # A overlaps B with IoU 1/3; C is disjoint from both.
    segs = Segments.from_bounds(np.array([[0.0, 10.0], [5.0, 15.0], [20.0, 30.0]]), score=np.array([0.9, 0.8, 0.6]))
    out = soft_nms(segs, sigma=0.3, method="gaussian", class_agnostic=True)
    decayed_b = 0.8 * math.exp(-((1 / 3) ** 2) / 0.3)  # ≈ 0.552 < 0.6, so C is taken before B
    np.testing.assert_allclose(out.start, [0.0, 20.0, 5.0])
    np.testing.assert_allclose(out.score, [0.9, 0.6, decayed_b])


def test_linear_soft_nms_and_score_threshold() -> None:
    segs = Segments.from_bounds(np.array([[0.0, 10.0], [5.0, 15.0], [0.0, 9.0]]), score=np.array([0.9, 0.8, 0.5]))
    out = soft_nms(segs, method="linear", iou_threshold=0.3, class_agnostic=True)
    # B: IoU 1/3 > 0.3 → 0.8·(2/3); third: IoU 0.9 with A → 0.5·0.1, then IoU 4/15 <= 0.3 with B → unchanged.
    np.testing.assert_allclose(out.score, [0.9, 0.8 * 2 / 3, 0.5 * 0.1])
    # A score threshold drops segments whose decayed score falls below it.
    pruned = soft_nms(segs, method="linear", iou_threshold=0.3, score_threshold=0.1, class_agnostic=True)
    np.testing.assert_allclose(pruned.score, [0.9, 0.8 * 2 / 3])
    # Negative scores survive only with score_threshold=None (CO2-Net keeps everything).
    negative = segs.with_scores(np.array([0.9, -0.1, 0.5]))
    assert len(soft_nms(negative, class_agnostic=True)) == 2
    assert len(soft_nms(negative, score_threshold=None, class_agnostic=True)) == 3


def test_soft_nms_runs_per_label_by_default() -> None:
    bounds = np.array([[0.0, 10.0], [0.0, 10.0]])
    segs = Segments.from_bounds(bounds, score=np.array([0.9, 0.8]), label=np.array([0, 1]))
    np.testing.assert_allclose(soft_nms(segs).score, [0.9, 0.8])  # different classes: no decay
    np.testing.assert_allclose(
        soft_nms(segs, class_agnostic=True).score, [0.9, 0.8 * math.exp(-1 / 0.3)]
    )  # identical segments, IoU 1
    with pytest.raises(ValueError):
        soft_nms(segs, method="cubic")  # type: ignore[arg-type]
