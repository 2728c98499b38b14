"""The video side of ``vlrepro data check`` for the localization adapters (THUMOS14, ActivityNet 1.2, Charades-STA,
ActivityNet Captions grounding): each split's annotated videos looked up by the file names a download may carry,
probed when asked, and compared with the published counts (`pipelines.datasets.check`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.datasets.check import DatasetCheck, split_check
from pipelines.datasets.files import FileIndex, VideoIndex, probe_unreadable


@dataclass(frozen=True)
class VideoSplit:
    """One split as an adapter states it: its annotated videos, annotations (instances or sentence queries, as
    written in the files) and the published counts."""

    name: str
    video_ids: tuple[str, ...]
    annotations: int
    expected: int | None
    expected_annotations: int | None
    source: str
    is_test: bool


def _same(video_id: str) -> tuple[str, ...]:
    return (video_id,)


def unreadable_ids(check: DatasetCheck) -> set[str]:
    return {v for s in check.splits for v in s.unreadable}


def check_video_splits(
    dataset: str,
    data_dir: Path,
    video_dir: Path | None,
    probe: bool,
    splits: Sequence[VideoSplit],
    notes: Sequence[str],
    files: Mapping[str, Path],
    file_names: Callable[[str], Sequence[str]] = _same,
    index: FileIndex | None = None,
) -> tuple[DatasetCheck, dict[str, Path]]:
    """Look each split's videos up under `video_dir` (default `data_dir`, whose `index` may be passed) by the names
    `file_names(video_id)` a downloaded file may carry (`VideoIndex`), probe the found ones when `probe`
    (`probe_unreadable`), and report. Returns the check and video id → the file found."""
    root_index = FileIndex(video_dir) if video_dir is not None else (index or FileIndex(data_dir))
    videos = VideoIndex(root_index)
    found: dict[str, Path] = {}
    several = 0
    for vid in sorted({v for s in splits for v in s.video_ids}):
        match = videos.find(file_names(vid))
        if match.path is not None:
            found[vid] = match.path
            several += match.candidates > 1
    unreadable = set(probe_unreadable(found)) if probe else set()
    checks = [
        split_check(
            s.name,
            sorted(set(s.video_ids)),
            found,
            unreadable,
            captions=s.annotations,
            expected=s.expected,
            source=s.source,
            is_test=s.is_test,
            expected_captions=s.expected_annotations,
        )
        for s in splits
    ]
    extra = [f"{several} videos have several files; the first by extension preference, then path, is used"]
    result = DatasetCheck(
        dataset=dataset,
        data_dir=str(data_dir),
        splits=checks,
        notes=[*notes, *(extra if several else [])],
        video_dir=None if video_dir is None else str(video_dir),
        probed=probe,
        files={name: str(path) for name, path in files.items()},
    )
    return result, found


def probe_durations(paths: Mapping[str, Path]) -> dict[str, float]:
    """video id → duration in seconds from the project's probe (`pipelines.ffmpeg.probe`), for the videos whose
    container gives one (unreadable ones are left out)."""
    from pipelines.ffmpeg import ProbeError, probe

    out: dict[str, float] = {}
    for vid, path in sorted(paths.items()):
        try:
            duration = probe(path).duration
        except ProbeError:
            continue
        if duration > 0:
            out[vid] = duration
    return out
