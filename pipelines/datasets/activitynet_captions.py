"""ActivityNet Captions for paragraph-to-video retrieval as CLIP4Clip reads it (benchmark-formats.md §4;
ArrowLuo/CLIP4Clip@508ffa3de39b dataloaders/dataloader_activitynet_retrieval.py L43-122).

Files: ``train.json`` and ``val_1.json`` (``{"v_<11>": {"duration", "timestamps", "sentences"}}``; val_1 is the
evaluated split, val_2 is not used) and, where present, ``train_ids.json`` / ``val_ids.json`` (plain lists of
``v_<11>``: the split's videos; 15 train and 9 val ids have no captions and are skipped, as CLIP4Clip does). Each
video's sentences (about 2/3 start with a space: stripped) are joined with spaces into **one paragraph**, its only
query.

``v_`` prefixes: the json keys and id lists carry ``v_``; CLIP4Clip strips it (``key[2:]``) and then looks videos up
under the bare id, which misses the official ``v_<id>.mp4`` downloads. Here the video id is the bare 11-char id
(CLIP4Clip's) and the file is looked up as ``v_<id>.*`` first, then ``<id>.*``; a key without the prefix is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import DatasetFileError, FileIndex, read_json
from pipelines.datasets.retrieval_benchmark import (
    RetrievalBenchmark,
    RetrievalSplit,
    RetrievalVideo,
    Role,
    check_benchmark,
)

DATASET = "activitynet-captions"
PREFIX = "v_"
#: split → (captions file, id list, role)
SPLITS: dict[str, tuple[str, str, Role]] = {
    "train": ("train.json", "train_ids.json", "train"),
    "val_1": ("val_1.json", "val_ids.json", "test"),
}
#: split → (videos, sentences) of the official files
PUBLISHED = {"train": (10_009, 37_421), "val_1": (4_917, 17_505)}
_SOURCE = (
    "{data}: {videos:,} videos with captions, {sentences:,} sentences (microsoft/2D-TAN@2f7410f0de5e "
    "data/ActivityNet/, measured; the same bytes as gingsi/coot-videotext@14ae4ac6ae11 annotations/activitynet/); "
    "read as CLIP4Clip does (ArrowLuo/CLIP4Clip@508ffa3de39b dataloaders/dataloader_activitynet_retrieval.py)"
)


def bare_id(key: str) -> str:
    """``v_<id>`` → ``<id>`` (CLIP4Clip's ``key[2:]``); an id without the prefix is returned unchanged."""
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def _paragraphs(path: Path) -> dict[str, list[str]]:
    """bare video id → its sentences (stripped), in file order."""
    obj = read_json(path)
    if not isinstance(obj, Mapping):
        raise DatasetFileError(f"{path}: expected an object video -> {{duration, timestamps, sentences}}")
    out: dict[str, list[str]] = {}
    for key, entry in obj.items():
        sentences = entry.get("sentences") if isinstance(entry, Mapping) else None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise DatasetFileError(f"{path}: {key!r} has no 'sentences' list of strings")
        out[bare_id(key)] = [s.strip() for s in sentences]
    return out


def _id_list(path: Path) -> list[str]:
    obj = read_json(path)
    if not isinstance(obj, list) or not all(isinstance(v, str) for v in obj):
        raise DatasetFileError(f"{path}: expected a list of video ids")
    return list(dict.fromkeys(bare_id(v) for v in obj))


def load(data_dir: Path, index: FileIndex | None = None) -> RetrievalBenchmark:
    files = index or FileIndex(data_dir)
    notes: list[str] = []
    found: dict[str, Path] = {}
    splits = []
    for split, (data_name, ids_name, role) in SPLITS.items():
        data_path = files.find(data_name)
        assert data_path is not None
        found[data_name] = data_path
        paragraphs = {v: s for v, s in _paragraphs(data_path).items() if s}
        ids_path = files.find(ids_name, required=False)
        if ids_path is None:
            ids = list(paragraphs)
        else:
            found[ids_name] = ids_path
            listed = _id_list(ids_path)
            uncaptioned = [v for v in listed if v not in paragraphs]
            if uncaptioned:
                notes.append(
                    f"{split}: {len(uncaptioned)} ids of {ids_name} have no captions in {data_name}: skipped, as "
                    f"CLIP4Clip does (first: {', '.join(uncaptioned[:5])})"
                )
            unlisted = len(set(paragraphs) - set(listed))
            if unlisted:
                notes.append(f"{split}: {unlisted} videos of {data_name} are not in {ids_name}: dropped")
            ids = [v for v in listed if v in paragraphs]
        videos = tuple(
            RetrievalVideo(v, (" ".join(paragraphs[v]),), tuple(paragraphs[v]), (PREFIX + v, v)) for v in ids
        )
        n, c = PUBLISHED[split]
        source = _SOURCE.format(data=data_name, videos=n, sentences=c)
        splits.append(RetrievalSplit(split, role, videos, n, c, source, is_test=role == "test"))
    return RetrievalBenchmark(DATASET, "paragraph", tuple(splits), found, tuple(notes), Path(data_dir))


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    return check_benchmark(load, data_dir, video_dir, probe)
