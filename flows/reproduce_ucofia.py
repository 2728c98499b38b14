"""`reproduce-ucofia`: data → ingest → mini CLIP → frame tokens → UCoFiA jobs → evaluate (SK-norm) → register.

UCoFiA (Wang et al., ICCV 2023; METHODS §3) on the mini world: frame CLS + projected patch tokens of the frozen mini
CLIP are precomputed once (`stages.extract_clip_features(output="tokens")`, the ``clip-tokens`` stage); each job
trains the text tower, seqTransf, the patch selector and the ISA weights, then evaluates with the paper's test-time
Sinkhorn normalisation per level over a bank of **training** captions (`recipes.ucofia`). The recipe
also reports the un-normalised scores (``no_sinkhorn``) and each level of the model scored alone (``level-<name>``),
so the Sinkhorn on/off comparison reads off the same run. Retrieval is reported on the whole test set and on the
order-dependent subset (reversal twins, `reproduce_clip4clip.order_subsets`).

Stages (each reused on rerun and shared with the CLIP4Clip and STAN DAGs on the same root and dataset key):

| stage | task | output |
|---|---|---|
| mini-retrieval world, frames at 4 fps, 64 px | `stages.make_data`, `ingest_flow` | frames stage (shared) |
| mini CLIP on the world's frame–caption pairs | `stages.pretrain_mini_clip` | ``mini-clip`` model (shared) |
| CLS + projected patch tokens per frame | `stages.extract_clip_features` | ``clip-tokens`` stage |
| one UCoFiA job per variant | `stages.train` (recipe ``ucofia``) | ``ucofia`` model (main variant), ``t2v/R@1`` |
| ablation table (``ablations=True``) | `flows.ablations.log_table` | MLflow summary run in experiment ``ucofia`` |

**Variants** (`VARIANTS`, overrides of ``recipes/configs/ucofia/mini-retrieval.yaml``): the main run ``ucofia`` uses
all three levels, ISA and Sinkhorn; the ablation table trains each level alone and the mean-pool and softmax
aggregations, and reads Sinkhorn off from the main run's ``no_sinkhorn`` block. Rows "levels (one model)" score
each level of the *main* model alone (no retraining, un-normalised) — not a paper ablation, a diagnostic. Only the
main variant is registered as a ``ucofia`` model version.

**Size choices** (`SIZES`, on top of the mini YAML, whose header gives the per-step timings). Budget: the default
DAG on ``size="small"`` in ~5 min of UCoFiA work on 2 quiet CPU cores once the shared stages exist:

- small: the YAML unchanged: 7 epochs × 27 steps (batch 64) = 189 steps at ~1.1 s (full model, one thread), plus
  ~40 s of evaluation (Sinkhorn banks of 1,024 training captions and videos); single-level rows without the
  patch–word level cost a fraction of that;
- medium (3,456 training clips, 54 steps per epoch): 4 epochs = 216 steps;
- tiny (96 training clips): one epoch at batch 16 = 6 steps per job, 64 perturbed top-K samples.
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
from recipes.ucofia import UCoFiARecipeConfig

#: the experiment spec (recipes/configs/ucofia/mini-retrieval.yaml): the mini base config, the variants, the paper's
#: ablation rows and claims, the size overrides; the names below are views of it
SPEC = load_spec("ucofia", "mini-retrieval")
PAPER = SPEC.paper
METRIC = SPEC.metric
MAIN = SPEC.main
LEVEL_NAMES = ("video_sentence", "sentence_frame", "patch_word")
VARIANTS: dict[str, dict[str, Any]] = SPEC.variants
ROWS: tuple[Row, ...] = SPEC.ablations
CLAIMS: dict[str, str] = SPEC.claims
SIZES: dict[str, dict[str, Any]] = {size: SPEC.size_overrides(size, PAPER) for size in SPEC.sizes}


def ucofia_config(
    features_uri: str,
    clip: dict[str, Any],
    subsets: dict[str, list[str]],
    size: str,
    variant: str,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The mini YAML + the mini CLIP + the tokens stage and eval subsets, then size, variant and user overrides."""
    cfg = merge(build(UCoFiARecipeConfig), SPEC.base(PAPER))
    cfg = merge(
        cfg,
        {
            "model.clip.arch": clip["clip_arch"],
            "model.clip.pretrained": clip["clip_checkpoint"],
            "data.stage": features_uri,
            "data.subsets": subsets,
        },
    )
    return to_dict(merge(merge(merge(cfg, SIZES[size]), VARIANTS[variant]), overrides))


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Retrieval blocks with Sinkhorn (overall / order / twins), without (``no_sinkhorn``), each level alone."""
    out = summarise_retrieval(result)
    rep = result.get("report") or {}
    out["sinkhorn"] = "no_sinkhorn" in rep
    if "no_sinkhorn" in rep:
        out["no_sinkhorn"] = rep["no_sinkhorn"]
    levels = {name: rep[f"level-{name}"] for name in LEVEL_NAMES if f"level-{name}" in rep}
    if levels:
        out["levels"] = levels
    out["reused"] = bool(result.get("reused"))
    return out


def no_sinkhorn_cells(row: Row, record: Mapping[str, Any]) -> dict[str, Any]:
    """Every trained row's un-normalised overall R@1 beside its Sinkhorn numbers (None on block rows)."""
    block = {} if row.block else (record.get("report") or {}).get("no_sinkhorn", {})
    return {
        "no-SK t2v R@1": block.get("t2v", {}).get("R@1"),
        "no-SK v2t R@1": block.get("v2t", {}).get("R@1"),
    }


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
        lambda v, u: ucofia_config(stages.pending("clip-tokens"), stages.PENDING_CLIP, {}, size, v, u),
    )


