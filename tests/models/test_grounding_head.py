"""2D-TAN grounding head: moment coordinates, masks and scaled-IoU targets by hand, moment pooling and MapConv's
valid-cell weighting against direct computations, inference on a hand-made score map, gradients, a tiny overfit."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.common.metrics.grounding import grounding_recall
from models.config import ConfigError
from models.engine.loop import TrainableModel
from models.grounding import GroundingHead, GroundingHeadConfig, build, decode_moments, evaluate, top_moments
from models.grounding.tan import MOMENT_POOLS, MapConv, iou_map, moment_bounds, moment_mask, scaled_iou

D, DQ = 12, 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_moment_coordinates_and_mask() -> None:
    lengths, duration = torch.tensor([4, 2]), torch.tensor([8.0, 3.0])
    bounds = moment_bounds(lengths, duration, 4)
    # video 0: 2 s per clip; cell (i, j) = (2i, 2(j+1))
    assert bounds[0, 1, 2].tolist() == [2.0, 6.0]
    assert bounds[0, 0, 3].tolist() == [0.0, 8.0]
    assert bounds[0, 3, 3].tolist() == [6.0, 8.0]
    # video 1: 2 real clips of 1.5 s
    assert bounds[1, 0, 1].tolist() == [0.0, 3.0]
    assert bounds[1, 1, 1].tolist() == [1.5, 3.0]
    mask = moment_mask(lengths, 4)
    assert mask[0].int().tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    assert mask[1].int().tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_scaled_iou_targets_by_hand() -> None:
    bounds = moment_bounds(torch.tensor([4]), torch.tensor([8.0]), 4)
    iou = iou_map(bounds, torch.tensor([[2.0, 6.0]]))[0]
    target = scaled_iou(iou, 0.5, 1.0)
    expected = {
        (1, 2): (1.0, 1.0),  # [2, 6]: exact
        (1, 1): (0.5, 0.0),  # [2, 4]: IoU .5 → (.5 − .5)/.5 = 0
        (0, 2): (4 / 6, 1 / 3),  # [0, 6]
        (1, 3): (4 / 6, 1 / 3),  # [2, 8]
        (0, 3): (0.5, 0.0),  # [0, 8]
        (2, 3): (2 / 6, 0.0),  # [4, 8]: below min_iou → 0
        (0, 0): (0.0, 0.0),  # [0, 2]: disjoint
    }
    for (i, j), (want_iou, want_target) in expected.items():
        assert float(iou[i, j]) == pytest.approx(want_iou)
        assert float(target[i, j]) == pytest.approx(want_target)
    assert float(scaled_iou(torch.tensor(0.9), 0.3, 0.7)) == 1.0  # clamped at 1


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_moment_map_pools_clips_i_to_j(pool: str) -> None:
    x = torch.randn(2, 3, 5)
    out = MOMENT_POOLS[pool](x)
    reduce = (lambda t: t.amax(dim=-1)) if pool == "max" else (lambda t: t.mean(dim=-1))
    for i in range(5):
        for j in range(5):
            want = reduce(x[:, :, i : j + 1]) if i <= j else torch.zeros(2, 3)
            torch.testing.assert_close(out[:, :, i, j], want)


def test_map_conv_weights_by_valid_cells() -> None:
    # all-ones 3×3 kernels without bias on input = mask: layer 1 gives count/count = 1 wherever the kernel touches a
    # valid cell (the mask dilated once), layer 2 the same on the mask dilated twice (2D-TAN get_padded_mask_and_weight)
    conv = MapConv(hidden=1, layers=2, kernel=3)
    with torch.no_grad():
        for layer in conv.convs:
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    mask = moment_mask(torch.tensor([3]), 8)[:, None].float()  # (1, 1, 8, 8): i <= j < 3
    out = conv(mask, mask)[0, 0]
    dilated = mask[0, 0]
    for _ in range(2):
        dilated = (F.conv2d(dilated[None, None], torch.ones(1, 1, 3, 3), padding=1)[0, 0] > 0).float()
    torch.testing.assert_close(out, dilated)
    assert 6 < int(dilated.sum()) < 64  # the check is not vacuous: the region grew, and some cells stay outside


def test_inference_on_a_hand_made_score_map() -> None:
    scores = np.zeros((4, 4))
    scores[1, 2] = 0.9  # [2, 6]
    scores[1, 3] = 0.8  # [2, 8]: IoU 4/6 with [2, 6] → suppressed
    scores[0, 0] = 0.7  # [0, 2]
    scores[2, 3] = 0.6  # [4, 8]: IoU 2/6 with [2, 6]
    scores[0, 1] = 0.5  # [0, 4]: IoU 2/6 with [2, 6], exactly 0.5 with [0, 2] → kept (suppression is IoU > 0.5)
    scores[0, 2] = 0.4  # [0, 6]: IoU 4/6 with [2, 6] → suppressed
    scores[3, 1] = 0.99  # below the diagonal: not a moment
    moments, ranked = decode_moments(scores, 4, 8.0)
    assert len(moments) == 10 and ranked[0] == pytest.approx(0.9) and ranked.tolist() == sorted(ranked, reverse=True)
    top = top_moments(moments, ranked, 0.5, 4)
    assert top.bounds().tolist() == [[2.0, 6.0], [0.0, 2.0], [4.0, 8.0], [0.0, 4.0]]
    assert top.score.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5])
    # 3 real clips of 8/3 s: cells with j = 3 are not moments
    moments3, _ = decode_moments(scores, 3, 8.0)
    assert len(moments3) == 6 and moments3[0].tolist() == pytest.approx([8 / 3, 8.0])  # (1, 2) at 8/3 s per clip


def make_batch(seed: int = 0, b: int = 4, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([8, 6, 8, 5])[:b]
    duration = torch.tensor([16.0, 9.0, 12.0, 10.0])[:b]
    moments = torch.tensor([[2.0, 8.0], [0.0, 3.0], [6.0, 12.0], [4.0, 10.0]])[:b]
    return {
        "clips": torch.randn(b, n, D, generator=g),
        "clip_mask": torch.arange(n)[None, :] < lengths[:, None],
        "query": torch.randn(b, DQ, generator=g),
        "moments": moments,
        "duration": duration,
    }


def make_head(seed: int = 0, **kw: Any) -> GroundingHead:
    torch.manual_seed(seed)
    return build(dataclasses.replace(GroundingHeadConfig.tiny(), **kw), D, DQ)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_every_parameter_gets_a_gradient_and_the_loss_is_scaled_iou_bce(pool: str) -> None:
    head = make_head(pooling=pool)
    assert isinstance(head, TrainableModel) and head.lr_scales() == {}
    batch = make_batch()
    loss = head.training_step(batch)["loss"]
    loss.backward()
    loss = loss.detach()
    assert [n for n, p in head.named_parameters() if p.grad is None or not p.grad.any()] == []
    # oracle: BCE over the valid cells of every query, targets from the hand formula
    with torch.no_grad():
        logits, _ = head(batch["clips"], batch["clip_mask"], batch["query"])
    total, count = 0.0, 0
    for b in range(4):
        n_b = int(batch["clip_mask"][b].sum())
        step = float(batch["duration"][b]) / n_b
        gs, ge = batch["moments"][b].tolist()
        for i in range(n_b):
            for j in range(i, n_b):
                s, e = i * step, (j + 1) * step
                iou = max(0.0, min(e, ge) - max(s, gs)) / (max(e, ge) - min(s, gs))
                y = min(1.0, max(0.0, (iou - 0.5) / 0.5))
                p = 1 / (1 + np.exp(-float(logits[b, i, j])))
                total += -(y * np.log(p) + (1 - y) * np.log(1 - p))
                count += 1
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


def test_padding_clips_change_nothing() -> None:
    head = make_head()
    batch = make_batch()
    junk = dict(batch)
    junk["clips"] = torch.where(
        batch["clip_mask"][:, :, None], batch["clips"], 100.0 * torch.randn(batch["clips"].shape)
    )
    with torch.no_grad():
        a, mask = head(batch["clips"], batch["clip_mask"], batch["query"])
        b, _ = head(junk["clips"], junk["clip_mask"], junk["query"])
    torch.testing.assert_close(a[mask], b[mask])
    assert not bool(a[~mask].any())  # logits are 0 outside the moment mask
    with pytest.raises(ValueError, match="prefix"):
        head(batch["clips"], torch.tensor([[True, False, True] + [False] * 5] * 4), batch["query"])


def test_overfits_four_queries_and_evaluates() -> None:
    head = make_head(seed=1, hidden=16, map_layers=2)
    batch = make_batch(seed=2)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = float(head.training_step(batch)["loss"].detach())
    for _ in range(100):
        loss = head.training_step(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    result = evaluate(head, [batch])
    # every ground truth sits exactly on the clip grid; the top moment may be a neighbour with IoU > 0.7
    assert set(result.values()) == {100.0}
    cands = head.candidates(batch)
    assert result == grounding_recall([m for m, _ in cands], [s for _, s in cands], batch["moments"].numpy())
    top = head.predict(batch)
    assert all(len(t) == head.cfg.top_n for t in top)


def test_config_checks() -> None:
    with pytest.raises(ConfigError):
        GroundingHeadConfig(map_kernel=4)
    with pytest.raises(ConfigError):
        GroundingHeadConfig(min_iou=0.7, max_iou=0.5)
