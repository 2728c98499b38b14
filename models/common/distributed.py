"""The one place in ``models/`` that talks to ``torch.distributed``: rank/world helpers and a differentiable all-gather.

Sources: CLIP4Clip ``modules/until_module.py::AllGather`` and open_clip ``src/open_clip/loss.py::gather_features``
(``gather_with_grad=True`` → ``torch.distributed.nn.all_gather``).

Gradient convention of `all_gather_with_grad` — the backward **all-reduces (sums) the incoming gradient over ranks
and returns this rank's slice**, the same gradient as open_clip's ``torch.distributed.nn.all_gather``:
- Every rank computes the *same* global loss ``L`` from the gathered batch (see `models.common.losses`). The true
  ``∂L/∂x_r`` for rank r's features flows through the copy of ``x_r`` inside *every* rank's gathered tensor, so the
  per-rank contributions must be summed: rank r receives ``world · ∂L/∂x_r`` (each of the world ranks contributes
  ``∂L/∂x_r``).
- DDP then **averages** parameter gradients over ranks, which divides by ``world`` again: the encoder parameters get
  exactly ``dL/dθ`` of a single process running the concatenated batch, and so do parameters outside the gather (a
  learnable ``logit_scale``: identical ``∂L/∂s`` on every rank, averaged to itself).
- CLIP4Clip's ``AllGather`` returns the slice *without* the sum, which leaves the encoder with ``dL/dθ / world``
  after DDP averaging while ``logit_scale`` gets the full gradient — an inconsistent scaling (harmless for Adam's
  direction, not for grad-norm clipping or weight-decay balance). We take the open_clip convention.

When torch.distributed is not initialised (or the world has one rank) every function is the identity / trivial.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """(B, ...) on each rank → (world·B, ...) in rank order; backward: sum over ranks, keep this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank = dist.get_rank()
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (world·B, ...)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()  # (world·B, ...)
        # Each rank holds the gradient of its own copy of the loss; x_r's total gradient is the sum over ranks.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (B, ...) along dim 0 → (world·B, ...), differentiable.

    All ranks must pass the same B. Backward convention: see the module docstring (sum over ranks, own slice).
    Identity when not distributed.
    """
    if not is_distributed():
        return x
    out = _AllGatherWithGrad.apply(x)
    assert isinstance(out, torch.Tensor)
    return out


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (so all ranks start identical). No-op alone."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def average_gradients(module: torch.nn.Module) -> None:
    """Average every parameter's gradient over ranks — the update DDP makes. No-op alone.

    Parameters without a gradient on this rank take part with zeros, so every rank issues the same collectives.
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)
