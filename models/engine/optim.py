"""Optimiser and schedule shared by every method: parameter groups with lr multipliers, AdamW, warmup + cosine.

CLIP4Clip (paper §4.1, official `BertAdam` with `warmup_cosine`): lr 1e-4 for new modules and ×1e-3 for CLIP,
decoupled weight decay 0.2 (none on biases / norms / embeddings), β = (0.9, 0.98), ε = 1e-6, 10 % linear warmup then
cosine, grad-norm clip 1.0. STAN uses the same shape with ×10 for its branch. Each method states its multipliers as
``{parameter-name prefix: multiplier}`` (`lr_scales`), so groups are chosen when building, never inside `forward`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4  # base lr for new modules (CLIP4Clip §4.1)
    weight_decay: float = 0.2  # decoupled weight decay (CLIP4Clip official BertAdam)
    betas: tuple[float, float] = (0.9, 0.98)  # CLIP4Clip / STAN
    eps: float = 1e-6  # CLIP4Clip (STAN: 1e-8)
    warmup_fraction: float = 0.1  # 10 % linear warmup (CLIP4Clip `warmup_proportion`)
    warmup_steps: int = 0  # > 0 overrides warmup_fraction
    schedule: Literal["cosine", "constant"] = "cosine"  # cosine decay to 0 after warmup
    grad_clip: float = 1.0  # global grad-norm clip (CLIP4Clip); 0 disables
    # torch's fused AdamW: the same update in one kernel per step (~5x faster on CPU for CLIP's 49,408 x width token
    # table), float rounding differs from the default loop, so it is opt-in: the measured tables stay bit-reproducible.
    fused: bool = False


_NO_DECAY_HINTS = ("bias", "norm", "ln_", ".ln", "embedding", "logit_scale", "positional", "class_embedding", "prompt")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or any(h in name for h in _NO_DECAY_HINTS)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_scales: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (lr multiplier, decay or not).

    `lr_scales` maps a parameter-name prefix to a multiplier (longest matching prefix wins); parameters matching no
    prefix get ×1. Frozen parameters (``requires_grad=False``) are left out.
    """
    scales = sorted((lr_scales or {}).items(), key=lambda kv: -len(kv[0]))
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    names: dict[tuple[float, bool], list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((s for prefix, s in scales if name.startswith(prefix)), 1.0)
        key = (scale, _no_decay(name, param))
        groups.setdefault(key, []).append(param)
        names.setdefault(key, []).append(name)
    return [
        {
            "params": params,
            "lr": lr * scale,
            "base_lr": lr * scale,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "names": names[(scale, no_decay)],
        }
        for (scale, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, lr_scales: Mapping[str, float] | None = None
) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, lr_scales)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=cfg.fused or None
    )


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_fraction * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str = "cosine") -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based): linear warmup, then cosine to 0 (or flat)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warm = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warm, cfg.schedule))
