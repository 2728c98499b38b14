"""The one results schema: every paper's summary run holds the same artefacts and metric names."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from infra.results import (
    CLAIMS_MARKDOWN,
    RESULTS_JSON,
    SCHEMA,
    TABLE_UI,
    claims_markdown,
    log_results,
    markdown_table,
    read_table,
    row_metrics,
)
from infra.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
RETRIEVAL_ROWS = [
    {"group": "g", "label": "full", "variant": "full", "t2v R@1": 50.0, "run_name": "a", "run_id": "1"},
    {"group": "raw", "label": "no norm", "variant": "full", "block": "raw", "t2v R@1": 40.0, "run_name": "a"},
]
WTAL_ROWS = [{"variant": "only_f", "schedule": "warmup F", "AVG(0.1:0.7)": 0.25, "cbp_miou": math.nan}]
#: verdict rows as `recipes.evaluation.claims.evaluate_claims` gives them (a judged one, a skipped one)
VERDICTS = [
    {
        "group": "g",
        "claim": "full > ablated",
        "check": "full > ablated on overall t2v R@1",
        "better_mean": 50.0,
        "better_sd": 2.04,
        "worse_mean": 40.0,
        "worse_sd": None,
        "mean_diff": 10.0,
        "ci": [4.25, 15.5],
        "seeds": 3,
        "reproduced": True,
        "skipped": None,
    },
    {
        "group": "g",
        "claim": "full > ablated",
        "check": "full > other on overall t2v R@1",
        "better_mean": None,
        "better_sd": None,
        "worse_mean": None,
        "worse_sd": None,
        "mean_diff": None,
        "ci": None,
        "seeds": None,
        "reproduced": None,
        "skipped": "other was not trained in this run",
    },
]


def test_row_metrics_name_variant_block_and_column() -> None:
    assert row_metrics(RETRIEVAL_ROWS) == {"ablation/full/t2v R_at_1": 50.0, "ablation/full.raw/t2v R_at_1": 40.0}
    assert row_metrics(WTAL_ROWS) == {"ablation/only_f/AVG_0.1:0.7_": 0.25}  # NaN is not a metric


def test_markdown_table_skips_ids() -> None:
    lines = markdown_table(RETRIEVAL_ROWS).splitlines()
    assert lines[0] == "| group | label | variant | t2v R@1 |"
    assert lines[3] == "| raw | no norm | full | 40.0 |"


def test_claims_markdown_shows_mean_spread_interval_and_verdict() -> None:
    lines = claims_markdown(VERDICTS).splitlines()
    assert lines[0] == "| group | check | better | worse | difference [95 % CI] | seeds | verdict |"
    assert (
        lines[2]
        == "| g | full > ablated on overall t2v R@1 | 50.0 ± 2.0 | 40.0 | +10.0 [+4.2, +15.5] | 3 | reproduced |"
    )
    assert lines[3].endswith("| – | – | – | – | skipped (other was not trained in this run) |")


def test_every_paper_logs_the_same_schema(tmp_path: Path) -> None:
    tracker = Tracker.for_run_root(str(tmp_path / "runs"))
    runs = {}
    for paper, rows in (("stan", RETRIEVAL_ROWS), ("dcc", WTAL_ROWS)):
        run_id = tracker.start_or_resume(paper, f"{paper}-summary", f"{paper}-summary", params={}, tags={})
        for _ in range(2):  # idempotent: the rerun of a DAG logs the same summary again
            log_results(
                tracker,
                run_id,
                paper=paper,
                dataset="mini",
                results={"headline": 1.0},
                rows=rows,
                claims={"g": "full > ablated"},
                metrics={"final/headline": 1.0, "final/missing": None},
                paper_vs_ours=[{"variant": "v", "metric": "m", "paper": 40.0, "ours": None, "comparable": False}],
                verdicts=VERDICTS if paper == "stan" else None,
            )
        runs[paper] = run_id
    for paper, run_id in runs.items():
        table = read_table(tracker, run_id, str(tmp_path / paper))
        assert set(table) == {"schema", "paper", "dataset", "claims", "rows"}
        assert (table["schema"], table["paper"], table["claims"]) == (SCHEMA, paper, {"g": "full > ablated"})
        assert len(table["rows"]) == len(RETRIEVAL_ROWS if paper == "stan" else WTAL_ROWS)
        results = json.loads(Path(tracker.client.download_artifacts(run_id, RESULTS_JSON, str(tmp_path))).read_text())
        assert results == {
            "schema": SCHEMA,
            "paper": paper,
            "dataset": "mini",
            "results": {"headline": 1.0},
            "paper_vs_ours": [{"variant": "v", "metric": "m", "paper": 40.0, "ours": None, "comparable": False}],
            "claims": VERDICTS if paper == "stan" else [],
        }
        logged = {f.path for f in tracker.client.list_artifacts(run_id, "tables")}
        assert (CLAIMS_MARKDOWN in logged) == (paper == "stan")
        ui = json.loads(Path(tracker.client.download_artifacts(run_id, TABLE_UI, str(tmp_path))).read_text())
        assert len(ui["data"]) == len(table["rows"])  # written once, not appended on the rerun
        metrics = tracker.client.get_run(run_id).data.metrics
        assert metrics["final/headline"] == 1.0 and "final/missing" not in metrics
        assert all(k.startswith(("final/", "ablation/")) for k in metrics)


def test_flows_never_touch_the_mlflow_client() -> None:
    pattern = re.compile(r"\.client\b|MlflowClient|^\s*(import|from) mlflow")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "flows").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
