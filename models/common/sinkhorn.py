"""Sinkhorn-Knopp test-time normalisation of retrieval similarities (UCoFiA "SK-norm").

Source: UCoFiA (Wang et al., ICCV 2023) §3.5 and ``eval_t2v/main_ucofia.py::sinkhorn_knopp`` (paper-code-notes §3.5,
METHODS §0). A *query bank* (training captions for t2v, training videos for v2t — never the test queries) is scored
against the test gallery, ``S (M bank queries, N gallery items)``; then
    K = exp(S − max S);  b = 1 / K.sum(0);  n_iters times: a = 1 / (K b),  b = 1 / (aᵀ K)
and ``log_softmax(log b)`` is a per-gallery-item prior added to every test query's similarities. Gallery items that
the bank finds "too easy to match" (hubs) get a small ``b`` and are pushed down. The official code uses 4 iterations.

``diag(a) K diag(b)`` is the Sinkhorn scaling of K towards uniform marginals; with M != N the unnormalised updates
(target sums 1 per row and 1 per column) cannot both hold, but they only rescale a and b by constants, so the
normalised plan ``P / P.sum()`` converges to marginals 1/M and 1/N and the prior (a log-softmax, shift-invariant)
is unaffected.

Everything runs in float64: ``exp(S − max S)`` of sharp similarities spans many orders of magnitude.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

SimT = TypeVar("SimT", torch.Tensor, np.ndarray)

N_ITERS_UCOFIA = 4  # official code, eval_t2v/main_ucofia.py


def _as_float64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
    return x.detach().to(torch.float64)


def sinkhorn_scaling(
    log_sim: torch.Tensor | np.ndarray, n_iters: int = N_ITERS_UCOFIA, axis: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaling vectors ``(a, b)`` of UCoFiA's Sinkhorn iteration, float64.

    log_sim: (M, N). axis=1: ``b`` (N,) scales the columns (gallery items), ``a`` (M,) the rows, as in the t2v code;
    axis=0: the transposed construction — ``b`` (M,) scales the rows and ``a`` (N,) the columns (a view of the
    transpose, no copy).
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis}")
    sim = _as_float64(log_sim)
    if sim.ndim != 2:
        raise ValueError(f"log_sim must be 2-D, got shape {tuple(sim.shape)}")
    sim = sim if axis == 1 else sim.T  # (rows, cols) with the prior over cols; .T is a view
    kernel = torch.exp(sim - sim.max())  # (rows, cols), entries in (0, 1]
    b = 1.0 / kernel.sum(dim=0)  # (cols,)
    a = torch.ones(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)  # (rows,)
    for _ in range(n_iters):
        a = 1.0 / (kernel @ b)  # (rows,)
        b = 1.0 / (a @ kernel)  # (cols,)
    return a, b


def sinkhorn_prior(log_sim: torch.Tensor | np.ndarray, n_iters: int = N_ITERS_UCOFIA, axis: int = 1) -> torch.Tensor:
    """Log-prior over the gallery items from a bank × gallery similarity matrix.

    log_sim: (M, N) similarities (logits; UCoFiA feeds each level's similarity). axis=1 → (N,) prior over the columns
    (t2v: one per test video); axis=0 → (M,) prior over the rows (the transposed construction, v2t code path).
    Returns ``log_softmax(log b)`` in float64 (sums to 1 after ``exp``), on `log_sim`'s device.
    """
    _, b = sinkhorn_scaling(log_sim, n_iters=n_iters, axis=axis)
    return torch.log_softmax(torch.log(b), dim=0)


def sinkhorn_normalize(test_sim: SimT, bank_sim: torch.Tensor | np.ndarray, n_iters: int = N_ITERS_UCOFIA) -> SimT:
    """``test_sim + prior[None, :]`` with the prior from `bank_sim` (UCoFiA SK-norm).

    test_sim: (Q, N) test queries × gallery; bank_sim: (M, N) bank queries × the same gallery, oriented the same way
    (for v2t pass video × text matrices with a bank of training videos). Returns the same type (tensor or array) and
    dtype as `test_sim`.
    """
    prior = sinkhorn_prior(bank_sim, n_iters=n_iters, axis=1)  # (N,) float64
    if test_sim.shape[-1] != prior.shape[0]:
        raise ValueError(f"test_sim has {test_sim.shape[-1]} gallery columns, bank_sim {prior.shape[0]}")
    if isinstance(test_sim, np.ndarray):
        return (test_sim + prior.cpu().numpy()[None, :]).astype(test_sim.dtype, copy=False)
    # Add in float64, then cast once, so tensor and array inputs give identical results.
    return (test_sim.to(torch.float64) + prior.to(test_sim.device)[None, :]).to(test_sim.dtype)