@flow(name="reproduce-ucofia", log_prints=True)
def reproduce_ucofia(
    dataset: str = "mini-retrieval",
    root: str = "runs",
    size: str = "small",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    ablations: bool = False,
    variants: list[str] | None = None,
) -> dict[str, Any]:
    """Run the UCoFiA DAG: the main variant, or `variants`; with `ablations` the whole table. `overrides` (the
    CLI's ``--set``) apply to every UCoFiA job; `clip_overrides` go on top of the mini CLIP's size defaults
    (`stages.MINI_CLIP_SIZES`)."""
    start = time.monotonic()
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    if dataset != "mini-retrieval":
        raise ValueError(f"the UCoFiA DAG runs on mini-retrieval here (got {dataset!r}); real datasets: ingest + train")
    SPEC.check_size(size)
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(size, variants=variants, ablations=ablations))
    t = stages.cached(root)
    key = stages.dataset_key(dataset, size, seed)
    world = t["make_data"](dataset, root, size, seed)
    frames = ingest_flow(world["sources_csv"], root, key, **stages.MINI_INGEST[dataset])
    clip = t["pretrain_mini_clip"](root, key, world["image_text"], stages.mini_clip_overrides(size, user["miniclip"]))
    feats = t["extract_clip_features"](
        frames["stage_uri"], root, key, clip["clip_arch"], clip["clip_checkpoint"], output="tokens"
    )
    subsets = order_subsets(world["annotations"])

    stage = feats["stage_uri"]

    def make_job(variant: str) -> dict[str, Any]:
        config = ucofia_config(stage, clip, subsets, size, variant, user[PAPER])
        main = variant == MAIN  # only the method itself becomes a registered version
        return variant_job(PAPER, PAPER, "ucofia", variant, key, config, root, stage, num_workers, register=main)

    # the whole table with `ablations`; else the chosen variants (`--variant`), by default the paper's method
    chosen = SPEC.chosen_variants(variants, ablations)
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
        table = build_table(ROWS, results, no_sinkhorn_cells)
        logged = log_table(root, PAPER, key, table, CLAIMS)
        out["ablations"] = {"rows": table, "claims": CLAIMS, "summary_run_id": logged["run_id"]}
    out["seconds"] = round(time.monotonic() - start, 1)
    out["root"] = storage.join(root)
    return out
