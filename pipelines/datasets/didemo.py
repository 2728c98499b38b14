"""DiDeMo for paragraph-to-video retrieval as CLIP4Clip reads it (benchmark-formats.md §3;
ArrowLuo/CLIP4Clip@508ffa3de39b dataloaders/dataloader_didemo_retrieval.py L43-94).

Files: ``{train,val,test}_data.json`` (LocalizingMoments: a list of ``{"description", "video", "times", …}``, one
entry per moment) and ``{train,val,test}_list.txt`` (collaborative-experts: the video file names of each split,
8,392 / 1,065 / 1,004). Like CLIP4Clip, moments of unlisted videos are dropped (29 val and 33 test videos are
annotated but unlisted) and each video's descriptions, in file order, are joined with spaces into **one paragraph**:
its only query. Without a list file, every annotated video of the json is used (and the count differs; noted).

Video ids are the list entries, full file names with their Flickr extension (``.mov``, ``.3gp``, ``.m4v``, …; some
end in a bare ``.``), matched exactly; a re-encoded copy (``<name>.mp4`` or ``<name without extension>.mp4``) is
found too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import DatasetFileError, FileIndex, read_json, read_lines
from pipelines.datasets.retrieval_benchmark import (
    RetrievalBenchmark,
    RetrievalSplit,
    RetrievalVideo,
    Role,
    check_benchmark,
)

DATASET = "didemo"
SPLITS: tuple[Role, ...] = ("train", "val", "test")
#: split → videos of collaborative-experts' lists
PUBLISHED: dict[str, int] = {"train": 8_392, "val": 1_065, "test": 1_004}
_SOURCE = (
    "{list}: collaborative-experts' DiDeMo split, 8,392 / 1,065 / 1,004 videos (albanie/collaborative-experts"
    "@7eb3b9d362ee misc/datasets/didemo/, measured), read with {data} as CLIP4Clip does "
    "(ArrowLuo/CLIP4Clip@508ffa3de39b dataloaders/dataloader_didemo_retrieval.py L43-85)"
)


def _moments(path: Path) -> dict[str, list[str]]:
    """video → its descriptions, in file order."""
    obj = read_json(path)
    if not isinstance(obj, list):
        raise DatasetFileError(f"{path}: expected a list of moments (DiDeMo {path.name})")
    out: dict[str, list[str]] = {}
    for i, m in enumerate(obj):
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("video"), str)
            or not isinstance(m.get("description"), str)
        ):
            raise DatasetFileError(f"{path}: entry {i} has no 'video' and 'description' strings")
        out.setdefault(m["video"], []).append(m["description"].strip())
    return out


def file_names(video: str) -> tuple[str, ...]:
    """The list entry, then the name without its extension (a re-encoded ``<stem>.mp4``)."""
    stem = video.rsplit(".", 1)[0] if "." in video else ""
    return (video, stem) if stem else (video,)


def load(data_dir: Path, index: FileIndex | None = None) -> RetrievalBenchmark:
    files = index or FileIndex(data_dir)
    notes: list[str] = []
    found: dict[str, Path] = {}
    splits = []
    for split in SPLITS:
        data_name, list_name = f"{split}_data.json", f"{split}_list.txt"
        data_path = files.find(data_name)
        assert data_path is not None
        found[data_name] = data_path
        moments = _moments(data_path)
        list_path = files.find(list_name, required=False)
        if list_path is None:
            ids = list(moments)
            notes.append(f"{list_name} not found: every video of {data_name} is used ({len(ids):,})")
        else:
            found[list_name] = list_path
            ids = list(dict.fromkeys(read_lines(list_path)))
            unannotated = [v for v in ids if v not in moments]
            if unannotated:
                notes.append(
                    f"{split}: {len(unannotated)} videos of {list_name} have no moment in {data_name} and are left "
                    f"out (first: {', '.join(unannotated[:5])})"
                )
            unlisted = len(set(moments) - set(ids))
            if unlisted:
                notes.append(f"{split}: {unlisted} videos of {data_name} are not in {list_name}: dropped (CLIP4Clip)")
            ids = [v for v in ids if v in moments]
        videos = tuple(RetrievalVideo(v, (" ".join(moments[v]),), tuple(moments[v]), file_names(v)) for v in ids)
        source = _SOURCE.format(list=list_name, data=data_name)
        splits.append(RetrievalSplit(split, split, videos, PUBLISHED[split], None, source, is_test=split == "test"))
    return RetrievalBenchmark(DATASET, "paragraph", tuple(splits), found, tuple(notes), Path(data_dir))


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    return check_benchmark(load, data_dir, video_dir, probe)
