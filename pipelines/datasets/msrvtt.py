"""MSR-VTT as CLIP4Clip reads it (benchmark-formats.md §1; ArrowLuo/CLIP4Clip@508ffa3de39b
dataloaders/dataloader_msrvtt_retrieval.py).

Files (``msrvtt_data.zip``; videos from ``MSRVTT.zip`` → ``MSRVTT/videos/all/video<n>.mp4``, ``.webm`` also taken):

- ``MSRVTT_data.json``: ``sentences[]`` (``video_id``, ``caption``; not in video order) give every training caption,
  ``videos[]`` (``video_id``, ``split`` = train / validate / test) the official "full" split;
- ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv``: column ``video_id`` (others ignored) → train-9k / train-7k, each
  video with all its json captions (multi-caption training);
- ``MSRVTT_JSFUSION_test.csv``: ``key,vid_key,video_id,sentence`` → test-1k-A with **one sentence per video**, the
  csv's, not the json's 20 (the 1k-A protocol every paper reports).

Splits: train-9k, train-7k, test-1k-A (the evaluated split), and, when the json lists ``videos[].split``, the full
protocol's train-full / val-full / test-full.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import DatasetFileError, FileIndex, read_csv, read_json
from pipelines.datasets.retrieval_benchmark import (
    RetrievalBenchmark,
    RetrievalSplit,
    RetrievalVideo,
    Role,
    check_benchmark,
)

DATASET = "msrvtt"
DATA_JSON = "MSRVTT_data.json"
TRAIN_9K = "MSRVTT_train.9k.csv"
TRAIN_7K = "MSRVTT_train.7k.csv"
TEST_1KA = "MSRVTT_JSFUSION_test.csv"

_README = "the official MSR-VTT readme's split (train video0-6512, validate 6513-7009, test 7010-9999), 20 captions"
_SOURCES = {
    "train-9k": f"{TRAIN_9K}: 7k + 1,990 test-split videos outside 1k-A, 20 captions each (CLIP4Clip --train_csv, "
    "ArrowLuo/CLIP4Clip@508ffa3de39b README.md L97-104; choisw0823/vr MSR-VTT README)",
    "train-7k": f"{TRAIN_7K}: the official train + validate videos, 20 captions each (choisw0823/vr MSR-VTT README)",
    "test-1k-A": f"{TEST_1KA}: JSFusion 1k-A, 1,000 videos with one sentence each (CLIP4Clip --val_csv, "
    "ArrowLuo/CLIP4Clip@508ffa3de39b dataloaders/dataloader_msrvtt_retrieval.py L132-133)",
    "train-full": f"{DATA_JSON} videos[].split == train: {_README}",
    "val-full": f"{DATA_JSON} videos[].split == validate: {_README}",
    "test-full": f"{DATA_JSON} videos[].split == test: {_README}",
}
#: split → (videos, sentences) the protocol publishes
PUBLISHED: dict[str, tuple[int, int]] = {
    "train-9k": (9_000, 180_000),
    "train-7k": (7_010, 140_200),
    "test-1k-A": (1_000, 1_000),
    "train-full": (6_513, 130_260),
    "val-full": (497, 9_940),
    "test-full": (2_990, 59_800),
}
_JSON_SPLITS: dict[str, tuple[str, Role]] = {
    "train": ("train-full", "train"),
    "validate": ("val-full", "val"),
    "test": ("test-full", "test"),
}


def _field(path: Path, kind: str, i: int, entry: Any, key: str) -> str:
    if not isinstance(entry, Mapping) or not isinstance(entry.get(key), str | int):
        raise DatasetFileError(f"{path}: {kind}[{i}] has no {key!r} string")
    return str(entry[key])


def _read_data_json(path: Path) -> tuple[dict[str, list[str]], dict[str, str] | None]:
    """(video id → captions in file order, video id → official split, or None when ``videos[].split`` is absent)."""
    obj = read_json(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("sentences"), list):
        raise DatasetFileError(f"{path}: expected an object with a 'sentences' list (the MSR-VTT 10k json)")
    captions: dict[str, list[str]] = {}
    for i, s in enumerate(obj["sentences"]):
        vid = _field(path, "sentences", i, s, "video_id")
        captions.setdefault(vid, []).append(_field(path, "sentences", i, s, "caption").strip())
    videos = obj.get("videos")
    if not isinstance(videos, list) or not all(isinstance(v, Mapping) and "split" in v for v in videos):
        return captions, None
    return captions, {
        _field(path, "videos", i, v, "video_id"): _field(path, "videos", i, v, "split") for i, v in enumerate(videos)
    }


def _ids(path: Path) -> list[str]:
    seen: dict[str, None] = {}
    for row in read_csv(path, ["video_id"]):
        seen.setdefault(row["video_id"], None)
    return list(seen)


def _split(name: str, role: Role, videos: list[RetrievalVideo], is_test: bool = False) -> RetrievalSplit:
    n, c = PUBLISHED[name]
    return RetrievalSplit(name, role, tuple(videos), n, c, _SOURCES[name], is_test)


def load(data_dir: Path, index: FileIndex | None = None) -> RetrievalBenchmark:
    files = index or FileIndex(data_dir)
    data_json = files.find(DATA_JSON)
    test_csv = files.find(TEST_1KA)
    train_9k = files.find(TRAIN_9K)
    train_7k = files.find(TRAIN_7K, required=False)
    assert data_json is not None and test_csv is not None and train_9k is not None
    captions, official = _read_data_json(data_json)
    notes: list[str] = []

    def with_json_captions(name: str, ids: list[str], source: Path) -> list[RetrievalVideo]:
        uncaptioned = [v for v in ids if not captions.get(v)]
        if uncaptioned:
            notes.append(
                f"{name}: {len(uncaptioned)} videos of {source.name} have no caption in {DATA_JSON} and are left out "
                f"(first: {', '.join(uncaptioned[:5])})"
            )
        return [RetrievalVideo(v, tuple(captions[v]), tuple(captions[v]), (v,)) for v in ids if captions.get(v)]

    splits = [_split("train-9k", "train", with_json_captions("train-9k", _ids(train_9k), train_9k))]
    if train_7k is not None:
        splits.append(_split("train-7k", "train", with_json_captions("train-7k", _ids(train_7k), train_7k)))
    else:
        notes.append(f"{TRAIN_7K} not found: no train-7k split")

    test: dict[str, str] = {}
    repeated = 0
    for row in read_csv(test_csv, ["video_id", "sentence"]):
        if row["video_id"] in test:
            repeated += 1  # 1k-A has one sentence per video: the first is kept
        else:
            test[row["video_id"]] = row["sentence"]
    if repeated:
        notes.append(f"{TEST_1KA}: {repeated} rows repeat a video; 1k-A keeps one sentence per video (the first)")
    splits.append(_split("test-1k-A", "test", [RetrievalVideo(v, (s,), (s,), (v,)) for v, s in test.items()], True))
    leaked = [v for v in splits[0].ids if v in test]
    if leaked:
        notes.append(f"{TRAIN_9K} holds {len(leaked)} 1k-A test videos (first: {', '.join(leaked[:5])})")

    if official is None:
        notes.append(f"{DATA_JSON} has no videos[].split: no full-protocol splits")
    else:
        unknown = sorted({s for s in official.values() if s not in _JSON_SPLITS})
        if unknown:
            notes.append(f"{DATA_JSON}: unknown videos[].split values {unknown} are ignored")
        for value, (name, role) in _JSON_SPLITS.items():
            ids = [v for v, s in official.items() if s == value]
            splits.append(_split(name, role, with_json_captions(name, ids, data_json)))
    found = {DATA_JSON: data_json, TEST_1KA: test_csv, TRAIN_9K: train_9k}
    if train_7k is not None:
        found[TRAIN_7K] = train_7k
    return RetrievalBenchmark(DATASET, "multi-caption", tuple(splits), found, tuple(notes), Path(data_dir))


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    return check_benchmark(load, data_dir, video_dir, probe)
