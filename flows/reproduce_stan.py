"""`reproduce-stan`: data → ingest ∥ mini CLIP → last-K block features → STAN jobs → evaluate → register (+ ablations).

STAN (Liu et al., CVPR 2023; METHODS §2) on the mini world: the branch reads the outputs of the frozen mini CLIP's
last K vision blocks, precomputed once (the ``clip-blocks<K>`` stage); evaluation reports text↔video retrieval on the
whole test set and on the **order-dependent subset** (reversal twins) plus video recognition top-1/top-5 over the 12
direction-pair classes (paper §4.3). Every stage is reused on rerun and shared with the CLIP4Clip and UCoFiA DAGs on
the same root and dataset key.

**Variants** (``recipes/configs/stan/mini-retrieval.yaml``): the main run is ``stan`` (the branch on the last K = 2
blocks with the self-attention cross-frame module, the official release); the ablation table (paper Table 6 and §4.4)
adds the CLIP baseline, the posterior-only branch, STAN without the cross-frame module and STAN with the 3D-conv
cross-frame module. Only ``stan`` is registered (an ablation row must never become ``stan@champion``). **Sizes**: the
spec's header gives the budgets and per-step timings (small: 5 epochs × 54 steps at batch 32; tiny: 6 steps per job,
only to prove the DAG end to end).

The DAG's body is the one of every retrieval paper (`flows.retrieval`); this module says what is STAN's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow

from flows import retrieval
from flows.reproduce_clip4clip import CLIP4CLIP
from infra.settings import Resources
from recipes.experiments.retrieval import Row
from recipes.spec import load_spec
from recipes.stan import StanRecipeConfig


def _block_features(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of the last K blocks, K the deepest branch any chosen variant reads (the mini CLIP has 4 vision
    blocks; the mini YAML uses 2)."""
    return {"output": "blocks", "last_blocks": max(c["model"]["depth"] for c in configs)}


def _recognition_blocks(report: Mapping[str, Any]) -> dict[str, Any]:
    blocks = ("recognition", "recognition_trained", "recognition_linear", "chance")
    return {block: report[block] for block in blocks if block in report}


def _recognition_cells(row: Row, record: Mapping[str, Any]) -> dict[str, Any]:
    report = record.get("report") or {}
    trained, zero_shot = report.get("recognition_trained", {}), report.get("recognition", {})
    return {
        "rec top-1": trained.get("top1"),
        "rec top-5": trained.get("top5"),
        "zero-shot rec top-1": zero_shot.get("top1"),
    }


#: STAN on the mini world, from its spec (recipes/configs/stan/mini-retrieval.yaml)
STAN = retrieval.RetrievalPaper(
    spec=load_spec("stan", "mini-retrieval"),
    recipe_config=StanRecipeConfig,
    features=_block_features,
    features_stand_in="clip-blocks",
    report_blocks=_recognition_blocks,
    row_cells=_recognition_cells,
    borrows={"clip4clip": CLIP4CLIP},  # the motion-aware text tower: CLIP4Clip's seqTransf job (the spec's needs)
)
SPEC = STAN.spec


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
    dataset: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every job's config (``--print-config``) on `dataset`: the mini world (None) or a benchmark's spec."""
    return retrieval.job_configs(STAN.on(dataset), size, user, variants, ablations)


@flow(name="reproduce-stan", log_prints=True)
def reproduce_stan(
    dataset: str = "mini-retrieval",
    root: str = "runs",
    size: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    ablations: bool = False,
    variants: list[str] | None = None,
    cpus_per_worker: float | None = None,
    parallel_jobs: int | None = None,
    data_dir: str | None = None,
    video_dir: str | None = None,
) -> dict[str, Any]:
    """Run the STAN DAG: the main variant, or `variants`; with `ablations` the whole table (paper Table 6); on the mini
    world or on a benchmark downloaded to `data_dir` (``dataset="msrvtt"``, videos under `video_dir`)."""
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)
    return retrieval.run(
        STAN, dataset, root, size, seed, overrides, num_workers, ablations, variants, resources, data_dir, video_dir
    )
