"""DCC inference: CAS → proposals (threshold runs, outer-inner contrast, Gaussian soft-NMS) → ActivityNet predictions,
and the per-branch foreground/background pseudo-label masks with their mIoU against the ground truth.

Paper (review, METHODS §4): inference uses the CBP branch only (VLP cannot use flow); snippets whose confidence
exceeds θ_loc = 0.45 form proposals, classes above θ_cls = 0.85 are kept, soft-NMS removes duplicates. The proposal
details follow the W-TAL code DCC builds on (paper-code-notes §5.3):

- classes: video score > θ_cls; none → the arg-max class (UM ``test.py`` / CO2-Net);
- optional linear up-sampling of the CAS with extrapolation at the end (UM ``utils.upgrade_resolution``);
- proposals: maximal runs of consecutive positions with ``cas[:, c] > θ`` for each θ (UM ``grouping``), pooled over
  the thresholds; runs shorter than `min_length` dropped (UM drops < 2);
- outer-inner contrast (UM ``utils.get_proposal_oic``, λ = 0.25, γ = 0.2), for a run ``[s, e)`` of length
  ``L = e − s``: ``inner = mean(cas[s:e])``; outer = positions ``[max(0, int(s − λL)), s) ∪ [e, min(T' − 1,
  int(e − 1 + λL))]`` (0 if empty); ``score = inner − outer + γ·video_score_c``;
- times: position j ↔ ``j · (16/25) / upsample`` seconds; a run covers ``[s, e)`` → ``[s·Δ, e·Δ)`` (end exclusive,
  `models.common.segments` convention), clipped to the video duration when it is given;
- Gaussian soft-NMS per class, σ = 0.3, no score threshold (OIC scores can be negative) (CO2-Net ``soft_nms``).

Snippet ↔ seconds lives here (`seconds_per_snippet`) because `models/` may not import `pipelines/`; it equals
`pipelines.sampling.snippet_seconds` (i·16/25).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from models.common.segments import Segments, soft_nms
from models.dcc.config import SNIPPET_FPS, SNIPPET_FRAMES, InferenceConfig
from models.dcc.pseudo_labels import confident_labels, foreground_background


def seconds_per_snippet(snippet_frames: int = SNIPPET_FRAMES, fps: float = SNIPPET_FPS) -> float:
    """Duration of one W-TAL snippet: 16 frames at 25 fps = 0.64 s."""
    return snippet_frames / fps


def upsample_cas(cas: np.ndarray, scale: int) -> np.ndarray:
    """(T, C) → (T·scale, C): linear interpolation at positions ``j / scale``, extrapolating past the last snippet
    from the last two (UM ``upgrade_resolution`` with ``interp1d(fill_value="extrapolate")``)."""
    cas = np.asarray(cas, dtype=np.float64)
    if scale == 1:
        return cas
    t = cas.shape[0]
    x = np.arange(t * scale) / scale  # (T·scale,)
    if t == 1:
        return np.repeat(cas, scale, axis=0)
    left = np.minimum(np.floor(x).astype(np.int64), t - 2)  # segment index, the last one extended
    frac = (x - left)[:, None]  # (T·scale, 1)
    return cas[left] * (1.0 - frac) + cas[left + 1] * frac


def contiguous_runs(active: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool array as half-open ``(start, end)`` index pairs."""
    a = np.asarray(active, dtype=bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], a, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def oic_score(cas_c: np.ndarray, start: int, end: int, video_score: float, outer_ratio: float, weight: float) -> float:
    """Outer-inner contrast of run ``[start, end)`` on one class's CAS (UM ``get_proposal_oic``)."""
    length = end - start
    inner = float(np.mean(cas_c[start:end]))
    outer_s = max(0, int(start - outer_ratio * length))
    outer_e = min(len(cas_c) - 1, int(end - 1 + outer_ratio * length))
    outer_idx = list(range(outer_s, start)) + list(range(end, outer_e + 1))
    outer = float(np.mean(cas_c[outer_idx])) if outer_idx else 0.0
    return inner - outer + weight * video_score


