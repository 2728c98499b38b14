"""2D-TAN grounding head (Zhang et al., AAAI 2020) over precomputed clip features: LocVTP's downstream model."""

from __future__ import annotations

from models.grounding.config import GroundingHeadConfig
from models.grounding.tan import GroundingHead, build, decode_moments, evaluate, top_moments

__all__ = ["GroundingHead", "GroundingHeadConfig", "build", "decode_moments", "evaluate", "top_moments"]
