"""ActivityNet-style detection AP/mAP: hand-computed cases and an independently written brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest

from models.common.metrics.detection import (
    ANET_TIOU,
    THUMOS14_TIOU,
    average_precision,
    detection_map,
    interpolated_prec_rec,
    thumos_summary,
)


def test_constants() -> None:
    np.testing.assert_allclose(THUMOS14_TIOU, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    np.testing.assert_allclose(ANET_TIOU, [0.5 + 0.05 * i for i in range(10)])


def test_perfect_detections_score_one() -> None:
    gt = [("v1", 0.0, 10.0), ("v1", 20.0, 25.0), ("v2", 3.0, 7.5)]
    preds = [(v, s, e, 1.0 - 0.1 * i) for i, (v, s, e) in enumerate(gt)]
    np.testing.assert_allclose(average_precision(gt, preds, ANET_TIOU), np.ones(10))


def test_duplicate_detection_is_a_false_positive() -> None:
    gt = [("v1", 0.0, 10.0), ("v1", 20.0, 30.0)]
    preds = [("v1", 0.0, 10.0, 0.9), ("v1", 0.0, 10.0, 0.8), ("v1", 20.0, 30.0, 0.7)]
    # TP, FP (its GT is taken), TP: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # AP = 1/2·max(1, 1/2, 2/3) + 1/2·2/3 = 5/6.
    np.testing.assert_allclose(average_precision(gt, preds, [0.5]), [5 / 6])


def test_tiou_exactly_at_threshold_is_a_true_positive() -> None:
    gt = [("v1", 0.0, 10.0)]
    preds = [("v1", 0.0, 5.0, 1.0)]  # tIoU = 5/10 = 0.5 exactly
    np.testing.assert_allclose(average_precision(gt, preds, [0.4, 0.5, 0.6]), [1.0, 1.0, 0.0])


def test_hand_computed_tp_fp_tp_with_three_ground_truths() -> None:
    gt = [("v1", 0.0, 10.0), ("v1", 20.0, 30.0), ("v2", 0.0, 4.0)]
    preds = [("v1", 0.0, 10.0, 0.9), ("v1", 40.0, 50.0, 0.8), ("v1", 21.0, 30.0, 0.7)]
    # TP, FP, TP: precision 1, 1/2, 2/3; recall 1/3, 1/3, 2/3 (v2's GT is never found).
    # AP = 1/3·1 + 1/3·2/3 + 1/3·0 = 5/9.
    np.testing.assert_allclose(average_precision(gt, preds, [0.5]), [5 / 9])
    # At tIoU 0.95 the third (tIoU 0.9) becomes a FP: AP = 1/3.
    np.testing.assert_allclose(average_precision(gt, preds, [0.95]), [1 / 3])


def test_predictions_on_unknown_videos_are_false_positives() -> None:
    gt = [("v1", 0.0, 10.0)]
    preds = [("elsewhere", 0.0, 10.0, 0.9), ("v1", 0.0, 10.0, 0.8)]
    # FP then TP: precision 0, 1/2; recall 0, 1 → AP = 1·1/2.
    np.testing.assert_allclose(average_precision(gt, preds, [0.5]), [0.5])


def test_each_ground_truth_matches_the_best_available_one() -> None:
    # The first prediction overlaps GT a best (tIoU 9/11) and GT b (1/3); the second overlaps a (0.95) and b (4/15.5).
    # Toolkit semantics: the first takes a; the second finds a locked and b below the threshold → FP.
    gt = [("v", 0.0, 10.0), ("v", 6.0, 16.0)]
    preds = [("v", 1.0, 11.0, 0.9), ("v", 0.5, 10.0, 0.8)]
    np.testing.assert_allclose(average_precision(gt, preds, [0.5]), [0.5])


def test_interpolated_prec_rec_matches_voc_definition() -> None:
    precision = np.array([1.0, 0.5, 2 / 3, 0.5])
    recall = np.array([0.25, 0.25, 0.5, 0.5])
    assert interpolated_prec_rec(precision, recall) == pytest.approx(0.25 * 1 + 0.25 * 2 / 3)


def oracle_average_precision(
    gt: list[tuple[str, float, float]], preds: list[tuple[str, float, float, float]], threshold: float
) -> float:
    """Brute force: each prediction takes the highest-tIoU still-free GT at or above the threshold; then
    AP = Σ over true positives of (1/npos)·(best precision at that rank or any later rank)."""

    def tiou(a0: float, a1: float, b0: float, b1: float) -> float:
        inter = max(0.0, min(a1, b1) - max(a0, b0))
        union = (a1 - a0) + (b1 - b0) - inter
        return inter / union if union > 0 else 0.0

    ranked = sorted(preds, key=lambda p: -p[3])  # Python's sort is stable
    taken: set[int] = set()
    is_tp = []
    for video, start, end, _ in ranked:
        options = [
            (tiou(start, end, g0, g1), -k)
            for k, (gv, g0, g1) in enumerate(gt)
            if gv == video and k not in taken and tiou(start, end, g0, g1) >= threshold
        ]
        if options:
            taken.add(-max(options)[1])
        is_tp.append(bool(options))
    precisions = [sum(is_tp[: i + 1]) / (i + 1) for i in range(len(ranked))]
    return sum(max(precisions[k:]) / len(gt) for k in range(len(ranked)) if is_tp[k])


@pytest.mark.parametrize("seed", range(12))
def test_average_precision_matches_brute_force_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    videos = ["a", "b", "c"]
    gt = []
    for _ in range(int(rng.integers(1, 8))):
        start = float(rng.uniform(0, 50))
        gt.append((str(rng.choice(videos)), start, start + float(rng.uniform(1, 15))))
    preds = []
    for _ in range(int(rng.integers(0, 25))):
        if rng.random() < 0.6 and gt:  # jitter a GT so there are real matches and near-duplicates
            v, s, e = gt[int(rng.integers(len(gt)))]
            s, e = s + float(rng.normal(0, 2)), e + float(rng.normal(0, 2))
            s, e = min(s, e), max(s, e) + 0.1
        else:
            v, s = str(rng.choice([*videos, "unknown"])), float(rng.uniform(0, 50))
            e = s + float(rng.uniform(1, 15))
        preds.append((v, s, e, float(rng.integers(0, 6))))  # integer scores: ties exercise the stable order
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    expected = [oracle_average_precision(gt, preds, t) if preds else 0.0 for t in thresholds]
    np.testing.assert_allclose(average_precision(gt, preds, thresholds), expected, atol=1e-12)


def make_database() -> dict:
    return {
        "v1": {
            "subset": "validation",
            "annotations": [{"segment": [0.0, 10.0], "label": "jump"}, {"segment": [20.0, 30.0], "label": "run"}],
        },
        "v2": {"subset": "validation", "annotations": [{"segment": [5.0, 9.0], "label": "jump"}]},
        "v3": {"subset": "training", "annotations": [{"segment": [0.0, 4.0], "label": "swim"}]},
    }


def test_detection_map_perfect_and_missing_class() -> None:
    preds = {
        "v1": [{"label": "jump", "score": 0.9, "segment": [0.0, 10.0]}],
        "v2": [{"label": "jump", "score": 0.8, "segment": [5.0, 9.0]}],
    }
    result = detection_map(make_database(), preds, THUMOS14_TIOU, subset="validation")
    # "run" has no prediction → AP 0; "swim" is outside the subset and not evaluated.
    assert result["per_class_ap"] == {"jump": [1.0] * 7, "run": [0.0] * 7}
    assert result["mAP"] == pytest.approx([0.5] * 7)
    assert result["average_mAP"] == pytest.approx(0.5)
    assert result["tiou"] == pytest.approx(list(THUMOS14_TIOU))
    assert result["n_ignored_predictions"] == 0


def test_detection_map_ignores_and_counts_unknown_labels() -> None:
    preds = {
        "v1": [
            {"label": "jump", "score": 0.9, "segment": [0.0, 10.0]},
            {"label": "run", "score": 0.7, "segment": [20.0, 30.0]},
            {"label": "dance", "score": 0.99, "segment": [0.0, 10.0]},
        ],
        "v2": [{"label": "jump", "score": 0.8, "segment": [5.0, 9.0]}],
    }
    result = detection_map(make_database(), preds, [0.5], subset="validation")
    assert result["mAP"] == pytest.approx([1.0])
    assert result["n_ignored_predictions"] == 1


def test_detection_map_with_a_class_list() -> None:
    preds = {"v1": [{"label": "run", "score": 0.7, "segment": [20.0, 30.0]}]}
    # "swim" has no GT in the subset and is dropped; "jump" is not asked for, so its predictions would be ignored.
    result = detection_map(make_database(), preds, [0.5], subset="validation", classes=["run", "swim"])
    assert list(result["per_class_ap"]) == ["run"]
    assert result["average_mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        detection_map(make_database(), preds, [0.5], subset="testing")


def test_thumos_summary_averages() -> None:
    result = {"tiou": list(THUMOS14_TIOU), "mAP": [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]}
    summary = thumos_summary(result)
    assert summary["mAP@0.1"] == pytest.approx(0.7)
    assert summary["mAP@0.7"] == pytest.approx(0.1)
    assert summary["AVG(0.1:0.5)"] == pytest.approx(0.5)
    assert summary["AVG(0.3:0.7)"] == pytest.approx(0.3)
    assert summary["AVG(0.1:0.7)"] == pytest.approx(0.4)
    assert len(summary) == 10
