"""STAN (Liu et al., CVPR 2023): config, branch, model and builder. See `model.py` for the paper mapping."""

from __future__ import annotations

from models.stan.branch import CROSS_FRAME, CrossFrameAttention, CrossFrameConv, IntraFrame, StanBranch, StanLayer
from models.stan.config import StanConfig
from models.stan.model import LEVELS_FED, Stan, build
from models.stan.recognition import class_name, class_prompts, fit_prompt_classifier, topk_accuracy

__all__ = [
    "CROSS_FRAME",
    "LEVELS_FED",
    "CrossFrameAttention",
    "CrossFrameConv",
    "IntraFrame",
    "Stan",
    "StanBranch",
    "StanConfig",
    "StanLayer",
    "build",
    "class_name",
    "class_prompts",
    "fit_prompt_classifier",
    "topk_accuracy",
]
