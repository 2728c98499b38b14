"""Ablation tables as data: a paper's variants → one training job each → a table in the flow's JSON and in MLflow.

A paper's DAG declares its ablations as plain data (`flows/reproduce_stan.py`, `flows/reproduce_ucofia.py`):

- **variants**: name → config overrides of the main run. Each variant is one training job whose key (the Ray run
  name, the MLflow run key, the ``jobs/<key>.json`` record) is ``<paper>-<variant>-<dataset>-<config hash>``
  (`variant_job`), so a rerun — or another table naming the same variant — reuses the finished job;
- **rows**: `Row(group, label, variant, block)` — which variant's result fills a row of which ablation group; one
  variant may fill rows of several groups (the full method is the reference row of every group) and is trained once.

`run_variants` trains the variants in order through the DAG's cached ``train`` task; `build_table` turns the job
records into rows (the paper's own metric columns, e.g. recognition for STAN); `log_table` writes the table to
MLflow as one **summary run** per (paper, dataset, set of jobs) in the paper's experiment (tag
``vlrepro.kind=ablation-table``), in the one results schema of every paper (`infra.results`). The run key includes a
digest of the job keys, so the same table logs into the same run on rerun and a table over other jobs (other
overrides) gets its own run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from prefect import task

from flows.runtime import is_transient
from recipes.spec import AblationRow

#: metric columns every retrieval table carries: column → (report block, direction, metric)
RETRIEVAL_COLUMNS: dict[str, tuple[str, str, str]] = {
    "t2v R@1": ("overall", "t2v", "R@1"),
    "t2v R@5": ("overall", "t2v", "R@5"),
    "v2t R@1": ("overall", "v2t", "R@1"),
    "order t2v R@1": ("order", "t2v", "R@1"),
    "order v2t R@1": ("order", "v2t", "R@1"),
}


#: one row of an ablation table (the spec's type: `recipes.spec.AblationRow`)
Row = AblationRow


def variant_job(
    paper: str,
    method: str,
    recipe: str,
    variant: str,
    dataset: str,
    config: dict[str, Any],
    root: str,
    stage: str,
    num_workers: int = 1,
    register: bool = True,
    metric: str = "t2v/R@1",
    cpus_per_worker: float | None = None,
) -> dict[str, Any]:
    """The `infra.training_job.TrainingJob` fields of one variant; job key = paper, variant, dataset, config hash."""
    from infra.jobs import training_job

    return training_job(
        paper=paper,
        method=method,
        recipe=recipe,
        config=config,
        root=root,
        metric=metric,
        who=paper,
        part=variant,
        data=dataset,
        num_workers=num_workers,
        register=register,
        dataset_stage=stage,
        tags={"vlrepro.variant": variant},
        cpus_per_worker=cpus_per_worker,
    )


def run_variants(
    names: Sequence[str], make_job: Callable[[str], dict[str, Any]], train: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Train each variant once, in order, through the DAG's ``train`` task; ``{name: job record + "reused"}``.

    ``reused`` says whether the job had finished before this call (its ``jobs/<key>.json`` existed): the train task's
    own result cannot say so when Prefect returns a persisted result.
    """
    from infra.jobs import was_finished

    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        job = make_job(name)
        reused = was_finished(job)
        out[name] = {**train(job), "reused": reused}
    return out


def retrieval_cells(report: Mapping[str, Any], block: str = "") -> dict[str, float | None]:
    """The `RETRIEVAL_COLUMNS` of one job report (None where the report lacks the block, e.g. no order subset)."""
    cells: dict[str, float | None] = {}
    for column, (name, direction, metric) in RETRIEVAL_COLUMNS.items():
        source = block if (block and name == "overall") else name
        value = report.get(source, {}).get(direction, {}).get(metric)
        cells[column] = None if value is None else round(float(value), 2)
    return cells


def build_table(
    rows: Sequence[Row],
    results: Mapping[str, Mapping[str, Any]],
    extra: Callable[[Row, Mapping[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Table rows: group, label, variant, the retrieval columns (+ `extra(row, record)`), the job's key and run id.

    A row whose block only has overall metrics (UCoFiA's un-normalised ``no_sinkhorn``) leaves the order columns None
    rather than mixing in the normalised order numbers.
    """
    table = []
    for row in rows:
        record = results[row.variant]
        report = record.get("report") or {}
        cells = retrieval_cells(report, row.block)
        if row.block:
            cells.update({c: None for c, (name, _, _) in RETRIEVAL_COLUMNS.items() if name != "overall"})
        table.append(
            {
                **asdict(row),
                **cells,
                **(extra(row, record) if extra else {}),
                "run_name": record["run_name"],
                "run_id": record["run_id"],
            }
        )
    return table


@task(name="log-ablation-table", retries=1, retry_condition_fn=is_transient)
def log_table(
    root: str, paper: str, dataset: str, table: list[dict[str, Any]], claims: dict[str, str]
) -> dict[str, Any]:
    """Log `table` to MLflow as the summary run of (paper, dataset, jobs); idempotent; returns its run id and key."""
    from infra.jobs import run_name
    from infra.results import log_results
    from infra.tracking import Tracker, run_guard

    jobs = sorted({r["run_name"] for r in table})
    run_key = run_name(paper, jobs, part="ablations", data=dataset)
    tracker = Tracker.for_run_root(root)
    run_id = tracker.start_or_resume(
        paper,
        run_key,
        run_key,
        params={"dataset": dataset, "jobs": jobs},
        tags={"vlrepro.kind": "ablation-table", "vlrepro.dataset": dataset},
    )
    with run_guard(tracker, run_id):
        log_results(tracker, run_id, paper=paper, dataset=dataset, rows=table, claims=claims)
    return {"run_id": run_id, "run_key": run_key}


__all__ = [
    "RETRIEVAL_COLUMNS",
    "Row",
    "build_table",
    "log_table",
    "retrieval_cells",
    "run_variants",
    "variant_job",
]
