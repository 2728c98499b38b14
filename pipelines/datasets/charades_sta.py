"""Charades-STA grounding from the user's download → `pipelines.datasets.grounding.GroundingQuery` lists; `check`
for ``data check``.

Files (benchmark-formats §7), found by name anywhere under the data folder: ``charades_sta_{train,test}.txt``, one
query per line ``AO8RW 0.0 6.9##a person is putting a book on a shelf.`` (LF in the official files; CRLF read the
same), and ``Charades_v1_{train,test}.csv`` for the video ``length`` (seconds). 2D-TAN's rules
(microsoft/2D-TAN@2f7410f0de5e lib/datasets/charades.py L32-49), applied by `pipelines.datasets.grounding`: the
sentence loses its final period, the end is clipped to the video length, and a query is kept only when start < end
(the 4 train lines written with start > end are dropped; 1,805 train and 562 test ends lie past the length).
Videos: ``Charades_v1_480/<id>.mp4`` (5-char ids; any folder, any video extension).

`check` reports the lines as written against the published counts (12,408 / 3,720 queries over 5,338 / 1,334
videos) and, in its notes, what 2D-TAN's rules drop and clip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import DatasetFileError, FileIndex
from pipelines.datasets.grounding import (
    GroundingQuery,
    charades_sta_rows,
    clamp_counts,
    clamp_query,
    read_charades_durations,
)
from pipelines.datasets.videos import VideoSplit, check_video_splits

DATASET = "charades-sta"
SPLITS: tuple[str, ...] = ("train", "test")
STA_FILES: Mapping[str, str] = {"train": "charades_sta_train.txt", "test": "charades_sta_test.txt"}
LENGTH_FILES: Mapping[str, str] = {"train": "Charades_v1_train.csv", "test": "Charades_v1_test.csv"}
EXPECTED_QUERIES: Mapping[str, int] = {"train": 12_408, "test": 3_720}
EXPECTED_VIDEOS: Mapping[str, int] = {"train": 5_338, "test": 1_334}
EXPECTED_SOURCE = (
    "benchmark-formats §7: microsoft/2D-TAN@2f7410f0de5e data/Charades-STA/charades_sta_{train,test}.txt "
    "(measured: 12,408 / 3,720 lines over 5,338 / 1,334 videos)"
)


def read_rows(sta: Path, lengths: Path) -> list[GroundingQuery]:
    """The queries of one split as written (no clipping or dropping), each with its video's length from the csv;
    raises `DatasetFileError` naming the file (and line) for a malformed line or a video the csv lacks."""
    durations = read_charades_durations(lengths)
    try:
        text = sta.read_text(encoding="utf-8-sig")
        rows = charades_sta_rows(text, source=str(sta))
    except UnicodeDecodeError as exc:
        raise DatasetFileError(f"{sta}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise DatasetFileError(str(exc)) from None
    out = []
    for lineno, row in rows:
        if row.video not in durations:
            raise DatasetFileError(f"{sta}:{lineno}: video {row.video!r} is not in {lengths.name}")
        out.append(dataclasses.replace(row, duration=durations[row.video]))
    return out


def _split_files(index: FileIndex, split: str) -> tuple[Path, Path]:
    sta, lengths = index.find(STA_FILES[split]), index.find(LENGTH_FILES[split])
    assert sta is not None and lengths is not None
    return sta, lengths


def load(
    data_dir: Path, splits: Sequence[str] = SPLITS, index: FileIndex | None = None
) -> dict[str, list[GroundingQuery]]:
    """split → its queries under 2D-TAN's rules (file order; ends clipped to the video length, start ≥ end
    dropped; `duration` = the length)."""
    index = index or FileIndex(data_dir)
    out = {}
    for split in splits:
        rows = read_rows(*_split_files(index, split))
        out[split] = [q for r in rows if (q := clamp_query(r)) is not None]
    return out


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    """``vlrepro data check charades-sta``: per split, annotated / found / missing / unreadable videos, the queries
    as written beside the published counts; notes on 2D-TAN's drops and clips."""
    index = FileIndex(data_dir)
    splits, notes, files = [], [], {}
    for split in SPLITS:
        sta, lengths = _split_files(index, split)
        files.update({sta.name: sta, lengths.name: lengths})
        rows = read_rows(sta, lengths)
        splits.append(
            VideoSplit(
                split,
                tuple(dict.fromkeys(r.video for r in rows)),
                len(rows),
                EXPECTED_VIDEOS[split],
                EXPECTED_QUERIES[split],
                EXPECTED_SOURCE,
                is_test=split == "test",
            )
        )
        c = clamp_counts(rows)
        notes.append(
            f"{split}: 2D-TAN keeps {c.kept:,} of {c.rows:,} queries ({c.reversed} written with start ≥ end, "
            f"{c.emptied} starting at or past the video length: dropped); {c.clipped:,} ends clipped to the length"
        )
    return check_video_splits(DATASET, data_dir, video_dir, probe, splits, notes, files, index=index)[0]
