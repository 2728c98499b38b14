"""Losses: hand-written cross-entropy references, and the 2-rank all-gather loss/gradients vs one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from models.common import distributed
from models.common.losses import (
    ContrastiveLoss,
    kl_distillation,
    mil_topk_count,
    mil_topk_scores,
    symmetric_infonce,
)


def test_symmetric_infonce_matches_hand_written_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [1.0, 3.0, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def row_ce(row: list[float], target: int) -> float:
        return -row[target] + math.log(sum(math.exp(v) for v in row))

    rows = logits.tolist()
    cols = logits.T.tolist()
    t2v = sum(row_ce(rows[i], i) for i in range(3)) / 3
    v2t = sum(row_ce(cols[j], j) for j in range(3)) / 3
    assert float(symmetric_infonce(logits, "mean")) == pytest.approx((t2v + v2t) / 2, abs=1e-12)
    assert float(symmetric_infonce(logits, "sum")) == pytest.approx(t2v + v2t, abs=1e-12)


def test_sum_is_twice_mean_and_symmetric_logits_give_equal_directions() -> None:
    x = torch.randn(5, 5, dtype=torch.float64)
    sym = x + x.T
    assert float(symmetric_infonce(sym, "sum")) == pytest.approx(2 * float(symmetric_infonce(sym, "mean")))
    one_direction = F.cross_entropy(sym, torch.arange(5))
    assert float(symmetric_infonce(sym, "mean")) == pytest.approx(float(one_direction))
    with pytest.raises(ValueError):
        symmetric_infonce(torch.zeros(2, 3))


def test_contrastive_loss_scales_and_normalises() -> None:
    torch.manual_seed(0)
    text, video = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    cosine = F.normalize(text, dim=-1) @ F.normalize(video, dim=-1).T

    stan = ContrastiveLoss(temperature=0.01, reduction="sum").double()
    assert list(stan.parameters()) == []
    torch.testing.assert_close(stan(text, video), symmetric_infonce(cosine / 0.01, "sum"))

    clip4clip = ContrastiveLoss(init_logit_scale=math.log(20.0)).double()
    torch.testing.assert_close(clip4clip(text, video), symmetric_infonce(20.0 * cosine, "mean"))
    with torch.no_grad():
        clip4clip.logit_scale.fill_(10.0)
    clip4clip.clamp_()
    assert float(clip4clip.logit_scale.detach()) == pytest.approx(math.log(100.0))
    stan.clamp_()  # no-op for a fixed temperature
    assert float(stan.scale()) == pytest.approx(100.0)


def test_gather_is_identity_without_a_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    assert (distributed.is_distributed(), distributed.world_size(), distributed.rank()) == (False, 1, 0)


# ---------------------------------------------------------------------------------------------- 2-rank parity
WORLD = 2
BATCH = 6  # global batch; each rank holds BATCH // WORLD pairs
LOSS_CONFIGS = {
    "clip4clip": {"init_logit_scale": math.log(1 / 0.07)},
    "stan": {"temperature": 0.01, "reduction": "sum"},
}


class TinyDualEncoder(nn.Module):
    """Two linear encoders and the loss: the loss's all-gather must route gradients back into both."""

    def __init__(self, loss_kwargs: dict) -> None:
        super().__init__()
        torch.manual_seed(1234)  # identical initial weights in every process
        self.text = nn.Linear(7, 5)
        self.video = nn.Linear(9, 5)
        self.loss = ContrastiveLoss(**loss_kwargs)

    def forward(self, text_in: torch.Tensor, video_in: torch.Tensor) -> torch.Tensor:
        return self.loss(self.text(text_in), self.video(video_in))


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    text_in, video_in = torch.randn(BATCH, 7, generator=gen), torch.randn(BATCH, 9, generator=gen)
    text_feat, video_feat = torch.randn(BATCH, 5, generator=gen), torch.randn(BATCH, 5, generator=gen)
    return text_in.double(), video_in.double(), text_feat.double(), video_feat.double()


