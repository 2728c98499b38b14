"""The one flow body of the retrieval papers (CLIP4Clip, STAN, UCoFiA): data → ingest ∥ mini CLIP → features → one
job per variant → evaluate → register (+ the ablation table), driven by each paper's spec.

A paper module (`flows/reproduce_clip4clip.py`, `…_stan.py`, `…_ucofia.py`) declares a `RetrievalPaper` — its spec,
its recipe's config type, which features of the frozen mini CLIP its jobs read, what it adds to a job's summary and to
an ablation row — and its ``@flow`` calls `run`. Everything else is the same for all three, here: the override
grammar, the stages shared with the other DAGs on the same root and dataset key, the variants a run trains (with the
ones they start from: the spec's ``extra.needs``), ``parallel_jobs`` of them at a time, registration (the paper's
method only; every head for CLIP4Clip, which has none), and the table.

The same body runs on a downloaded benchmark (``--dataset msrvtt --data-dir DIR``, the spec
``recipes/configs/<paper>/<dataset>.yaml``): only its inputs differ — the dataset's adapter, a sources CSV and the
ingest instead of the generated world, the spec's CLIP (real weights) instead of the mini CLIP, and a reproduction
ledger of the videos it could not use (`flows.benchmark_inputs`); the result then also carries the gallery size and
an MLflow summary run with the ledger.

A job's config: `recipes.experiments.retrieval.variant_config`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flows import stages
from flows.benchmark_inputs import Inputs, benchmark_inputs, is_benchmark, log_reproduction, registered_model
from flows.ingest import ingest_flow
from flows.scheduling import train_together
from flows.tasks import log_ablation_table
from infra.settings import Resources
from infra.summaries import JobResult, MiniClip, StageRef, World
from pipelines import storage
from recipes.evaluation.claims import evaluate_claims, pool_runs, reports_of
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
    # papers whose variants ``extra.needs`` may name as ``<paper>/<variant>`` (STAN's text tower: clip4clip/seqTransf)
    borrows: Mapping[str, RetrievalPaper] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.paper

    def on(self, dataset: str | None) -> RetrievalPaper:
        """This paper with its spec for `dataset` (``recipes/configs/<paper>/<dataset>.yaml``; None: as declared)."""
        if dataset is None or dataset == self.spec.dataset:
            return self
        from dataclasses import replace

        from recipes.spec import load_spec

        return replace(self, spec=load_spec(self.name, dataset))


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
    if is_benchmark(paper.spec.dataset):  # no mini CLIP: the spec's own CLIP, the frames (or its features) as input
        return _benchmark_job_configs(paper, size, user or {}, chosen)
    stand_in = stages.pending(paper.features_stand_in)
    needs = experiment.needs(paper.spec)

    def config(variant: str, overrides: dict[str, Any]) -> dict[str, Any]:
        if variant in needs:  # the path of the model it starts from is known only once its run is named
            overrides = {**overrides, needs[variant][1]: f"<model.pt of the {needs[variant][0]} job>"}
        return variant_config(paper, stand_in, stages.PENDING_CLIP, {}, size, variant, overrides)

    out = stages.variant_job_configs(paper.spec, size, user, chosen, config)
    for lender, variant in _borrowed(paper, chosen):  # another paper's job a variant starts from, as its DAG has it
        out[f"{lender.name}/{variant}"] = job_configs(lender, size, user, [variant])[f"{lender.name}/{variant}"]
    return out


def _benchmark_job_configs(
    paper: RetrievalPaper, size: str, user: dict[str, dict[str, Any]], chosen: list[str]
) -> dict[str, dict[str, Any]]:
    """``<paper>/<variant>`` → config on a downloaded benchmark; the stage is a stand-in (the frames, or the frozen
    CLIP's features when the variant reads them)."""
    out = {}
    for variant in chosen:
        cfg = variant_config(paper, "", {}, {}, size, variant, user.get(paper.name, {}))
        stand_in = "frames" if cfg["model"]["input"] == "pixels" else paper.features_stand_in
        out[f"{paper.name}/{variant}"] = {**cfg, "data": {**cfg["data"], "stage": stages.pending(stand_in)}}
    return out


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
    size: str | None,
    seed: int,
    overrides: dict[str, Any] | None,
    num_workers: int,
    ablations: bool,
    variants: list[str] | None,
    resources: Resources,
    data_dir: str | None = None,
    video_dir: str | None = None,
) -> dict[str, Any]:
    """The DAG of `paper` on `dataset` (the mini world, or a benchmark downloaded to `data_dir`, videos under
    `video_dir`): the main variant, or `variants`; with `ablations` the whole table. `size` None: the spec's default
    (``small`` on the mini world, ``paper`` on a benchmark)."""
    start = time.monotonic()
    paper = paper.on(dataset)  # a benchmark's own spec: the paper's config for that dataset
    spec, name = paper.spec, paper.name
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    size = spec.check_size(size or experiment.default_size(spec))
    chosen = with_prerequisites(spec, spec.chosen_variants(variants, ablations))
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(paper, size, variants=variants, ablations=ablations))
    t = stages.cached(root)
    method = None  # the registered model: the paper's on the mini world
    if is_benchmark(spec.dataset):  # the adapter → sources CSV → ingest (→ features), the spec's CLIP, a ledger
        wanted = [variant_config(paper, "", {}, {}, size, v, user[name]) for v in chosen]
        inputs = benchmark_inputs(
            spec, paper.features, wanted, root, size, data_dir, video_dir, t["extract_clip_features"]
        )
        method = registered_model(spec, size, experiment.default_size(spec))
    else:
        inputs = _mini_inputs(paper, dataset, root, size, seed, user, chosen, resources, t)
    key, clip, subsets = inputs.key, inputs.mini_clip, inputs.subsets
    borrowed = {}
    if clip is not None:
        borrowed = _borrowed_jobs(paper, chosen, user, inputs.frames, clip, subsets, size, key, root, num_workers)
    jobs = _variant_jobs(
        paper, chosen, user[name], inputs.stage, clip, subsets, size, key, root, num_workers, borrowed, method
    )
    order = [*borrowed, *submit_order(spec, chosen)]
    from infra.jobs import was_finished

    reused = {v: was_finished(jobs[v]) for v in order}  # before training: a persisted task result cannot say so
    done = train_together(t["train"], [jobs[v] for v in order], resources)
    results = {v: JobResult.of(r, reused[v]) for v, r in zip(order, done, strict=True)}
    scale = {v: _scale(jobs[v]) for v in order}  # the global batch and devices each job trained with
    out: dict[str, Any] = {
        "paper": name,
        "dataset": key,
        **inputs.report,
        "main": spec.main,
        "variants": {v: {**summarise(paper, results[v]), **scale[v]} for v in chosen},
        "paper_vs_ours": [
            {**row, **scale.get(row["variant"], {"global_batch": None, "devices": None, "device": None})}
            for row in spec.paper_vs_ours({v: r.metrics for v, r in results.items()})
        ],
    }
    if borrowed:  # other papers' jobs the variants start from (e.g. STAN's text tower)
        out["borrowed"] = {v: summarise(paper, results[v]) for v in borrowed}
    # each claim's checks: paired bootstrap over the test queries, pooling every seed of a job on this root
    seeds = pool_runs(root, spec, {v: results[v].run_name for v in chosen})
    out["claims"] = evaluate_claims(spec, reports_of(root, seeds))
    if ablations:
        table = build_table(spec.ablations, {v: r.record() for v, r in results.items()}, paper.row_cells)
        logged = log_ablation_table(root, name, key, table, spec.claims, out["paper_vs_ours"], out["claims"])
        out["ablations"] = {"rows": table, "claims": spec.claims, "summary_run_id": logged["run_id"]}
    if inputs.ledger is not None:  # a benchmark run: its results, paper vs ours and the ledger in one MLflow run
        names = [jobs[v]["run_name"] for v in order]
        out["summary_run_id"] = log_reproduction(root, name, key, names, out, inputs.ledger)["run_id"]
    out["seconds"] = round(time.monotonic() - start, 1)
    out["root"] = storage.join(root)
    return out


