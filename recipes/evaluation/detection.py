"""Temporal action detection (W-TAL) scoring of an ActivityNet-style result file: THUMOS14 and ActivityNet tIoUs."""

from __future__ import annotations

from typing import Any

from models.common.metrics.detection import ANET_TIOU, THUMOS14_TIOU, detection_map, thumos_summary
from pipelines.datasets.wtal import load_mini_wtal, read_predictions
from pipelines.datasets.wtal_data import LOADERS, GroundTruthFormat


def score_mini_wtal(predictions: str, ground_truth: str) -> dict[str, Any]:
    """A prediction file (ActivityNet result format) against the mini world's ground truth, test subset: the
    THUMOS14 summary (mAP per tIoU 0.1:0.7 and its averages) and ActivityNet's tIoUs 0.5:0.95 (fractions)."""
    gt = load_mini_wtal(ground_truth)
    results = read_predictions(predictions)
    database = gt.database(gt.protocol.test_subset)
    thumos = detection_map(database, results, THUMOS14_TIOU, classes=gt.classes)
    anet = detection_map(database, results, ANET_TIOU, classes=gt.classes)
    return {
        "thumos": thumos_summary(thumos),
        "anet": {f"mAP@{t:.2f}": m for t, m in zip(anet["tiou"], anet["mAP"])} | {"average_mAP": anet["average_mAP"]},
        "predictions": predictions,
    }


def score_wtal_benchmark(predictions: str, ground_truth: str, ground_truth_format: GroundTruthFormat) -> dict[str, Any]:
    """A prediction file against a real benchmark's ground truth (THUMOS14 ``gt.json``-style, ActivityNet 1.2), on
    its test subset (THUMOS14 "test", ActivityNet 1.2 "validation"), **every** annotated test video: one without a
    prediction (e.g. its video was missing) has its instances missed, as the official evaluators count them. THUMOS14's
    Ambiguous segments are handled as its official kit does (`models.common.metrics.detection`: a non-TP overlapping
    one is not a FP). Returns `score_mini_wtal`'s keys (fractions) plus the per-class APs at THUMOS14's tIoUs and
    what was scored."""
    gt = LOADERS[ground_truth_format](ground_truth)
    results = read_predictions(predictions)
    database = gt.database(gt.protocol.test_subset)
    ambiguous = {v.video_id: list(v.ambiguous) for v in gt.test if v.ambiguous}
    thumos = detection_map(database, results, THUMOS14_TIOU, classes=gt.classes, ambiguous=ambiguous)
    anet = detection_map(database, results, ANET_TIOU, classes=gt.classes, ambiguous=ambiguous)
    return {
        "thumos": thumos_summary(thumos),
        "anet": {f"mAP@{t:.2f}": m for t, m in zip(anet["tiou"], anet["mAP"])} | {"average_mAP": anet["average_mAP"]},
        "thumos_per_class_ap": thumos["per_class_ap"],
        "predictions": predictions,
        "test_subset": gt.protocol.test_subset,
        "test_videos": len(database),
        "predicted_videos": sum(1 for v in database if results.get(v)),
        "ambiguous_segments": sum(len(a) for a in ambiguous.values()),
    }
