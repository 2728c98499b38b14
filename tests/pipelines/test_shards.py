"""Shard protocol: round trip, commit markers, crash mid-shard, modes, mismatch refusal, unsafe keys."""

from __future__ import annotations

import json
import multiprocessing as mp
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import shards, storage


def _processor(counter: list[str]):
    def process(item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        counter.append(item["key"])
        if item.get("bad"):
            return {"key": item["key"], "status": "failed_decode", "error": "boom"}, None
        arr = np.full((2, 3), int(item["value"]), dtype=np.int16)
        return {"key": item["key"], "status": "ok", "error": ""}, {"npy": arr, "json": {"value": item["value"]}}

    return process


def _job(uri: str, index: int, items: list[dict[str, Any]], mode: shards.Mode = "incremental") -> shards.ShardJob:
    return shards.ShardJob(uri, index, "cfg0", tuple(items), mode)


def test_round_trip_keys_and_arrays_identical(tmp_path):
    uri = str(tmp_path / "stage")
    rng = np.random.default_rng(0)
    samples = [
        (f"vid-{i:03d}", {"npy": rng.integers(0, 255, (3, 4, 4, 3), dtype=np.uint8), "json": {"i": i}})
        for i in range(5)
    ]
    shards.write_shard(uri, 0, samples, [{"key": k, "status": "ok"} for k, _ in samples], {"n_samples": 5})
    back = list(shards.iter_shard(uri, 0))
    assert [k for k, _ in back] == [k for k, _ in samples]
    for (_, got), (_, want) in zip(back, samples):
        np.testing.assert_array_equal(got["npy"], want["npy"])
        assert got["npy"].dtype == want["npy"].dtype
        assert got["json"] == want["json"]
    # a real tar that webdataset tools can read: member names are <key>.<ext>
    with tarfile.open(tmp_path / "stage" / "000000.tar") as tar:
        assert tar.getnames()[:2] == ["vid-000.json", "vid-000.npy"]
    assert shards.committed_shards(uri) == [0]
    assert shards.read_rows(uri, 0)[0]["key"] == "vid-000"


def test_identical_content_gives_byte_identical_shards(tmp_path):
    s = [("a", {"npy": np.arange(4), "json": {"x": 1}})]
    shards.write_shard(str(tmp_path / "one"), 0, s, [{"key": "a", "status": "ok"}], {})
    shards.write_shard(str(tmp_path / "two"), 0, s, [{"key": "a", "status": "ok"}], {})
    assert (tmp_path / "one" / "000000.tar").read_bytes() == (tmp_path / "two" / "000000.tar").read_bytes()


def _killed_writer(uri: str, items: list[dict[str, Any]], die_at: int) -> None:
    import os

    def hook(n: int) -> None:
        if n == die_at:
            os._exit(17)  # as abrupt as a SIGKILL/OOM: no cleanup, no finally blocks

    shards.run_shard(_job(uri, 0, items), _processor([]), on_sample_written=hook)


def test_writer_killed_mid_shard_leaves_nothing_committed_and_rerun_completes(tmp_path):
    uri = str(tmp_path / "stage")
    items = [{"key": f"k{i:02d}", "value": i} for i in range(8)]
    proc = mp.get_context("fork").Process(target=_killed_writer, args=(uri, items, 4))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 17
    folder = tmp_path / "stage"
    assert shards.committed_shards(uri) == []
    assert not (folder / "000000.tar").exists() and not (folder / "000000_stats.json").exists()
    assert list(folder.glob("000000.tar.tmp-*"))  # the half-written temporary is all that is left
    calls: list[str] = []
    summary = shards.run_shard(_job(uri, 0, items), _processor(calls))
    assert summary.action == "written" and calls == [it["key"] for it in items]
    keys = [k for k, _ in shards.iter_shard(uri, 0)]
    assert keys == sorted(set(keys)) == [it["key"] for it in items]  # complete, no duplicates
    assert not list(folder.glob("*.tmp-*"))


def test_incremental_rerun_writes_nothing(tmp_path):
    uri = str(tmp_path / "stage")
    items = [{"key": f"k{i}", "value": i} for i in range(3)]
    shards.run_shard(_job(uri, 0, items), _processor([]))
    tar = tmp_path / "stage" / "000000.tar"
    before = (tar.stat().st_mtime_ns, (tmp_path / "stage" / "000000_stats.json").stat().st_mtime_ns)
    calls: list[str] = []
    summary = shards.run_shard(_job(uri, 0, items), _processor(calls))
    assert summary.action == "skipped" and calls == []
    assert (tar.stat().st_mtime_ns, (tmp_path / "stage" / "000000_stats.json").stat().st_mtime_ns) == before


def test_overwrite_reprocesses_everything(tmp_path):
    uri = str(tmp_path / "stage")
    items = [{"key": f"k{i}", "value": i} for i in range(3)]
    shards.run_shard(_job(uri, 0, items), _processor([]))
    calls: list[str] = []
    assert shards.run_shard(_job(uri, 0, items, "overwrite"), _processor(calls)).action == "written"
    assert calls == ["k0", "k1", "k2"]


def test_retry_failed_reprocesses_only_failed_rows(tmp_path):
    uri = str(tmp_path / "stage")
    items = [{"key": "a", "value": 1}, {"key": "b", "value": 2, "bad": True}, {"key": "c", "value": 3}]
    first = shards.run_shard(_job(uri, 0, items), _processor([]))
    assert first.status_counts == {"failed_decode": 1, "ok": 2} and first.n_samples == 2
    fixed = [dict(it, bad=False) for it in items]
    calls: list[str] = []
    again = shards.run_shard(_job(uri, 0, fixed, "retry-failed"), _processor(calls))
    assert again.action == "retried" and calls == ["b"]
    assert again.status_counts == {"ok": 3}
    got = dict(shards.iter_shard(uri, 0))
    assert sorted(got) == ["a", "b", "c"]
    assert int(got["a"]["npy"][0, 0]) == 1 and int(got["b"]["npy"][0, 0]) == 2
    # nothing failed any more: another retry-failed run is a no-op
    assert shards.run_shard(_job(uri, 0, fixed, "retry-failed"), _processor([])).action == "skipped"


def test_committed_shard_for_other_inputs_is_refused(tmp_path):
    uri = str(tmp_path / "stage")
    shards.run_shard(_job(uri, 0, [{"key": "a", "value": 1}]), _processor([]))
    with pytest.raises(shards.StageMismatchError, match="overwrite"):
        shards.run_shard(_job(uri, 0, [{"key": "a", "value": 1}, {"key": "b", "value": 2}]), _processor([]))
    other_cfg = shards.ShardJob(uri, 0, "cfg1", ({"key": "a", "value": 1},))
    with pytest.raises(shards.StageMismatchError):
        shards.run_shard(other_cfg, _processor([]))


def test_stage_config_or_input_mismatch_is_a_clear_error(tmp_path):
    uri = str(tmp_path / "stage")
    shards.prepare_stage(uri, {"fps": 1}, "h1", "d1", 3, "incremental")
    shards.prepare_stage(uri, {"fps": 1}, "h1", "d1", 3, "incremental")  # same: fine
    with pytest.raises(shards.StageMismatchError, match="different input set"):
        shards.prepare_stage(uri, {"fps": 1}, "h1", "d2", 4, "incremental")
    with pytest.raises(shards.StageMismatchError, match="config hash"):
        shards.prepare_stage(uri, {"fps": 2}, "h2", "d1", 3, "incremental")
    shards.prepare_stage(uri, {"fps": 1}, "h1", "d2", 4, "overwrite")
    assert json.loads((tmp_path / "stage" / "_config.json").read_text())["inputs_digest"] == "d2"


def test_plan_is_a_pure_function_of_the_key_set():
    keys = [f"v{i}" for i in range(10)]
    plan = shards.plan_shards(list(reversed(keys)), 4)
    assert plan == [keys[0:4], keys[4:8], keys[8:10]]
    with pytest.raises(ValueError, match="duplicate"):
        shards.plan_shards(["a", "a"], 4)


@pytest.mark.parametrize("key", ["../escape", "a/b", "a.b", "", "x" * 200, "/abs", "a b"])
def test_unsafe_keys_cannot_escape_the_run_root(tmp_path, key):
    with pytest.raises(storage.UnsafeKeyError):
        shards.write_shard(str(tmp_path / "s"), 0, [(key, {"json": {}})], [], {})
    with pytest.raises(storage.UnsafeKeyError):
        shards.stage_uri(str(tmp_path), key or "..", "frames", "abc")
    assert not any(p.name.startswith("escape") for p in Path(tmp_path).parent.iterdir())


def test_consumers_refuse_uncommitted_stages(tmp_path):
    uri = str(tmp_path / "stage")
    shards.write_shard(uri, 0, [("a", {"json": {}})], [{"key": "a", "status": "ok"}], {})
    with pytest.raises(shards.StageIncompleteError):
        list(shards.iter_stage(uri))
    shards.commit_stage(uri, [{"status_counts": {"ok": 1}, "n_samples": 1}])
    assert [k for k, _ in shards.iter_stage(uri)] == ["a"]
