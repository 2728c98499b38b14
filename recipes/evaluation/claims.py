"""A paper's claims judged outside noise: each machine-checkable part of a spec's claim (`recipes.spec.ClaimCheck`:
"A's R@K on a block and direction > B's", or "> chance") gets the observed difference, its paired bootstrap 95 %
interval over the test queries and the training seeds trained (`models.common.metrics.bootstrap`), and the verdict
by that interval: ``True`` (above 0), ``False`` (below 0) or ``"within noise"``.

Inputs are the jobs' evaluation reports, one per training seed of each variant. A report carries per-query 0-based
ranks: ``ranks`` ({"t2v", "v2t"}) of the overall block and ``block_ranks`` (block → {"t2v", "v2t"}) of the others
(subsets such as ``order``, other scorings such as UCoFiA's ``no_sinkhorn``; `pipelines.datasets.retrieval_data`'s
``report``). A job keeps its full report in its final checkpoint (``report.json``; its record and MLflow hold it without
the rank arrays), which `reports_of` reads. Several seeds: train the same variants with ``--set <job>.train.seed=N``
into the same run root; `pool_runs` finds, for each of a run's jobs, the jobs on the root whose config differs only
in the training seed (and in the path of a prerequisite's model, ``extra.needs``, which differs with it).

Seeds pool as `models.common.metrics.bootstrap` says: test queries are drawn once for both sides (paired), each
side's seeds are drawn independently (two scorings of the same models — the same variant on both sides — draw their
seeds together); ``mean`` ± ``sd`` are each side's R@K over its seeds (``sd`` None for one seed). Chance is a random
ranking of the block's gallery: R@K = 100·min(K, G)/G, G the block's videos (its number of v2t queries).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.common.metrics.bootstrap import WITHIN_NOISE, chance_recall, paired_bootstrap, recall_hits
from models.common.metrics.retrieval import BLOCK_RANKS
from pipelines import storage
from recipes.spec import ClaimCheck, PaperSpec

OVERALL = "overall"
#: a verdict row's keys (every row has all of them; a skipped or unchecked row has None numbers and a reason)
ROW_KEYS = (
    "group",
    "claim",
    "check",
    "better",
    "worse",
    "block",
    "worse_block",
    "direction",
    "metric",
    "better_mean",
    "better_sd",
    "worse_mean",
    "worse_sd",
    "mean_diff",
    "ci",
    "seeds",
    "queries",
    "reproduced",
    "skipped",
)


def query_ranks(report: Mapping[str, Any], block: str, direction: str) -> np.ndarray | None:
    """The per-query 0-based ranks of `block` (``overall`` or a key of ``block_ranks``) in `direction`, or None."""
    ranks = report.get("ranks") if block == OVERALL else (report.get(BLOCK_RANKS) or {}).get(block)
    if not isinstance(ranks, Mapping) or ranks.get(direction) is None:
        return None
    return np.asarray(ranks[direction], dtype=np.int64).reshape(-1)  # (Q,)


def _seed_ranks(
    reports: Mapping[str, Sequence[Mapping[str, Any]]], variant: str, block: str, direction: str
) -> tuple[np.ndarray | None, int, str]:
    """(S, Q) ranks of `variant`'s seeds, the block's gallery size, and "" — or (None, 0, why not)."""
    runs = reports.get(variant) or ()
    if not runs:
        return None, 0, f"{variant} was not trained in this run"
    per_seed = [query_ranks(r, block, direction) for r in runs]
    if any(r is None for r in per_seed):
        return None, 0, f"{variant}'s report has no per-query ranks for {block}/{direction}"
    if len({len(r) for r in per_seed if r is not None}) != 1:
        return None, 0, f"{variant}'s seeds were scored on different queries ({block}/{direction})"
    gallery = query_ranks(runs[0], block, "v2t")
    return np.stack([r for r in per_seed if r is not None]), 0 if gallery is None else len(gallery), ""


def _spread(values: np.ndarray) -> float | None:
    return round(float(np.std(values, ddof=1)), 3) if len(values) > 1 else None


def _row(group: str, claim: str, check: ClaimCheck | None, **cells: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(group=group, claim=claim)
    if check is not None:
        row.update(
            check=check.describe(),
            better=check.better,
            worse="chance" if check.chance else check.worse,
            block=check.block,
            worse_block=check.against_block,
            direction=check.direction,
            metric=check.metric,
        )
    row.update(cells)
    return row


def judge(
    check: ClaimCheck,
    reports: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The numbers and verdict of one check (the `ROW_KEYS` from ``better_mean`` on), or ``{"skipped": why}``."""
    better, gallery, why = _seed_ranks(reports, check.better, check.block, check.direction)
    if better is None:
        return {"skipped": why}
    a = recall_hits(better, check.k)  # (Sa, Q)
    if check.chance:
        if gallery < 1:
            return {"skipped": f"{check.better}'s report has no v2t ranks for {check.block} to size its gallery"}
        b = np.full((1, a.shape[1]), chance_recall(gallery, check.k))  # (1, Q): a random ranking
    else:
        worse, _, why = _seed_ranks(reports, check.worse, check.against_block, check.direction)
        if worse is None:
            return {"skipped": why}
        if worse.shape[1] != a.shape[1]:
            return {"skipped": f"{check.better} and {check.worse} were scored on different queries"}
        b = recall_hits(worse, check.k)  # (Sb, Q)
    same_models = check.better == check.worse and a.shape[0] == b.shape[0]
    interval = paired_bootstrap(
        a, b, n_boot=n_boot, seed=seed, level=level, seeds="paired" if same_models else "independent"
    )
    a_metric, b_metric = a.mean(axis=1), b.mean(axis=1)  # (Sa,), (Sb,): each seed's R@K
    return {
        "better_mean": round(float(a_metric.mean()), 3),
        "better_sd": _spread(a_metric),
        "worse_mean": round(float(b_metric.mean()), 3),
        "worse_sd": None if check.chance else _spread(b_metric),
        "mean_diff": round(interval.mean_diff, 3),
        "ci": [round(interval.lo, 3), round(interval.hi, 3)],
        "seeds": int(a.shape[0]) if check.chance else int(min(a.shape[0], b.shape[0])),
        "queries": int(a.shape[1]),
        "reproduced": interval.verdict,
    }


