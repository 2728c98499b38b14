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

**Variants** (overrides of ``recipes/configs/stan/mini-retrieval.yaml``): the main run is ``stan`` (the
branch on the last K = 2 blocks with the self-attention cross-frame module, the official release); the ablation
table (paper Table 6 and §4.4) adds the CLIP baseline, the posterior-only branch, STAN without the cross-frame module
and STAN with the 3D-conv cross-frame module. Only the main variant is registered as a ``stan`` model version (an
ablation row must never become ``stan@champion``); every variant keeps its MLflow run and model folder.

**Size choices** (``sizes``, on top of the mini YAML, whose header gives the per-step timings). Budget: the default
DAG on ``size="small"`` (one main variant) in ~5–8 min of STAN work on 2 quiet CPU cores once the shared stages
exist; a fresh root adds the world, ingest, the mini CLIP (600 steps) and the block features:

- small: the YAML unchanged: 5 epochs × 54 steps (batch 32, 8 frames, K 2) = 270 steps, ~1.0 s each for
  ``stan`` (attention) on one thread; the ablation rows cost 0.22 s (baseline) to 1.0 s per step;
- medium (3,456 training clips, 108 steps per epoch): 3 epochs = 324 steps, the same order of work as small;
- tiny (96 training clips): one epoch at batch 16 = 6 steps per job, only to prove the DAG end to end.

The mini CLIP uses `stages.MINI_CLIP_SIZES` (tiny: 6 steps; small/medium: its full recipe), the one table every
paper's DAG uses, so every paper on one root and dataset key shares one mini CLIP. The DAG's body is the one of every
frozen-feature retrieval paper (`flows.retrieval`); this module says what is STAN's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow

from flows import retrieval
from flows.ablations import Row
from infra.settings import Resources
from recipes.spec import load_spec
from recipes.stan import StanRecipeConfig


def _block_features(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of the last K blocks, K the deepest branch any chosen variant reads (the mini CLIP has 4 vision
    blocks; the mini YAML uses 2)."""
    return {"output": "blocks", "last_blocks": max(c["model"]["depth"] for c in configs)}


def _recognition_blocks(report: Mapping[str, Any]) -> dict[str, Any]:
    return {block: report[block] for block in ("recognition", "recognition_linear") if block in report}


def _recognition_cells(row: Row, record: Mapping[str, Any]) -> dict[str, Any]:
    rec = (record.get("report") or {}).get("recognition", {})
    return {"rec top-1": rec.get("top1"), "rec top-5": rec.get("top5")}


#: STAN on the mini world, from its spec (recipes/configs/stan/mini-retrieval.yaml)
STAN = retrieval.RetrievalPaper(
    spec=load_spec("stan", "mini-retrieval"),
    recipe_config=StanRecipeConfig,
    features=_block_features,
    features_stand_in="clip-blocks",
    report_blocks=_recognition_blocks,
    row_cells=_recognition_cells,
)
SPEC = STAN.spec


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
) -> dict[str, dict[str, Any]]:
    return retrieval.job_configs(STAN, size, user, variants, ablations)


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
    cpus_per_worker: float | None = None,
    parallel_jobs: int | None = None,
) -> dict[str, Any]:
    """Run the STAN DAG: the main variant, or `variants`; with `ablations` the whole table (paper Table 6)."""
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)
    return retrieval.run(STAN, dataset, root, size, seed, overrides, num_workers, ablations, variants, resources)
