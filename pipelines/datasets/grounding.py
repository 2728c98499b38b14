"""Temporal sentence grounding annotations: Charades-STA and ActivityNet Captions → typed query records.

Formats (METHODS §6; parsing rules from 2D-TAN, microsoft/VideoX `2D-TAN/lib/datasets/{charades,activitynet}.py`,
the loaders LocVTP's grounding experiments use):

- **Charades-STA** (`charades_sta_{train,test}.txt`, Gao et al. 2017): one query per line,
  ``<video> <start> <end>##<sentence>`` in seconds, e.g. ``AO8RW 0.0 6.9##a person is putting a book on a shelf.``
  2D-TAN strips the trailing ``".\\n"``, clamps the end to the video length from ``Charades_v1_{split}.csv``
  (column ``length``) and drops queries with start >= end; so does `parse_charades_sta` when `durations` are given.
  The project's mini-grounding writes the same lines (2 decimals, sentences without a final period).
- **ActivityNet Captions** (`train.json`, `val_1.json`, `val_2.json`; 2D-TAN's `train/val/test.json`):
  ``{video: {"duration": s, "timestamps": [[start, end], ...], "sentences": [...]}}``. 2D-TAN keeps a pair when
  start < end and clamps it to ``[0, duration]``; queries whose clamped moment is empty are dropped too.

Times are seconds, moments half-open ``[start, end)`` (`models.common.segments` convention). `charades_sta_rows` /
`activitynet_captions_rows` give the queries as written (no clamping or dropping), `clamp_query` applies 2D-TAN's
rule to one and `clamp_counts` counts what it drops and clips (the real-benchmark adapters `charades_sta` and
`anet_captions_grounding` report that in ``data check``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.datasets.files import DatasetFileError, read_csv


@dataclass(frozen=True)
class GroundingQuery:
    """One sentence query and its ground-truth moment ``[start, end)`` seconds in `video`; `duration` (seconds) when
    the source knows it (ActivityNet always; Charades-STA only with a durations table)."""

    video: str
    start: float
    end: float
    sentence: str
    duration: float | None = None


def _clean_sentence(text: str) -> str:
    # 2D-TAN: `sent.split('.\n')[0]` — drop the final period (and the newline); keep inner punctuation
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def _clamped(video: str, start: float, end: float, sentence: str, duration: float | None) -> GroundingQuery | None:
    """The query with its moment clamped to [0, duration] (when known); None when the moment is empty."""
    if duration is not None:
        start, end = max(start, 0.0), min(end, duration)
    if not start < end:
        return None
    return GroundingQuery(video, start, end, sentence, duration)


def clamp_query(query: GroundingQuery) -> GroundingQuery | None:
    """2D-TAN's rule on one raw query: its moment clamped to [0, duration] (when known); None when empty."""
    return _clamped(query.video, query.start, query.end, query.sentence, query.duration)


@dataclass(frozen=True)
class ClampCounts:
    """What 2D-TAN's rule does to raw queries: `reversed` start >= end as written; `clipped` kept with a moment cut
    to [0, duration]; `emptied` start < end as written but empty once clamped (starts at or past the end)."""

    rows: int
    reversed: int
    clipped: int
    emptied: int

    @property
    def kept(self) -> int:
        return self.rows - self.reversed - self.emptied


def clamp_counts(rows: Iterable[GroundingQuery]) -> ClampCounts:
    """`ClampCounts` of raw queries (`charades_sta_rows` with durations, `activitynet_captions_rows`)."""
    n = reversed_ = clipped = emptied = 0
    for q in rows:
        n += 1
        if not q.start < q.end:
            reversed_ += 1
            continue
        kept = clamp_query(q)
        if kept is None:
            emptied += 1
        elif (kept.start, kept.end) != (q.start, q.end):
            clipped += 1
    return ClampCounts(n, reversed_, clipped, emptied)