def _mini_inputs(
    paper: RetrievalPaper,
    dataset: str,
    root: str,
    size: str,
    seed: int,
    user: Mapping[str, dict[str, Any]],
    chosen: list[str],
    resources: Resources,
    t: Mapping[str, Any],
) -> Inputs:
    """The mini world's inputs: the generated world ingested ∥ the mini CLIP pre-trained, then its features."""
    if dataset != paper.spec.dataset:
        raise ValueError(f"the {paper.name} DAG has no spec for {dataset!r} (its mini world: {paper.spec.dataset})")
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
    wanted = [variant_config(paper, "", clip.config, subsets, size, v, user[paper.name]) for v in chosen]
    feats = StageRef.of(
        t["extract_clip_features"](frames.uri, root, key, clip.arch, clip.checkpoint, **paper.features(wanted))
    )
    report = {"frames_stage": frames.uri, "features_stage": feats.uri, "mini_clip": clip.summary()}
    return Inputs(key=key, frames=frames.uri, stage=feats.uri, subsets=subsets, report=report, mini_clip=clip)


def _scale(job: Mapping[str, Any]) -> dict[str, Any]:
    """The global batch (all workers together) and the devices a job trains on: one per Ray Train worker."""
    devices = int(job.get("num_workers") or 1)
    kind = "cuda" if job.get("use_gpu") else "cpu"
    return {"global_batch": int(job["config"]["train"]["batch_size"]), "devices": devices, "device": kind}


