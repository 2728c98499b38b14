"""The LocVTP experiment on the mini world: each job's config from the spec, and its ablation table's rows.

Spec: ``recipes/configs/locvtp/mini-grounding.yaml`` — the pre-training and grounding base configs, the per-size
overrides of each job (the mini CLIP's are its own spec, shared by every DAG), the ablations of METHODS §5 as
pre-training overrides. The DAG: `flows/reproduce_locvtp.py`.
"""

from __future__ import annotations

from typing import Any

from models.config import build, merge, to_dict
from recipes.experiments import PENDING_CLIP, PENDING_WORLD, mini_clip_config, pending
from recipes.grounding import GroundingRecipeConfig
from recipes.locvtp import LocVTPRecipeConfig
from recipes.spec import load_spec

SPEC = load_spec("locvtp", "mini-grounding")
PAPER = SPEC.paper
PRETRAIN_METRIC = SPEC.metric
GROUNDING_METRIC: str = SPEC.extra["grounding_metric"]
JOB_KINDS = ("miniclip", "pretrain", "grounding")
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    size: {job: SPEC.size_overrides(size, job) for job in ("pretrain", "grounding")} for size in SPEC.sizes
}
#: ablations of METHODS §5 as pre-training overrides: name → (group, overrides); "full" (the paper's method) is the
#: main run
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    name: (a["group"], dict(a["overrides"])) for name, a in SPEC.extra["ablations"].items()
}
#: where the main run sits in each ablation group
FULL_IN_GROUP: dict[str, str] = SPEC.extra["full_in_group"]
#: the grounding columns of the ablation table
GROUNDING_KEYS = tuple(f"R@{n},IoU@{m}" for n in (1, 5) for m in ("0.3", "0.5", "0.7"))


def pretrain_config(
    clip: dict[str, Any], world: dict[str, Any], size: str, user: dict[str, Any], variant: dict[str, Any]
) -> LocVTPRecipeConfig:
    """The spec's base, the mini CLIP checkpoint, token input, the world's query files, then size, variant and user
    overrides (data.stage is set once the prefix stage exists)."""
    base = SPEC.base("pretrain")
    cfg = build(LocVTPRecipeConfig, {"model": base["model"], "train": base["train"]})
    cfg = merge(
        cfg,
        {
            "model.clip.arch": clip["clip_arch"],
            "model.clip.pretrained": clip["clip_checkpoint"],
            "model.input": "tokens",
            "data.train_queries": world["extra_files"]["charades_sta_train"],
            "data.test_queries": world["extra_files"]["charades_sta_test"],
        },
    )
    return merge(merge(merge(cfg, SIZES[size]["pretrain"]), variant), user)


def grounding_config(
    features_uri: str, query_uri: str, world: dict[str, Any], size: str, user: dict[str, Any]
) -> dict[str, Any]:
    """The 2D-TAN head on a clip-feature stage, the queries' sentence features from `query_uri`."""
    base = SPEC.base("grounding")
    cfg = build(GroundingRecipeConfig, {"model": base["model"], "train": base["train"]})
    cfg = merge(
        cfg,
        {
            "data.stage": features_uri,
            "data.query_stage": query_uri,
            "data.train_queries": world["extra_files"]["charades_sta_train"],
            "data.test_queries": world["extra_files"]["charades_sta_test"],
        },
    )
    return to_dict(merge(merge(cfg, SIZES[size]["grounding"]), user))


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every job's config as the DAG would resolve it (``--print-config``): the mini CLIP, the pre-training (and with
    `ablations` each ablation's), the grounding head, with what the stages produce as stand-ins; `user` are the routed
    ``--set`` overrides (job kind → overrides)."""
    user = {kind: {} for kind in JOB_KINDS} | (user or {})
    out = {"miniclip": mini_clip_config(size, user["miniclip"])}
    chosen: dict[str, dict[str, Any]] = {"full": {}}
    if ablations:
        chosen |= {name: overrides for name, (_, overrides) in ABLATIONS.items()}
    for name, variant in chosen.items():
        cfg = pretrain_config(PENDING_CLIP, PENDING_WORLD, size, user["pretrain"], variant)
        out[f"pretrain/{name}"] = to_dict(merge(cfg, {"data.stage": pending("locvtp-prefix")}))
    out["grounding"] = grounding_config(
        pending("clip-grounding features"), pending("query"), PENDING_WORLD, size, user["grounding"]
    )
    return out


def table_row(
    group: str, variant: str, pretrain: dict[str, Any] | None, head: dict[str, Any], retrieval: dict[str, Any]
) -> dict[str, Any]:
    """One ablation row: the head's grounding recalls, retrieval transfer, and the jobs behind them."""
    return {
        "group": group,
        "variant": variant,
        **{k: head["metrics"].get(k) for k in GROUNDING_KEYS},
        "retrieval t2v/R@1": retrieval["t2v"]["R@1"],
        "retrieval within/R@1": retrieval["within"]["R@1"],
        "pretrain_run": None if pretrain is None else pretrain["job"]["run_name"],
        "grounding_run": head["run_name"],
    }


