"""`reproduce-stan`: data → ingest → mini CLIP → last-K block features → STAN jobs → evaluate → register (+ ablations).

STAN (Liu et al., CVPR 2023; METHODS §2) on the mini world: the branch reads the outputs of the frozen mini CLIP's
last K vision blocks, precomputed once (`stages.extract_clip_features(output="blocks")`, the ``clip-blocks<K>``
stage); evaluation reports text↔video retrieval on the whole test set and on the **order-dependent subset** (reversal
twins, `reproduce_clip4clip.order_subsets`) plus video recognition top-1/top-5 over the 12 direction-pair classes
(class-name prompts, paper §4.3).

Stages (each reused on rerun — Prefect's persisted results and each stage's own commit marker or job record — and
shared with the CLIP4Clip and UCoFiA DAGs on the same root and dataset key):

| stage | task | output |
|---|---|---|
| mini-retrieval world, frames at 4 fps, 64 px | `stages.make_data`, `ingest_flow` | frames stage (shared) |
| mini CLIP on the world's frame–caption pairs | `stages.pretrain_mini_clip` | ``mini-clip`` model (shared) |
| last K block outputs of the frozen mini CLIP | `stages.extract_clip_features` | ``clip-blocks<K>`` stage |
| one STAN job per variant | `stages.train` (recipe ``stan``) | ``stan`` model (main variant), metric ``t2v/R@1`` |
| ablation table (``ablations=True``) | `flows.ablations.log_table` | MLflow summary run in experiment ``stan`` |

**Variants** (`VARIANTS`, overrides of ``recipes/configs/stan/mini-retrieval.yaml``): the main run is ``stan`` (the
branch on the last K = 2 blocks with the self-attention cross-frame module, the official release); the ablation
table (paper Table 6 and §4.4) adds the CLIP baseline, the posterior-only branch, STAN without the cross-frame module
and STAN with the 3D-conv cross-frame module. Only the main variant is registered as a ``stan`` model version (an
ablation row must never become ``stan@champion``); every variant keeps its MLflow run and model folder.

**Size choices** (`SIZES`, on top of the mini YAML, whose header gives the per-step timings). Budget: the default
DAG on ``size="small"`` (one main variant) in ~5–8 min of STAN work on 2 quiet CPU cores once the shared stages
exist; a fresh root adds the world, ingest, the mini CLIP (600 steps) and the block features:

- small: the YAML unchanged: 5 epochs × 54 steps (batch 32, 8 frames, K 2) = 270 steps, ~1.0 s each for
  ``stan`` (attention) on one thread; the ablation rows cost 0.22 s (baseline) to 1.0 s per step;
- medium (3,456 training clips, 108 steps per epoch): 3 epochs = 324 steps, the same order of work as small;
- tiny (96 training clips): one epoch at batch 16 = 6 steps per job, only to prove the DAG end to end.

The mini CLIP uses `stages.MINI_CLIP_SIZES` (tiny: 6 steps; small/medium: its full recipe), the one table every
paper's DAG uses, so every paper on one root and dataset key shares one mini CLIP.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prefect import flow

from flows import stages
from flows.ablations import Row, build_table, log_table, run_variants, variant_job
from flows.ingest import ingest_flow
from flows.reproduce_clip4clip import order_subsets
from flows.reproduce_clip4clip import summarise as summarise_retrieval
from models.config import build, merge, to_dict
from pipelines import storage
from recipes.spec import load_spec
from recipes.stan import StanRecipeConfig

#: the experiment spec (recipes/configs/stan/mini-retrieval.yaml): the mini base config, the variants, the paper's
#: ablation rows and claims, the size overrides; the names below are views of it
SPEC = load_spec("stan", "mini-retrieval")
PAPER = SPEC.paper
METRIC = SPEC.metric
MAIN = SPEC.main
VARIANTS: dict[str, dict[str, Any]] = SPEC.variants
ROWS: tuple[Row, ...] = SPEC.ablations
CLAIMS: dict[str, str] = SPEC.claims
SIZES: dict[str, dict[str, Any]] = {size: SPEC.size_overrides(size, PAPER) for size in SPEC.sizes}


def stan_config(
    clip: dict[str, Any],
    subsets: dict[str, list[str]],
    size: str,
    variant: str,
    overrides: dict[str, Any],
    stage: str = "",
) -> dict[str, Any]:
    """The mini YAML + the mini CLIP + the features stage and eval subsets, then size, variant and user overrides."""
    cfg = merge(build(StanRecipeConfig), SPEC.base(PAPER))
    cfg = merge(
        cfg,
        {
            "model.clip.arch": clip["clip_arch"],
            "model.clip.pretrained": clip["clip_checkpoint"],
            "data.stage": stage,
            "data.subsets": subsets,
        },
    )
    return to_dict(merge(merge(merge(cfg, SIZES[size]), VARIANTS[variant]), overrides))


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Retrieval blocks (overall / order / twins), recognition top-1/top-5, run id, model version, reuse."""
    out = summarise_retrieval(result)
    rep = result.get("report") or {}
    for block in ("recognition", "recognition_linear"):
        if block in rep:
            out[block] = rep[block]
    out["reused"] = bool(result.get("reused"))
    return out