def select_classes(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Class indices with video score > `threshold`; the arg-max class when none passes."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(scores > threshold)
    return keep if keep.size else np.asarray([int(np.argmax(scores))])


def proposals(
    cas: np.ndarray, video_scores: np.ndarray, cfg: InferenceConfig, duration: float | None = None
) -> Segments:
    """Scored proposals before suppression: (T, C) CAS probabilities and (C,) video scores → `Segments` (seconds)."""
    cas = np.asarray(cas, dtype=np.float64)
    video_scores = np.asarray(video_scores, dtype=np.float64)
    if cas.ndim != 2 or video_scores.shape != (cas.shape[1],):
        raise ValueError(f"need cas (T, C) and video scores (C,); got {cas.shape} and {video_scores.shape}")
    up = upsample_cas(cas, cfg.upsample)  # (T', C)
    step = cfg.seconds_per_snippet / cfg.upsample
    rows: list[tuple[float, float, float, int]] = []
    for c in select_classes(video_scores, cfg.class_threshold):
        for threshold in cfg.loc_thresholds:
            for s, e in contiguous_runs(up[:, c] > threshold):
                if e - s < cfg.min_length:
                    continue
                score = oic_score(up[:, c], s, e, float(video_scores[c]), cfg.outer_ratio, cfg.video_score_weight)
                start, end = s * step, e * step
                if duration is not None:
                    start, end = min(start, duration), min(end, duration)
                rows.append((start, end, score, int(c)))
    if not rows:
        return Segments.empty()
    table = np.asarray(rows, dtype=np.float64)  # (N, 4): start, end, score, label
    return Segments(table[:, 0], table[:, 1], table[:, 2], table[:, 3].astype(np.int64))


def localize(
    cas: np.ndarray, video_scores: np.ndarray, cfg: InferenceConfig, duration: float | None = None
) -> Segments:
    """Detections of one video: `proposals`, Gaussian soft-NMS per class, then the best `max_proposals`."""
    segs = soft_nms(proposals(cas, video_scores, cfg, duration), sigma=cfg.nms_sigma, score_threshold=None)
    segs = segs.sorted_by_score()
    if cfg.max_proposals is not None:
        segs = segs.take(np.arange(min(cfg.max_proposals, len(segs))))
    return segs


def to_activitynet(segs: Segments, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """`Segments` → ActivityNet result entries ``{"label", "score", "segment": [start, end]}`` (seconds)."""
    return [
        {"label": class_names[int(lab)], "score": float(sc), "segment": [float(s), float(e)]}
        for s, e, sc, lab in zip(segs.start, segs.end, segs.score, segs.label)
    ]


def fuse_probs(cbp: torch.Tensor, vlp: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """``weight·P^cb + (1 − weight)·P^vl`` — the two-branch combination the review reports for "only F / only B"."""
    if cbp.shape != vlp.shape:
        raise ValueError(f"branch CAS shapes differ: {tuple(cbp.shape)} vs {tuple(vlp.shape)}")
    return weight * cbp + (1.0 - weight) * vlp


def predict(
    model: Any,
    videos: Iterable[tuple[str, torch.Tensor, float | None]],
    cfg: InferenceConfig | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """ActivityNet ``results`` of a `DCC` model's CBP branch: ``{video: [{"label", "score", "segment"}]}``.

    videos: (key, I3D features (T, input_dim), duration in seconds or None) — whole videos, one at a time.
    """
    cfg = cfg or model.cfg.inference
    results: dict[str, list[dict[str, Any]]] = {}
    for key, features, duration in videos:
        mask = torch.ones(1, features.shape[0], dtype=torch.bool, device=features.device)
        probs, scores = model.localization_inputs({"features": features[None], "mask": mask}, branch="cbp")
        segs = localize(probs[0].cpu().numpy(), scores[0].cpu().numpy(), cfg, duration)
        results[key] = to_activitynet(segs, model.class_names)
    return results


# ----- pseudo-label diagnostics (paper: foreground / background mIoU of each branch's pseudo-labels) -----------------


def pseudo_label_masks(
    probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, high: float = 0.3, low: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """One video's confident (foreground (T,), background (T,)) bool masks from its (T, C) probabilities and (C,)
    multi-hot labels — the same rule the B/F steps use (`pseudo_labels`)."""
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))[None]  # (1, T, C)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))[None]  # (1, C)
    fg, bg = foreground_background(confident_labels(p, y, high, low), y)
    return fg[0].numpy(), bg[0].numpy()


def snippet_mask(
    segments: Iterable[Sequence[float]], n_snippets: int, snippet_seconds: float = seconds_per_snippet()
) -> np.ndarray:
    """Ground-truth foreground per snippet: snippet i is foreground when its centre ``(i + 0.5)·Δ`` lies in some
    ``[start, end)`` segment (seconds)."""
    centres = (np.arange(n_snippets) + 0.5) * snippet_seconds
    out = np.zeros(n_snippets, dtype=bool)
    for start, end in segments:
        out |= (centres >= start) & (centres < end)
    return out


def pseudo_label_miou(
    pred_fg: Sequence[np.ndarray],
    pred_bg: Sequence[np.ndarray],
    gt_fg: Sequence[np.ndarray],
    confident_only: bool = False,
) -> dict[str, float]:
    """Foreground IoU, background IoU and their mean over a set of videos (intersections and unions summed over all
    snippets of all videos, as segmentation mIoU is).

    pred_fg / pred_bg: per video (T,) bool confident masks (uncertain snippets are in neither, so they count as misses
    of both classes); gt_fg: per video (T,) bool ground truth (background = not foreground). `confident_only`
    scores only the confident snippets (uncertain ones left out of both unions). Empty unions give IoU 1.
    """
    if not len(pred_fg) == len(pred_bg) == len(gt_fg):
        raise ValueError("pred_fg, pred_bg and gt_fg must list the same videos")
    inter = np.zeros(2)
    union = np.zeros(2)
    for pf, pb, gf in zip(pred_fg, pred_bg, gt_fg):
        pf, pb, gf = (np.asarray(a, dtype=bool) for a in (pf, pb, gf))
        if not pf.shape == pb.shape == gf.shape:
            raise ValueError(f"mask shapes differ: {pf.shape}, {pb.shape}, {gf.shape}")
        if np.any(pf & pb):
            raise ValueError("a snippet cannot be both confident foreground and background")
        keep = (pf | pb) if confident_only else np.ones_like(gf)
        for k, (pred, gt) in enumerate(((pf, gf), (pb, ~gf))):
            inter[k] += np.sum(pred & gt & keep)
            union[k] += np.sum((pred | gt) & keep)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"fg_iou": float(iou[0]), "bg_iou": float(iou[1]), "miou": float(iou.mean())}
