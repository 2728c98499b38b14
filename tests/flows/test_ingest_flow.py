"""The ingest Prefect flow: cached shards across reruns, transient-only retries, the table artifact."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipelines import ingest as ing
from tests.media import bad_inputs, encode, moving_square

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    bad_inputs(folder)
    for i in range(3):
        encode(folder / f"clip{i}.mp4", moving_square(seed=i))
    return folder


def _task_states(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return sorted(r.state.name for r in runs if r.state is not None)

    return asyncio.run(read())


def _counting_decoder(monkeypatch: pytest.MonkeyPatch, fail_key: str | None = None, exc: type[Exception] = ValueError):
    calls: list[str] = []
    real = ing.decode_video
    failed = {"n": 0}

    def decode(path: Any, cfg: Any) -> Any:
        key = Path(path).stem
        calls.append(key)
        if key == fail_key and failed["n"] == 0:
            failed["n"] += 1
            raise exc(f"injected failure while decoding {key}")
        return real(path, cfg)

    monkeypatch.setattr(ing, "decode_video", decode)
    return calls


def test_flow_rerun_after_a_failure_reuses_finished_shards(videos, tmp_path, monkeypatch):
    from flows.ingest import ingest_flow

    root = str(tmp_path / "runs")
    kwargs = {
        "source": str(videos),
        "root": root,
        "dataset": "mixed",
        "fps": 4.0,
        "size": 32,
        "crop": 32,
        "samples_per_shard": 3,
    }
    calls = _counting_decoder(monkeypatch, fail_key="good")  # a bug-like (non-transient) error in one shard
    state = ingest_flow(**kwargs, return_state=True)
    assert state.is_failed()
    first_calls = list(calls)
    assert calls.count("good") == 1  # deterministic errors are not retried

    calls.clear()
    state = ingest_flow(**kwargs, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result["n_inputs"] == 10 and result["status_counts"]["ok"] == 4
    # only the shard that failed was decoded again; the others came back from Prefect's cache
    failed_shard_keys = {"good", "midcorrupt", "notes"}
    assert set(calls) == failed_shard_keys and len(first_calls) > len(calls)
    states = _task_states(state.state_details.flow_run_id)
    assert states.count("Cached") == 3 and states.count("Completed") == 1

    # a third run does no decoding at all
    calls.clear()
    assert ingest_flow(**kwargs)["n_samples"] == result["n_samples"] and calls == []


def test_transient_errors_are_retried(videos, tmp_path, monkeypatch):
    from flows.ingest import ingest_flow

    calls = _counting_decoder(monkeypatch, fail_key="clip0", exc=ConnectionError)
    result = ingest_flow(str(videos), str(tmp_path / "runs"), "mixed", 4.0, 32, 32, 3)
    assert calls.count("clip0") == 2  # failed once, retried once
    assert result["status_counts"]["ok"] == 4


def test_vanished_shards_are_rebuilt_despite_the_cache(videos, tmp_path):
    from flows.ingest import ingest_flow

    root = tmp_path / "runs"
    first = ingest_flow(str(videos), str(root), "mixed", 4.0, 32, 32, 3)
    stage = Path(first["stage_uri"])
    (stage / "000001_stats.json").unlink()
    (stage / "000001.tar").unlink()
    second = ingest_flow(str(videos), str(root), "mixed", 4.0, 32, 32, 3)
    assert (stage / "000001_stats.json").exists() and (stage / "000001.tar").exists()
    assert second["n_samples"] == first["n_samples"]


def test_table_artifact_has_per_shard_status_counts(videos, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.ingest import ingest_flow

    ingest_flow(str(videos), str(tmp_path / "runs"), "artifact-test", 4.0, 32, 32, 3)

    async def latest() -> Any:
        async with get_client() as client:
            return await client.read_latest_artifacts()

    arts = [a for a in asyncio.run(latest()) if a.key == "ingest-artifact-test"]
    assert arts and arts[0].type == "table"
    table = arts[0].data if isinstance(arts[0].data, list) else __import__("json").loads(arts[0].data)
    assert [r["shard"] for r in table] == [0, 1, 2, 3]
    assert sum(r.get("ok", 0) for r in table) == 4
