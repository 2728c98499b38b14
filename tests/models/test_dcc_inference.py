"""DCC inference on hand-made CAS: threshold runs, outer-inner-contrast scores computed by hand, Gaussian soft-NMS,
the class threshold and its arg-max fallback, ActivityNet output format, and the pseudo-label mIoU diagnostics."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from models.common.segments import Segments
from models.dcc import DCCConfig, InferenceConfig, build
from models.dcc.inference import (
    contiguous_runs,
    fuse_probs,
    localize,
    oic_score,
    predict,
    proposals,
    pseudo_label_masks,
    pseudo_label_miou,
    seconds_per_snippet,
    select_classes,
    snippet_mask,
    to_activitynet,
    upsample_cas,
)

DT = 16 / 25  # seconds per snippet
# class 0: runs above 0.45 at [2, 5) and [7, 9); above 0.65 at [4, 5) and [8, 9). class 1 never above 0.45.
CAS = np.array(
    [
        [0.1, 0.0],
        [0.2, 0.1],
        [0.5, 0.3],
        [0.6, 0.2],
        [0.7, 0.1],
        [0.2, 0.0],
        [0.1, 0.0],
        [0.5, 0.4],
        [0.9, 0.1],
        [0.3, 0.0],
    ]
)
SCORES = np.array([0.9, 0.5])


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_bounds(segs: Segments, expected: object) -> None:
    np.testing.assert_allclose(segs.bounds(), np.asarray(expected, dtype=np.float64).reshape(-1, 2), atol=1e-9)


def test_snippet_time_and_runs() -> None:
    assert seconds_per_snippet() == pytest.approx(0.64) == InferenceConfig().seconds_per_snippet
    assert contiguous_runs(np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)) == [(1, 3), (4, 5), (7, 8)]
    assert contiguous_runs(np.ones(3, bool)) == [(0, 3)] and contiguous_runs(np.zeros(3, bool)) == []


def test_oic_follows_um_outer_region() -> None:
    cas = CAS[:, 0]
    # [2, 5): L = 3, outer = [int(2 − 0.75), 2) ∪ [5, int(4 + 0.75)] = {1} → 0.6 − 0.2 + 0.2·0.9
    assert oic_score(cas, 2, 5, 0.9, 0.25, 0.2) == pytest.approx(0.6 - 0.2 + 0.18)
    # [7, 9): L = 2, outer = {6} ∪ {} → 0.7 − 0.1 + 0.18
    assert oic_score(cas, 7, 9, 0.9, 0.25, 0.2) == pytest.approx(0.7 - 0.1 + 0.18)
    # [0, 10) spans everything: no outer region → 0
    assert oic_score(cas, 0, 10, 0.5, 0.25, 0.2) == pytest.approx(cas.mean() + 0.1)
    # [3, 7): L = 4, outer = {2} ∪ {7}
    assert oic_score(cas, 3, 7, 0.0, 0.25, 0.2) == pytest.approx(cas[3:7].mean() - (0.5 + 0.5) / 2)


def test_single_threshold_proposals_on_a_hand_made_cas() -> None:
    segs = localize(CAS, SCORES, InferenceConfig())
    # class 1 (video score 0.5 < 0.85) is dropped; the two class-0 runs do not overlap, so soft-NMS keeps both scores
    assert segs.label.tolist() == [0, 0]
    assert segs.score.tolist() == pytest.approx([0.78, 0.58])
    assert_bounds(segs, [[7 * DT, 9 * DT], [2 * DT, 5 * DT]])


def test_multi_threshold_proposals_are_soft_nms_decayed() -> None:
    cfg = InferenceConfig(loc_thresholds=(0.45, 0.65))
    raw = proposals(CAS, SCORES, cfg)
    assert_bounds(raw, np.array([[2, 5], [7, 9], [4, 5], [8, 9]]) * DT)
    # [4, 5): outer {3} → 0.7 − 0.6 + 0.18; [8, 9): outer {7} → 0.9 − 0.5 + 0.18
    assert raw.score.tolist() == pytest.approx([0.58, 0.78, 0.28, 0.58])
    segs = localize(CAS, SCORES, cfg)
    # Gaussian soft-NMS, σ = 0.3: keep [7,9) (0.78); [8,9) has IoU 1/2 with it → 0.58·e^(−0.25/0.3);
    # then [2,5) (0.58, no overlap); then [4,5) with IoU 1/3 to [2,5) → 0.28·e^(−(1/9)/0.3); [8,9) last.
    decayed_89 = 0.58 * math.exp(-0.25 / 0.3)
    decayed_45 = 0.28 * math.exp(-(1 / 9) / 0.3)
    expected = sorted([(0.78, 7, 9), (0.58, 2, 5), (decayed_45, 4, 5), (decayed_89, 8, 9)], key=lambda r: -r[0])
    assert segs.score.tolist() == pytest.approx([r[0] for r in expected])
    assert_bounds(segs, [[r[1] * DT, r[2] * DT] for r in expected])
    top = localize(CAS, SCORES, dataclasses.replace(cfg, max_proposals=2))
    assert top.score.tolist() == pytest.approx([0.78, 0.58])


def test_negative_oic_scores_survive_soft_nms() -> None:
    cas = np.array([[0.9], [0.9], [0.3], [0.5], [0.3], [0.9], [0.9]])
    cfg = InferenceConfig(outer_ratio=2.0, video_score_weight=0.0)
    segs = localize(cas, np.array([0.9]), cfg)
    # runs above 0.45: [0, 2), [3, 4), [5, 7); outer regions (λ = 2): {2, 3, 4, 5}, {1, 2} ∪ {4, 5}, {1, 2, 3, 4}
    # → 0.9 − 0.5, 0.5 − 0.6 (negative, yet kept: no score threshold), 0.9 − 0.5; disjoint, so no decay
    assert segs.score.tolist() == pytest.approx([0.4, 0.4, -0.1])
    assert_bounds(segs, [[0, 2 * DT], [5 * DT, 7 * DT], [3 * DT, 4 * DT]])


def test_min_length_and_duration_clipping() -> None:
    cas = np.array([[0.9], [0.2], [0.9], [0.9], [0.9], [0.9], [0.9], [0.9]])
    scores = np.array([0.1])  # below θ_cls: the arg-max fallback keeps class 0
    segs = localize(cas, scores, InferenceConfig(min_length=2), duration=4.0)
    # the 1-snippet run [0, 1) is dropped; [2, 8): L = 6, outer [int(2 − 1.5), 2) = {0, 1} → 0.9 − 0.55 + 0.2·0.1;
    # its end 8·0.64 = 5.12 s is clipped to the 4 s duration
    assert_bounds(segs, [[2 * DT, 4.0]])
    assert segs.score.tolist() == pytest.approx([0.9 - 0.55 + 0.02])
    assert len(localize(cas, scores, InferenceConfig())) == 2


def test_class_threshold_and_argmax_fallback() -> None:
    assert select_classes(np.array([0.9, 0.86, 0.85]), 0.85).tolist() == [0, 1]  # strictly above θ_cls
    assert select_classes(np.array([0.3, 0.6, 0.1]), 0.85).tolist() == [1]  # none passes → arg-max
    segs = localize(CAS, np.array([0.3, 0.6]), InferenceConfig())
    assert set(segs.label.tolist()) <= {1} and len(segs) == 0  # class 1's CAS never exceeds 0.45
    segs = localize(CAS, np.array([0.3, 0.6]), InferenceConfig(loc_thresholds=(0.35,)))
    assert segs.label.tolist() == [1]
    assert_bounds(segs, [[7 * DT, 8 * DT]])
    both = localize(CAS, np.array([0.9, 0.95]), InferenceConfig(loc_thresholds=(0.35,)))
    assert sorted(set(both.label.tolist())) == [0, 1]


def test_upsampling_matches_linear_interpolation_with_extrapolation() -> None:
    cas = np.array([[0.0], [1.0], [3.0]])
    assert upsample_cas(cas, 2)[:, 0].tolist() == pytest.approx([0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
    segs = localize(np.array([[0.0], [1.0], [1.0], [0.0]]), np.array([0.9]), InferenceConfig(upsample=2))
    # up-sampled: 0, .5, 1, 1, 1, .5, 0, −.5 → run above 0.45 at [1, 6) → [1·0.32, 6·0.32) s
    assert_bounds(segs, [[0.32, 1.92]])


def test_activitynet_predictions_format() -> None:
    segs = localize(CAS, SCORES, InferenceConfig())
    entries = to_activitynet(segs, ["red circle", "green triangle"])
    assert entries == [
        {"label": "red circle", "score": pytest.approx(0.78), "segment": pytest.approx([4.48, 5.76])},
        {"label": "red circle", "score": pytest.approx(0.58), "segment": pytest.approx([1.28, 3.2])},
    ]
    assert all(type(e["score"]) is float and all(type(x) is float for x in e["segment"]) for e in entries)

    torch.manual_seed(0)
    model = build(DCCConfig.tiny(), ["red circle", "green triangle", "blue square"])
    videos = [("v1", torch.randn(20, 24), 12.0), ("v2", torch.randn(7, 24), None)]
    # θ_loc = 0 and θ_cls = 1: the arg-max class only, one run over the whole video, no outer region
    cfg = InferenceConfig(class_threshold=1.0, loc_thresholds=(0.0,))
    results = predict(model, videos, cfg)
    assert set(results) == {"v1", "v2"}
    for key, features, duration in videos:
        mask = torch.ones(1, len(features), dtype=torch.bool)
        probs, scores = model.localization_inputs({"features": features[None], "mask": mask})
        c = int(scores[0].argmax())
        end = len(features) * DT if duration is None else min(duration, len(features) * DT)
        assert results[key] == [
            {
                "label": model.class_names[c],
                "score": pytest.approx(float(probs[0, :, c].mean() + 0.2 * scores[0, c]), rel=1e-5),
                "segment": pytest.approx([0.0, end]),
            }
        ]
    assert results["v1"][0]["segment"][1] == pytest.approx(12.0)  # 12.8 s of snippets clipped to the duration


def test_fused_probabilities() -> None:
    a, b = torch.full((2, 3), 0.2), torch.full((2, 3), 0.6)
    assert torch.allclose(fuse_probs(a, b, 0.25), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_probs(a, b[:1])


def test_pseudo_label_masks_and_miou_by_hand() -> None:
    probs = np.array([[0.05], [0.2], [0.5], [0.9], [0.4], [0.05], [0.02], [0.35]])
    fg, bg = pseudo_label_masks(probs, np.array([1.0]))
    assert fg.tolist() == [False, False, True, True, True, False, False, True]
    assert bg.tolist() == [True, False, False, False, False, True, True, False]
    # ground truth: snippets 1–4 foreground (segment [0.64, 3.2) s: centres 0.96 … 2.88)
    gt = snippet_mask([[0.64, 3.2]], 8)
    assert gt.tolist() == [False, True, True, True, True, False, False, False]
    got = pseudo_label_miou([fg], [bg], [gt])
    # fg: ∩ {2,3,4} = 3, ∪ {1,2,3,4,7} = 5; bg: pred {0,5,6}, gt {0,5,6,7}: ∩ 3, ∪ 4
    assert got == pytest.approx({"fg_iou": 3 / 5, "bg_iou": 3 / 4, "miou": (3 / 5 + 3 / 4) / 2})
    # confident only: snippet 1 (uncertain) leaves both unions: fg ∪ {2,3,4,7} = 4
    conf = pseudo_label_miou([fg], [bg], [gt], confident_only=True)
    assert conf == pytest.approx({"fg_iou": 3 / 4, "bg_iou": 3 / 4, "miou": 3 / 4})
    # two videos accumulate intersections and unions (not a mean of per-video IoUs)
    two = pseudo_label_miou([fg, np.ones(2, bool)], [bg, np.zeros(2, bool)], [gt, np.array([True, False])])
    assert two["fg_iou"] == pytest.approx((3 + 1) / (5 + 2))
    assert two["bg_iou"] == pytest.approx(3 / (4 + 1))
    with pytest.raises(ValueError, match="both"):
        pseudo_label_miou([np.ones(2, bool)], [np.ones(2, bool)], [np.ones(2, bool)])
