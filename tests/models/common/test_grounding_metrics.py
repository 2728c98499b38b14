"""2D-TAN grounding recall R@n,IoU@m on hand-computed moments."""

from __future__ import annotations

import numpy as np
import pytest

from models.common.metrics.grounding import grounding_recall


def three_queries() -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    moments = [
        # Query 0 (gt [0, 10]): by score [0,5] (IoU .5), [0,6] (suppressed: IoU 5/6 with [0,5]), [20,30] (IoU 0),
        # [0,10] (IoU 1; its IoU with [0,5] is exactly 0.5, not > 0.5, so NMS keeps it).
        np.array([[0.0, 10.0], [0.0, 5.0], [0.0, 6.0], [20.0, 30.0]]),
        np.array([[12.0, 20.0]]),  # query 1 (gt [10, 20]): IoU 0.8
        np.zeros((0, 2)),  # query 2: no candidate → a miss
    ]
    scores = [np.array([0.5, 0.9, 0.8, 0.7]), np.array([1.0]), np.zeros(0)]
    gt = np.array([[0.0, 10.0], [10.0, 20.0], [0.0, 4.0]])
    return moments, scores, gt


def test_hand_computed_recall_with_strict_iou() -> None:
    moments, scores, gt = three_queries()
    result = grounding_recall(moments, scores, gt)
    expected = {
        "R@1,IoU@0.3": 200 / 3,  # queries 0 (IoU .5) and 1 (.8)
        "R@1,IoU@0.5": 100 / 3,  # query 0's top IoU is exactly 0.5: not > 0.5 (2D-TAN)
        "R@1,IoU@0.7": 100 / 3,
        "R@5,IoU@0.3": 200 / 3,
        "R@5,IoU@0.5": 200 / 3,  # query 0's third survivor has IoU 1
        "R@5,IoU@0.7": 200 / 3,
    }
    assert result == pytest.approx(expected)
    assert list(result) == list(expected)


def test_inclusive_iou_counts_the_boundary() -> None:
    moments, scores, gt = three_queries()
    result = grounding_recall(moments, scores, gt, ns=(1,), ious=(0.5,), inclusive=True)
    assert result == pytest.approx({"R@1,IoU@0.5": 200 / 3})


def test_nms_changes_which_moments_reach_the_top_n() -> None:
    moments = [np.array([[0.0, 5.0], [0.0, 6.0], [20.0, 30.0]])]
    scores = [np.array([0.9, 0.8, 0.7])]
    gt = np.array([[20.0, 30.0]])
    # With NMS at 0.5 the near-duplicate [0,6] is suppressed and the right moment enters the top 2.
    assert grounding_recall(moments, scores, gt, ns=(2,), ious=(0.7,))["R@2,IoU@0.7"] == 100.0
    # A threshold of 1.0 suppresses nothing (IoU is never > 1): the top 2 are both wrong.
    assert grounding_recall(moments, scores, gt, ns=(2,), ious=(0.7,), nms_threshold=1.0)["R@2,IoU@0.7"] == 0.0


def test_score_order_not_input_order_decides_the_top_1() -> None:
    moments = [np.array([[0.0, 10.0], [50.0, 60.0]])]
    gt = np.array([[0.0, 10.0]])
    assert grounding_recall(moments, [np.array([0.1, 0.9])], gt, ns=(1,), ious=(0.5,))["R@1,IoU@0.5"] == 0.0
    assert grounding_recall(moments, [np.array([0.9, 0.1])], gt, ns=(1,), ious=(0.5,))["R@1,IoU@0.5"] == 100.0


def test_mismatched_inputs_raise() -> None:
    with pytest.raises(ValueError):
        grounding_recall([np.zeros((1, 2))], [np.zeros(1), np.zeros(1)], np.zeros((1, 2)))