def charades_sta_rows(text: str, source: str = "<string>") -> list[tuple[int, GroundingQuery]]:
    """Charades-STA lines as written → (line number, query) with no clamping or dropping (duration None), blank
    lines skipped; CRLF or LF. Raises ValueError naming `source` and the line for a malformed line."""
    rows: list[tuple[int, GroundingQuery]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        head, sep, sentence = line.partition("##")
        fields = head.split()
        if not sep or len(fields) != 3:
            raise ValueError(f"{where}: expected '<video> <start> <end>##<sentence>', got {line!r}")
        video, start_s, end_s = fields
        try:
            start, end = float(start_s), float(end_s)
        except ValueError:
            raise ValueError(f"{where}: start/end are not numbers in {line!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{where}: non-finite time in {line!r}")
        rows.append((lineno, GroundingQuery(video, start, end, _clean_sentence(sentence))))
    return rows


def parse_charades_sta(
    text: str, durations: Mapping[str, float] | None = None, source: str = "<string>"
) -> list[GroundingQuery]:
    """Charades-STA lines → queries, in file order (blank lines skipped).

    durations: video → length in seconds (`read_charades_durations`); when given, every video must be listed, ends
    are clamped to it and empty moments dropped (2D-TAN). Without it, only start >= end queries are dropped.
    Raises ValueError naming `source` and the line for a malformed line.
    """
    queries: list[GroundingQuery] = []
    for lineno, row in charades_sta_rows(text, source):
        duration = None
        if durations is not None:
            if row.video not in durations:
                raise ValueError(f"{source}:{lineno}: video {row.video!r} has no duration")
            duration = float(durations[row.video])
        query = _clamped(row.video, row.start, row.end, row.sentence, duration)
        if query is not None:
            queries.append(query)
    return queries


def read_charades_sta(path: str | Path, durations: Mapping[str, float] | None = None) -> list[GroundingQuery]:
    """`parse_charades_sta` of a file."""
    path = Path(path)
    return parse_charades_sta(path.read_text(encoding="utf-8"), durations, source=str(path))


def read_charades_durations(path: str | Path) -> dict[str, float]:
    """Charades ``Charades_v1_{split}.csv`` → {video id: length seconds} (columns ``id`` and ``length``; CRLF as
    written by Python's csv module, or LF). Raises `DatasetFileError` naming the file."""
    path = Path(path)
    out: dict[str, float] = {}
    for row in read_csv(path, ["id", "length"]):
        try:
            out[row["id"]] = float(row["length"])
        except ValueError:
            raise DatasetFileError(f"{path}: video {row['id']!r} has length {row['length']!r}, not a number") from None
    return out


def format_charades_sta(queries: Iterable[GroundingQuery]) -> str:
    """Queries → Charades-STA text, one ``<video> <start> <end>##<sentence>`` line each (2 decimals, like the
    mini world); `parse_charades_sta` reads it back."""
    lines = []
    for q in queries:
        if "##" in q.sentence or "\n" in q.sentence or not q.video or any(c.isspace() for c in q.video):
            raise ValueError(f"query {q} cannot be written as a Charades-STA line")
        lines.append(f"{q.video} {q.start:.2f} {q.end:.2f}##{q.sentence}\n")
    return "".join(lines)


def write_charades_sta(queries: Iterable[GroundingQuery], path: str | Path) -> None:
    Path(path).write_text(format_charades_sta(queries), encoding="utf-8")


def parse_activitynet_captions(data: Mapping[str, Any], source: str = "<mapping>") -> list[GroundingQuery]:
    """ActivityNet Captions JSON (already loaded) → queries, videos in file order, sentences in listed order."""
    return [q for row in activitynet_captions_rows(data, source) if (q := clamp_query(row)) is not None]


def activitynet_captions_rows(data: Mapping[str, Any], source: str = "<mapping>") -> list[GroundingQuery]:
    """ActivityNet Captions JSON (already loaded) → one query per (timestamp, sentence) as written (with the video's
    duration; no clamping or dropping). Raises ValueError naming `source` and the video for a malformed entry."""
    queries: list[GroundingQuery] = []
    for video, entry in data.items():
        where = f"{source}: video {video!r}"
        try:
            duration = float(entry["duration"])
            timestamps, sentences = entry["timestamps"], entry["sentences"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: needs 'duration', 'timestamps' and 'sentences'") from None
        if len(timestamps) != len(sentences):
            raise ValueError(f"{where}: {len(timestamps)} timestamps but {len(sentences)} sentences")
        for stamp, sentence in zip(timestamps, sentences):
            try:
                start, end = (float(t) for t in stamp)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: timestamp {stamp!r} is not [start, end]") from None
            queries.append(GroundingQuery(video, start, end, str(sentence).strip(), duration))
    return queries


def read_activitynet_captions(path: str | Path) -> list[GroundingQuery]:
    """`parse_activitynet_captions` of a JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: top level must be an object {{video: {{duration, timestamps, sentences}}}}")
    return parse_activitynet_captions(data, source=str(path))


def format_activitynet_captions(queries: Iterable[GroundingQuery]) -> dict[str, dict[str, Any]]:
    """Queries → the ActivityNet Captions mapping (videos in first-seen order); every query needs a duration, and
    the queries of one video must agree on it."""
    out: dict[str, dict[str, Any]] = {}
    for q in queries:
        if q.duration is None:
            raise ValueError(f"query {q} has no duration (ActivityNet Captions needs one per video)")
        entry = out.setdefault(q.video, {"duration": q.duration, "timestamps": [], "sentences": []})
        if entry["duration"] != q.duration:
            raise ValueError(f"video {q.video!r}: durations {entry['duration']} and {q.duration} disagree")
        entry["timestamps"].append([q.start, q.end])
        entry["sentences"].append(q.sentence)
    return out


def write_activitynet_captions(queries: Iterable[GroundingQuery], path: str | Path) -> None:
    Path(path).write_text(json.dumps(format_activitynet_captions(queries), indent=1), encoding="utf-8")
