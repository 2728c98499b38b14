"""1-D temporal segments: IoU, greedy NMS and soft-NMS, with one convention for the whole project.

Convention (used by every localisation and grounding component):
- times are **seconds** (floats), a segment is the half-open interval ``[start, end)``, so its length is
  ``end - start`` — no ``+ 1`` frame/pixel term (the CO2-Net / UM ``x2 - x1 + 1`` areas are an index convention that
  shifts IoU on second-scale segments, METHODS §0 and paper-code-notes §5);
- ``IoU(a, b) = inter / (len_a + len_b - inter)`` (ActivityNet ``segment_iou``); two segments whose union has zero
  length (both degenerate) have IoU 0;
- suppression is **strict**: NMS removes a segment when its IoU with a kept one is ``> iou_threshold`` (2D-TAN's ``nms``
  keeps ``ovr <= thresh``; CO2-Net's hard/linear soft-NMS modes act on ``iou > iou_thr``).

Segments are carried as named arrays (`Segments(start, end, score, label)`), never as columns of an ``(N, 4)``
array read by position.

Soft-NMS (Bodla et al., ICCV 2017) as used by CO2-Net / DCC (``utils/wsad_utils.py::soft_nms``): repeatedly take the
highest-scoring remaining segment and decay the others' scores by a function of their IoU with it
(Gaussian ``s_j ← s_j·exp(−IoU²/σ)``, σ = 0.3; linear ``s_j ← s_j·(1 − IoU)`` when IoU > thr; hard: drop when
IoU > thr).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

SoftNmsMethod = Literal["gaussian", "linear", "hard"]


@dataclass(frozen=True, eq=False)
class Segments:
    """N temporal segments as parallel 1-D arrays (seconds, half-open ``[start, end)``).

    start, end: float64 (N,) times in seconds; score: float64 (N,) confidence; label: int64 (N,) class index
    (0 for class-agnostic uses such as grounding moments).
    """

    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        # Normalise dtypes once so downstream code never has to; object.__setattr__ because the dataclass is frozen.
        object.__setattr__(self, "start", np.asarray(self.start, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "end", np.asarray(self.end, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "score", np.asarray(self.score, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "label", np.asarray(self.label, dtype=np.int64).reshape(-1))
        n = len(self.start)
        if not (len(self.end) == len(self.score) == len(self.label) == n):
            raise ValueError(
                f"Segments fields differ in length: start {n}, end {len(self.end)}, "
                f"score {len(self.score)}, label {len(self.label)}"
            )
        if np.any(self.end < self.start):
            raise ValueError("Segments need end >= start (seconds, half-open [start, end))")

    @classmethod
    def from_bounds(
        cls, bounds: np.ndarray, score: np.ndarray | None = None, label: np.ndarray | None = None
    ) -> Segments:
        """Build from an ``(N, 2)`` array of ``[start, end]`` seconds; missing scores are 1, missing labels 0."""
        bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 2)  # (N, 2)
        n = len(bounds)
        return cls(
            start=bounds[:, 0],
            end=bounds[:, 1],
            score=np.ones(n) if score is None else score,
            label=np.zeros(n, dtype=np.int64) if label is None else label,
        )

    @classmethod
    def empty(cls) -> Segments:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.start)

    @property
    def length(self) -> np.ndarray:
        """(N,) durations in seconds, ``end - start``."""
        return self.end - self.start

    def bounds(self) -> np.ndarray:
        """(N, 2) array of ``[start, end]``."""
        return np.stack([self.start, self.end], axis=1)

    def take(self, index: np.ndarray | list[int]) -> Segments:
        """The segments at `index` (integer indices or a boolean mask), in that order."""
        return Segments(self.start[index], self.end[index], self.score[index], self.label[index])

    def with_scores(self, score: np.ndarray) -> Segments:
        return Segments(self.start, self.end, score, self.label)

    def sorted_by_score(self) -> Segments:
        """Descending score; a stable sort, so equal scores keep their input order."""
        return self.take(np.argsort(-self.score, kind="stable"))


def segment_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise temporal IoU.

    a: (N, 2), b: (M, 2) ``[start, end]`` in seconds → (N, M) in [0, 1]; 0 where the union is empty.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)  # (N, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)  # (M, 2)
    inter_start = np.maximum(a[:, None, 0], b[None, :, 0])  # (N, M)
    inter_end = np.minimum(a[:, None, 1], b[None, :, 1])  # (N, M)
    inter = np.clip(inter_end - inter_start, 0.0, None)  # (N, M)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter  # (N, M)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def _greedy_nms_indices(segs: Segments, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS over all of `segs` (labels ignored), in descending-score order."""
    order = np.argsort(-segs.score, kind="stable")  # (N,)
    iou = segment_iou(segs.bounds(), segs.bounds())  # (N, N)
    suppressed = np.zeros(len(segs), dtype=bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def _per_label(segs: Segments, run: Callable[[Segments], Segments]) -> Segments:
    """Apply `run` to each label's segments separately; merge by descending score (stable)."""
    parts = [run(segs.take(segs.label == lab)) for lab in np.unique(segs.label)]
    if not parts:
        return Segments.empty()
    merged = Segments(
        np.concatenate([p.start for p in parts]),
        np.concatenate([p.end for p in parts]),
        np.concatenate([p.score for p in parts]),
        np.concatenate([p.label for p in parts]),
    )
    return merged.sorted_by_score()


def nms(segs: Segments, iou_threshold: float, *, class_agnostic: bool = False) -> Segments:
    """Greedy NMS: keep the best segment, drop the others with IoU > `iou_threshold` to it, repeat.

    Per label unless `class_agnostic`. Returns the kept segments in descending-score order.
    """
    if class_agnostic:
        return segs.take(_greedy_nms_indices(segs, iou_threshold))
    return _per_label(segs, lambda s: s.take(_greedy_nms_indices(s, iou_threshold)))


# Soft-NMS decay rules: IoU of the remaining segments with the one just kept (K,) → multiplicative weights (K,).
# A weight of exactly 0 means "suppressed" and removes the segment.
def _gaussian_decay(iou: np.ndarray, sigma: float, iou_threshold: float) -> np.ndarray:
    return np.exp(-(iou**2) / sigma)  # Bodla et al. Eq. 3; CO2-Net/DCC σ = 0.3, threshold unused


def _linear_decay(iou: np.ndarray, sigma: float, iou_threshold: float) -> np.ndarray:
    return np.where(iou > iou_threshold, 1.0 - iou, 1.0)


def _hard_decay(iou: np.ndarray, sigma: float, iou_threshold: float) -> np.ndarray:
    return np.where(iou > iou_threshold, 0.0, 1.0)


SOFT_NMS_DECAYS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "gaussian": _gaussian_decay,
    "linear": _linear_decay,
    "hard": _hard_decay,
}


