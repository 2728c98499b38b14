"""The retrieval experiments on the mini world (CLIP4Clip, STAN, UCoFiA): a job's config, and the evaluation subsets.

A job's config is the recipe's typed defaults (the paper's) ← the spec's base ← the mini CLIP, the features stage
and the evaluation subsets ← the variant ← the size (a size's epochs win over a variant's, e.g. CLIP4Clip's 1-frame
heads) ← the user's ``--set``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.config import build, merge, to_dict
from recipes.spec import PaperSpec


def variant_config(
    spec: PaperSpec,
    recipe_config: type,
    features_uri: str,
    clip: Mapping[str, Any],
    subsets: Mapping[str, list[str]],
    size: str,
    variant: str,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The config of `variant`'s job (`recipe_config` is the recipe's typed config; the job kind is the paper)."""
    cfg: Any = merge(build(recipe_config), spec.base(spec.paper))
    stages_in = {
        "model.clip.arch": clip["clip_arch"],
        "model.clip.pretrained": clip["clip_checkpoint"],
        "data.stage": features_uri,
        "data.subsets": dict(subsets),
    }
    cfg = merge(merge(merge(cfg, stages_in), spec.variants[variant]), spec.size_overrides(size, spec.paper))
    return to_dict(merge(cfg, dict(overrides)))


def order_subsets(annotations: str | Path) -> dict[str, list[str]]:
    """Evaluation subsets from the mini world's annotations: provable order twins, and all twins."""
    ann = json.loads(Path(annotations).read_text())
    pairs = ann.get("order_pairs", [])
    order = sorted({k for p in pairs if p.get("provable") for k in (p["a"], p["b"])})
    twins = sorted({k for p in pairs for k in (p["a"], p["b"])})
    return {"order": order, "twins": twins} if order else {}