def evaluate_claims(
    spec: PaperSpec,
    reports: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """One row (`ROW_KEYS`) per check of every claim of `spec`, in the spec's order, judged on `reports` (variant →
    its jobs' reports, one per training seed); a check whose variants are missing is listed with ``skipped`` (why)
    and ``reproduced`` None, and so is what a claim's checks leave out (``check`` None, ``skipped`` from
    ``unchecked``). Every check draws from the same `seed`."""
    rows = []
    for group, claim in spec.claims.items():
        for check in spec.checks.get(group, ()):
            rows.append(_row(group, claim, check, **judge(check, reports, n_boot=n_boot, seed=seed, level=level)))
        if group in spec.unchecked:
            rows.append(_row(group, claim, None, skipped=f"not checked: {spec.unchecked[group]}"))
    return rows


def _overall(found: Sequence[Any]) -> Any:
    if not found:
        return None
    if any(v is False for v in found):
        return False
    return True if all(v is True for v in found) else WITHIN_NOISE


def group_verdicts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """group → its verdict over the checks that were judged: ``False`` if any is refuted, ``True`` if all are
    reproduced, ``"within noise"`` otherwise, None when none was judged."""
    found: dict[str, list[Any]] = {}
    for row in rows:
        found.setdefault(row["group"], [])
        if row["reproduced"] is not None:
            found[row["group"]].append(row["reproduced"])
    return {group: _overall(verdicts) for group, verdicts in found.items()}


# ----- reading a run root -------------------------------------------------------------------------------------------


def _record(root: str, run_name: str) -> dict[str, Any]:
    data: dict[str, Any] = storage.read_json(storage.join(root, "jobs", f"{run_name}.json"))
    return data


def report_of(root: str, run_name: str) -> dict[str, Any]:
    """A finished job's full evaluation report: the final checkpoint's ``report.json`` (with the rank arrays), or
    the record's report (without them) for a job evaluated on the driver."""
    record = _record(root, run_name)
    checkpoint = record.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        path = storage.join(checkpoint, "report.json")
        if storage.exists(path):
            return dict(storage.read_json(path).get("report") or {})
    return dict(record.get("report") or {})


def reports_of(root: str, runs: Mapping[str, str | Sequence[str]]) -> dict[str, list[dict[str, Any]]]:
    """variant → the reports of its jobs (`report_of`), from variant → run name(s) (one per seed) on run root
    `root`: `evaluate_claims`'s input."""
    return {
        variant: [report_of(root, name) for name in ([names] if isinstance(names, str) else names)]
        for variant, names in runs.items()
    }


def _drop(config: Mapping[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = config
    for key in parents:
        node = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def _identity(config: Mapping[str, Any], ignore: Sequence[str]) -> str:
    """A job config as JSON without the keys a seed changes."""
    copy = json.loads(json.dumps(config, default=str))
    for key in ignore:
        _drop(copy, key)
    return json.dumps(copy, sort_keys=True)


def _job(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The job description (``job.json``: config, tags) in a record's model folder, or None."""
    model_dir = record.get("model_dir")
    if not isinstance(model_dir, str) or not storage.exists(storage.join(model_dir, "job.json")):
        return None
    job: dict[str, Any] = storage.read_json(storage.join(model_dir, "job.json"))
    return job


def pool_runs(root: str, spec: PaperSpec, jobs: Mapping[str, str]) -> dict[str, list[str]]:
    """variant → its run in `jobs` (variant → run name) followed by every other finished job on `root` of the same
    paper and variant whose config differs from it only in ``train.seed`` (and in a prerequisite model's path,
    ``extra.needs``), sorted by name: the seeds to pool for `evaluate_claims`."""
    ignore = ["train.seed", *(str(v[1]) for v in (spec.extra.get("needs") or {}).values())]
    wanted: set[tuple[str, str]] = set()  # (variant, config identity)
    for variant, name in jobs.items():
        job = _job(_record(root, name))
        if job is not None:
            wanted.add((variant, _identity(job.get("config") or {}, ignore)))
    pooled: dict[str, list[str]] = {variant: [name] for variant, name in jobs.items()}
    for file in storage.listdir(storage.join(root, "jobs")):
        name = file[: -len(".json")]
        if not file.endswith(".json") or ".stale-" in file or name in jobs.values():
            continue
        record = _record(root, name)
        job = _job(record) if record.get("paper") == spec.paper else None
        if job is None:
            continue
        variant = str((job.get("tags") or {}).get("vlrepro.variant", ""))
        if (variant, _identity(job.get("config") or {}, ignore)) in wanted:
            pooled[variant].append(name)
    return {variant: names[:1] + sorted(names[1:]) for variant, names in pooled.items()}


__all__ = [
    "ROW_KEYS",
    "evaluate_claims",
    "group_verdicts",
    "judge",
    "pool_runs",
    "query_ranks",
    "report_of",
    "reports_of",
]
