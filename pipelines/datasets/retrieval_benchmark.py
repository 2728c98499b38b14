"""The one shape every text–video retrieval benchmark adapter returns, and its ``data check``.

An adapter (`pipelines.datasets.msrvtt`, `.msvd`, `.didemo`, `.activitynet_captions`) reads the official files as
users download them and returns a `RetrievalBenchmark`: per split, the videos with their captions grouped as the
protocol scores them. Nothing downstream knows which dataset it came from:

- multi-caption protocols (MSR-VTT training, MSVD): ``captions`` = every sentence of the video;
- MSR-VTT 1k-A: ``captions`` = the one JSFusion sentence of the video;
- paragraph protocols (DiDeMo, ActivityNet Captions): ``captions`` = one paragraph, the video's sentences joined
  with spaces (CLIP4Clip), ``sentences`` keeps them apart.

Videos are looked up by ``file_names``: the names a downloaded file may carry, tried in order, each matched exactly
or followed by a video extension (`pipelines.datasets.files.VideoIndex`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipelines.datasets.check import DatasetCheck, split_check
from pipelines.datasets.files import FileIndex, VideoIndex, probe_unreadable

Role = Literal["train", "val", "test"]


@dataclass(frozen=True)
class RetrievalVideo:
    video_id: str
    captions: tuple[str, ...]  # the protocol's text queries of this video
    sentences: tuple[str, ...]  # the annotation's sentences (== captions unless the protocol joins them)
    file_names: tuple[str, ...]  # names the video file may have, in order of preference


@dataclass(frozen=True)
class RetrievalSplit:
    name: str  # e.g. "train-9k", "test-1k-A", "val_1"
    role: Role
    videos: tuple[RetrievalVideo, ...]
    expected_videos: int | None  # the number the protocol publishes (None: none published)
    expected_sentences: int | None
    source: str  # where the split and its published counts come from
    is_test: bool = False  # the split the papers evaluate on

    @property
    def n_sentences(self) -> int:
        return sum(len(v.sentences) for v in self.videos)

    @property
    def n_queries(self) -> int:
        return sum(len(v.captions) for v in self.videos)

    @property
    def ids(self) -> list[str]:
        return [v.video_id for v in self.videos]


@dataclass(frozen=True)
class RetrievalBenchmark:
    dataset: str
    protocol: Literal["multi-caption", "paragraph"]
    splits: tuple[RetrievalSplit, ...]
    files: Mapping[str, Path]  # official file name → the file read
    notes: tuple[str, ...] = ()
    data_dir: Path = field(default_factory=Path)

    def split(self, name: str) -> RetrievalSplit:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(f"{self.dataset} has no split {name!r}; splits: {', '.join(s.name for s in self.splits)}")

    @property
    def test(self) -> RetrievalSplit:
        return next(s for s in self.splits if s.is_test)

    def locate(self, videos: VideoIndex) -> tuple[dict[str, Path], list[str]]:
        """(video id → file, notes) for every video of every split that has a file."""
        found: dict[str, Path] = {}
        several = 0
        for split in self.splits:
            for v in split.videos:
                if v.video_id in found:
                    continue
                match = videos.find(v.file_names)
                if match.path is not None:
                    found[v.video_id] = match.path
                    several += match.candidates > 1
        notes = []
        if several:
            notes.append(
                f"{several} videos have several files; the first by extension preference (.mp4, .webm, .mkv, …), "
                "then path, is used"
            )
        return found, notes


Loader = Callable[..., RetrievalBenchmark]


def check_benchmark(
    load: Loader,
    data_dir: Path,
    video_dir: Path | None,
    probe: bool,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetCheck:
    """Load the benchmark from `data_dir` (annotation files found anywhere under it), look its videos up under
    `video_dir` (default: `data_dir`), probe the found ones when `probe`, and compare each split with the protocol."""
    files = FileIndex(data_dir)
    bench = load(data_dir, index=files)
    videos = VideoIndex(files if video_dir is None else FileIndex(video_dir))
    found, notes = bench.locate(videos)
    unreadable = set(probe_unreadable(found, progress=progress)) if probe else set()
    splits = [
        split_check(
            s.name,
            s.ids,
            found,
            unreadable,
            captions=s.n_sentences,
            expected=s.expected_videos,
            source=s.source,
            is_test=s.is_test,
            queries=s.n_queries if s.n_queries != s.n_sentences else None,
            expected_captions=s.expected_sentences,
        )
        for s in bench.splits
    ]
    return DatasetCheck(
        dataset=bench.dataset,
        data_dir=str(data_dir),
        splits=splits,
        notes=[*bench.notes, *notes],
        video_dir=None if video_dir is None else str(video_dir),
        probed=probe,
        files={name: str(path) for name, path in bench.files.items()},
    )
