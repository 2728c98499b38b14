"""The DCC experiment on the mini world: each job's config from the spec, the step records and the ablation rows.

Spec: ``recipes/configs/dcc/mini-wtal.yaml`` — the mini DCC config, the per-size overrides of each job (``dcc``,
``i3d``, ``tvl1``; the mini CLIP's are its own spec, shared by every DAG), the ablation chains. The DAG:
`flows/reproduce_dcc.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.config import build, merge, to_dict
from models.dcc import VARIANT_EVAL_BRANCH
from pipelines.features.i3d import I3DFeatureConfig
from pipelines.features.tvl1 import TVL1Config
from recipes.dcc import DCCRecipeConfig
from recipes.experiments import PENDING_CLIP, PENDING_WORLD, mini_clip_config, pending
from recipes.spec import load_spec

SPEC = load_spec("dcc", "mini-wtal")
PAPER = SPEC.paper
#: the registry's champion metric: THUMOS-style average mAP over tIoU 0.1:0.7 of the CBP branch (the paper infers
#: from CBP); fractions
METRIC = SPEC.metric
MAIN_VARIANT: str = SPEC.extra["main_variant"]
#: ablation rows in the order of the paper's table
ABLATIONS: tuple[str, ...] = tuple(SPEC.extra["ablation_chains"])
JOB_KINDS = ("miniclip", "tvl1", "i3d", "dcc")
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    size: {job: SPEC.size_overrides(size, job) for job in ("dcc", "i3d", "tvl1")} for size in SPEC.sizes
}


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every job's config as the DAG would resolve it (``--print-config``): the mini CLIP, TV-L1, I3D and the DCC
    base every warm-up/B/F step derives from (`step_config`), with what the stages produce as stand-ins (the CBP
    input width is the I3D network's); `user` are the routed ``--set`` overrides (job kind → overrides)."""
    user = {kind: {} for kind in JOB_KINDS} | (user or {})
    tvl1, i3d = feature_configs(size, user)
    from pipelines.features.i3d import build_two_stream

    width = build_two_stream(build(I3DFeatureConfig, i3d)).feature_dim  # what the I3D stage will report
    pending_i3d = {"stage_uri": pending("i3d-features"), "feature_dim": width}
    pending_clip = {"stage_uri": pending("clip-features")}
    return {
        "miniclip": mini_clip_config(size, user["miniclip"]),
        "tvl1": tvl1,
        "i3d": i3d,
        "dcc": base_config(PENDING_WORLD, pending_i3d, pending_clip, PENDING_CLIP, size, user["dcc"]),
    }


def feature_configs(size: str, user: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TV-L1 config, I3D config) as plain dicts: the mini world's I3D is the random-init tiny width (1/16 → 64-d
    per stream); `i3d.rgb_weights` / `i3d.flow_weights` / `i3d.width=1.0` select pytorch-i3d checkpoints."""
    tvl1 = merge(TVL1Config(), {**SIZES[size]["tvl1"], **user["tvl1"]})
    i3d = merge(I3DFeatureConfig.tiny(), {**SIZES[size]["i3d"], **user["i3d"]})
    return asdict(tvl1), asdict(i3d)


def base_config(
    world: dict[str, Any],
    i3d: dict[str, Any],
    clip_features: dict[str, Any],
    clip: dict[str, Any],
    size: str,
    user: dict[str, Any],
) -> dict[str, Any]:
    """The mini YAML, the stage URIs, the I3D width, the mini CLIP checkpoint, then size and user overrides."""
    cfg = merge(build(DCCRecipeConfig), SPEC.base("dcc"))
    cfg = merge(
        cfg,
        {
            "data.i3d_stage": i3d["stage_uri"],
            "data.clip_stage": clip_features["stage_uri"],
            "data.ground_truth": world["annotations"],
            "data.ground_truth_format": "mini-wtal",
            "model.cbp.input_dim": i3d["feature_dim"],
            "model.vlp.clip.arch": clip["clip_arch"],
            "model.vlp.clip.pretrained": clip["clip_checkpoint"],
        },
    )
    return to_dict(merge(merge(cfg, SIZES[size]["dcc"]), user))


def step_config(base: dict[str, Any], stage: str, init_from: str | None) -> dict[str, Any]:
    """One warm-up / B / F step of the chain: the base config, its stage, the previous step's weights."""
    return to_dict(merge(build(DCCRecipeConfig, base), {"stage": stage, "init_from": init_from}))


