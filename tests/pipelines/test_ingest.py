"""Ingest without Prefect: sources, one manifest row per input, reruns, mismatch refusal, flat memory."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipelines import ingest as ing
from pipelines import shards
from pipelines.decode import DecodeConfig
from tests.media import bad_inputs, encode, moving_square

CFG = ing.IngestConfig(DecodeConfig(fps=4, short_side=32, crop=32), samples_per_shard=3)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    bad_inputs(folder)
    for i in range(3):
        encode(folder / "sub dir" / f"clip.{i}.mp4", moving_square(seed=i))
    return folder


def test_every_input_yields_exactly_one_manifest_row(mixed_folder, tmp_path):
    res = ing.ingest(mixed_folder, str(tmp_path), "mixed", CFG)
    rows = shards.read_manifest(res.stage_uri)
    files = [p for p in mixed_folder.rglob("*") if p.is_file()]
    assert len(rows) == len(files) == res.n_inputs == 10
    assert len({r["key"] for r in rows}) == len(rows)
    assert res.status_counts == {"decoded_with_errors": 2, "empty": 1, "failed_probe": 3, "ok": 4}
    # the bad inputs never affected their shard-mates: every usable video is in a tar
    keys = [k for k, _ in shards.iter_stage(res.stage_uri)]
    usable = sorted(r["key"] for r in rows if r["status"] in ("ok", "decoded_with_errors"))
    assert sorted(keys) == usable and res.n_samples == 6
    failed = [r for r in rows if r["status"] == "failed_probe"]
    assert all("Invalid data" in r["error"] for r in failed)  # the real cause, from ffmpeg's stderr
    assert res.failure_ratio == pytest.approx(0.6)  # decoded_with_errors counts (README: ingest)


def test_keys_are_safe_and_unique_for_awkward_names(mixed_folder, tmp_path):
    rows = ing.read_sources(mixed_folder)
    keys = {r["key"] for r in rows}
    assert all(shards.storage.KEY_PATTERN.match(k) for k in keys)
    awkward = [k for k in keys if k.startswith("sub_dir_clip")]
    assert len(awkward) == 3 and len(set(awkward)) == 3


def test_csv_source_carries_captions_labels_and_missing_files(tmp_path):
    encode(tmp_path / "v" / "a.mp4")
    with open(tmp_path / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "key", "split", "label", "captions", "extra"])
        w.writerow(["v/a.mp4", "vid-a", "train", "cat", json.dumps(["a red square", "a square moving"]), "x"])
        w.writerow(["v/nope.mp4", "vid-b", "test", '["dog", "cat"]', "a lone caption", "y"])
    res = ing.ingest(tmp_path / "list.csv", str(tmp_path / "runs"), "csvset", CFG)
    rows = {r["key"]: r for r in shards.read_manifest(res.stage_uri)}
    assert rows["vid-a"]["status"] == "ok" and rows["vid-b"]["status"] == "missing"
    assert rows["vid-a"]["captions"] == ["a red square", "a square moving"]
    assert rows["vid-b"]["label"] == ["dog", "cat"] and rows["vid-b"]["captions"] == ["a lone caption"]
    ((_, sample),) = shards.iter_stage(res.stage_uri)
    assert sample["json"]["label"] == "cat" and sample["json"]["split"] == "train"
    assert sample["json"]["extra"] == {"extra": "x"}  # user columns live under "extra"
    assert sample["npy"].shape == (12, 32, 32, 3)


def test_bad_csv_is_a_clear_error(tmp_path):
    (tmp_path / "a.csv").write_text("file,caption\nx.mp4,hi\n")
    with pytest.raises(ing.SourceError, match="'path' column"):
        ing.read_sources(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,key\nx.mp4,../up\n")
    with pytest.raises(ing.SourceError, match="unsafe sample key"):
        ing.read_sources(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("path,key\nx.mp4,k\ny.mp4,k\n")
    with pytest.raises(ing.SourceError, match="duplicate keys"):
        ing.read_sources(tmp_path / "c.csv")


def test_incremental_rerun_writes_nothing_and_changed_inputs_are_refused(mixed_folder, tmp_path):
    first = ing.ingest(mixed_folder, str(tmp_path), "mixed", CFG)
    stage = Path(first.stage_uri)
    mtimes = {p.name: p.stat().st_mtime_ns for p in stage.iterdir() if p.name != "_stats.json"}
    second = ing.ingest(mixed_folder, str(tmp_path), "mixed", CFG)
    assert second.shards_written == 0 and second.shards_skipped == 4
    assert {p.name: p.stat().st_mtime_ns for p in stage.iterdir() if p.name != "_stats.json"} == mtimes
    assert second.status_counts == first.status_counts
    extra = tmp_path / "more"
    encode(extra / "new.mp4")
    for p in mixed_folder.rglob("*"):
        if p.is_file():
            dest = extra / p.relative_to(mixed_folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes())
    with pytest.raises(shards.StageMismatchError, match="different input set"):
        ing.ingest(extra, str(tmp_path), "mixed", CFG)
    # a different decode config is a different stage folder: no mixing either way
    other = ing.ingest(
        mixed_folder, str(tmp_path), "mixed", ing.IngestConfig(DecodeConfig(fps=2, short_side=32, crop=32), 3)
    )
    assert other.stage_uri != first.stage_uri


def test_retry_failed_after_the_input_is_fixed(tmp_path):
    src = tmp_path / "src"
    encode(src / "a.mp4")
    (src / "b.mp4").write_bytes(b"not a video")
    first = ing.ingest(src, str(tmp_path / "runs"), "fix", CFG)
    assert first.status_counts == {"failed_probe": 1, "ok": 1}
    encode(src / "b.mp4", moving_square(seed=5))
    again = ing.ingest(src, str(tmp_path / "runs"), "fix", CFG, mode="retry-failed")
    assert again.status_counts == {"ok": 2} and again.shards_written == 1


def test_timeouts_do_not_change_the_stage_hash():
    a = ing.IngestConfig(DecodeConfig(fps=4, timeout_s=10))
    b = ing.IngestConfig(DecodeConfig(fps=4, timeout_s=999))
    c = ing.IngestConfig(DecodeConfig(fps=5, timeout_s=10))
    assert a.hash() == b.hash() != c.hash()


def _peak_bytes(folder: Path, root: Path) -> int:
    tracemalloc.start()
    ing.ingest(folder, str(root), "mem", ing.IngestConfig(DecodeConfig(fps=8, short_side=64, crop=64), 2), workers=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_peak_memory_does_not_grow_with_the_number_of_videos(tmp_path):
    few, many = tmp_path / "few", tmp_path / "many"
    for i in range(12):
        frames = moving_square(t=40, seed=i)
        if i < 2:
            encode(few / f"v{i}.mp4", frames)
        encode(many / f"v{i}.mp4", frames)
    peak_few = _peak_bytes(few, tmp_path / "r1")
    peak_many = _peak_bytes(many, tmp_path / "r2")
    one_video = 40 * 64 * 64 * 3
    assert peak_many < peak_few + 2 * one_video, (peak_few, peak_many)
    assert np.isfinite(peak_many)


def test_ingest_spools_each_decode_and_leaves_no_spool_behind(mixed_folder, tmp_path, monkeypatch):
    """Every usable decode of an ingest goes through a spool file in the stage folder (never the whole video in
    memory); the samples read back are the in-memory decode's frames, and no temporary is left."""
    from pipelines.decode import decode_video

    real, spooled = ing.decode_video, []

    def watching(path, cfg):
        res = real(path, cfg)
        if res.status in ("ok", "decoded_with_errors"):
            assert res.frames is None and res.spooled is not None
            assert res.spooled.path.parent == Path(res_uri[0])  # in the stage folder, not a RAM-backed /tmp
            spooled.append(Path(path).name)
        return res

    res_uri = [shards.stage_uri(str(tmp_path), "spool", ing.FRAMES_STAGE, CFG.hash())]
    monkeypatch.setattr(ing, "decode_video", watching)
    res = ing.ingest(mixed_folder, str(tmp_path), "spool", CFG)
    assert res.stage_uri == res_uri[0] and len(spooled) == res.n_samples == 6
    assert [p.name for p in Path(res.stage_uri).iterdir() if ".tmp-" in p.name] == []
    sources = {r["key"]: r["source"] for r in shards.read_manifest(res.stage_uri)}
    for key, members in shards.iter_stage(res.stage_uri):
        frames = decode_video(sources[key], CFG.decode).frames
        assert frames is not None and np.array_equal(members["npy"], frames)


