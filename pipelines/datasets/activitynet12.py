"""ActivityNet 1.2 for W-TAL from the user's download → `pipelines.datasets.wtal.WTALDataset`; `check` for
``data check``.

The file (benchmark-formats §6): ``activity_net.v1-2.min.json``, found by name anywhere under the data folder,
``{"version", "taxonomy", "database": {<11-char YouTube id>: {"duration", "subset", "resolution", "url",
"annotations": [{"segment": [s, e], "label"}]}}}``. The W-TAL protocol trains on ``training`` and evaluates on
``validation`` (``testing`` has no labels); the 100 classes are the sorted labels of the annotations
(`pipelines.datasets.wtal.load_activitynet12`).

``v_`` prefixes: the database keys are bare 11-char ids, the official crawler saves ``v_<id>.mp4`` (its cross-check
accepts ``v_<id>`` and bare stems) and the W-TAL feature files are named ``v_<id>``. `load` keeps the file's ids
unless given ``video_prefix="v_"``; `check` finds a video under either name (`file_names`), with any extension real
downloads have (YouTube downloads are often ``.mkv`` / ``.webm``).

Segments past ``duration``: the doc leaves open whether 1.2 has them (1.3 does); `check` counts them and
`pipelines.datasets.wtal.clip_to_duration` applies the project's rule (2D-TAN's: cut at the end, dropped if empty).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import DatasetFileError, FileIndex
from pipelines.datasets.videos import VideoSplit, check_video_splits
from pipelines.datasets.wtal import ACTIVITYNET12, WTALDataset, clip_to_duration, load_activitynet12

DATASET = "activitynet12"  # the registry's name (`pipelines.datasets.registry`)
ANNOTATION_FILE = "activity_net.v1-2.min.json"
N_CLASSES = 100
SUBSETS: tuple[str, ...] = ("training", "validation")
# not in benchmark-formats.md: the W-TAL papers' counts as paper-code-notes §5.3 records them (from memory)
EXPECTED_VIDEOS: Mapping[str, int] = {"training": 4819, "validation": 2383}
EXPECTED_SOURCE = "paper-code-notes §5.3 (the W-TAL papers' 4,819 / 2,383; recalled, not measured on the file)"


def file_names(video_id: str) -> tuple[str, ...]:
    """Names a downloaded video may carry: ``v_<id>`` (the official crawler) and the bare 11-char id; an id that
    already carries the prefix (13 chars) is tried bare too."""
    if len(video_id) == 13 and video_id.startswith("v_"):
        return (video_id, video_id[2:])
    return ("v_" + video_id, video_id)


def read(
    data_dir: Path,
    classes_from: Literal["labels", "taxonomy"] = "labels",
    video_prefix: str = "",
    index: FileIndex | None = None,
) -> tuple[WTALDataset, Path]:
    """(dataset, the file read); raises `DatasetFileError` naming the file."""
    path = (index or FileIndex(data_dir)).find(ANNOTATION_FILE)
    assert path is not None
    try:
        ds = load_activitynet12(path, classes_from, video_prefix)
    except json.JSONDecodeError as exc:
        raise DatasetFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetFileError(f"{path}: not ActivityNet ground truth ({type(exc).__name__}: {exc})") from None
    return ds, path


def load(data_dir: Path, classes_from: Literal["labels", "taxonomy"] = "labels", video_prefix: str = "") -> WTALDataset:
    """``activity_net.v1-2.min.json`` under `data_dir` → `WTALDataset` (train = "training", test = "validation").
    video_prefix: ``"v_"`` for ids that match the W-TAL feature files and the official video names."""
    return read(data_dir, classes_from, video_prefix)[0]


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    """``vlrepro data check activitynet1.2``: per subset, annotated / found / missing / unreadable videos (``v_<id>``
    or ``<id>`` with a video extension, under `video_dir`, default `data_dir`), instances, published counts."""
    index = FileIndex(data_dir)
    ds, path = read(data_dir, index=index)
    splits = [
        VideoSplit(
            subset,
            tuple(v.video_id for v in ds.subset(subset)),
            sum(len(v.instances) for v in ds.subset(subset)),
            EXPECTED_VIDEOS[subset],
            None,
            EXPECTED_SOURCE,
            is_test=subset == ACTIVITYNET12.test_subset,
        )
        for subset in SUBSETS
    ]
    notes = [f"{ANNOTATION_FILE}: {ds.version or 'no version'}; {len(ds.classes)} classes (the protocol: {N_CLASSES})"]
    others: dict[str, int] = {}
    for v in ds.videos.values():
        if v.subset not in SUBSETS:
            others[v.subset] = others.get(v.subset, 0) + 1
    if others:
        notes.append("not used: " + ", ".join(f"{n} {s} videos" for s, n in sorted(others.items())))
    unlabelled = [v.video_id for s in SUBSETS for v in ds.subset(s) if not v.instances]
    if unlabelled:
        notes.append(f"{len(unlabelled)} training/validation videos have no annotation (first: {unlabelled[0]})")
    _, clipped, emptied = clip_to_duration(ds)
    notes.append(
        f"segments past the video's duration: {clipped} end past it (clip_to_duration cuts them), "
        f"{emptied} start at or after it (dropped)"
    )
    return check_video_splits(
        DATASET, data_dir, video_dir, probe, splits, notes, {ANNOTATION_FILE: path}, file_names, index
    )[0]
