"""Ingest sources: user CSV columns stay in their own namespace, and no odd entry aborts the run or loses its row
(non-UTF-8 names, same stem with two extensions, broken links, link loops, directories named like videos)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from pipelines import ffmpeg as ff
from pipelines import ingest as ing
from pipelines import shards
from pipelines.decode import DecodeConfig, decode_video
from tests.media import encode, moving_square

CFG = ing.IngestConfig(DecodeConfig(fps=4, short_side=32, crop=32), samples_per_shard=4)


# ---- item 4 ------------------------------------------------------------------------------------------------------


def test_csv_columns_never_overwrite_measured_metadata(tmp_path):
    video = encode(tmp_path / "v" / "a.mp4")  # 3 s at 8 fps
    user = {"fps": "999", "duration": "-1", "timestamps": "[9]", "source": "elsewhere", "status": "bogus", "note": "n"}
    with open(tmp_path / "list.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "key", *user])
        w.writeheader()
        w.writerow({"path": "v/a.mp4", "key": "a", **user})
    res = ing.ingest(tmp_path / "list.csv", str(tmp_path / "runs"), "cols", CFG)
    ((key, sample),) = shards.iter_stage(res.stage_uri)
    meta = sample["json"]
    assert key == "a" and meta["status"] == "ok"
    assert meta["fps"] == 4 and meta["duration"] == pytest.approx(3.0)
    assert meta["timestamps"] == pytest.approx([i / 4 for i in range(12)])
    assert meta["source"] == str(video)
    assert meta["extra"] == user  # the user's columns, verbatim, in their own namespace


def test_folder_rows_and_csv_without_extra_columns_carry_no_extra(tmp_path):
    encode(tmp_path / "v" / "a.mp4")
    (tmp_path / "list.csv").write_text("path,key\nv/a.mp4,a\n")
    assert [r["meta"] for r in ing.read_sources(tmp_path / "list.csv")] == [{}]
    assert [r["meta"] for r in ing.read_sources(tmp_path / "v")] == [{}]


# ---- item 7 ------------------------------------------------------------------------------------------------------


def test_a_non_utf8_file_name_gets_a_safe_key_and_decodes(tmp_path):
    src = tmp_path / "src"
    good = encode(src / "plain.mp4")
    odd = src / os.fsdecode(b"caf\xe9-\xff.mp4")  # Latin-1 bytes: not UTF-8
    shutil.copyfile(good, odd)
    rows = ing.read_sources(src)  # raised UnicodeEncodeError (make_key's digest) and aborted the whole ingest
    assert len(rows) == 2 and rows[1]["key"] == "plain"
    key = rows[0]["key"]
    assert key.startswith("caf_") and shards.storage.KEY_PATTERN.match(key)
    assert ing.make_key(os.fsdecode(b"caf\xe9-\xff.mp4")) == key  # stable
    res = decode_video(rows[0]["path"], CFG.decode)  # ffmpeg-python refused the name too
    assert res.status == "ok" and res.n_frames == 12
    assert ff.printable_path(odd).endswith("caf\\xe9-\\xff.mp4")


def test_a_non_utf8_file_name_is_ingested_like_any_other(tmp_path):
    src = tmp_path / "src"
    good = encode(src / "plain.mp4")
    odd = src / os.fsdecode(b"caf\xe9-\xff.mp4")  # Latin-1 bytes: not UTF-8
    shutil.copyfile(good, odd)
    res = ing.ingest(src, str(tmp_path / "runs"), "odd", CFG)
    rows = {r["key"]: r for r in shards.read_manifest(res.stage_uri)}
    assert res.status_counts == {"ok": 2} and len(rows) == 2
    (odd_key,) = set(rows) - {"plain"}
    assert odd_key.startswith("caf_") and shards.storage.KEY_PATTERN.match(odd_key)
    assert ing.make_key(os.fsdecode(b"caf\xe9-\xff.mp4")) == odd_key  # stable


def test_same_stem_with_two_extensions_gets_two_keys(tmp_path):
    src = tmp_path / "src"
    clip = encode(src / "clip.mp4")
    shutil.copyfile(clip, src / "clip.mkv")
    encode(src / "other.mp4", moving_square(seed=3))
    rows = ing.read_sources(src)
    assert [(r["key"], Path(r["path"]).name) for r in rows] == [
        ("clip_mkv", "clip.mkv"),
        ("clip_mp4", "clip.mp4"),
        ("other", "other.mp4"),
    ]
    res = ing.ingest(src, str(tmp_path / "runs"), "stems", CFG)
    assert res.status_counts == {"ok": 3} and res.n_samples == 3


def test_derived_keys_avoid_user_keys_and_each_other(tmp_path):
    (tmp_path / "list.csv").write_text("path,key\nclip.mp4,\nclip.mkv,\nx.mp4,clip_mp4\n")
    keys = sorted(r["key"] for r in ing.read_sources(tmp_path / "list.csv"))
    assert len(set(keys)) == 3 and "clip_mkv" in keys and "clip_mp4" in keys
    assert all(shards.storage.KEY_PATTERN.match(k) for k in keys)


def test_broken_links_loops_and_directories_get_rows(tmp_path):
    src = tmp_path / "src"
    encode(src / "good.mp4")
    (src / "broken.mp4").symlink_to(src / "gone.mp4")
    (src / "loop.mp4").symlink_to(src / "loop.mp4")
    (src / "folder.mp4").mkdir()
    (src / "notes.txt").write_text("not a video extension: no row")
    res = ing.ingest(src, str(tmp_path / "runs"), "links", CFG)
    rows = {r["key"]: r for r in shards.read_manifest(res.stage_uri)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "good": "ok",
        "broken": "missing",
        "loop": "missing",
        "folder": "failed_probe",
    }
    assert "broken symbolic link" in rows["broken"]["error"] and "directory" in rows["folder"]["error"]


def test_decoded_with_errors_counts_in_the_failure_ratio():
    assert ing.failure_ratio({"ok": 3, "decoded_with_errors": 1}) == pytest.approx(0.25)
    assert ing.failure_ratio({"ok": 2, "failed_probe": 1, "too_long": 1}) == pytest.approx(0.5)
    assert ing.failure_ratio({}) == 0.0


# ---- item 6: the limits are not part of the stage's identity ----------------------------------------------------


def test_size_limits_do_not_change_the_stage_hash_and_bad_shard_sizes_are_refused():
    base = ing.IngestConfig(DecodeConfig(fps=4))
    limited = ing.IngestConfig(DecodeConfig(fps=4, max_duration_s=60, max_sample_bytes=2**20))
    assert base.hash() == limited.hash() != ing.IngestConfig(DecodeConfig(fps=4, max_frames=8)).hash()
    for bad in (0, -1, 10**9):
        with pytest.raises(ValueError, match="samples_per_shard"):
            ing.IngestConfig(samples_per_shard=bad)


def test_an_over_long_video_is_a_row_not_a_sample(tmp_path):
    src = tmp_path / "src"
    encode(src / "short.mp4", moving_square(t=8))  # 1 s
    encode(src / "long.mp4", moving_square(t=40))  # 5 s
    cfg = ing.IngestConfig(DecodeConfig(fps=4, short_side=32, crop=32, max_duration_s=2.0), samples_per_shard=4)
    res = ing.ingest(src, str(tmp_path / "runs"), "long", cfg)
    rows = {r["key"]: r for r in shards.read_manifest(res.stage_uri)}
    assert rows["long"]["status"] == "too_long" and rows["short"]["status"] == "ok"
    assert [k for k, _ in shards.iter_stage(res.stage_uri)] == ["short"]
