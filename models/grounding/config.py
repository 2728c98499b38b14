"""Configuration of the 2D-TAN grounding head (Zhang et al., AAAI 2020), the downstream model of LocVTP's grounding
experiments (paper: "replace 2D-TAN's input features with LocVTP's"; paper-code-notes §4.3).

Provenance: "2D-TAN" = microsoft/VideoX `2D-TAN/experiments/charades/2D-TAN-16x16-K5L8-pool.yaml` (Charades-STA,
the "pool" variant) and `lib/models/*`; ActivityNet uses 64 clips, K9L4 and NMS 0.5. "project" = a choice made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.config import ConfigError

PoolName = Literal["max", "avg"]


@dataclass(frozen=True)
class GroundingHeadConfig:
    """2D temporal adjacent network over precomputed clip features and a precomputed sentence feature."""

    # N clips per video the recipe resamples features to (2D-TAN `average_to_fixed_length`: Charades 256/16 = 16,
    # ActivityNet 64, TACoS 128). The head itself accepts any N (dense map); read by the recipe.
    num_clips: int = 16
    # Channels H of the moment map (2D-TAN HIDDEN_SIZE 512).
    hidden: int = 512
    # Moment feature = pooling of clips i..j (2D-TAN "pool" variant `PropMaxPool`: max; "avg" = mean, project option).
    # Every (i, j), i <= j, is built densely — 2D-TAN's sparse sampling only matters for N >= 64 (ActivityNet, TACoS).
    pooling: PoolName = "max"
    # 2D convolutions over the moment map (2D-TAN Charades K5L8: 8 layers of kernel 5; ActivityNet K9L4). Padding is
    # k // 2 per layer ("same" size) where 2D-TAN pads (k−1)/2·L in the first layer only; both keep N×N.
    map_layers: int = 8
    map_kernel: int = 5
    # L2-normalise each clip feature first (2D-TAN DATASET.NORMALIZE: True).
    normalize_clips: bool = True
    # Scaled-IoU BCE targets: clamp((IoU − min_iou) / (max_iou − min_iou), 0, 1) (2D-TAN bce_rescale_loss, BIAS 0).
    min_iou: float = 0.5
    max_iou: float = 1.0
    # Greedy NMS threshold at inference (METHODS §0 and 2D-TAN ActivityNet: 0.5; 2D-TAN Charades yaml: 0.45).
    nms_threshold: float = 0.5
    # Moments returned per query by `predict` after NMS (the largest n of R@{1,5}).
    top_n: int = 5

    def __post_init__(self) -> None:
        for name in ("num_clips", "hidden", "map_layers", "map_kernel", "top_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.map_kernel % 2 == 0:
            raise ConfigError(f"map_kernel must be odd (same-size padding), got {self.map_kernel}")
        if not 0.0 <= self.min_iou < self.max_iou <= 1.0:
            raise ConfigError(f"need 0 <= min_iou < max_iou <= 1, got {self.min_iou}, {self.max_iou}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ConfigError(f"nms_threshold must lie in [0, 1], got {self.nms_threshold}")

    @classmethod
    def tiny(cls) -> GroundingHeadConfig:
        """For tests: 8 clips, 16 channels, 2 layers of kernel 3."""
        return cls(num_clips=8, hidden=16, map_layers=2, map_kernel=3)
