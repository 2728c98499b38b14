"""THUMOS14 for W-TAL from the user's download → `pipelines.datasets.wtal.WTALDataset`; `check` for ``data check``.

Two annotation sources (benchmark-formats §5), found by their file names wherever they were unpacked under the data
folder; the official folders win when both are there:

- **official per-class folders**: ``TH14_Temporal_annotations_validation/annotation/<Class>_val.txt`` and
  ``TH14_Temporal_Annotations_Test/annotations/annotation/<Class>_test.txt`` (20 classes each), rows
  ``video_validation_0000051  67.5 75.9`` (two spaces after the name: split on any whitespace; CRLF or LF).
  ``Ambiguous_{val,test}.txt`` rows become a video's ambiguous segments, never instances (CO2-Net filters predictions
  overlapping them); a video listed only there is no annotated video (it has no instance).
- **the W-TAL repos' ``gt.json``** (BaSNet, UM): ActivityNet-style ``database`` with subsets ``train`` (the 200
  validation videos) and ``test`` (210: the repos drop test videos 270, 1292 and 1496, BaSNet README L27), string
  segment times, no durations (`pipelines.datasets.wtal.load_thumos14`).

Either way the W-TAL protocol holds: train on "validation", test on "test", the 20 classes in alphabetical order.
Quirks handled:

- **CliffDiving ⊂ Diving**: in ``gt.json`` every CliffDiving instance (360) is repeated with the same segment as
  Diving; the W-TAL repos keep both labels (multi-hot), so `add_diving_duplicates` gives every CliffDiving instance
  its Diving twin when a source lacks it (the official folders then equal ``gt.json``). ActionFormer instead drops
  CliffDiving from training (``libs/datasets/thumos14.py``) — a fully-supervised choice DCC does not make.
- **the dropped test videos**: the official folders annotate 213 test videos; ``exclude=UM_EXCLUDED_TEST`` gives the
  W-TAL repos' 210.
- **segments past the video end**: neither source gives durations and the formats doc records no rule for THUMOS14;
  segments are kept as written (BaSNet's evaluator reads them so). Given durations (``load(durations=...)``, e.g.
  probed), `pipelines.datasets.wtal.clip_to_duration` applies the project's rule (2D-TAN's): ends cut to the video
  end, segments starting at or after it dropped; ``check(probe=True)`` counts both.

Files are found with `pipelines.datasets.files` (any folder shape; errors are one-line `DatasetFileError`s naming
the file). the video side of ``data check`` (`pipelines.datasets.videos`) serves every localization adapter
(`activitynet12`, `charades_sta`, `anet_captions_grounding`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import AnnotationNotFound, DatasetFileError, FileIndex
from pipelines.datasets.videos import VideoSplit, check_video_splits, probe_durations, unreadable_ids
from pipelines.datasets.wtal import (
    AMBIGUOUS,
    THUMOS14,
    THUMOS14_CLASSES,
    UM_EXCLUDED_TEST,
    Instance,
    VideoRecord,
    WTALDataset,
    clip_to_duration,
    load_thumos14,
    parse_database,
)

DATASET = "thumos14"
Source = Literal["auto", "official", "gt.json"]
SUBSETS: tuple[str, ...] = ("validation", "test")
CLASS_FILE_SUFFIX: Mapping[str, str] = {"validation": "_val.txt", "test": "_test.txt"}
GT_JSON = "gt.json"
# published videos per subset: 200 validation (BaSNet split_train.txt); 213 test in the official folders = the 210
# of BaSNet's split_test.txt plus the 3 its README L27 excludes (UM_EXCLUDED_TEST), which its gt.json also lacks
EXPECTED_VIDEOS: Mapping[str, Mapping[str, int]] = {
    "official": {"validation": 200, "test": 213},
    "gt.json": {"validation": 200, "test": 210},
}
EXPECTED_SOURCE = (
    "benchmark-formats §5: Pilhyeon/BaSNet-pytorch@c8c6bbd84a33 dataset/THUMOS14/split_{train,test}.txt "
    "(200 / 210 videos) and README L27 (3 more test videos it excludes)"
)


# ------------------------------------------------------------------------------------------ official folders


def read_class_file(path: Path) -> list[tuple[str, float, float]]:
    """One official ``<Class>_{val,test}.txt`` → (video, start s, end s) rows in file order (blank lines skipped;
    any whitespace between fields, LF or CRLF). Raises `DatasetFileError` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 3:
                raise ValueError
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise DatasetFileError(f"{path}:{lineno}: expected '<video>  <start> <end>', got {line!r}") from None
        if end < start:
            raise DatasetFileError(f"{path}:{lineno}: the segment ends before it starts: {line!r}")
        rows.append((fields[0], start, end))
    return rows


