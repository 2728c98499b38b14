"""Shard protocol: round trip, commit markers, crash mid-shard, modes, mismatch refusal, unsafe keys; overwrite
leaves exactly the new set, content changes and damaged shards are redone, the stage lock."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import tarfile
import threading
import time
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


# ------------------------------------------------------------------- stage integrity (overwrite, content, damage, lock)


def _fp_job(uri: str, items: list[dict[str, Any]], mode: shards.Mode = "incremental") -> shards.ShardJob:
    return shards.ShardJob(uri, 0, "cfg0", tuple(items), mode)


def _committed_stage(uri: str, n_shards: int) -> list[dict[str, Any]]:
    summaries = []
    for i in range(n_shards):
        items = [{"key": f"s{i}k{j}", "value": 10 * i + j} for j in range(2)]
        summaries.append(shards.run_shard(_job(uri, i, items), _processor([])).as_dict())
    shards.commit_stage(uri, summaries)
    return summaries


def test_overwrite_removes_every_shard_of_the_old_stage_before_anything_is_written(tmp_path):
    uri = str(tmp_path / "stage")
    shards.prepare_stage(uri, {}, "cfg0", "old", 6, "incremental")
    _committed_stage(uri, 3)
    assert shards.committed_shards(uri) == [0, 1, 2] and shards.stage_stats(uri) is not None
    shards.prepare_stage(uri, {}, "cfg0", "new", 2, "overwrite")
    assert shards.stage_stats(uri) is None and shards.committed_shards(uri) == []
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["_config.json"]


def test_commit_stage_uncommits_shards_that_no_summary_names(tmp_path):
    uri = str(tmp_path / "stage")
    summaries = _committed_stage(uri, 3)
    stats = shards.commit_stage(uri, summaries[:1])
    assert stats["n_samples"] == 2 and shards.committed_shards(uri) == [0]
    assert [k for k, _ in shards.iter_stage(uri)] == ["s0k0", "s0k1"]  # readers return what the marker says
    (tmp_path / "stage" / "000000_stats.json").unlink()
    with pytest.raises(shards.StageIncompleteError, match=r"\[0\]"):
        shards.commit_stage(uri, summaries[:1])


def test_changed_content_under_the_same_keys_is_redone(tmp_path):
    uri = str(tmp_path / "stage")
    items = [{"key": "a", "value": 1, "fingerprint": "100:1:aa"}, {"key": "b", "value": 2, "fingerprint": "100:1:bb"}]
    shards.run_shard(_fp_job(uri, items), _processor([]))
    calls: list[str] = []
    assert shards.run_shard(_fp_job(uri, items), _processor(calls)).action == "skipped" and calls == []
    replaced = [dict(items[0]), {"key": "b", "value": 7, "fingerprint": "120:2:cc"}]
    summary = shards.run_shard(_fp_job(uri, replaced), _processor(calls))
    assert (summary.action, calls) == ("updated", ["a", "b"])
    assert summary.reason == "inputs changed: b"
    got = dict(shards.iter_shard(uri, 0))
    assert int(got["b"]["npy"][0, 0]) == 7 and int(got["a"]["npy"][0, 0]) == 1
    assert {r["key"]: r["fingerprint"] for r in shards.read_rows(uri, 0)} == {"a": "100:1:aa", "b": "120:2:cc"}
    # other keys are still another input set
    with pytest.raises(shards.StageMismatchError):
        shards.run_shard(_fp_job(uri, [{"key": "a", "value": 1, "fingerprint": "100:1:aa"}]), _processor([]))


def test_retry_failed_does_not_keep_a_sample_whose_input_changed(tmp_path):
    uri = str(tmp_path / "stage")
    items = [
        {"key": "a", "value": 1, "fingerprint": "f1"},
        {"key": "b", "value": 2, "bad": True, "fingerprint": "f1"},
        {"key": "c", "value": 3, "fingerprint": "f1"},
    ]
    shards.run_shard(_fp_job(uri, items), _processor([]))
    changed = [{"key": "a", "value": 10, "fingerprint": "f2"}, {**items[1], "bad": False}, items[2]]
    calls: list[str] = []
    summary = shards.run_shard(_fp_job(uri, changed, "retry-failed"), _processor(calls))
    assert summary.action == "updated" and calls == ["a", "b"]  # c is kept from the committed tar
    got = dict(shards.iter_shard(uri, 0))
    assert [int(got[k]["npy"][0, 0]) for k in "abc"] == [10, 2, 3]


def test_items_without_fingerprints_keep_the_key_digest_of_existing_markers():
    items = ({"key": "a"}, {"key": "b"})
    job = shards.ShardJob("u", 0, "h", items)
    assert job.inputs_digest == shards.digest_keys(["a", "b"]) == job.keys_digest
    with_fp = shards.ShardJob("u", 0, "h", ({"key": "a", "fingerprint": "1"}, {"key": "b", "fingerprint": "2"}))
    assert with_fp.inputs_digest != job.inputs_digest and with_fp.keys_digest == job.keys_digest
    assert shards.ShardJob.from_dict(with_fp.to_dict()) == with_fp
    repaired = shards.ShardJob("u", 0, "h", items, repair="000000.tar is missing")
    assert shards.ShardJob.from_dict(repaired.to_dict()) == repaired
    assert "repair" not in job.to_dict()  # a job of an intact shard keeps its old dict (and cache key)
    old = {"stage_uri": "u", "index": 0, "config_hash": "h", "items": [{"key": "a"}]}
    assert shards.ShardJob.from_dict(old).repair == ""


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _same_size_garbage(p: Path) -> None:
    p.write_bytes(b"\x00" * p.stat().st_size)


DAMAGE = {
    "truncated tar": ("000000.tar", _truncate, "000000.tar has"),
    "deleted tar": ("000000.tar", Path.unlink, "000000.tar is missing"),
    "garbage parquet": ("000000.parquet", lambda p: p.write_bytes(b"garbage"), "000000.parquet has 7 bytes"),
    "same-size garbage parquet": ("000000.parquet", _same_size_garbage, "000000.parquet does not match"),
    "deleted marker": ("000000_stats.json", Path.unlink, "000000.tar and 000000.parquet without a commit marker"),
    "garbage marker": ("000000_stats.json", lambda p: p.write_bytes(b"{not json"), "000000_stats.json is unreadable"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_committed_shard_is_repaired_and_reported(tmp_path, damage):
    uri = str(tmp_path / "stage")
    items = [{"key": f"k{i}", "value": i} for i in range(3)]
    shards.run_shard(_job(uri, 0, items), _processor([]))
    shards.commit_stage(uri, [{"index": 0, "n_samples": 3, "status_counts": {"ok": 3}}])
    name, damage_fn, reason = DAMAGE[damage]
    damage_fn(tmp_path / "stage" / name)
    calls: list[str] = []
    summary = shards.run_shard(_job(uri, 0, items), _processor(calls))
    assert summary.action == "repaired" and reason in summary.reason and summary.as_dict()["reason"] == summary.reason
    assert calls == ["k0", "k1", "k2"]
    assert shards.stage_stats(uri) is None  # the stage was un-committed until it is committed again
    got = dict(shards.iter_shard(uri, 0))
    assert sorted(got) == ["k0", "k1", "k2"] and [int(got[k]["npy"][0, 0]) for k in sorted(got)] == [0, 1, 2]
    assert [r["key"] for r in shards.read_rows(uri, 0)] == ["k0", "k1", "k2"]
    assert shards.verify_shard(uri, 0) == "" and shards.damaged_shards(uri) == {}
    assert shards.run_shard(_job(uri, 0, items), _processor([])).action == "skipped"


def test_markers_record_sizes_and_checksums_and_deep_checks_read_the_tar(tmp_path):
    uri = str(tmp_path / "stage")
    shards.run_shard(_job(uri, 0, [{"key": "a", "value": 1}]), _processor([]))
    files = shards.shard_stats(uri, 0)["files"]  # type: ignore[index]
    tar = tmp_path / "stage" / "000000.tar"
    assert files["000000.tar"]["size"] == tar.stat().st_size
    assert files["000000.tar"]["sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes: only the checksum sees it
    tar.write_bytes(bytes(data))
    assert shards.verify_shard(uri, 0) == ""
    assert "000000.tar does not match" in shards.verify_shard(uri, 0, deep=True)
    assert shards.damaged_shards(uri, deep=True) == {0: "000000.tar does not match its recorded SHA-256"}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_second_writer_does_not_delete_a_live_writers_temporary(tmp_path):
    uri = str(tmp_path / "stage")
    items = [{"key": "a", "value": 1}]
    with shards.ShardWriter(uri, 0) as first:  # a live writer, half way through shard 0
        first.add("a", {"npy": np.zeros(2)})
        # another writer runs the same shard meanwhile: it used to delete `first`'s temporary tar
        shards.run_shard(_job(uri, 0, items), _processor([]))
        first.commit([{"key": "a", "status": "ok"}], {"n_samples": 1})  # FileNotFoundError before
    assert [k for k, _ in shards.iter_shard(uri, 0)] == ["a"]
    # ... while what a dead writer left is removed
    dead = tmp_path / "stage" / f"000000.parquet.tmp-h{storage.HOST_TAG}p{_dead_pid()}_0badc0de"
    dead.write_bytes(b"left by a killed writer")
    assert shards.clean_temporaries(uri, 0) == 1 and not dead.exists()


def _hold_lock(uri: str, locked: Any, release: Any) -> None:
    shards.acquire_stage_lock(uri)
    with shards.ShardWriter(uri, 7) as writer:  # a temporary of this writer, left behind if it is killed
        writer.add("x", {"json": {}})
        locked.set()
        release.wait(60)
    shards.release_stage_lock(uri)


def test_the_stage_lock_names_its_holder_waits_for_it_and_takes_over_a_dead_ones(tmp_path):
    uri = str(tmp_path / "stage")
    ctx = mp.get_context("fork")

    def holder() -> tuple[Any, Any, Any]:
        locked, release = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_hold_lock, args=(uri, locked, release))
        proc.start()
        assert locked.wait(30)
        return proc, locked, release

    proc, _, release = holder()
    with pytest.raises(shards.StageBusyError, match=f"in use by pid {proc.pid} on "):
        shards.acquire_stage_lock(uri)
    t0 = time.monotonic()
    with pytest.raises(shards.StageBusyError):
        shards.acquire_stage_lock(uri, wait_s=0.6, poll_s=0.1)
    assert time.monotonic() - t0 >= 0.6
    threading.Timer(0.5, release.set).start()
    record = shards.acquire_stage_lock(uri, wait_s=30, poll_s=0.1)  # waits until the holder releases it
    assert record["pid"] == os.getpid()
    proc.join(30)
    assert shards.release_stage_lock(uri) and not (tmp_path / "stage" / shards.LOCK_NAME).exists()

    proc, _, _ = holder()
    temporaries = list((tmp_path / "stage").glob("000007.tar.tmp-*"))
    assert len(temporaries) == 1
    proc.kill()
    proc.join(30)
    shards.acquire_stage_lock(uri)  # the holder is dead: its lock is stale, its temporary is removed
    assert not temporaries[0].exists()
    assert shards.release_stage_lock(uri) and not shards.release_stage_lock(uri)
