"""LocVTP (Cao et al., ECCV 2022): config, model and builder. See `model.py` for the paper mapping."""

from __future__ import annotations

from models.locvtp.config import LocVTPConfig
from models.locvtp.model import LocVTP, TextFeatures, build

__all__ = ["LocVTP", "LocVTPConfig", "TextFeatures", "build"]
