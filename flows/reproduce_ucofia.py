"""`reproduce-ucofia`: data → ingest ∥ mini CLIP → frame tokens → UCoFiA jobs → evaluate (SK-norm) → register.

UCoFiA (Wang et al., ICCV 2023; METHODS §3) on the mini world: frame CLS + projected patch tokens of the frozen mini
CLIP are precomputed once (the ``clip-tokens`` stage); each job trains the text tower, seqTransf, the patch selector
and the ISA weights, then evaluates with the paper's test-time Sinkhorn normalisation per level over a bank of
**training** captions (`recipes.ucofia`), also reporting the un-normalised scores (``no_sinkhorn``) and each level of
the model scored alone (``level-<name>``), so the Sinkhorn on/off comparison reads off the same run. Every stage is
reused on rerun and shared with the CLIP4Clip and STAN DAGs on the same root and dataset key.

**Variants** (``recipes/configs/ucofia/mini-retrieval.yaml``): the main run ``ucofia`` uses all three levels, ISA
and Sinkhorn; the ablation table trains each level alone and the mean-pool and softmax aggregations, and reads
Sinkhorn off the main run's ``no_sinkhorn`` block. Rows "levels (one model)" score each level of the *main* model
alone (a diagnostic, not a paper ablation). Only ``ucofia`` is registered. **Sizes**: the spec's header gives the
budgets and per-step timings (small: 7 epochs × 27 steps at batch 64 plus ~40 s of Sinkhorn evaluation).

The DAG's body is the one of every retrieval paper (`flows.retrieval`); this module says what is UCoFiA's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow

from flows import retrieval
from infra.settings import Resources
from recipes.experiments.retrieval import Row
from recipes.spec import load_spec
from recipes.ucofia import UCoFiARecipeConfig

LEVEL_NAMES = ("video_sentence", "sentence_frame", "patch_word")


def _token_features(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Frame CLS + projected patch tokens of the frozen mini CLIP (the patch selector picks among them)."""
    return {"output": "tokens"}


def _sinkhorn_blocks(report: Mapping[str, Any]) -> dict[str, Any]:
    """Without Sinkhorn (``no_sinkhorn``) and each level of the model scored alone, beside the normalised blocks."""
    out: dict[str, Any] = {"sinkhorn": "no_sinkhorn" in report}
    if "no_sinkhorn" in report:
        out["no_sinkhorn"] = report["no_sinkhorn"]
    levels = {name: report[f"level-{name}"] for name in LEVEL_NAMES if f"level-{name}" in report}
    if levels:
        out["levels"] = levels
    return out


def _no_sinkhorn_cells(row: Row, record: Mapping[str, Any]) -> dict[str, Any]:
    """Every trained row's un-normalised overall R@1 beside its Sinkhorn numbers (None on block rows)."""
    block = {} if row.block else (record.get("report") or {}).get("no_sinkhorn", {})
    return {
        "no-SK t2v R@1": block.get("t2v", {}).get("R@1"),
        "no-SK v2t R@1": block.get("v2t", {}).get("R@1"),
    }


#: UCoFiA on the mini world, from its spec (recipes/configs/ucofia/mini-retrieval.yaml)
UCOFIA = retrieval.RetrievalPaper(
    spec=load_spec("ucofia", "mini-retrieval"),
    recipe_config=UCoFiARecipeConfig,
    features=_token_features,
    features_stand_in="clip-tokens",
    report_blocks=_sinkhorn_blocks,
    row_cells=_no_sinkhorn_cells,
)
SPEC = UCOFIA.spec


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
    dataset: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every job's config (``--print-config``) on `dataset`: the mini world (None) or a benchmark's spec."""
    return retrieval.job_configs(UCOFIA.on(dataset), size, user, variants, ablations)


@flow(name="reproduce-ucofia", log_prints=True)
def reproduce_ucofia(
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
    """Run the UCoFiA DAG: the main variant, or `variants`; with `ablations` the whole table; on the mini world or on a
    benchmark downloaded to `data_dir` (``dataset="msrvtt"``, videos under `video_dir`)."""
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)
    return retrieval.run(
        UCOFIA, dataset, root, size, seed, overrides, num_workers, ablations, variants, resources, data_dir, video_dir
    )