def _soft_nms_single(
    segs: Segments,
    sigma: float,
    decay: Callable[[np.ndarray, float, float], np.ndarray],
    iou_threshold: float,
    score_threshold: float | None,
) -> Segments:
    bounds = segs.bounds()  # (N, 2)
    scores = segs.score.copy()  # (N,) decayed in place as segments are kept
    remaining = np.arange(len(segs))
    if score_threshold is not None:
        remaining = remaining[scores[remaining] >= score_threshold]
    kept: list[int] = []
    while remaining.size:
        # First maximum among the remaining, i.e. ties go to the earlier input segment.
        best_pos = int(np.argmax(scores[remaining]))
        best = int(remaining[best_pos])
        kept.append(best)
        remaining = np.delete(remaining, best_pos)
        if not remaining.size:
            break
        iou = segment_iou(bounds[best : best + 1], bounds[remaining])[0]  # (K,)
        weight = decay(iou, sigma, iou_threshold)  # (K,)
        scores[remaining] *= weight
        alive = weight > 0
        if score_threshold is not None:
            alive &= scores[remaining] >= score_threshold
        remaining = remaining[alive]
    index = np.asarray(kept, dtype=np.int64)
    return Segments(segs.start[index], segs.end[index], scores[index], segs.label[index])


def soft_nms(
    segs: Segments,
    sigma: float = 0.3,
    method: SoftNmsMethod = "gaussian",
    iou_threshold: float = 0.7,
    score_threshold: float | None = 0.0,
    *,
    class_agnostic: bool = False,
) -> Segments:
    """Soft-NMS; returns the surviving segments with their decayed scores, in the order they were kept.

    sigma: Gaussian width (CO2-Net/DCC 0.3); iou_threshold: used by the linear and hard rules only (CO2-Net 0.7).
    score_threshold: segments whose (decayed) score falls below it are dropped; ``None`` keeps everything, as
    CO2-Net's code does (its threshold line is commented out). Note OIC proposal scores can be negative, so the default
    0.0 drops negative-scored proposals; pass ``None`` to keep them.
    Per label (CO2-Net runs soft-NMS per class) unless `class_agnostic`; per-label results are merged by descending
    score.
    """
    try:
        decay = SOFT_NMS_DECAYS[method]
    except KeyError:
        raise ValueError(f"unknown soft-NMS method {method!r}; choose from {sorted(SOFT_NMS_DECAYS)}") from None

    def run(s: Segments) -> Segments:
        return _soft_nms_single(s, sigma, decay, iou_threshold, score_threshold)

    if class_agnostic:
        return run(segs)
    return _per_label(segs, run)