def recognition_cells(row: Row, record: Mapping[str, Any]) -> dict[str, Any]:
    rec = (record.get("report") or {}).get("recognition", {})
    return {"rec top-1": rec.get("top1"), "rec top-5": rec.get("top5")}


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every job's config as the DAG would resolve it (``--print-config``), with what the stages produce as
    stand-ins; `user` are the routed ``--set`` overrides (job kind → overrides)."""
    chosen = SPEC.chosen_variants(variants, ablations)
    return stages.variant_job_configs(
        SPEC,
        size,
        user,
        chosen,
        lambda v, u: stan_config(stages.PENDING_CLIP, {}, size, v, u, stage=stages.pending("clip-blocks")),
    )


@flow(name="reproduce-stan", log_prints=True)
def reproduce_stan(
    dataset: str = "mini-retrieval",
    root: str = "runs",
    size: str = "small",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    ablations: bool = False,
    variants: list[str] | None = None,
) -> dict[str, Any]:
    """Run the STAN DAG: the main variant, or `variants`; with `ablations` the whole table. `overrides` (the
    CLI's ``--set``) apply to every STAN job; `clip_overrides` go on top of the mini CLIP's size defaults
    (`stages.MINI_CLIP_SIZES`)."""
    start = time.monotonic()
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    if dataset != "mini-retrieval":
        raise ValueError(f"the STAN DAG runs on mini-retrieval here (got {dataset!r}); real datasets: ingest + train")
    SPEC.check_size(size)
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(size, variants=variants, ablations=ablations))
    t = stages.cached(root)
    key = stages.dataset_key(dataset, size, seed)
    world = t["make_data"](dataset, root, size, seed)
    frames = ingest_flow(world["sources_csv"], root, key, **stages.MINI_INGEST[dataset])
    clip = t["pretrain_mini_clip"](root, key, world["image_text"], stages.mini_clip_overrides(size, user["miniclip"]))
    subsets = order_subsets(world["annotations"])
    # the whole table with `ablations`; else the chosen variants (`--variant`), by default the paper's method
    chosen = SPEC.chosen_variants(variants, ablations)
    # K = the deepest branch any chosen variant reads (the mini CLIP has 4 vision blocks; the mini YAML uses 2)
    depth = max(stan_config(clip, subsets, size, v, user[PAPER])["model"]["depth"] for v in chosen)
    feats = t["extract_clip_features"](
        frames["stage_uri"], root, key, clip["clip_arch"], clip["clip_checkpoint"], output="blocks", last_blocks=depth
    )

    stage = feats["stage_uri"]

    def make_job(variant: str) -> dict[str, Any]:
        config = stan_config(clip, subsets, size, variant, user[PAPER], stage=stage)
        main = variant == MAIN  # only the method itself becomes a registered version
        return variant_job(PAPER, PAPER, "stan", variant, key, config, root, stage, num_workers, register=main)

    results = run_variants(chosen, make_job, t["train"])
    out: dict[str, Any] = {
        "paper": PAPER,
        "dataset": key,
        "frames_stage": frames["stage_uri"],
        "features_stage": feats["stage_uri"],
        "mini_clip": stages.mini_clip_summary(clip),
        "main": MAIN,
        "variants": {name: summarise(r) for name, r in results.items()},
    }
    if ablations:
        table = build_table(ROWS, results, recognition_cells)
        logged = log_table(root, PAPER, key, table, CLAIMS)
        out["ablations"] = {"rows": table, "claims": CLAIMS, "summary_run_id": logged["run_id"]}
    out["seconds"] = round(time.monotonic() - start, 1)
    out["root"] = storage.join(root)
    return out
