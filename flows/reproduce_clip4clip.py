"""`reproduce-clip4clip`: data → ingest ∥ mini CLIP → frame features → train each head → evaluate → register.

CLIP4Clip (Luo et al., 2021; METHODS §1) on the mini world. Heads (§3.2): meanP, seqLSTM, seqTransf, tightTransf,
plus meanP and seqTransf on 1 frame (the paper's "one frame is not enough" finding, for a pooling head and for one
that can use the order of the frames), and tightTransf over the text tower seqTransf trained (the spec's
``extra.needs``: that job runs first and its ``model.pt`` seeds this one). A run trains the spec's
``default_variants`` unless `variants` names others (their prerequisites are added); every head is registered as a
``clip4clip`` version (the paper compares heads, it has no one method). Evaluation reports the whole test set and the
mini world's **order-dependent subset** (reversal twins whose frame multisets are identical, so order-blind pooling
provably cannot separate them).

The DAG's body is the one of every retrieval paper (`flows.retrieval`); this module says what is CLIP4Clip's own:
its jobs read the frozen mini CLIP's frame embeddings (the ``clip-features`` stage) and report only retrieval blocks.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import retrieval
from infra.settings import Resources
from recipes.clip4clip import Clip4ClipRecipeConfig
from recipes.spec import load_spec

#: CLIP4Clip on the mini world, from its spec (recipes/configs/clip4clip/mini-retrieval.yaml)
CLIP4CLIP = retrieval.RetrievalPaper(
    spec=load_spec("clip4clip", "mini-retrieval"),
    recipe_config=Clip4ClipRecipeConfig,
    features=lambda configs: {},  # frame CLS embeddings: the feature stage's defaults
    features_stand_in="clip-features",
    report_blocks=lambda report: {},
    row_cells=lambda row, record: {},
)
SPEC = CLIP4CLIP.spec


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
    dataset: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every job's config (``--print-config``) on `dataset`: the mini world (None) or a benchmark's spec."""
    return retrieval.job_configs(CLIP4CLIP.on(dataset), size, user, variants, ablations)


@flow(name="reproduce-clip4clip", log_prints=True)
def reproduce_clip4clip(
    dataset: str = "mini-retrieval",
    root: str = "runs",
    size: str | None = None,
    seed: int = 0,
    variants: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    cpus_per_worker: float | None = None,
    parallel_jobs: int | None = None,
    data_dir: str | None = None,
    video_dir: str | None = None,
) -> dict[str, Any]:
    """Run the CLIP4Clip DAG: the default heads, or `variants` (with the heads they start from), on the mini world or
    on a benchmark downloaded to `data_dir` (``dataset="msrvtt"``, videos under `video_dir`)."""
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)  # the lone mini CLIP: all; the heads: a share
    return retrieval.run(
        CLIP4CLIP, dataset, root, size, seed, overrides, num_workers, False, variants, resources, data_dir, video_dir
    )
