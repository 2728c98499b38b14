"""One results schema for every paper: what a DAG's summary run holds in MLflow, logged the same way by all of them.

A DAG ends with one MLflow run of its own (the summary or parent run) holding::

    tables/results.json          {"schema": 1, "paper", "dataset", "results": {...}, "paper_vs_ours": [...],
                                  "claims": [verdict, ...]}
    tables/ablations.json        {"schema": 1, "paper", "dataset", "claims": {group: claim}, "rows": [row, ...]}
    tables/ablations.md          the rows as a markdown table, then the claims
    tables/claims.md             the verdicts as a markdown table (when there are any)
    tables/ablations_table.json  the rows in MLflow's table format (the UI's table view)
    metrics                      ``ablation/<variant>[.<block>]/<column>`` for every finite number of a row, plus the
                                 DAG's own headline metrics (``final/…``), all at step 0

``paper_vs_ours`` is `recipes.spec.PaperSpec.paper_vs_ours`: each number the paper reports beside ours, compared
only on the paper's own benchmark (``comparable``). ``claims`` in ``results.json`` are the verdicts of
`recipes.evaluation.claims.evaluate_claims`: one row per machine-checkable part of a claim (``group``, ``claim``,
``check``, each side's ``mean`` ± ``sd`` over seeds, ``mean_diff``, the paired bootstrap 95 % ``ci``, ``seeds``,
``reproduced``: true / false / "within noise" by the interval, or None with ``skipped``: why); empty when the DAG
judged none. Rows are flat dicts (one per ablation row; a row names its ``variant`` and, for a second block of the
same job, its ``block``); claims are the spec's `recipes.spec.PaperSpec.claims`. Readers (`read_table`) get the
same structure whatever the paper. Flows call this module; none of them touches the MLflow client.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from infra.tracking import Tracker, mlflow_key

SCHEMA = 1
RESULTS_JSON = "tables/results.json"
TABLE_JSON = "tables/ablations.json"
TABLE_MARKDOWN = "tables/ablations.md"
TABLE_UI = "tables/ablations_table.json"
CLAIMS_MARKDOWN = "tables/claims.md"
#: columns of a row that identify it, not measure it (never in the markdown table)
_ID_COLUMNS = ("run_name", "run_id", "block")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if math.isfinite(value) else "nan"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of `rows` (all keys of the first row but its ids, unless `columns` is given)."""
    if not rows:
        return ""
    cols = list(columns) if columns is not None else [c for c in rows[0] if c not in _ID_COLUMNS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _mean_sd(mean: Any, sd: Any) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def _verdict(row: Mapping[str, Any]) -> str:
    if row.get("reproduced") is None:
        return f"skipped ({row.get('skipped')})" if row.get("check") else str(row.get("skipped"))
    return {True: "reproduced", False: "refuted"}.get(row["reproduced"], str(row["reproduced"]))


def claims_markdown(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The verdicts as a markdown table: per check, each side's mean ± sd over seeds, the difference with its
    interval, the seeds pooled and the verdict."""
    cells = [
        {
            "group": v.get("group"),
            "check": v.get("check") or "–",
            "better": _mean_sd(v.get("better_mean"), v.get("better_sd")),
            "worse": _mean_sd(v.get("worse_mean"), v.get("worse_sd")),
            "difference [95 % CI]": "–"
            if v.get("ci") is None
            else f"{v['mean_diff']:+.1f} [{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}]",
            "seeds": v.get("seeds"),
            "verdict": _verdict(v),
        }
        for v in verdicts
    ]
    return markdown_table(cells)


def row_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``ablation/<variant>[.<block>]/<column>`` → value, for every finite number of every row."""
    out: dict[str, float] = {}
    for row in rows:
        name = f"{row['variant']}{'.' + row['block'] if row.get('block') else ''}"
        for column, value in row.items():
            if column not in _ID_COLUMNS and _finite(value):
                out[mlflow_key(f"ablation/{name}/{column}")] = float(value)
    return out


def log_results(
    tracker: Tracker,
    run_id: str,
    *,
    paper: str,
    dataset: str,
    results: Mapping[str, Any] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    claims: Mapping[str, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    paper_vs_ours: Sequence[Mapping[str, Any]] | None = None,
    verdicts: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Log a DAG's results (and its ablation table, when it has one) to run `run_id` in the one schema; `verdicts`
    are its claims judged (`recipes.evaluation.claims.evaluate_claims`), ``results.json``'s ``claims``.

    Idempotent: the same call again rewrites the same artefacts and metric values (MLflow's table artefact appends
    to an existing file, so it is written once per run).
    """
    head = {"schema": SCHEMA, "paper": paper, "dataset": dataset}
    if results is not None or paper_vs_ours or verdicts:
        body = {
            "results": dict(results or {}),
            "paper_vs_ours": [dict(r) for r in paper_vs_ours or ()],
            "claims": [dict(v) for v in verdicts or ()],
        }
        tracker.log_dict(run_id, {**head, **body}, RESULTS_JSON)
    if verdicts:
        tracker.client.log_text(run_id, claims_markdown(verdicts) + "\n", CLAIMS_MARKDOWN)
    numeric = {mlflow_key(k): float(v) for k, v in (metrics or {}).items() if _finite(v)}
    if rows:
        table = [dict(r) for r in rows]
        tracker.log_dict(run_id, {**head, "claims": dict(claims or {}), "rows": table}, TABLE_JSON)
        claim_lines = "\n".join(f"- **{group}**: {claim}" for group, claim in (claims or {}).items())
        tracker.client.log_text(run_id, markdown_table(table) + "\n\n" + claim_lines + "\n", TABLE_MARKDOWN)
        logged = {f.path for f in tracker.client.list_artifacts(run_id, "tables")}
        if TABLE_UI not in logged:
            columns = list(dict.fromkeys(c for r in table for c in r))
            tracker.client.log_table(run_id, {c: [_ui(r.get(c)) for r in table] for c in columns}, TABLE_UI)
        numeric.update(row_metrics(table))
    if numeric:
        tracker.log_metrics(run_id, numeric, step=0)


def _ui(value: Any) -> Any:
    """A table cell MLflow's table view can show (it wants scalars in a column)."""
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value, default=str)


def read_table(tracker: Tracker, run_id: str, dest: str) -> dict[str, Any]:
    """The ablation table of a summary run (``{"schema", "paper", "dataset", "claims", "rows"}``), downloaded to
    `dest`."""
    path = tracker.client.download_artifacts(run_id, TABLE_JSON, dest)
    with open(path) as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def log_summary_run(
    root: str,
    paper: str,
    run_key: str,
    *,
    dataset: str,
    jobs: Sequence[str],
    kind: str,
    **logged: Any,
) -> str:
    """A DAG's own MLflow run in the paper's experiment (same key ⇒ same run on rerun), holding its results in the
    one schema (`log_results`'s keyword arguments); returns its run id. ``kind`` tags it (``vlrepro.kind``)."""
    from infra.tracking import run_guard

    tracker = Tracker.for_run_root(root)
    run_id = tracker.start_or_resume(
        paper,
        run_key,
        run_key,
        params={"dataset": dataset, "jobs": sorted(jobs)},
        tags={"vlrepro.kind": kind, "vlrepro.dataset": dataset},
    )
    with run_guard(tracker, run_id):
        log_results(tracker, run_id, paper=paper, dataset=dataset, **logged)
    return run_id