def ddp_average_gradients(model: nn.Module) -> None:
    """What DistributedDataParallel's reducer does to every parameter gradient: all-reduce sum, divide by world.

    Done by hand because constructing a real DDP wrapper imports torch._dynamo (~10 s per spawned process on 2 cores).
    """
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= dist.get_world_size()


def run_case(name: str, rank: int | None) -> dict[str, torch.Tensor]:
    """Loss and gradients on the whole batch (rank None) or on this rank's half with DDP's gradient averaging."""
    text_in, video_in, text_feat, video_feat = global_batch()
    rows = slice(None) if rank is None else slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    model = TinyDualEncoder(LOSS_CONFIGS[name]).double()
    loss = model(text_in[rows], video_in[rows])
    loss.backward()
    if rank is not None:
        ddp_average_gradients(model)
    out = {"loss": loss.detach()}
    out.update({f"grad/{k}": p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None})
    # Feature gradients straight through the gather (no DDP involved).
    t, v = text_feat[rows].clone().requires_grad_(), video_feat[rows].clone().requires_grad_()
    ContrastiveLoss(**LOSS_CONFIGS[name]).double()(t, v).backward()
    assert t.grad is not None and v.grad is not None
    out["feat_grad/text"], out["feat_grad/video"] = t.grad, v.grad
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert distributed.is_distributed() and distributed.world_size() == WORLD and distributed.rank() == rank
        results = {name: run_case(name, rank) for name in LOSS_CONFIGS}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    out_dir = tmp_path_factory.mktemp("allgather")
    mp.spawn(_worker, args=(str(out_dir / "init"), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(LOSS_CONFIGS))
def test_two_rank_loss_and_gradients_equal_single_process(
    name: str, two_rank_results: list[dict[str, dict[str, torch.Tensor]]]
) -> None:
    single = run_case(name, rank=None)
    for rank, per_rank in enumerate(two_rank_results):
        got = per_rank[name]
        # Every rank computes the full global matrix: the loss is the single-process loss of the whole batch.
        torch.testing.assert_close(got["loss"], single["loss"], rtol=0, atol=1e-6)
        # After DDP's averaging, every parameter (encoders and logit_scale) has the single-process gradient.
        param_keys = sorted(k for k in single if k.startswith("grad/"))
        assert sorted(k for k in got if k.startswith("grad/")) == param_keys
        if name == "clip4clip":
            assert "grad/loss.logit_scale" in param_keys
        for key in param_keys:
            torch.testing.assert_close(got[key], single[key], rtol=0, atol=1e-6, msg=f"{name} {key}")
        # Feature gradients: the backward sums over ranks, so each rank holds world × its slice of ∂L/∂x.
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for key in ("feat_grad/text", "feat_grad/video"):
            torch.testing.assert_close(got[key], WORLD * single[key][rows], rtol=0, atol=1e-6, msg=f"{name} {key}")


def test_kl_distillation_hand_computed_and_masked() -> None:
    teacher = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    student = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]).log().requires_grad_()
    mask = torch.tensor([True, True, False])
    # Row 0: 2·0.5·ln(0.5/0.25) = ln 2; row 1: ln(1/0.5) = ln 2; row 2 masked out (and would be 0).
    loss = kl_distillation(student, teacher, mask)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    reference = F.kl_div(student[mask], teacher[mask], reduction="sum") / 2
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert kl_distillation(student, teacher).item() == pytest.approx(2 * math.log(2.0) / 3, rel=1e-6)
    empty = kl_distillation(student, teacher, torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph
    assert student.grad is not None and torch.all(student.grad == 0)


def test_mil_topk_scores_and_count() -> None:
    cas = torch.tensor([[[1.0, 0.0], [4.0, 2.0], [3.0, 8.0], [2.0, 6.0]]])  # (B=1, T=4, C=2)
    torch.testing.assert_close(mil_topk_scores(cas, 2), torch.tensor([[3.5, 7.0]]))
    torch.testing.assert_close(mil_topk_scores(cas, 4), cas.mean(dim=1))
    assert [mil_topk_count(t) for t in (1, 7, 8, 20, 1000)] == [1, 1, 1, 2, 125]
    with pytest.raises(ValueError):
        mil_topk_scores(cas, 5)
