"""A frames stage on disk is exactly what its inputs and markers say (ingest level, real videos):

- ``--mode overwrite`` with fewer inputs leaves exactly the new set (no old shard stays committed);
- inputs are identified by content, not key names: the same relative names from another folder, or a file replaced
  in place, are decoded again (``updated``), not served from the old shards;
- committed shards are checked against their markers: a truncated or deleted tar, a garbled parquet or a deleted
  marker is redone on the next run and reported (``repaired``) (through the Prefect flow:
  ``tests/flows/test_ingest_repair_flow.py``);
- two ingests into one stage: the second is refused with the holder's pid, or waits for it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import ingest as ing
from pipelines import loaders, shards, storage
from pipelines.decode import DecodeConfig
from tests.media import encode, moving_square

DECODE = DecodeConfig(fps=4, short_side=32, crop=32)


def cfg(per_shard: int) -> ing.IngestConfig:
    return ing.IngestConfig(DECODE, samples_per_shard=per_shard)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five distinct small videos (different seeds: different frames)."""
    folder = tmp_path_factory.mktemp("clips")
    return [encode(folder / f"seed{i}.mp4", moving_square(seed=i)) for i in range(5)]


def folder_of(base: Path, files: dict[str, Path]) -> Path:
    """A source folder holding copies of `files` (mtime kept: a copy is the same content) under the given names."""
    for rel, src in files.items():
        dest = base / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return base


def frames_by_key(uri: str) -> dict[str, np.ndarray]:
    return {k: m["npy"] for k, m in shards.iter_stage(uri)}


# ----------------------------------------------------------------------------------------- 1. overwrite, fewer inputs


def test_overwrite_with_fewer_inputs_leaves_exactly_the_new_set(clips, tmp_path):
    big = folder_of(tmp_path / "big", {f"c{i}.mp4": clips[i % 5] for i in range(8)})
    small = folder_of(tmp_path / "small", {f"c{i}.mp4": clips[i] for i in range(3)})
    root = str(tmp_path / "runs")
    first = ing.ingest(big, root, "set", cfg(2))
    assert first.n_samples == 8 and shards.committed_shards(first.stage_uri) == [0, 1, 2, 3]
    res = ing.ingest(small, root, "set", cfg(2), mode="overwrite")
    assert res.stage_uri == first.stage_uri
    assert res.n_samples == 3 and shards.require_stage(res.stage_uri)["n_samples"] == 3
    assert sorted(frames_by_key(res.stage_uri)) == ["c0", "c1", "c2"]  # was 7 keys: shards 2 and 3 stayed committed
    assert sorted(r["key"] for r in shards.read_manifest(res.stage_uri)) == ["c0", "c1", "c2"]
    assert shards.committed_shards(res.stage_uri) == [0, 1]
    assert loaders.ShardIndex.from_stage(res.stage_uri).n_samples == 3
    assert not list(Path(res.stage_uri).glob("00000[23]*"))


# ---------------------------------------------------------------------------------------- 2. inputs by content


def test_same_names_from_another_folder_and_files_replaced_in_place_are_decoded_again(clips, tmp_path):
    a = folder_of(tmp_path / "A", {"clips/c1.mp4": clips[0], "clips/c2.mp4": clips[2]})
    b = folder_of(tmp_path / "B", {"clips/c1.mp4": clips[1], "clips/c2.mp4": clips[2]})
    c1 = next(r["key"] for r in ing.read_sources(a) if r["path"].endswith("c1.mp4"))
    reference = {  # each folder ingested on its own root: the frames a correct stage must return
        name: frames_by_key(ing.ingest(folder, str(tmp_path / f"ref-{name}"), "ref", cfg(1)).stage_uri)[c1]
        for name, folder in (("A", a), ("B", b))
    }
    assert not np.array_equal(reference["A"], reference["B"])
    root = str(tmp_path / "runs")
    first = ing.ingest(a, root, "clips", cfg(1))
    assert np.array_equal(frames_by_key(first.stage_uri)[c1], reference["A"])

    second = ing.ingest(b, root, "clips", cfg(1))  # same keys, c1 is another file
    assert np.array_equal(frames_by_key(second.stage_uri)[c1], reference["B"])  # was A's frames
    assert (second.shards_skipped, second.shards_written) == (1, 1)  # c2 is the same file: reused
    assert second.shards_updated == 1
    assert second.redone == [{"index": 0, "action": "updated", "reason": f"inputs changed: {c1}"}]
    assert {r["key"]: r["source"] for r in shards.read_manifest(second.stage_uri)}[c1] == str(b / "clips" / "c1.mp4")

    shutil.copyfile(clips[0], b / "clips" / "c1.mp4")  # replaced in place, back to A's video
    third = ing.ingest(b, root, "clips", cfg(1))
    assert (third.shards_updated, third.shards_skipped) == (1, 1)
    assert np.array_equal(frames_by_key(third.stage_uri)[c1], reference["A"])
    assert ing.ingest(b, root, "clips", cfg(1)).shards_written == 0  # unchanged: nothing to do


def test_fingerprint_sees_a_same_size_rewrite_that_keeps_its_mtime(tmp_path):
    f = tmp_path / "v.mp4"
    f.write_bytes(b"a" * 5000)
    before = storage.fingerprint(str(f))
    st = f.stat()
    f.write_bytes(b"b" * 5000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert storage.fingerprint(str(f)) != before
    assert storage.fingerprint(str(tmp_path / "nope.mp4")) == "missing"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(3 << 20))
    assert storage.fingerprint(str(big)).startswith(f"{3 << 20}:")


