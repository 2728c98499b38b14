"""The one flow body of the frozen-feature retrieval papers (STAN, UCoFiA): data → ingest → mini CLIP → features →
one job per variant → evaluate → register (+ the ablation table), driven by each paper's spec.

A paper module (`flows/reproduce_stan.py`, `flows/reproduce_ucofia.py`) declares a `RetrievalPaper` — its spec, its
recipe's config type, which features of the frozen mini CLIP its jobs read, what it adds to a job's summary and to an
ablation row — and its ``@flow`` calls `run`. Everything else (the override grammar, the stages shared with the
other DAGs on the same root and dataset key, variants and registration, the table) is the same for both, here.

A job's config: `recipes.experiments.retrieval.variant_config`, the one CLIP4Clip's heads use too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flows import stages
from flows.ablations import Row, build_table, log_table, run_variants, variant_job
from flows.ingest import ingest_flow
from flows.reproduce_clip4clip import summarise as summarise_retrieval
from infra.settings import Resources
from pipelines import storage
from recipes.experiments import retrieval as experiment
from recipes.experiments.retrieval import order_subsets
from recipes.spec import PaperSpec

#: a job's config → the keyword arguments of `stages.extract_clip_features` that make the features it reads
FeatureRequest = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class RetrievalPaper:
    spec: PaperSpec
    recipe_config: type  # the recipe's typed config (its defaults are the paper's)
    features: FeatureRequest  # the chosen variants' configs → which features of the frozen mini CLIP to extract
    features_stand_in: str  # the features stage's name in ``--print-config``
    report_blocks: Callable[[Mapping[str, Any]], dict[str, Any]]  # a job report → the paper's own summary blocks
    row_cells: Callable[[Row, Mapping[str, Any]], dict[str, Any]]  # the paper's own ablation-table columns

    @property
    def name(self) -> str:
        return self.spec.paper


def variant_config(
    paper: RetrievalPaper,
    features_uri: str,
    clip: Mapping[str, Any],
    subsets: Mapping[str, list[str]],
    size: str,
    variant: str,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    return experiment.variant_config(
        paper.spec, paper.recipe_config, features_uri, clip, subsets, size, variant, overrides
    )


def job_configs(
    paper: RetrievalPaper,
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every job's config as the DAG would resolve it (``--print-config``), with stand-ins for what the stages
    produce; `user` are the routed ``--set`` overrides (job kind → overrides)."""
    chosen = paper.spec.chosen_variants(variants, ablations)
    stand_in = stages.pending(paper.features_stand_in)
    return stages.variant_job_configs(
        paper.spec,
        size,
        user,
        chosen,
        lambda v, u: variant_config(paper, stand_in, stages.PENDING_CLIP, {}, size, v, u),
    )


def summarise(paper: RetrievalPaper, result: dict[str, Any]) -> dict[str, Any]:
    """Retrieval blocks (overall / order / twins), the paper's own blocks, run id, model version, reuse."""
    out = summarise_retrieval(result)
    out.update(paper.report_blocks(result.get("report") or {}))
    out["reused"] = bool(result.get("reused"))
    return out


def run(
    paper: RetrievalPaper,
    dataset: str,
    root: str,
    size: str,
    seed: int,
    overrides: dict[str, Any] | None,
    num_workers: int,
    ablations: bool,
    variants: list[str] | None,
    resources: Resources,
) -> dict[str, Any]:
    """The DAG of `paper`: the main variant, or `variants`; with `ablations` the whole table."""
    start = time.monotonic()
    spec, name = paper.spec, paper.name
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    if dataset != spec.dataset:
        raise ValueError(f"the {name} DAG runs on {spec.dataset} here (got {dataset!r}); real datasets: ingest + train")
    spec.check_size(size)
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(paper, size, variants=variants, ablations=ablations))
    t = stages.cached(root)
    key = stages.dataset_key(dataset, size, seed)
    world = t["make_data"](dataset, root, size, seed)
    frames = ingest_flow(world["sources_csv"], root, key, **stages.MINI_INGEST[dataset])
    clip = t["pretrain_mini_clip"](
        root, key, world["image_text"], stages.mini_clip_overrides(size, user["miniclip"]), resources.cpus_per_worker
    )
    subsets = order_subsets(world["annotations"])
    # the whole table with `ablations`; else the chosen variants (`--variant`), by default the paper's method
    chosen = spec.chosen_variants(variants, ablations)
    wanted = [variant_config(paper, "", clip, subsets, size, v, user[name]) for v in chosen]
    feats = t["extract_clip_features"](
        frames["stage_uri"], root, key, clip["clip_arch"], clip["clip_checkpoint"], **paper.features(wanted)
    )
    stage = feats["stage_uri"]

    def make_job(variant: str) -> dict[str, Any]:
        config = variant_config(paper, stage, clip, subsets, size, variant, user[name])
        main = variant == spec.main  # only the method itself becomes a registered version
        cpus = resources.cpus_per_worker  # one job at a time: all of them
        return variant_job(name, name, name, variant, key, config, root, stage, num_workers, main, cpus_per_worker=cpus)

    results = run_variants(chosen, make_job, t["train"])
    out: dict[str, Any] = {
        "paper": name,
        "dataset": key,
        "frames_stage": frames["stage_uri"],
        "features_stage": stage,
        "mini_clip": stages.mini_clip_summary(clip),
        "main": spec.main,
        "variants": {v: summarise(paper, r) for v, r in results.items()},
    }
    if ablations:
        table = build_table(spec.ablations, results, paper.row_cells)
        logged = log_table(root, name, key, table, spec.claims)
        out["ablations"] = {"rows": table, "claims": spec.claims, "summary_run_id": logged["run_id"]}
    out["seconds"] = round(time.monotonic() - start, 1)
    out["root"] = storage.join(root)
    return out
