"""UCoFiA (Wang et al., ICCV 2023): config, model, aggregation (ISA / Bi-ISA), patch selection. See `model.py`."""

from __future__ import annotations

from models.ucofia.aggregation import AGGREGATIONS, ISA, BiAggregation, MeanAggregation, SoftmaxAggregation
from models.ucofia.config import LEVELS, UCoFiAConfig
from models.ucofia.model import UCoFiA, build, sinkhorn_fuse
from models.ucofia.selection import PatchSelector, hard_topk, perturbed_topk

__all__ = [
    "AGGREGATIONS",
    "ISA",
    "LEVELS",
    "BiAggregation",
    "MeanAggregation",
    "PatchSelector",
    "SoftmaxAggregation",
    "UCoFiA",
    "UCoFiAConfig",
    "build",
    "hard_topk",
    "perturbed_topk",
    "sinkhorn_fuse",
]
