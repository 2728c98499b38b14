"""How each paper's experiment is assembled from its spec, before and around the DAG that runs it — pure functions.

A DAG (``flows/``) runs stages and jobs; what goes *into* each job — the recipe's typed defaults, the spec's base,
what the stages produced, the size, the variant, the user's ``--set`` — and how a finished job's metrics become a
row of the paper's table is decided here, so the flows read like their DAG and ``--print-config`` resolves the very
configs the DAG will train (with stand-ins for what the stages have not produced yet).

This module holds what every mini-world DAG shares: the one mini CLIP, the ingest settings of the mini datasets, the
stand-ins, and the routing of ``--set`` overrides among a DAG's kinds of job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.config import merge, to_dict
from recipes.overrides import route
from recipes.spec import PaperSpec, load_spec

#: the mini CLIP every mini-world DAG pre-trains, one spec (recipes/configs/mini-clip/mini-world.yaml) for all of them,
#: so one run name (the config's hash) always means one model, whichever paper trained it first
MINI_CLIP = load_spec("mini-clip", "mini-world")
#: ingest settings of the mini datasets (frame rate by timestamp, 64 px frames = the mini CLIP's input)
MINI_INGEST: dict[str, dict[str, Any]] = MINI_CLIP.extra["ingest"]
#: the mini CLIP's overrides per world size (see the spec for the measurements behind them)
MINI_CLIP_SIZES: dict[str, dict[str, Any]] = {
    size: MINI_CLIP.size_overrides(size, "miniclip") for size in MINI_CLIP.sizes
}

#: stand-ins for what the DAG's stages produce, in configs resolved before anything runs (`--print-config`)
PENDING_CLIP: dict[str, str] = {"clip_arch": "vlrepro-mini", "clip_checkpoint": "<mini CLIP checkpoint (clip.pt)>"}
PENDING_WORLD: dict[str, Any] = {
    "annotations": "<the world's annotations.json>",
    "extra_files": {
        "charades_sta_train": "<the world's train queries>",
        "charades_sta_test": "<the world's test queries>",
    },
}


def pending(stage: str) -> str:
    """The stand-in of a stage's URI."""
    return f"<{stage} stage>"


def dataset_key(name: str, size: str, seed: int) -> str:
    """Stage folder name of a generated dataset: one per (name, size, seed)."""
    return f"{name}-{size}-s{seed}"


def mini_clip_overrides(size: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mini CLIP's config overrides for a world size, then the user's (``--set miniclip.…``)."""
    if size not in MINI_CLIP_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(MINI_CLIP_SIZES)}")
    return {**MINI_CLIP_SIZES[size], **(user or {})}


def mini_clip_config(size: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mini CLIP job's config at `size` with the user's overrides (its training pairs: a stand-in)."""
    from recipes.miniclip import MiniClipConfig

    return to_dict(merge(MiniClipConfig(image_text="<the world's image_text.npz>"), mini_clip_overrides(size, user)))


def variant_job_configs(
    spec: PaperSpec,
    size: str,
    user: dict[str, dict[str, Any]] | None,
    chosen: list[str],
    config: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """A one-job-kind DAG's job configs (STAN, UCoFiA): the mini CLIP, then ``<paper>/<variant>`` for each chosen
    variant, ``config(variant, that kind's user overrides)`` building it with stand-ins for stage outputs."""
    user = user or {}
    out = {"miniclip": mini_clip_config(size, user.get("miniclip"))}
    for variant in chosen:
        out[f"{spec.paper}/{variant}"] = config(variant, user.get(spec.paper, {}))
    return out


def route_overrides(overrides: dict[str, Any] | None, configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The user's ``--set`` overrides split among a DAG's kinds of job (`recipes.overrides.route`); `configs` is the
    DAG's job configs (job name → config; ``kind/variant`` names share their kind's keys)."""
    kinds: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():
        kinds.setdefault(name.split("/")[0], config)
    return route(overrides or {}, kinds)


def job_summary(result: dict[str, Any], reused: bool, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """What a DAG reports of one finished job: its metrics (or `keys` of them), run, registered version, reuse."""
    metrics = result["metrics"] if keys is None else {k: result["metrics"].get(k) for k in keys}
    return {
        "metrics": metrics,
        "run_id": result["run_id"],
        "run_name": result["run_name"],
        "model_version": (result.get("registered") or {}).get("version"),
        "reused": reused,
    }
