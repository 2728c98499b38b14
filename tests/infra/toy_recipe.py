"""A tiny `Recipe` for the Ray Train wrapper tests: seeded MLP regression with dropout, importable by Ray workers.

Workers build it from ``"tests.infra.toy_recipe:build"`` plus a JSON dict, the way real recipes come from the
registry. Dropout and input noise make the torch RNG part of the training state, so a resume that forgets the RNG
changes the result (the negative control); the noise draws a rank-dependent amount, so each rank's RNG differs.
Data order is a pure function of ``(seed, epoch)``; a rank's slice of each global batch is a pure function of
``(rank, world)``, so every rank yields exactly ``steps_per_epoch`` batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.engine.loop import Batch, TrainConfig
from models.engine.optim import OptimConfig


@dataclass(frozen=True)
class ToyConfig:
    epochs: int = 3
    n_train: int = 64
    n_eval: int = 32
    batch_size: int = 16  # global; 4 steps per epoch
    dim: int = 6
    hidden: int = 32
    dropout: float = 0.3
    noise: float = 0.05  # std of the input-noise augmentation
    seed: int = 7
    lr: float = 1e-2
    extra: dict[str, Any] = field(default_factory=dict)  # ignored; lets a test make a config that hashes differently


class ToyMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, noise: float) -> None:
        super().__init__()
        self.noise = noise
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)  # (B, D) -> (B,)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        x = batch["x"]  # (B, D)
        # Input-noise augmentation from the global torch RNG, with a rank-dependent number of draws: the ranks' RNG
        # streams diverge, so a resume that restored rank 0's RNG on every rank would be caught.
        extra = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        x = x + self.noise * torch.randn(x.shape[0] + extra, x.shape[1])[: x.shape[0]]
        pred = self(x)
        loss = nn.functional.mse_loss(pred, batch["y"])
        # torch's intra-op threads: a 1-CPU Ray worker must run one (the worker sets it from its CPU reservation)
        threads = torch.tensor(float(torch.get_num_threads()))
        return {"loss": loss, "pred_mean": pred.detach().mean(), "threads": threads}

    def lr_scales(self) -> dict[str, float]:
        return {}

    def after_step(self) -> None:
        pass


class ToyRecipe:
    def __init__(self, cfg: ToyConfig) -> None:
        self.cfg = cfg
        self.train = TrainConfig(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            optim=OptimConfig(lr=cfg.lr, weight_decay=0.01, warmup_steps=2),
        )
        g = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(cfg.dim, generator=g)
        x = torch.randn(cfg.n_train + cfg.n_eval, cfg.dim, generator=g)  # (N, D)
        y = torch.sin(x @ w) + 0.1 * torch.randn(x.shape[0], generator=g)  # (N,)
        self.x_train, self.y_train = x[: cfg.n_train], y[: cfg.n_train]
        self.x_eval, self.y_eval = x[cfg.n_train :], y[cfg.n_train :]

    def build_model(self) -> nn.Module:
        return ToyMLP(self.cfg.dim, self.cfg.hidden, self.cfg.dropout, self.cfg.noise)

    def steps_per_epoch(self, world_size: int) -> int:
        if self.cfg.batch_size % world_size:
            raise ValueError(f"global batch {self.cfg.batch_size} does not split over {world_size} ranks")
        return self.cfg.n_train // self.cfg.batch_size

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Mapping[str, Tensor]]:
        order = torch.randperm(self.cfg.n_train, generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch))
        per_rank = self.cfg.batch_size // world_size
        for step in range(start, self.steps_per_epoch(world_size)):
            lo = step * self.cfg.batch_size + rank * per_rank
            idx = order[lo : lo + per_rank]
            yield {"x": self.x_train[idx], "y": self.y_train[idx]}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        pred = model(self.x_eval)
        return {"eval/mse": float(nn.functional.mse_loss(pred, self.y_eval))}


def build(config: Mapping[str, Any]) -> ToyRecipe:
    return ToyRecipe(ToyConfig(**config))


class EpochLog:
    """A picklable ``on_epoch`` callback for the tests: it runs in the rank-0 worker, so it appends to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, metrics: Mapping[str, float], epoch: int) -> None:
        with open(self.path, "a") as f:
            f.write(f"{epoch} {metrics['train/loss']!r}\n")
