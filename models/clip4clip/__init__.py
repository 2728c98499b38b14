"""CLIP4Clip (Luo et al., Neurocomputing 2022): config, model and builder. See `model.py` for the paper mapping."""

from __future__ import annotations

from models.clip4clip.config import Clip4ClipConfig
from models.clip4clip.heads import HEADS, SimilarityHead
from models.clip4clip.model import Clip4Clip, build

__all__ = ["HEADS", "Clip4Clip", "Clip4ClipConfig", "SimilarityHead", "build"]
