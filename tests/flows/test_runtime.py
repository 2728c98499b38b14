"""Cached task results are checked before they are reused (`flows.runtime.CheckedCache`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from flows.runtime import cached_task, prefect_dir
from infra.cache_records import stale_reason

RUNS: list[str] = []


@task
def make_artefact(root: str, name: str) -> dict[str, Any]:
    """Writes ``<root>/out/<name>/model.pt`` and returns where, like every stage task does."""
    RUNS.append(name)
    folder = Path(root, "out", name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"weights")
    return {"model_dir": str(folder), "checkpoint": str(folder / "model.pt"), "metric": 0.5, "name": "t2v/R@1"}


@flow
def one_stage(root: str, name: str) -> dict[str, Any]:
    return cached_task(make_artefact, root)(root, name)


def _records(root: str) -> list[Path]:
    return sorted(p for p in (prefect_dir(root) / "cache-keys").iterdir() if p.is_file())


@pytest.mark.usefixtures("prefect_harness")
def test_a_result_whose_artefacts_are_gone_is_recomputed_not_replayed(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    RUNS.clear()
    first = one_stage(root, "a")
    assert RUNS == ["a"]
    assert one_stage(root, "a") == first and RUNS == ["a"], "an intact result must be reused"
    (meta,) = _records(root)
    assert json.loads(meta.read_text())["serializer"]["type"] == "json", "results are stored as JSON, never pickled"

    os.remove(first["checkpoint"])  # the artefact the cached result names is gone
    again = one_stage(root, "a")
    assert RUNS == ["a", "a"], "a result naming a missing file must run again"
    assert again == first and Path(again["checkpoint"]).is_file()
    assert one_stage(root, "a") == first and RUNS == ["a", "a"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_record_that_is_not_json_is_dropped_unread(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    RUNS.clear()
    one_stage(root, "b")
    (meta,) = _records(root)
    record = json.loads(meta.read_text())
    record["serializer"] = {"type": "pickle", "picklelib": "cloudpickle"}  # what a tampered run root could hold
    meta.write_text(json.dumps(record))
    one_stage(root, "b")
    assert RUNS == ["b", "b"]
    (meta,) = _records(root)
    assert json.loads(meta.read_text())["serializer"]["type"] == "json"


def test_stale_reason_names_missing_and_relative_paths(tmp_path: Path) -> None:
    there = tmp_path / "x.pt"
    there.write_bytes(b"")
    assert stale_reason({"a": {"checkpoint": str(there)}, "m": 1.0, "metric": "t2v/R@1"}) is None
    assert stale_reason({"stage_uri": "s3://bucket/runs/x"}) is None, "remote stages are checked by their markers"
    assert stale_reason({"note": "see the README / docs"}) is None, "free text is not a path"
    assert "no longer exists" in str(stale_reason({"rows": [{"model_dir": str(tmp_path / "gone")}]}))
    assert "no longer exists" in str(stale_reason({"clip_checkpoint": f"file://{tmp_path}/gone.pt"}))
    reason = stale_reason({"clip_checkpoint": "runs/models/miniclip-x/clip.pt"})
    assert reason is not None and "relative" in reason
