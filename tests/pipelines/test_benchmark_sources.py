"""A downloaded benchmark as the ingest's sources and the run's ledger (`pipelines.datasets.benchmark_sources`), on
fixtures in the official layouts (no decoding: the manifest is written by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.datasets import benchmark_sources as bs
from pipelines.datasets.files import AnnotationNotFound
from pipelines.ingest import read_sources
from tests.pipelines.test_retrieval_benchmarks import DIDEMO, put, write_didemo, write_msrvtt


def test_msrvtt_rows_ledger_and_gallery(tmp_path: Path) -> None:
    """video7 is in train-9k and in the 1k-A rows given here: evaluated, not trained on; video9 has no file; the
    manifest says video2 could not be probed and video8 decoded with errors (its frames are used)."""
    write_msrvtt(tmp_path, [("video9", "a man sings"), ("video8", "a cat"), ("video7", "a dog")])
    videos = tmp_path / "MSRVTT" / "videos" / "all"
    for vid in [f"video{i}" for i in range(9)]:
        put(videos / f"{vid}.mp4", b"")
    sources = bs.benchmark_sources("MSR-VTT", tmp_path, None, "train-9k", "test-1k-A")
    assert sources.dataset == "msrvtt" and sources.protocol == "multi-caption"
    rows = {r["key"]: r for r in sources.rows}
    assert set(rows) == {f"video{i}" for i in range(9)}
    assert rows["video7"]["split"] == "test-1k-A" and rows["video7"]["captions"] == ["a dog"]
    assert rows["video0"]["split"] == "train-9k" and len(rows["video0"]["captions"]) == 3  # every json caption
    early = {(r.id, r.status) for r in sources.ledger}
    assert early == {("video7", bs.EXCLUDED), ("video9", bs.NOT_FOUND)}

    csv_path = bs.write_csv(sources, tmp_path / "runs")
    assert bs.write_csv(sources, tmp_path / "runs") == csv_path  # the same rows, the same file
    ingest_rows = {r["key"]: r for r in read_sources(csv_path)}  # what the ingest reads of it
    assert ingest_rows["video7"]["captions"] == ["a dog"] and ingest_rows["video7"]["split"] == "test-1k-A"
    assert ingest_rows["video0"]["meta"] == {"extra": {"benchmark_id": "video0"}}

    status = {"video2": ("failed_probe", "moov atom not found"), "video8": ("decoded_with_errors", "2 of 4 frames")}
    manifest = [{"key": k, "status": status.get(k, ("ok",))[0], "error": status.get(k, ("", None))[1]} for k in rows]
    ledger = bs.ledger(sources, manifest, "train-9k", "test-1k-A")
    assert ledger["gallery"] == {"split": "test-1k-A", "annotated": 3, "expected": 1000, "evaluated": 2, "queries": 2,
                                 "complete": False}  # fmt: skip
    by_id = {r["id"]: r for r in ledger["rows"]}
    assert [r["id"] for r in ledger["rows"]][:2] == ["video9", "video8"]  # the evaluated split first, missing first
    assert by_id["video2"] == {"id": "video2", "split": "train-9k", "status": "failed_probe",
                               "reason": "moov atom not found", "used": False, "key": "video2"}  # fmt: skip
    assert by_id["video8"]["used"] is True and by_id["video9"]["used"] is False
    assert ledger["splits"]["train-9k"]["usable"] == 6 and ledger["counts"] == {
        "decoded_with_errors": 1,
        "excluded": 1,
        "failed_probe": 1,
        "not_found": 1,
    }
    json.dumps(ledger)  # an artefact: plain JSON


def test_didemo_names_become_safe_keys_and_paragraphs_one_query(tmp_path: Path) -> None:
    write_didemo(tmp_path)
    for vid in DIDEMO["test"]:
        put(tmp_path / "videos" / (vid.rstrip(".") + ".mp4"), b"")
    sources = bs.benchmark_sources("didemo", tmp_path, tmp_path / "videos", "train", "test")
    test = [r for r in sources.rows if r["split"] == "test"]
    assert test and all(r["key"] != r["video_id"] and "." not in r["key"] for r in test)  # `make_key`: safe keys
    assert all(len(r["captions"]) == 1 for r in test)  # paragraph retrieval: one query per video
    assert {r.status for r in sources.ledger} == {bs.NOT_FOUND}  # every training video lacks its file here


def test_a_wrong_dataset_or_split_or_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a text-video retrieval benchmark"):
        bs.benchmark_sources("thumos14", tmp_path, None, "train", "test")
    with pytest.raises(AnnotationNotFound, match=r"MSRVTT_data\.json not found"):
        bs.benchmark_sources("msrvtt", tmp_path, None, "train-9k", "test-1k-A")
    write_msrvtt(tmp_path)
    with pytest.raises(KeyError, match="no split 'train-8k'"):
        bs.benchmark_sources("msrvtt", tmp_path, None, "train-8k", "test-1k-A")