def find_official(index: FileIndex) -> dict[str, dict[str, Path]]:
    """subset → {class (and "Ambiguous" when present) → its official file}; a subset with none of the 20 class
    files is absent, one with some of them raises `AnnotationNotFound` naming the first it lacks."""
    out: dict[str, dict[str, Path]] = {}
    for subset in SUBSETS:
        suffix = CLASS_FILE_SUFFIX[subset]
        files = {c: index.find(c + suffix, required=False) for c in (*THUMOS14_CLASSES, AMBIGUOUS)}
        present = {c: p for c, p in files.items() if p is not None}
        if not present.keys() - {AMBIGUOUS}:
            continue
        lacking = [c + suffix for c in THUMOS14_CLASSES if c not in present]
        if lacking:
            raise AnnotationNotFound(
                f"{lacking[0]} not found under {index.root} ({len(lacking)} of the 20 THUMOS14 {subset} class files "
                f"missing, e.g. beside {next(iter(present.values())).parent})"
            )
        out[subset] = present
    return out


def read_official(
    files: Mapping[str, Mapping[str, Path]], exclude: Iterable[str] = ()
) -> tuple[WTALDataset, dict[str, list[str]]]:
    """The official per-class files (`find_official`) → (dataset, {subset: videos listed only in its Ambiguous
    file, left out: they have no instance}). No ``Ambiguous_*`` file means no ambiguous segments."""
    database: dict[str, dict[str, Any]] = {}
    ambiguous_only: dict[str, list[str]] = {}
    for subset, by_class in files.items():
        for cls in THUMOS14_CLASSES:
            for vid, start, end in read_class_file(by_class[cls]):
                entry = database.setdefault(vid, {"subset": subset, "annotations": []})
                if entry["subset"] != subset:
                    raise DatasetFileError(f"{by_class[cls]}: {vid} is also annotated in the {entry['subset']} files")
                entry["annotations"].append({"segment": [start, end], "label": cls})
        lone: set[str] = set()
        for vid, start, end in read_class_file(by_class[AMBIGUOUS]) if AMBIGUOUS in by_class else []:
            if vid in database:
                database[vid]["annotations"].append({"segment": [start, end], "label": AMBIGUOUS})
            else:
                lone.add(vid)
        ambiguous_only[subset] = sorted(lone)
    ds = parse_database({"version": "THUMOS14", "database": database}, THUMOS14, THUMOS14_CLASSES, exclude)
    return ds, ambiguous_only


def add_diving_duplicates(ds: WTALDataset) -> tuple[WTALDataset, int]:
    """Every CliffDiving instance also a Diving instance with the same segment (the W-TAL ``gt.json`` convention:
    CliffDiving ⊂ Diving); returns the dataset and the number of Diving instances added."""
    added = 0
    videos: dict[str, VideoRecord] = {}
    for vid, v in ds.videos.items():
        diving = {(i.start, i.end) for i in v.instances if i.label == "Diving"}
        twins = {(i.start, i.end) for i in v.instances if i.label == "CliffDiving"} - diving
        if twins:
            added += len(twins)
            extra = [Instance(a, b, "Diving") for a, b in twins]
            instances = tuple(sorted([*v.instances, *extra], key=lambda i: (i.start, i.end, i.label)))
            v = VideoRecord(vid, v.subset, v.duration, instances, v.ambiguous)
        videos[vid] = v
    return WTALDataset(ds.protocol, ds.classes, videos, ds.version), added


# --------------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Thumos14Annotations:
    """What `read` found: the dataset (CliffDiving rule applied) and where it came from."""

    dataset: WTALDataset
    source: Literal["official", "gt.json"]
    files: Mapping[str, Path]  # official file name → the file read
    ambiguous_only: Mapping[str, list[str]]  # subset → videos only in its Ambiguous_* file (official source)
    diving_added: int