# ---------------------------------------------------------------------------------------- 5. damaged committed shards


def damage_stage(stage: Path) -> None:
    """Truncate shard 0's tar, delete shard 1's, garble shard 2's parquet, delete shard 3's marker."""
    tar0 = stage / "000000.tar"
    tar0.write_bytes(tar0.read_bytes()[:1000])  # truncated
    (stage / "000001.tar").unlink()  # deleted
    (stage / "000002.parquet").write_bytes(b"PAR1 but not really")  # garbled
    (stage / "000003_stats.json").unlink()  # marker deleted


def test_a_damaged_stage_is_repaired_by_the_next_run_which_reports_what_it_redid(clips, tmp_path):
    src = folder_of(tmp_path / "src", {f"v{i}.mp4": clips[i] for i in range(5)})
    root = str(tmp_path / "runs")
    first = ing.ingest(src, root, "dmg", cfg(1))
    stage = Path(first.stage_uri)
    want = frames_by_key(first.stage_uri)
    damage_stage(stage)

    again = ing.ingest(src, root, "dmg", cfg(1))
    assert (again.shards_skipped, again.shards_written) == (1, 4)  # was (4, 1): damaged shards were "skipped"
    assert again.shards_repaired == 4 and first.shards_repaired == 0 and first.redone == []
    reasons = {r["index"]: r["reason"] for r in again.redone}
    assert sorted(reasons) == [0, 1, 2, 3] and {r["action"] for r in again.redone} == {"repaired"}
    assert reasons[0] == f"000000.tar has 1000 bytes, its marker records {first_size(stage, 0)}"
    assert reasons[1] == "000001.tar is missing"
    assert reasons[2].startswith("000002.parquet has 19 bytes")
    assert reasons[3] == "000003.tar and 000003.parquet without a commit marker"
    got = frames_by_key(again.stage_uri)
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert len(shards.read_manifest(again.stage_uri)) == 5 and again.n_samples == 5
    assert shards.damaged_shards(again.stage_uri) == {}
    final = ing.ingest(src, root, "dmg", cfg(1))
    assert (final.shards_skipped, final.shards_repaired) == (5, 0)


def first_size(stage: Path, index: int) -> int:
    return int(shards.shard_stats(str(stage), index)["files"][f"{index:06d}.tar"]["size"])  # type: ignore[index]


# ---------------------------------------------------------------------------------------- 8. concurrent writers


def _hold(uri: str, locked: Any, release: Any) -> None:
    shards.acquire_stage_lock(uri)
    locked.set()
    release.wait(60)
    shards.release_stage_lock(uri)


def test_a_second_ingest_into_a_busy_stage_is_refused_with_the_holders_pid_or_waits(clips, tmp_path):
    src = folder_of(tmp_path / "src", {f"v{i}.mp4": clips[i] for i in range(2)})
    root = str(tmp_path / "runs")
    uri = shards.stage_uri(root, "busy", ing.FRAMES_STAGE, cfg(1).hash())
    ctx = mp.get_context("fork")
    locked, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(uri, locked, release))  # another ingest, planning or writing this stage
    other.start()
    assert locked.wait(30)
    with pytest.raises(shards.StageBusyError, match=f"in use by pid {other.pid} "):
        ing.ingest(src, root, "busy", cfg(1))
    assert not list(Path(uri).glob("0*"))  # refused before anything was written
    t0 = time.monotonic()
    release_later = ctx.Process(target=_set_after, args=(release, 1.0))
    release_later.start()
    res = ing.ingest(src, root, "busy", cfg(1), lock_wait_s=60)  # waits for the other run, then ingests
    assert time.monotonic() - t0 >= 1.0 and res.n_samples == 2 and res.shards_written == 2
    other.join(30)
    release_later.join(30)
    assert not (Path(uri) / shards.LOCK_NAME).exists()  # released at the end of the run


def _set_after(event: Any, seconds: float) -> None:
    time.sleep(seconds)
    event.set()


def test_a_failed_ingest_releases_its_lock_and_a_killed_ones_is_taken_over(clips, tmp_path, monkeypatch):
    src = folder_of(tmp_path / "src", {f"v{i}.mp4": clips[i] for i in range(2)})
    root = str(tmp_path / "runs")

    def boom(item: Any, cfg: Any, digest: str) -> Any:
        raise RuntimeError("injected")

    with monkeypatch.context() as m:
        m.setattr(ing, "ingest_item", boom)
        with pytest.raises(RuntimeError, match="injected"):
            ing.ingest(src, root, "lk", cfg(1))
    uri = shards.stage_uri(root, "lk", ing.FRAMES_STAGE, cfg(1).hash())
    assert not (Path(uri) / shards.LOCK_NAME).exists()

    ctx = mp.get_context("fork")
    locked, release = ctx.Event(), ctx.Event()
    killed = ctx.Process(target=_hold, args=(uri, locked, release))
    killed.start()
    assert locked.wait(30)
    stale_tmp = Path(uri) / f"000000.tar.tmp-h{storage.HOST_TAG}p{killed.pid}_deadbeef"
    stale_tmp.write_bytes(b"half a tar")
    killed.kill()
    killed.join(30)
    res = ing.ingest(src, root, "lk", cfg(1))  # the dead holder's lock is stale: taken over, its temporary removed
    assert res.n_samples == 2 and not stale_tmp.exists()
    assert not list(Path(uri).glob("*.tmp-*")) and not (Path(uri) / shards.LOCK_NAME).exists()
