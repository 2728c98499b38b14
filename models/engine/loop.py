"""The generic training loop: one implementation for every method, with a checkpoint that resumes bit-identically.

A method plugs in through two small protocols:

- `TrainableModel` (an ``nn.Module``): ``training_step(batch) -> {"loss": ..., other scalars}``, ``lr_scales()``
  (parameter-name prefix → lr multiplier) and ``after_step()`` (e.g. clamp CLIP4Clip's logit scale);
- `Recipe`: builds the model, yields *exactly* ``steps_per_epoch(world)`` batches per epoch and rank,
  deterministically from ``(seed, epoch, rank)``, and evaluates a model on rank 0.

`Trainer.state_dict()` holds everything needed to continue as if nothing happened: model, optimiser, scheduler,
progress (epoch, global step, batch within the epoch = the data position) and the torch RNG state. Because batches
are a pure function of ``(seed, epoch, rank, start)``, restoring that state and replaying from the data position
reproduces an uninterrupted run exactly (on CPU). The loop never logs or touches files: metrics go to a callback.

Where and how (`models.engine.device`): ``train.device`` (``auto`` | ``cpu`` | ``cuda``) places model and batches,
``train.precision`` (``fp32`` | ``bf16``) runs forward and loss under bfloat16 autocast, and ``train.prefetch_batches``
assembles batches ahead in a background thread (pinned for a GPU). The defaults — ``auto`` (the CPU where there is no
GPU), ``fp32``, no prefetch — are the float32 CPU path, bit for bit.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from models.common import distributed
from models.engine.device import DeviceName, Precision, autocast, resolve_device
from models.engine.optim import OptimConfig, build_optimizer, build_scheduler

Batch = Mapping[str, Any]


@runtime_checkable
class TrainableModel(Protocol):
    def training_step(self, batch: Batch) -> dict[str, Tensor]: ...

    def lr_scales(self) -> dict[str, float]: ...

    def after_step(self) -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5  # CLIP4Clip: 5 (§4.1); STAN: 10; UCoFiA: 15
    batch_size: int = 128  # *global* batch (all ranks together); CLIP4Clip/STAN: 128
    seed: int = 42  # CLIP4Clip official seed
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_every_epochs: int = 1  # evaluate (rank 0) after every n-th epoch and after the last
    # "auto": a GPU where this process (a Ray worker: one with use_gpu) has one, else the CPU; "cpu"; "cuda" (or an
    # error naming the fix). Official code trains on GPUs; the mini world on CPU (models/engine/device.py).
    device: DeviceName = "auto"
    # "bf16": forward + loss under bfloat16 autocast, float32 weights/gradients/optimiser (the papers used fp16 AMP);
    # "fp32": the exact float32 path.
    precision: Precision = "fp32"
    # batches assembled ahead in a background thread (0: in the loop). The same batches in the same order; a recipe's
    # batches must draw randomness from their own seeded generators (they do: engine contract), not torch's global RNG.
    prefetch_batches: int = 0


class Recipe(Protocol):
    """One method on one dataset: what the engine needs, nothing more."""

    train: TrainConfig

    def build_model(self) -> nn.Module: ...

    def steps_per_epoch(self, world_size: int) -> int: ...

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may still draw from the legacy global RNG
    torch.manual_seed(seed)


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken (global step)
    batch_in_epoch: int = 0  # batches of the current epoch already consumed (the data position)


MetricsCallback = Callable[[Mapping[str, float], int], None]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Tensors of a batch (nested in dicts/lists/tuples) on `device`; everything else as is."""
    if device.type == "cpu":
        return batch

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(move(v) for v in x)
        return x

    return {k: move(v) for k, v in batch.items()}