def _variant_jobs(
    paper: RetrievalPaper,
    chosen: list[str],
    user: Mapping[str, Any],
    stage: str,
    clip: MiniClip | None,
    subsets: Mapping[str, list[str]],
    size: str,
    key: str,
    root: str,
    num_workers: int,
    borrowed: Mapping[str, dict[str, Any]] | None = None,
    method: str | None = None,
) -> dict[str, dict[str, Any]]:
    """One training job per chosen variant (after the `borrowed` ones); a variant that starts from another's model gets
    that job's ``model.pt`` (its path is known before training: ``<root>/models/<run name>``) and runs after it."""
    from infra.jobs import training_job

    spec, needs = paper.spec, experiment.needs(paper.spec)
    jobs: dict[str, dict[str, Any]] = dict(borrowed or {})
    for variant in sorted(chosen, key=lambda v: v in needs):  # prerequisites first: their run names feed configs
        fixed, after = dict(user), []
        if variant in needs:
            base, config_key = needs[variant]
            fixed[config_key] = storage.join(root, "models", jobs[base]["run_name"], "model.pt")
            after.append(jobs[base]["run_name"])
        jobs[variant] = training_job(
            paper=spec.paper,
            recipe=spec.jobs[spec.paper].recipe,
            config=variant_config(paper, stage, {} if clip is None else clip.config, subsets, size, variant, fixed),
            root=root,
            metric=spec.metric,
            part=variant,
            data=key,
            method=method,  # None: the paper's model; a benchmark's own (`registered_model`)
            who=spec.paper if method else None,  # job names start with the paper either way
            num_workers=num_workers,
            register=spec.registers(variant),
            dataset_stage=stage,
            tags={"vlrepro.variant": variant},
            after=after,
        )
    return jobs


def _borrowed(paper: RetrievalPaper, chosen: list[str]) -> list[tuple[RetrievalPaper, str]]:
    """(paper, variant) of each job of another paper that `chosen` variants start from (``extra.needs`` naming
    ``<paper>/<variant>``: STAN's motion-aware text tower is CLIP4Clip's seqTransf)."""
    refs = sorted({base for v, (base, _) in experiment.needs(paper.spec).items() if v in chosen and "/" in base})
    return [(paper.borrows[ref.split("/")[0]], ref.split("/", 1)[1]) for ref in refs]


def _borrowed_jobs(
    paper: RetrievalPaper,
    chosen: list[str],
    user: Mapping[str, dict[str, Any]],
    frames: str,
    clip: MiniClip,
    subsets: Mapping[str, list[str]],
    size: str,
    key: str,
    root: str,
    num_workers: int,
) -> dict[str, dict[str, Any]]:
    """The `_borrowed` jobs and their own prerequisites, keyed ``<paper>/<variant>``, built as their paper's DAG builds
    them (its features stage, spec and ``--set <paper>.…`` overrides): one job per root whichever DAG runs first."""
    jobs: dict[str, dict[str, Any]] = {}
    for lender, variant in _borrowed(paper, chosen):
        wanted, own = with_prerequisites(lender.spec, [variant]), user.get(lender.name, {})
        configs = [variant_config(lender, "", clip.config, subsets, size, v, own) for v in wanted]
        features = stages.cached(root)["extract_clip_features"](
            frames, root, key, clip.arch, clip.checkpoint, **lender.features(configs)
        )
        uri = StageRef.of(features).uri
        built = _variant_jobs(lender, wanted, own, uri, clip, subsets, size, key, root, num_workers)
        jobs.update({f"{lender.name}/{v}": job for v, job in built.items()})
    return jobs
