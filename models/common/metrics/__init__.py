"""Evaluation metrics shared by every method: retrieval ranks/recall, detection mAP, grounding recall."""

from __future__ import annotations

from models.common.metrics.detection import (
    ANET_TIOU,
    THUMOS14_TIOU,
    average_precision,
    detection_map,
    thumos_summary,
)
from models.common.metrics.grounding import grounding_recall
from models.common.metrics.retrieval import ranks, recall_at_k_curve, recall_metrics, retrieval_ranks, retrieval_report

__all__ = [
    "ANET_TIOU",
    "THUMOS14_TIOU",
    "average_precision",
    "detection_map",
    "grounding_recall",
    "ranks",
    "recall_at_k_curve",
    "recall_metrics",
    "retrieval_ranks",
    "retrieval_report",
    "thumos_summary",
]
