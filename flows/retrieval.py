"""The one flow body of the retrieval papers (CLIP4Clip, STAN, UCoFiA): data → ingest ∥ mini CLIP → features → one
job per variant → evaluate → register (+ the ablation table), driven by each paper's spec.

A paper module (`flows/reproduce_clip4clip.py`, `…_stan.py`, `…_ucofia.py`) declares a `RetrievalPaper` — its spec,
its recipe's config type, which features of the frozen mini CLIP its jobs read, what it adds to a job's summary and to
an ablation row — and its ``@flow`` calls `run`. Everything else is the same for all three, here: the override
grammar, the stages shared with the other DAGs on the same root and dataset key, the variants a run trains (with the
ones they start from: the spec's ``extra.needs``), ``parallel_jobs`` of them at a time, registration (the paper's
method only; every head for CLIP4Clip, which has none), and the table.

A job's config: `recipes.experiments.retrieval.variant_config`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flows import stages
from flows.ingest import ingest_flow
from flows.scheduling import train_together
from flows.tasks import log_ablation_table
from infra.settings import Resources
from infra.summaries import JobResult, MiniClip, StageRef, World
from pipelines import storage
from recipes.experiments import retrieval as experiment
from recipes.experiments.retrieval import Row, build_table, order_subsets, submit_order, with_prerequisites
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
    chosen = with_prerequisites(paper.spec, paper.spec.chosen_variants(variants, ablations))
    stand_in = stages.pending(paper.features_stand_in)
    needs = experiment.needs(paper.spec)

    def config(variant: str, overrides: dict[str, Any]) -> dict[str, Any]:
        if variant in needs:  # the path of the model it starts from is known only once its run is named
            overrides = {**overrides, needs[variant][1]: f"<model.pt of the {needs[variant][0]} job>"}
        return variant_config(paper, stand_in, stages.PENDING_CLIP, {}, size, variant, overrides)

    return stages.variant_job_configs(paper.spec, size, user, chosen, config)


def summarise(paper: RetrievalPaper, job: JobResult) -> dict[str, Any]:
    """Retrieval blocks (overall / order / twins), the paper's own blocks, run, model version, reuse."""
    out: dict[str, Any] = {k: job.report[k] for k in ("overall", "order", "twins") if k in job.report}
    out.update(run_id=job.run_id, run_name=job.run_name, model_version=job.model_version)
    out.update(paper.report_blocks(job.report))
    out["reused"] = job.reused
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
    chosen = with_prerequisites(spec, spec.chosen_variants(variants, ablations))
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(paper, size, variants=variants, ablations=ablations))
    t = stages.cached(root)
    key = stages.dataset_key(dataset, size, seed)
    world = World.of(t["make_data"](dataset, root, size, seed))
    # the mini CLIP trains on the world's still frames, not on the ingested clips: both stages run at once. Ray is
    # started here, in the main thread: started from a task thread, its node agents outlive the process.
    from infra.ray_train import connect

    connect()
    clip_overrides = stages.mini_clip_overrides(size, user["miniclip"])
    clip_future = t["pretrain_mini_clip"].submit(root, key, world.image_text, clip_overrides, resources.cpus_per_worker)
    frames = StageRef.of(ingest_flow(world.sources_csv, root, key, **stages.MINI_INGEST[dataset]))
    clip = MiniClip.of(clip_future.result())
    subsets = order_subsets(world.annotations)
    wanted = [variant_config(paper, "", clip.config, subsets, size, v, user[name]) for v in chosen]
    feats = StageRef.of(
        t["extract_clip_features"](frames.uri, root, key, clip.arch, clip.checkpoint, **paper.features(wanted))
    )
    jobs = _variant_jobs(paper, chosen, user[name], feats.uri, clip, subsets, size, key, root, num_workers)
    order = submit_order(spec, chosen)
    from infra.jobs import was_finished

    reused = {v: was_finished(jobs[v]) for v in order}  # before training: a persisted task result cannot say so
    done = train_together(t["train"], [jobs[v] for v in order], resources)
    results = {v: JobResult.of(r, reused[v]) for v, r in zip(order, done, strict=True)}
    out: dict[str, Any] = {
        "paper": name,
        "dataset": key,
        "frames_stage": frames.uri,
        "features_stage": feats.uri,
        "mini_clip": clip.summary(),
        "main": spec.main,
        "variants": {v: summarise(paper, results[v]) for v in chosen},
        "paper_vs_ours": spec.paper_vs_ours({v: r.metrics for v, r in results.items()}),
    }
    if ablations:
        table = build_table(spec.ablations, {v: r.record() for v, r in results.items()}, paper.row_cells)
        logged = log_ablation_table(root, name, key, table, spec.claims, out["paper_vs_ours"])
        out["ablations"] = {"rows": table, "claims": spec.claims, "summary_run_id": logged["run_id"]}
    out["seconds"] = round(time.monotonic() - start, 1)
    out["root"] = storage.join(root)
    return out


def _variant_jobs(
    paper: RetrievalPaper,
    chosen: list[str],
    user: Mapping[str, Any],
    stage: str,
    clip: MiniClip,
    subsets: Mapping[str, list[str]],
    size: str,
    key: str,
    root: str,
    num_workers: int,
) -> dict[str, dict[str, Any]]:
    """One training job per chosen variant; a variant that starts from another's model gets that job's ``model.pt``
    (its path is known before training: ``<root>/models/<run name>``) and runs after it."""
    from infra.jobs import training_job

    spec, needs = paper.spec, experiment.needs(paper.spec)
    jobs: dict[str, dict[str, Any]] = {}
    for variant in sorted(chosen, key=lambda v: v in needs):  # prerequisites first: their run names feed configs
        fixed, after = dict(user), []
        if variant in needs:
            base, config_key = needs[variant]
            fixed[config_key] = storage.join(root, "models", jobs[base]["run_name"], "model.pt")
            after.append(jobs[base]["run_name"])
        jobs[variant] = training_job(
            paper=spec.paper,
            recipe=spec.jobs[spec.paper].recipe,
            config=variant_config(paper, stage, clip.config, subsets, size, variant, fixed),
            root=root,
            metric=spec.metric,
            part=variant,
            data=key,
            num_workers=num_workers,
            register=spec.registers(variant),
            dataset_stage=stage,
            tags={"vlrepro.variant": variant},
            after=after,
        )
    return jobs
