"""The UCoFiA DAG on the tiny world end to end, run after STAN on the same root: the shared stages are reused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import assert_paths_absolute
from tests.flows.test_reproduce_stan import assert_retrieval_block
from tests.flows.test_reproduce_stan import stan_tiny as stan_tiny  # session fixture: one STAN run per session
from tests.golden import check_golden, job_metrics

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def _mtimes(root: Path) -> dict[str, int]:
    """What the shared stages wrote: the world's marker, the ingest shards (the ingest subflow re-commits the stage
    summary ``_stats.json`` on every call; its shards are cached tasks), the mini-CLIP job record and weights."""
    files = [
        *root.glob("data/*/world.json"),
        *root.glob("*/frames/*/*.tar"),
        *root.glob("jobs/miniclip-*.json"),
        *root.glob("models/miniclip-*/clip.pt"),
    ]
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in files}


@pytest.mark.timeout(1800)
def test_tiny_ucofia_dag_after_stan_reuses_shared_stages(stan_tiny: tuple[str, dict[str, Any]]) -> None:
    import torch

    from flows.reproduce_ucofia import reproduce_ucofia
    from infra.registry import Registry
    from infra.tracking import Tracker

    root, stan = stan_tiny
    before = _mtimes(Path(root))
    assert {k.split("/")[0] for k in before} == {"data", "mini-retrieval-tiny-s0", "jobs", "models"}, before
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    here = Path.cwd()
    os.chdir(Path(root).parent)  # STAN's working directory: the same root spelled "runs", as a user would
    try:
        out = reproduce_ucofia(root="runs", size="tiny")
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    assert out["root"] == root
    check_golden("ucofia-tiny", job_metrics(root, "ucofia"))
    assert_paths_absolute(Path(root), out)

    # shared stages: same frames stage and mini CLIP run, markers untouched, one mini-CLIP run in MLflow
    assert out["frames_stage"] == stan["frames_stage"]
    assert out["mini_clip"] == stan["mini_clip"]
    assert _mtimes(Path(root)) == before
    tracker = Tracker.for_run_root(root)
    assert len(tracker.client.search_runs([tracker.get_or_create_experiment("mini-clip")])) == 1
    # its own feature stage (projected tokens) beside STAN's block outputs
    assert "/clip-tokens/" in out["features_stage"] and out["features_stage"] != stan["features_stage"]

    head = out["variants"]["ucofia"]
    for block in ("overall", "order", "no_sinkhorn"):
        assert_retrieval_block(head[block])
    assert head["sinkhorn"] is True
    assert set(head["levels"]) == {"video_sentence", "sentence_frame", "patch_word"}
    for level in head["levels"].values():
        assert_retrieval_block(level)
    assert head["model_version"] == 1 and head["reused"] is False
    champion = Registry(tracker).champion("ucofia")
    assert champion is not None and champion["run_id"] == head["run_id"]
    assert len(tracker.client.search_runs([tracker.get_or_create_experiment("stan")])) == 1
