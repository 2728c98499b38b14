"""Sinkhorn SK-norm: formula oracle, marginal convergence, shift invariance, axis symmetry, hub suppression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.common.sinkhorn import sinkhorn_normalize, sinkhorn_prior, sinkhorn_scaling


def reference_prior(sim: np.ndarray, n_iters: int) -> np.ndarray:
    """UCoFiA's t2v formula written out with explicit loops over rows and columns."""
    kernel = np.exp(sim - sim.max())
    rows, cols = kernel.shape
    b = [1.0 / sum(kernel[i, j] for i in range(rows)) for j in range(cols)]
    for _ in range(n_iters):
        a = [1.0 / sum(kernel[i, j] * b[j] for j in range(cols)) for i in range(rows)]
        b = [1.0 / sum(a[i] * kernel[i, j] for i in range(rows)) for j in range(cols)]
    log_b = np.log(b)
    return log_b - np.log(np.exp(log_b).sum())


def random_sim(seed: int, rows: int = 9, cols: int = 6, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, cols)) * scale


@pytest.mark.parametrize("n_iters", [0, 1, 4, 10])
def test_prior_matches_the_written_out_formula(n_iters: int) -> None:
    sim = random_sim(n_iters)
    prior = sinkhorn_prior(sim, n_iters=n_iters)
    assert prior.dtype == torch.float64 and prior.shape == (6,)
    np.testing.assert_allclose(prior.numpy(), reference_prior(sim, n_iters), rtol=0, atol=1e-12)
    assert float(prior.exp().sum()) == pytest.approx(1.0)


def normalised_marginals(sim: np.ndarray, n_iters: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = sinkhorn_scaling(sim, n_iters=n_iters)
    kernel = np.exp(sim - sim.max())
    plan = a.numpy()[:, None] * kernel * b.numpy()[None, :]  # diag(a) K diag(b)
    plan /= plan.sum()
    return plan.sum(axis=1), plan.sum(axis=0)


def test_scaled_kernel_marginals_converge_to_uniform() -> None:
    sim = random_sim(0, rows=9, cols=6, scale=1.0)
    rows, cols = sim.shape
    errors = []
    for n_iters in (1, 4, 200):
        row_marg, col_marg = normalised_marginals(sim, n_iters)
        errors.append(max(np.abs(row_marg - 1 / rows).max(), np.abs(col_marg - 1 / cols).max()))
    assert errors[0] > 1e-4  # not trivially uniform after one pass
    assert errors[2] < 1e-6
    assert errors[0] > errors[1] > errors[2]


def test_prior_is_invariant_to_a_constant_shift() -> None:
    sim = random_sim(3)
    np.testing.assert_allclose(sinkhorn_prior(sim + 123.4).numpy(), sinkhorn_prior(sim).numpy(), rtol=0, atol=1e-10)


def test_axis_zero_is_axis_one_on_the_transpose() -> None:
    sim = random_sim(4, rows=5, cols=8)
    prior_rows = sinkhorn_prior(torch.tensor(sim), axis=0)
    assert prior_rows.shape == (5,)
    np.testing.assert_allclose(prior_rows.numpy(), sinkhorn_prior(sim.T.copy(), axis=1).numpy(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        sinkhorn_prior(sim, axis=2)


def test_hub_gallery_item_is_pushed_down() -> None:
    # Every bank query likes gallery item 2: a hub. Its prior must be the smallest.
    sim = random_sim(5, scale=0.1)
    sim[:, 2] += 2.0
    prior = sinkhorn_prior(sim)
    assert int(torch.argmin(prior)) == 2


def test_normalize_adds_the_prior_and_keeps_the_input_type() -> None:
    bank = random_sim(6, rows=20, cols=6)
    test = random_sim(7, rows=4, cols=6).astype(np.float32)
    prior = sinkhorn_prior(bank).numpy()
    out_np = sinkhorn_normalize(test, bank)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, test + prior[None, :], rtol=1e-6, atol=1e-6)
    out_t = sinkhorn_normalize(torch.from_numpy(test), torch.from_numpy(bank))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out_np)
    with pytest.raises(ValueError):
        sinkhorn_normalize(test[:, :5], bank)
