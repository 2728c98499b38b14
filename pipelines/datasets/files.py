"""Finding a downloaded benchmark's files: annotation files by their official names wherever they were unpacked,
videos by id with the extensions real downloads have, and a structured probe of the found videos.

Users unpack the official archives in many shapes (``msrvtt_data/…``, ``MSRVTT/videos/all/…``, one folder for all,
…), so nothing here assumes a folder: a `FileIndex` walks the tree once and answers by file name. Two different files
with the same official name make the lookup ambiguous (an error naming both); byte-identical copies are not.
Hidden files and folders are skipped: macOS zips add ``__MACOSX/._<name>`` and ``.DS_Store``.

Every failure is a `DatasetFileError` whose message is one line naming the file.
"""

from __future__ import annotations

import csv
import filecmp
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: video file extensions in order of preference when one id has several files. CLIP4Clip's MSR-VTT loader takes
#: ``.mp4`` then ``.webm``; MSVD ships ``.avi``; YouTube downloads (ActivityNet) are often ``.mkv``/``.webm``; DiDeMo's
#: Flickr names keep their original extension (benchmark-formats.md §3 lists them).
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".webm",
    ".mkv",
    ".avi",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".3gp",
    ".3gpp",
    ".3g2",
    ".wmv",
    ".flv",
    ".ogv",
    ".mts",
    ".m2ts",
    ".ts",
    ".qt",
    ".asf",
    ".divx",
)
_EXT_RANK = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}


class DatasetFileError(ValueError):
    """A dataset file is missing, ambiguous or malformed; the message is one line and names the file."""


class AnnotationNotFound(DatasetFileError):
    """An official annotation file is not under the data folder."""


class AmbiguousFile(DatasetFileError):
    """Two different files carry the same official name under the data folder."""


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


class FileIndex:
    """Every regular file under `root` (symlinks followed, each real folder once), indexed by name."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFileError(f"{self.root} is not a folder")
        self.by_name: dict[str, list[Path]] = {}
        seen: set[str] = set()
        for folder, dirs, names in os.walk(self.root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a symlink loop, or two links to one folder
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            for name in names:
                if not _hidden(name):
                    self.by_name.setdefault(name, []).append(Path(folder, name))

    def find(self, name: str, required: bool = True) -> Path | None:
        """The one file called `name` (byte-identical copies count as one); None if absent and not `required`."""
        paths = [p for p in self.by_name.get(name, []) if p.is_file()]
        if not paths:
            if required:
                raise AnnotationNotFound(f"{name} not found under {self.root}")
            return None
        paths.sort(key=lambda p: (len(p.parts), str(p)))
        for other in paths[1:]:
            if not filecmp.cmp(paths[0], other, shallow=False):
                raise AmbiguousFile(
                    f"two different {name} under {self.root}: {paths[0]} and {other}; point --data-dir at one"
                )
        return paths[0]


@dataclass(frozen=True)
class VideoMatch:
    path: Path | None
    candidates: int  # files that matched the id (several: the first by extension preference, then path, is used)


class VideoIndex:
    """Videos under a folder, looked up by id: a file named exactly as one of the id's names (DiDeMo's list entries
    carry their extension, some a bare final ``.``) or that name followed by a video extension (any case)."""

    def __init__(self, files: FileIndex) -> None:
        self.files = files
        self.by_stem: dict[str, list[Path]] = {}
        for name, paths in files.by_name.items():
            stem, ext = os.path.splitext(name)
            if ext.lower() in _EXT_RANK:
                self.by_stem.setdefault(stem, []).extend(paths)

    @classmethod
    def of(cls, root: Path) -> VideoIndex:
        return cls(FileIndex(root))

    def find(self, names: Sequence[str]) -> VideoMatch:
        """The video of an id known by `names` (tried in order; the first name that matches wins)."""
        for name in names:
            exact = self.files.by_name.get(name, [])
            paths = exact or self.by_stem.get(name, [])
            if paths:
                best = min(paths, key=lambda p: (_EXT_RANK.get(p.suffix.lower(), len(_EXT_RANK)), str(p)))
                return VideoMatch(best, len(paths))
        return VideoMatch(None, 0)


def probe_unreadable(
    paths: Mapping[str, Path],
    timeout: float = 30.0,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Ids (sorted) whose video the project's structured PyAV probe (`pipelines.ffmpeg.probe`) cannot read as a
    video: empty, truncated before the header, not a video, or hanging past `timeout`."""
    from pipelines.ffmpeg import ProbeError, probe

    def bad(item: tuple[str, Path]) -> str | None:
        try:
            probe(item[1], timeout=timeout)
        except ProbeError:
            return item[0]
        return None

    items = sorted(paths.items())
    out: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PyAV releases the GIL while it reads
        for i, vid in enumerate(pool.map(bad, items), 1):
            if vid is not None:
                out.append(vid)
            if progress is not None:
                progress(i, len(items))
    return out


# -- readers: every error names the file ------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DatasetFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines (LF or CRLF, with or without a final newline)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_csv(path: Path, columns: Iterable[str]) -> list[dict[str, str]]:
    """Rows of a csv with a header that holds `columns` (``,``; a ``;``-separated re-save is read too); a row whose
    field count differs from the header's is an error naming the line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    first = text.split("\n", 1)[0]
    delimiter = ";" if ";" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetFileError(f"{path}: empty file") from None
    wanted = list(columns)
    absent = [c for c in wanted if c not in header]
    if absent:
        raise DatasetFileError(f"{path}: no column {', '.join(absent)} in the header {','.join(header)}")
    rows: list[dict[str, str]] = []
    for row in reader:
        if not row or not any(field.strip() for field in row):
            continue
        if len(row) != len(header):
            raise DatasetFileError(
                f"{path}: line {reader.line_num} has {len(row)} fields, the header {len(header)} ({','.join(header)})"
            )
        rows.append({h: field.strip() for h, field in zip(header, row)})
    return rows