def _pin(x: Any) -> Any:
    """Tensors in page-locked memory, so that the copy to the GPU (`to_device`, non_blocking) overlaps compute."""
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, dict):
        return {k: _pin(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_pin(v) for v in x)
    return x


_END = object()


def prefetch(batches: Iterator[Batch], depth: int, pin: bool = False) -> Iterator[Batch]:
    """`batches`, assembled up to `depth` ahead in a background thread (`depth` <= 0: as they come); pinned when
    `pin`. The same items in the same order; an exception in the producer is raised here, at its position."""
    if depth <= 0:
        yield from batches
        return
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(_pin(batch) if pin else batch):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, name="vlrepro-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
        close = getattr(batches, "close", None)
        if callable(close):
            close()


class Trainer:
    """Runs a `Recipe` on this rank.

    Data parallelism without DDP wrapping: each rank computes its loss (contrastive losses all-gather features
    themselves), then gradients are averaged across ranks before the step — the same update DDP would make, without
    constraining `forward`'s signature or tripping over frozen branches.
    """

    def __init__(
        self,
        recipe: Recipe,
        model: nn.Module,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        """`device`: where to train; None resolves ``train.device`` (`models.engine.device.resolve_device`)."""
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.cfg = recipe.train
        if not isinstance(model, TrainableModel):
            raise TypeError(f"{type(model).__name__} does not implement training_step/lr_scales/after_step")
        self.device = resolve_device(self.cfg.device) if device is None else torch.device(device)
        autocast(self.device, self.cfg.precision)  # an unsupported precision fails here, before any work
        self.model: Any = model.to(self.device)
        if world_size > 1:
            distributed.broadcast_parameters(model)  # every rank starts from rank 0's weights
        self.steps_per_epoch = recipe.steps_per_epoch(world_size)
        if self.steps_per_epoch <= 0:
            raise ValueError(
                f"no training steps: the data yields no batch of {self.cfg.batch_size} on {world_size} rank(s)"
            )
        self.total_steps = self.steps_per_epoch * self.cfg.epochs
        self.optimizer = build_optimizer(model, self.cfg.optim, model.lr_scales())
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, self.total_steps)
        self.progress = Progress()

    # -------------------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": asdict(self.progress),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], restore_rng: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        if restore_rng:  # `restore_rng=False` exists only as the negative control of the resume test
            torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------------------------------------- training
    def train_epoch(self, on_metrics: MetricsCallback | None = None) -> dict[str, float]:
        """Finish the current epoch from the data position; return its mean losses."""
        epoch = self.progress.epoch
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        start = time.monotonic()
        batches = self.recipe.batches(epoch, self.rank, self.world_size, start=self.progress.batch_in_epoch)
        pin = self.device.type == "cuda"
        for batch in prefetch(batches, self.cfg.prefetch_batches, pin=pin):
            with autocast(self.device, self.cfg.precision):  # fp32: no context at all
                outputs = self.model.training_step(to_device(batch, self.device))
            loss = outputs["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch} step {self.progress.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world_size > 1:
                distributed.average_gradients(self.model)
            if self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.model.after_step()
            self.progress.step += 1
            self.progress.batch_in_epoch += 1
            for k, v in outputs.items():
                if v.ndim == 0:
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
            if on_metrics is not None:
                step_metrics = {f"train/{k}": float(v.detach()) for k, v in outputs.items() if v.ndim == 0}
                step_metrics["lr"] = float(self.scheduler.get_last_lr()[0])
                on_metrics(step_metrics, self.progress.step)
        if self.progress.batch_in_epoch != self.steps_per_epoch:
            raise RuntimeError(
                f"rank {self.rank} got {self.progress.batch_in_epoch} batches in epoch {epoch}, "
                f"expected {self.steps_per_epoch}: the recipe must give every rank the same number of steps"
            )
        self.progress.epoch += 1
        self.progress.batch_in_epoch = 0
        out = {f"train/{k}": v / max(n, 1) for k, v in sums.items()}
        out["epoch"] = float(self.progress.epoch)
        out["train/seconds"] = time.monotonic() - start
        return out

    def should_evaluate(self) -> bool:
        e = self.progress.epoch
        return e == self.cfg.epochs or (self.cfg.eval_every_epochs > 0 and e % self.cfg.eval_every_epochs == 0)

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            return dict(self.recipe.evaluate(self.model))


def fit_local(
    recipe: Recipe,
    resume: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float], Trainer], None] | None = None,
    on_metrics: MetricsCallback | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train in this process (no Ray): the reference the distributed path must match, and the test path."""
    seed_everything(recipe.train.seed)
    model = recipe.build_model()
    trainer = Trainer(recipe, model, distributed.rank(), distributed.world_size())
    if resume is not None:
        trainer.load_state_dict(resume)
    history: list[dict[str, float]] = []
    while trainer.progress.epoch < recipe.train.epochs:
        metrics = trainer.train_epoch(on_metrics)
        if trainer.should_evaluate() and trainer.rank == 0:
            metrics |= trainer.evaluate()
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, trainer)
    return model, history
