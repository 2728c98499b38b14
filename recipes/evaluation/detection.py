"""Temporal action detection (W-TAL) scoring of an ActivityNet-style result file: THUMOS14 and ActivityNet tIoUs."""

from __future__ import annotations

from typing import Any

from models.common.metrics.detection import ANET_TIOU, THUMOS14_TIOU, detection_map, thumos_summary
from pipelines.datasets.wtal import load_mini_wtal, read_predictions


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