def results(main: dict[str, Any], grounding: dict[str, dict[str, Any]], retrieval: dict[str, Any]) -> dict[str, Any]:
    """The DAG's result tables: each head's grounding recalls, retrieval transfer, the pre-training's metrics."""
    return {
        "grounding": {name: g["metrics"] for name, g in grounding.items()},
        "retrieval": retrieval,
        "pretrain": main["job"]["metrics"],
    }


def job_names(
    main: dict[str, Any], grounding: dict[str, dict[str, Any]], table: list[dict[str, Any]] | None
) -> list[str]:
    """Every job behind the results (the summary run lists them)."""
    jobs = [main["job"]["run_name"], *(g["run_name"] for g in grounding.values())]
    jobs += [r[k] for r in table or () for k in ("pretrain_run", "grounding_run") if r.get(k)]
    return sorted(set(jobs))


def ablation_table(
    pretrain: Any,
    ground: Any,
    retrieval_task: Any,
    test_queries: str,
    query_uri: str,
    main: dict[str, Any],
    grounding: dict[str, Any],
    retrieval: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per (group, variant): the main run in every group, each ablation a pre-training + features + head
    (`pretrain`, `ground`, `retrieval_task`: the DAG's steps, called in order)."""
    rows = [table_row("baseline", "no pre-training", None, grounding["baseline"], retrieval["baseline"])]
    done: dict[str, dict[str, Any]] = {}
    for name, (group, variant) in ABLATIONS.items():
        pre = pretrain(name, variant, register=False)
        head = ground(name, "locvtp-grounding", pre["features"], query_uri, register=False)
        done[name] = table_row(group, name, pre, head, retrieval_task(pre["features"], test_queries))
    for group, full_name in FULL_IN_GROUP.items():
        rows.append(table_row(group, f"{full_name} (full)", main, grounding["locvtp"], retrieval["locvtp"]))
        rows += [r for r in done.values() if r["group"] == group]
    return rows


def dag_result(
    key: str,
    stages: dict[str, str],
    main: dict[str, Any],
    grounding: dict[str, Any],
    retrieval: dict[str, Any],
    table: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """What the LocVTP DAG returns: its stages, the pre-training job, both grounding heads, retrieval transfer, the
    ablation table (when run) and paper-vs-ours."""
    out: dict[str, Any] = {
        "paper": PAPER,
        "dataset": key,
        "frames_stage": stages["frames_stage"],
        "prefix_stage": stages["prefix_stage"],
        "features": {"locvtp": main["features"], "baseline": stages["baseline_features"]},
        "pretrain": main["job"],
        "grounding": grounding,
        "retrieval": retrieval,
        "paper_vs_ours": SPEC.paper_vs_ours({"full": main["job"]["metrics"]}),
    }
    if table is not None:
        out["ablations"] = table
    return out
