"""DCC (Ju et al., CVPR 2023): config, branches, pseudo-labels, losses, staged training and inference.

See `model.py` for the paper mapping and the batch format, `inference.py` for proposal generation.
"""

from __future__ import annotations

from models.dcc.cbp import BranchOutput, CBPBranch
from models.dcc.config import CBPConfig, DCCConfig, DistillConfig, InferenceConfig, StagesConfig, VLPConfig
from models.dcc.model import (
    DCC,
    STAGE_PREFIXES,
    VARIANT_EVAL_BRANCH,
    VARIANT_STAGES,
    DCCStage,
    Stage,
    build,
    stage_schedule,
)
from models.dcc.vlp import PromptLearner, PromptLengthError, VLPBranch

__all__ = [
    "DCC",
    "STAGE_PREFIXES",
    "VARIANT_EVAL_BRANCH",
    "VARIANT_STAGES",
    "BranchOutput",
    "CBPBranch",
    "CBPConfig",
    "DCCConfig",
    "DCCStage",
    "DistillConfig",
    "InferenceConfig",
    "PromptLearner",
    "PromptLengthError",
    "Stage",
    "StagesConfig",
    "VLPBranch",
    "VLPConfig",
    "build",
    "stage_schedule",
]
