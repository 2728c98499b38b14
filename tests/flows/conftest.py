"""One temporary Prefect API for the whole flow test session (starting one costs ~20 s on 2 cores)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@contextmanager
def relative_root(base: Path, cwd: str = "elsewhere") -> Iterator[tuple[str, Path]]:
    """Work from ``base/<cwd>`` (not the repository) with the run root spelled ``"runs"``, the README's default:
    yields (the relative spelling, the folder it means); the working directory is restored afterwards."""
    here = Path.cwd()
    work = base / cwd
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    try:
        yield "runs", work / "runs"
    finally:
        os.chdir(here)


def assert_paths_absolute(root: Path, *outputs: Any) -> None:
    """Every path recorded under `root` (job records, model folders' job.json, Prefect's cached results) and in the
    flows' `outputs` is absolute and still resolves: the contract `storage.resolve_root` keeps."""
    from infra.cache_records import stale_reason

    records = [*root.glob("jobs/*.json"), *root.glob("models/*/job.json"), *root.glob(".prefect/results/*")]
    assert any(p.parent.name == "jobs" for p in records), f"no job record under {root}"
    for path in records:
        data = json.loads(path.read_text())
        assert stale_reason(data) is None, f"{path}: {stale_reason(data)}"
        if path.name == "job.json":
            assert data["root"] == str(root), path
    for out in outputs:
        assert stale_reason(out) is None, stale_reason(out)
