"""What every paper's DAG shares besides its tasks (`flows.tasks`): the shared tasks configured for a run root
(`cached`) and the pure layer's helpers
(`recipes.experiments`: the mini CLIP, the ingest settings, stand-ins, the ``--set`` routing), re-exported.

Stages are shared across papers: CLIP4Clip, STAN and UCoFiA runs on one dataset and root reuse the same world,
ingest, mini CLIP and features (the same task inputs, the same persisted results and commit markers).
"""

from __future__ import annotations

from typing import Any

from flows.runtime import cached_task

# what every mini-world DAG shares, decided in the pure layer (`recipes.experiments`); re-exported for the flows
from recipes.experiments import (
    MINI_CLIP,
    MINI_CLIP_SIZES,
    MINI_INGEST,
    PENDING_CLIP,
    PENDING_WORLD,
    dataset_key,
    job_summary,
    mini_clip_config,
    mini_clip_overrides,
    pending,
    route_overrides,
    variant_job_configs,
)


def cached(root: str) -> dict[str, Any]:
    """The shared tasks configured to persist results and cache keys under `root`."""
    from flows.tasks import extract_clip_features, make_data, pretrain_mini_clip, train

    return {
        name: cached_task(t, root)
        for name, t in (
            ("make_data", make_data),
            ("pretrain_mini_clip", pretrain_mini_clip),
            ("extract_clip_features", extract_clip_features),
            ("train", train),
        )
    }


__all__ = [
    "MINI_CLIP",
    "MINI_CLIP_SIZES",
    "MINI_INGEST",
    "PENDING_CLIP",
    "PENDING_WORLD",
    "cached",
    "dataset_key",
    "job_summary",
    "mini_clip_config",
    "mini_clip_overrides",
    "pending",
    "route_overrides",
    "variant_job_configs",
]