def read(
    data_dir: Path, source: Source = "auto", exclude: Iterable[str] = (), index: FileIndex | None = None
) -> Thumos14Annotations:
    """Find and parse THUMOS14's annotations under `data_dir` (`source` "auto": the official folders when present,
    else ``gt.json``). Raises `DatasetFileError` (one line, naming the file)."""
    index = index or FileIndex(data_dir)
    official = find_official(index) if source in ("auto", "official") else {}
    if official:
        ds, ambiguous_only = read_official(official, exclude)
        files = {p.name: p for by_class in official.values() for p in by_class.values()}
        return _with_diving(ds, "official", files, ambiguous_only)
    if source == "official":
        raise AnnotationNotFound(f"BaseballPitch_val.txt not found under {index.root} (official THUMOS14 folders)")
    path = index.find(GT_JSON, required=False)
    if path is None:
        raise AnnotationNotFound(
            f"BaseballPitch_val.txt / BaseballPitch_test.txt (official folders) or {GT_JSON} (W-TAL repos) not found "
            f"under {index.root}"
        )
    try:
        ds = load_thumos14(path, exclude=exclude)
    except json.JSONDecodeError as exc:
        raise DatasetFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetFileError(f"{path}: not THUMOS14 ground truth ({type(exc).__name__}: {exc})") from None
    return _with_diving(ds, "gt.json", {GT_JSON: path}, {})


def _with_diving(
    ds: WTALDataset, source: Literal["official", "gt.json"], files: Mapping[str, Path], ambiguous_only: Any
) -> Thumos14Annotations:
    ds, added = add_diving_duplicates(ds)
    return Thumos14Annotations(ds, source, dict(files), ambiguous_only, added)


def load(
    data_dir: Path,
    source: Source = "auto",
    exclude: Iterable[str] = (),
    durations: Mapping[str, float] | None = None,
) -> WTALDataset:
    """THUMOS14 under `data_dir` → `WTALDataset` (train = "validation", test = "test", 20 classes, CliffDiving
    instances also Diving). exclude: e.g. `UM_EXCLUDED_TEST` for the W-TAL repos' 210 test videos. durations:
    video → seconds; when given, segments are clipped to them (`clip_to_duration`)."""
    ds = read(data_dir, source, exclude).dataset
    return ds if durations is None else clip_to_duration(ds, durations)[0]


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    """``vlrepro data check thumos14``: per subset, annotated / found / missing / unreadable videos (``<video>.mp4``
    anywhere under `video_dir`, default `data_dir`), instances, the published counts; notes on the quirks."""
    index = FileIndex(data_dir)
    ann = read(data_dir, index=index)
    ds = ann.dataset
    splits = [
        VideoSplit(
            subset,
            tuple(v.video_id for v in ds.subset(subset)),
            sum(len(v.instances) for v in ds.subset(subset)),
            EXPECTED_VIDEOS[ann.source][subset],
            None,
            EXPECTED_SOURCE,
            is_test=subset == THUMOS14.test_subset,
        )
        for subset in SUBSETS
    ]
    notes = [f"annotations: {'the official per-class files' if ann.source == 'official' else GT_JSON}"]
    if ann.source == "official":
        lacking = [s for s in SUBSETS if not ds.subset(s)]
        if lacking:
            notes.append(f"no official <Class>{CLASS_FILE_SUFFIX[lacking[0]]} files: no {lacking[0]} videos")
    for subset in SUBSETS:
        records = ds.subset(subset)
        line = f"{subset}: {sum(len(v.ambiguous) for v in records)} Ambiguous segments, kept apart from the instances"
        absent = [c for c in ds.classes if records and not any(c in v.labels for v in records)]
        if absent:
            line += f"; classes with no instance: {', '.join(absent)}"
        if ann.ambiguous_only.get(subset):
            line += f"; videos only in the Ambiguous file, left out: {', '.join(ann.ambiguous_only[subset])}"
        notes.append(line)
    n_cliff = sum(i.label == "CliffDiving" for v in ds.videos.values() for i in v.instances)
    notes.append(
        f"CliffDiving ⊂ Diving: each of the {n_cliff} CliffDiving instances is also a Diving instance "
        f"({ann.diving_added} Diving twins added)"
    )
    dropped = [v for v in UM_EXCLUDED_TEST if v in ds.videos]
    if dropped:
        notes.append(f"the W-TAL repos (BaSNet, UM) leave out {', '.join(dropped)}: load(exclude=UM_EXCLUDED_TEST)")
    result, found = check_video_splits(DATASET, data_dir, video_dir, probe, splits, notes, ann.files, index=index)
    if probe:
        durations = probe_durations({v: p for v, p in found.items() if v not in unreadable_ids(result)})
        _, clipped, emptied = clip_to_duration(ds, durations)
        result.notes.append(
            f"probed durations of {len(durations)} videos: {clipped} instances end past their video "
            f"(clip_to_duration cuts them), {emptied} start at or after its end (dropped)"
        )
    return result