def step_record(i: int, stage: str, result: dict[str, Any], reused: bool) -> dict[str, Any]:
    """What the DAG keeps of one finished step job (the next step starts from its ``model``)."""
    return {
        "step": i,
        "stage": stage,
        "run_name": result["run_name"],
        "run_id": result["run_id"],
        "model": str(Path(result["model_dir"]) / "model.pt"),
        "model_dir": result["model_dir"],
        "metrics": result["metrics"],
        "model_version": (result.get("registered") or {}).get("version"),
        "seconds": result.get("seconds"),
        "reused": reused,
    }


def table_row(variant: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One ablation row: the variant's evaluated branch's average mAPs and both branches' pseudo-label mIoU and
    phase coverage (share of core / edge / context snippets marked confident foreground)."""
    branch = VARIANT_EVAL_BRANCH[variant]
    m = steps[-1]["metrics"]

    def get(key: str) -> float | None:
        v = m.get(key)
        return float(v) if isinstance(v, int | float) else None

    row: dict[str, Any] = {
        "variant": variant,
        "schedule": " ".join(s["stage"] for s in steps),
        "branch": branch,
        **{k: get(f"{branch}/{k}") for k in ("AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)", "mAP@0.5")},
        "anet_avg": get(f"{branch}/anet/average_mAP"),
        "cbp_miou": get("cbp/pseudo/miou"),
        "vlp_miou": get("vlp/pseudo/miou"),
    }
    for b in ("cbp", "vlp"):
        for phase in ("core", "edges", "context"):
            row[f"{b}_fg_{phase}"] = get(f"{b}/phase/{phase}/fg")
    row["run_name"] = steps[-1]["run_name"]
    return row


def dag_result(
    key: str,
    stages: Mapping[str, str],
    main: list[dict[str, Any]],
    scored: Mapping[str, Any],
    ground_truth: str,
) -> dict[str, Any]:
    """What the DCC DAG returns of its main chain: the stages, the steps, the scored detections of the evaluated
    branch, both branches' pseudo-label mIoU and phase coverage, the registered version."""
    m = main[-1]["metrics"]
    return {
        "paper": PAPER,
        "dataset": key,
        **stages,
        "steps": [{k: v for k, v in s.items() if k not in ("metrics", "model_dir")} for s in main],
        "results": {
            "branch": VARIANT_EVAL_BRANCH[MAIN_VARIANT],
            "thumos": scored["thumos"],
            "anet": scored["anet"],
            "pseudo_miou": {b: m.get(f"{b}/pseudo/miou") for b in ("cbp", "vlp")},
            "phase_fg": {
                b: {p: m.get(f"{b}/phase/{p}/fg") for p in ("core", "edges", "context", "distractor", "empty")}
                for b in ("cbp", "vlp")
            },
            "predictions": scored["predictions"],
            "ground_truth": ground_truth,
        },
        "model_version": main[-1]["model_version"],
        "paper_vs_ours": SPEC.paper_vs_ours({MAIN_VARIANT: main[-1]["metrics"]}),
    }


def check_request(dataset: str, size: str, flow_workers: int) -> None:
    """The DAG's arguments, before any work (a `ValueError` / `SpecError` naming what is wrong)."""
    if dataset != SPEC.dataset:
        raise ValueError(
            f"the DCC DAG runs on {SPEC.dataset} here (got {dataset!r}); real datasets: ingest + the recipe"
        )
    SPEC.check_size(size)
    if flow_workers < 1:
        raise ValueError(f"flow_workers must be >= 1, got {flow_workers}")


def parent_summary(
    key: str, main: list[dict[str, Any]], scored: Mapping[str, Any], table: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """What the DAG's parent MLflow run logs (`infra.results`): the main chain's final metrics and steps, the scored
    detections, the ablation table."""
    return {
        "dataset": key,
        "metrics": main[-1]["metrics"],
        "scored": scored,
        "steps": [{k: s[k] for k in ("step", "stage", "run_name", "run_id")} for s in main],
        "ablations": table,
        "paper_vs_ours": SPEC.paper_vs_ours({MAIN_VARIANT: main[-1]["metrics"]}),
    }


def final_file(steps: list[dict[str, Any]], name: str) -> str:
    """A file the chain's final step wrote into its model folder (``timeline.json``, ``predictions_<branch>.json``)."""
    return str(Path(steps[-1]["model_dir"]) / name)
