"""ActivityNet Captions for sentence grounding (2D-TAN's protocol) → `pipelines.datasets.grounding.GroundingQuery`
lists; `check` for ``data check``. (Paragraph retrieval on the same files is `pipelines.datasets.activitynet_captions`.)

Files (benchmark-formats §4), found by name anywhere under the data folder: ``train.json``, ``val_1.json``,
``val_2.json`` ``{"v_<11>": {"duration", "timestamps": [[s, e], ...], "sentences": [...]}}``; 2D-TAN ships the same
bytes renamed ``train.json`` / ``val.json`` / ``test.json`` (read when the official names are absent). 2D-TAN
(microsoft/2D-TAN@2f7410f0de5e lib/datasets/activitynet.py L31-46) trains on train, validates on val_1 and tests on
val_2; it keeps a (timestamp, sentence) pair when start < end and clamps it to ``[0, duration]``
(`pipelines.datasets.grounding`, which also drops a moment left empty by the clamp). Measured on the files: 2 train
stamps with start > end and 2 with start == end; 261 / 134 / 111 ends past ``duration``; stamps mix ints and floats;
about 2/3 of the sentences start with a space (stripped).

Video ids stay the json keys (``v_<id>``, 2D-TAN's); a video file is ``v_<id>.*`` (the official crawler's name) or
``<id>.*`` (CLIP4Clip's renamed copies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import DatasetFileError, FileIndex, read_json
from pipelines.datasets.grounding import GroundingQuery, activitynet_captions_rows, clamp_counts, clamp_query
from pipelines.datasets.videos import VideoSplit, check_video_splits

DATASET = "activitynet-captions-grounding"
SPLITS: tuple[str, ...] = ("train", "val_1", "val_2")
#: split → (official file name, 2D-TAN's name for the same bytes)
FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train.json", "train.json"),
    "val_1": ("val_1.json", "val.json"),
    "val_2": ("val_2.json", "test.json"),
}
TEST_SPLIT = "val_2"  # 2D-TAN's test.json
EXPECTED_VIDEOS: Mapping[str, int] = {"train": 10_009, "val_1": 4_917, "val_2": 4_885}
EXPECTED_SENTENCES: Mapping[str, int] = {"train": 37_421, "val_1": 17_505, "val_2": 17_031}
EXPECTED_SOURCE = (
    "benchmark-formats §4: microsoft/2D-TAN@2f7410f0de5e data/ActivityNet/{train,val,test}.json (measured: "
    "10,009 / 4,917 / 4,885 videos, 37,421 / 17,505 / 17,031 sentences)"
)


def file_names(video_id: str) -> tuple[str, ...]:
    """``v_<id>`` (the official video name) then the bare id (CLIP4Clip's renamed files)."""
    return (video_id, video_id[2:]) if video_id.startswith("v_") else (video_id, "v_" + video_id)


def find_file(index: FileIndex, split: str) -> Path:
    """The split's json under its official name, else under 2D-TAN's."""
    official, renamed = FILES[split]
    path = index.find(official, required=False) or index.find(renamed, required=False)
    if path is None:
        alias = f" (2D-TAN: {renamed})" if renamed != official else ""
        raise DatasetFileError(f"{official}{alias} not found under {index.root}")
    return path


def read_split(path: Path) -> tuple[tuple[str, ...], list[GroundingQuery]]:
    """One split's videos (the json keys) and (timestamp, sentence) pairs as written, with the video's duration;
    `DatasetFileError` names the file (and video) when it is malformed."""
    data = read_json(path)
    if not isinstance(data, Mapping):
        raise DatasetFileError(f"{path}: expected an object video -> {{duration, timestamps, sentences}}")
    try:
        return tuple(str(v) for v in data), activitynet_captions_rows(data, source=str(path))
    except ValueError as exc:
        raise DatasetFileError(str(exc)) from None


def load(
    data_dir: Path, splits: Sequence[str] = SPLITS, index: FileIndex | None = None
) -> dict[str, list[GroundingQuery]]:
    """split (``train`` / ``val_1`` / ``val_2``) → its queries under 2D-TAN's rules, in file order."""
    index = index or FileIndex(data_dir)
    return {s: [q for r in read_split(find_file(index, s))[1] if (q := clamp_query(r)) is not None] for s in splits}


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    """``vlrepro data check activitynet-captions-grounding``: per split, annotated / found / missing / unreadable
    videos and the sentences as written beside the published counts; notes on 2D-TAN's drops and clamps."""
    index = FileIndex(data_dir)
    splits, notes, files = [], [], {}
    for split in SPLITS:
        path = find_file(index, split)
        files[path.name] = path
        videos, rows = read_split(path)
        splits.append(
            VideoSplit(
                split,
                videos,
                len(rows),
                EXPECTED_VIDEOS[split],
                EXPECTED_SENTENCES[split],
                EXPECTED_SOURCE,
                is_test=split == TEST_SPLIT,
            )
        )
        c = clamp_counts(rows)
        notes.append(
            f"{split}: 2D-TAN keeps {c.kept:,} of {c.rows:,} queries ({c.reversed} written with start ≥ end, "
            f"{c.emptied} starting at or past the duration: dropped); {c.clipped:,} moments clamped to [0, duration]"
        )
    return check_video_splits(DATASET, data_dir, video_dir, probe, splits, notes, files, file_names, index)[0]