def test_retry_failed_copies_the_good_samples_without_loading_them(tmp_path):
    """retry-failed keeps a shard's good samples by streaming their members from the committed tar (the same bytes),
    not by reading the shard into memory; the fixed input is decoded through a spool like any other."""
    src, root = tmp_path / "src", str(tmp_path / "runs")
    cfg = ing.IngestConfig(DecodeConfig(fps=8, short_side=64, crop=64), samples_per_shard=2)
    encode(src / "a.mp4", moving_square(t=480), fps=8.0)  # 480 frames of 64² RGB: 5.9 MB kept
    (src / "b.mp4").write_bytes(b"not a video")
    first = ing.ingest(src, root, "keep", cfg, workers=1)
    before = dict(shards.iter_shard(first.stage_uri, 0, decode=False))["a"]
    encode(src / "b.mp4", moving_square(t=8, seed=5))
    uri, jobs = ing.plan_ingest(ing.read_sources(src), root, "keep", cfg, mode="retry-failed")
    shards.read_rows(uri, 0)  # pyarrow imports its dataset module on a first read: not what is measured
    try:
        tracemalloc.start()  # the shard's work only (planning reads each input's first and last MiB to identify it)
        summary = ing.ingest_shard(jobs[0], cfg)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        shards.release_stage_lock(uri)
    assert summary.action == "updated" and summary.processed == 1 and summary.status_counts == {"ok": 2}
    kept = before["npy"]
    assert dict(shards.iter_shard(uri, 0, decode=False))["a"] == before  # byte for byte
    # ~1 MiB: a constant (the parquet checksum reads 1 MiB blocks) and copy blocks; the old path held every kept member
    assert peak < len(kept) / 3, (peak, len(kept))
    assert [p.name for p in Path(uri).iterdir() if ".tmp-" in p.name] == []
