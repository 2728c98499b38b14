"""Temporal action detection mAP with the ActivityNet toolkit's semantics (``Evaluation/eval_detection.py``).

Source: ``activitynet/ActivityNet`` ``Evaluation/eval_detection.py::compute_average_precision_detection`` and
``Evaluation/utils.py::interpolated_prec_rec`` (paper-code-notes §7.6, METHODS §0); the W-TAL papers (UM, CO2-Net,
DCC) evaluate with Python 3 copies of it. Per class and per tIoU threshold:
1. sort the class's predictions by score, descending;
2. for each prediction, compute tIoU with the ground truths of the same video and class
   (``inter / (len_pred + len_gt − inter)``, lengths ``end − start`` in seconds, see `models.common.segments`);
3. walk those ground truths in descending-tIoU order: the prediction is a TP on the first one with
   ``tIoU >= threshold`` not yet matched at this threshold; if it meets one below the threshold, or runs out, it is a
   FP. Predictions on a video with no ground truth of the class are FPs;
4. cumulative precision ``TP / (TP + FP)`` and recall ``TP / npos``;
5. VOC-2011 interpolated AP ``Σ (r_i − r_{i−1})·max_{r' >= r_i} p(r')`` (prepend recall 0 / append 1, precision 0 / 0,
   monotone envelope, sum over recall change points).
mAP is the mean over classes; average mAP the mean over thresholds. Everything is a fraction in [0, 1].

Differences from the toolkit, on purpose:
- the score sort is **stable** (ties keep the input order); the toolkit's ``argsort()[::-1]`` reverses tied
  predictions' order, which only matters for exactly equal scores;
- GTs with equal tIoU to a prediction are walked in their input order (stable sort), likewise;
- a prediction whose label is not an evaluated class is ignored and counted (``n_ignored_predictions``) instead of
  raising ``KeyError``; no web call for blocked videos; no pandas / joblib.
- `check_ground_truth` / `check_predictions` check files entry by entry (``ValueError`` naming the entry) and set aside
  predictions whose segment ends before it starts, for the caller to report, instead of scoring them.
- like the toolkit, predictions are **not** filtered by subset: a prediction on a video outside the evaluated subset
  has no ground truth there and counts as a FP.

THUMOS14's **Ambiguous** segments (``ambiguous``: video → ``[(start, end)]``, off by default) follow the official
THUMOS14 evaluation kit (``TH14evalkit/TH14eventdetpr.m``, copied in demianzhang/weakly-action-localization): "respect
ambiguous events (overlapping detections will be removed from the FP list)" — at each threshold, a prediction that is
not a TP and overlaps (positive intersection, in seconds) any Ambiguous segment of its video is dropped: neither TP
nor FP. A TP stays a TP. (The W-TALC / CO2-Net copies instead drop every prediction overlapping one, TPs included,
before scoring.)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from models.common.segments import segment_iou

THUMOS14_TIOU: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# ActivityNet 1.2/1.3: 0.5:0.05:0.95, exactly the toolkit's np.linspace(0.5, 0.95, 10).
ANET_TIOU: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))


def interpolated_prec_rec(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 interpolated AP from cumulative precision/recall (toolkit ``interpolated_prec_rec``)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    # Monotone envelope: p_interp(r_i) = max over later points.
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[change] - mrec[change - 1]) * mprec[change]))


def average_precision(
    gt: Sequence[tuple[Hashable, float, float]],
    preds: Sequence[tuple[Hashable, float, float, float]],
    tiou_thresholds: Sequence[float],
    ambiguous: Mapping[Any, Sequence[tuple[float, float]]] | None = None,
) -> np.ndarray:
    """Interpolated AP of one class at each tIoU threshold.

    gt: ``(video, start, end)`` instances of the class; preds: ``(video, start, end, score)`` predictions of the class;
    ambiguous: video → its Ambiguous segments (module docstring: a non-TP overlapping one is not a FP).
    Returns (n_thr,) AP fractions; all zeros when there is no ground truth (npos = 0) or no prediction.
    """
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64)  # (n_thr,)
    n_thr, npos, n_pred = len(thresholds), len(gt), len(preds)
    if npos == 0 or n_pred == 0:
        return np.zeros(n_thr)

    # Ground truth grouped by video: video → (global gt indices (k,), bounds (k, 2)).
    by_video: dict[Hashable, list[int]] = {}
    for gt_index, (video, _, _) in enumerate(gt):
        by_video.setdefault(video, []).append(gt_index)
    gt_bounds = np.asarray([(s, e) for _, s, e in gt], dtype=np.float64).reshape(-1, 2)  # (npos, 2)

    pred_scores = np.asarray([p[3] for p in preds], dtype=np.float64)  # (n_pred,)
    order = np.argsort(-pred_scores, kind="stable")
    matched = np.zeros((n_thr, npos), dtype=bool)  # a GT is matched at most once per threshold
    tp = np.zeros((n_thr, n_pred))
    for rank, pred_index in enumerate(order):
        video, start, end, _ = preds[pred_index]
        gt_indices = by_video.get(video)
        if gt_indices is None:
            continue  # no ground truth of this class in that video: FP at every threshold
        cand = np.asarray(gt_indices)  # (k,)
        tiou = segment_iou(np.array([[start, end]]), gt_bounds[cand])[0]  # (k,)
        walk = np.argsort(-tiou, kind="stable")
        for t, thr in enumerate(thresholds):
            for j in walk:
                if tiou[j] < thr:
                    break
                if matched[t, cand[j]]:
                    continue
                matched[t, cand[j]] = True
                tp[t, rank] = 1.0
                break
    fp = 1.0 - tp  # every non-TP prediction is a FP ...
    if ambiguous:  # ... unless it overlaps an Ambiguous segment of its video (THUMOS14 kit): then it is dropped
        ranked = [preds[i] for i in order]
        amb = np.array([_overlaps(ambiguous.get(p[0], ()), p[1], p[2]) for p in ranked])  # (n_pred,)
        fp = np.where(amb[None, :], 0.0, fp)
    tp_cum = np.cumsum(tp, axis=1)  # (n_thr, n_pred)
    fp_cum = np.cumsum(fp, axis=1)
    recall = tp_cum / npos
    if not ambiguous:
        precision = tp_cum / (tp_cum + fp_cum)
        return np.array([interpolated_prec_rec(precision[t], recall[t]) for t in range(n_thr)])
    aps = []
    for t in range(n_thr):  # dropped predictions leave the ranked list: keep only the TPs and the FPs
        kept = (tp[t] + fp[t]) > 0
        if not kept.any():
            aps.append(0.0)
            continue
        aps.append(interpolated_prec_rec(tp_cum[t][kept] / (tp_cum[t][kept] + fp_cum[t][kept]), recall[t][kept]))
    return np.array(aps)


def _overlaps(segments: Sequence[tuple[float, float]], start: float, end: float) -> bool:
    """Whether ``[start, end]`` shares a positive length with one of `segments` (the kit's
    ``intervaloverlapvalseconds > 0``)."""
    return any(min(end, b) - max(start, a) > 0 for a, b in segments)


def _check_instance(item: Any, where: str, scored: bool) -> tuple[float, float]:
    """One ground-truth instance or prediction: a mapping with a str/int ``label``, a ``segment`` ``[start, end]`` of
    finite numbers and (predictions) a finite ``score``. Returns (start, end); `ValueError` names `where`."""
    if not isinstance(item, Mapping):
        raise ValueError(f"{where} must be an object with label/segment/score, got {_json_type(item)}")
    for key in ("label", "segment", "score") if scored else ("label", "segment"):
        if key not in item:
            raise ValueError(f"{where} has no {key!r}")
    if isinstance(item["label"], bool) or not isinstance(item["label"], str | int):
        raise ValueError(f"{where}: label must be a string or an integer, got {item['label']!r}")
    segment = item["segment"]
    numbers = list(segment) if isinstance(segment, list | tuple) else []
    if len(numbers) != 2 or not all(_finite(v) for v in numbers):
        raise ValueError(f"{where}: segment must be [start, end] in seconds, got {segment!r}")
    if scored and not _finite(item["score"]):
        raise ValueError(f"{where}: score must be a finite number, got {item['score']!r}")
    return float(numbers[0]), float(numbers[1])


def _json_type(value: Any) -> str:
    """What a parsed JSON value was in the file (``null``, ``object``, ...), for error messages."""
    names = {type(None): "null", dict: "object", list: "array", str: "string", bool: "boolean"}
    return names.get(type(value), "number" if isinstance(value, int | float) else type(value).__name__)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def check_ground_truth(database: Any) -> Mapping[str, Mapping[str, Any]]:
    """An ActivityNet ``database`` (`detection_map`'s input) checked entry by entry, returned as is; `ValueError`
    names the first malformed entry (a missing label/segment, a segment that is not two numbers or ends before it
    starts) instead of a `KeyError` from deep inside the metric."""
    if not isinstance(database, Mapping):
        raise ValueError(f"the database must map video → entry, got {_json_type(database)}")
    for video, entry in database.items():
        where = f"database[{video!r}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be an object, got {_json_type(entry)}")
        annotations = entry.get("annotations", [])
        if not isinstance(annotations, list):
            raise ValueError(f"{where}['annotations'] must be a list, got {_json_type(annotations)}")
        for i, ann in enumerate(annotations):
            start, end = _check_instance(ann, f"{where}['annotations'][{i}]", scored=False)
            if end < start:
                raise ValueError(f"{where}['annotations'][{i}]: segment ends before it starts ({start}, {end})")
    return database


def check_predictions(results: Any) -> tuple[dict[str, list[Mapping[str, Any]]], int]:
    """ActivityNet ``results`` checked entry by entry: (the predictions to score, how many were dropped because their
    segment ends before it starts). `ValueError` names the first malformed entry (not a list, a missing
    label/segment/score, a non-number); a reversed segment is not an error but is never scored: the caller reports
    the count (the toolkit would score it, with a negative length)."""
    if not isinstance(results, Mapping):
        raise ValueError(f"the results must map video → [predictions], got {_json_type(results)}")
    kept: dict[str, list[Mapping[str, Any]]] = {}
    n_reversed = 0
    for video, preds in results.items():
        if not isinstance(preds, list):
            raise ValueError(f"results[{video!r}] must be a list of predictions, got {_json_type(preds)}")
        kept[video] = []
        for i, pred in enumerate(preds):
            start, end = _check_instance(pred, f"results[{video!r}][{i}]", scored=True)
            if end < start:
                n_reversed += 1
            else:
                kept[video].append(pred)
    return kept, n_reversed


def detection_map(
    ground_truth: Mapping[str, Mapping[str, Any]],
    predictions: Mapping[str, Sequence[Mapping[str, Any]]],
    tiou_thresholds: Sequence[float] = ANET_TIOU,
    subset: str | None = None,
    classes: Sequence[str] | None = None,
    ambiguous: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> dict[str, Any]:
    """Per-class AP, mAP per threshold and average mAP (fractions).

    ground_truth: the ActivityNet JSON ``database``: ``{video: {"subset": str, "annotations": [{"segment": [s, e],
    "label": str}]}}``; subset: keep only videos of that subset (None = all). predictions: the ``results`` mapping
    ``{video: [{"label", "score", "segment": [s, e]}]}``. classes: the classes to evaluate, restricted to those with
    at least one ground-truth instance (default: every class in the ground truth, sorted). ambiguous: THUMOS14's
    Ambiguous segments per video (module docstring; None = the ActivityNet toolkit's scoring).
    Returns ``{"tiou", "mAP", "average_mAP", "per_class_ap", "n_ignored_predictions"}``.
    """
    gt_by_class: dict[str, list[tuple[Hashable, float, float]]] = {}
    for video, entry in ground_truth.items():
        if subset is not None and entry.get("subset") != subset:
            continue
        for ann in entry.get("annotations", []):
            start, end = ann["segment"]
            gt_by_class.setdefault(str(ann["label"]), []).append((video, float(start), float(end)))
    class_names = sorted(gt_by_class) if classes is None else [c for c in classes if c in gt_by_class]
    if not class_names:
        raise ValueError("no class with a ground-truth instance to evaluate (check subset / classes)")

    preds_by_class: dict[str, list[tuple[Hashable, float, float, float]]] = {c: [] for c in class_names}
    n_ignored = 0
    for video, video_preds in predictions.items():
        for p in video_preds:
            bucket = preds_by_class.get(str(p["label"]))
            if bucket is None:
                n_ignored += 1
                continue
            start, end = p["segment"]
            bucket.append((video, float(start), float(end), float(p["score"])))

    ap = np.stack(
        [average_precision(gt_by_class[c], preds_by_class[c], tiou_thresholds, ambiguous) for c in class_names]
    )  # (n_class, n_thr)
    mean_ap = ap.mean(axis=0)  # (n_thr,)
    return {
        "tiou": [float(t) for t in tiou_thresholds],
        "mAP": [float(m) for m in mean_ap],
        "average_mAP": float(mean_ap.mean()),
        "per_class_ap": {c: [float(v) for v in ap[i]] for i, c in enumerate(class_names)},
        "n_ignored_predictions": n_ignored,
    }


def _map_at(result: Mapping[str, Any], tiou: float) -> float:
    for t, m in zip(result["tiou"], result["mAP"]):
        if np.isclose(t, tiou):
            return float(m)
    raise KeyError(f"tIoU {tiou} was not evaluated (have {result['tiou']})")


def thumos_summary(result: Mapping[str, Any]) -> dict[str, float]:
    """THUMOS14 report: ``mAP@0.1 … mAP@0.7`` and ``AVG(0.1:0.5)``, ``AVG(0.3:0.7)``, ``AVG(0.1:0.7)`` (fractions).

    `result` is a `detection_map` output evaluated at (at least) `THUMOS14_TIOU`.
    """
    per_tiou = {t: _map_at(result, t) for t in THUMOS14_TIOU}
    summary = {f"mAP@{t:.1f}": m for t, m in per_tiou.items()}
    for lo, hi in ((0.1, 0.5), (0.3, 0.7), (0.1, 0.7)):
        in_range = [m for t, m in per_tiou.items() if lo - 1e-9 <= t <= hi + 1e-9]
        summary[f"AVG({lo:.1f}:{hi:.1f})"] = float(np.mean(in_range))
    return summary
