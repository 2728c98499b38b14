"""A downloaded W-TAL benchmark (THUMOS14, ActivityNet 1.2) as the DCC DAG's input, and the run's reproduction ledger.

`wtal_sources` reads the official files with the dataset's adapter (`pipelines.datasets.thumos14`,
`pipelines.datasets.activitynet12`), finds the videos of the protocol's training and test subsets (THUMOS14:
"validation" / "test"; ActivityNet 1.2: "training" / "validation") and returns one ingest row per found video (the
retrieval benchmarks' `pipelines.datasets.benchmark_sources.Sources`, whose CSV writer it reuses) plus a ledger row
for every annotated video without a file. `prepare` also writes the ground truth the recipe and the evaluation read:
the adapter's dataset in the W-TAL ``gt.json`` shape (ActivityNet ``database``; THUMOS14's Ambiguous segments kept as
``"Ambiguous"`` annotations, CliffDiving instances doubled as Diving as the adapter does), named by the digest of its
bytes, so the same download gives the same file and a changed one a new file (and new job configs).

Sample keys are the benchmark's video ids (``video_test_0000004``; ActivityNet's with the ``v_`` prefix its video and
W-TAL feature files carry, `activitynet12.file_names`), so released feature files are found by the same ids.

After the feature stages, `wtal_ledger` adds a row for every video the run could not use — no video file, a video
the decoder could not read, no released feature file, a feature row that failed — and counts what each subset really
holds: the evaluated test set may be smaller than the protocol's (THUMOS14 W-TAL: 210), and the result says so.
Missing or broken videos never stop a run; they are rows here. Pure functions: no Prefect, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.datasets import activitynet12, thumos14
from pipelines.datasets.benchmark_sources import NOT_FOUND, LedgerRow, Sources, sample_key, write_csv
from pipelines.datasets.files import FileIndex, VideoIndex
from pipelines.datasets.wtal import AMBIGUOUS, WTALDataset
from pipelines.shards import OK_STATUSES

#: the ledger's statuses besides `NOT_FOUND` and the decoder's (`pipelines.decode.STATUSES`)
NO_FEATURES = "no_features"  # no released feature file for the video (``--features``)
FEATURES_FAILED = "features_failed"  # its I3D or CLIP feature row failed (too short, wrong width, …)
NO_FRAMES = "no_frames"  # released features, but the VLP branch's frames are missing


Loaded = tuple[WTALDataset, dict[str, Path], list[str], Mapping[str, int]]  # dataset, files read, notes, expected


@dataclass(frozen=True)
class WTALBenchmark:
    """What the DAG needs to know of one W-TAL benchmark's adapter."""

    name: str  # the spec's and registry's name
    ground_truth_format: str  # `pipelines.datasets.wtal_data.LOADERS` key of the written ground truth
    load: Callable[[Path, Sequence[str]], Loaded]
    file_names: Callable[[str], tuple[str, ...]]  # names a video (or feature) file of an id may carry


def _thumos14(data_dir: Path, exclude: Sequence[str]) -> Loaded:
    ann = thumos14.read(data_dir, exclude=exclude)
    notes = [
        f"annotations: {'the official per-class files' if ann.source == 'official' else thumos14.GT_JSON}",
        f"CliffDiving ⊂ Diving: {ann.diving_added} Diving twins added",
    ]
    if exclude:
        notes.append(f"left out as the W-TAL repos do: {', '.join(exclude)}")
    expected = dict(thumos14.EXPECTED_VIDEOS[ann.source])
    if ann.source == "official" and exclude:  # the official folders' 213 test videos less the excluded ones
        expected["test"] -= sum(1 for v in exclude if v.startswith("video_test_"))
    return ann.dataset, {name: Path(p) for name, p in ann.files.items()}, notes, expected


def _activitynet12(data_dir: Path, exclude: Sequence[str]) -> Loaded:
    ds, path = activitynet12.read(data_dir, video_prefix="v_")
    if exclude:
        skip = set(exclude)
        ds = WTALDataset(ds.protocol, ds.classes, {k: v for k, v in ds.videos.items() if k not in skip}, ds.version)
    notes = [f"{activitynet12.ANNOTATION_FILE}: {ds.version or 'no version'}; {len(ds.classes)} classes"]
    return ds, {activitynet12.ANNOTATION_FILE: path}, notes, activitynet12.EXPECTED_VIDEOS


def _same(video_id: str) -> tuple[str, ...]:
    return (video_id,)


BENCHMARKS: dict[str, WTALBenchmark] = {
    "thumos14": WTALBenchmark("thumos14", "thumos14", _thumos14, _same),
    "activitynet12": WTALBenchmark("activitynet12", "activitynet1.2", _activitynet12, activitynet12.file_names),
}


def benchmark(dataset: str) -> WTALBenchmark:
    if dataset not in BENCHMARKS:
        raise ValueError(f"no W-TAL benchmark {dataset!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[dataset]


def wtal_sources(
    dataset: str,
    data_dir: str | Path,
    video_dir: str | Path | None,
    exclude: Sequence[str] = (),
    with_videos: bool = True,
) -> tuple[Sources, WTALDataset]:
    """The ingest rows of the protocol's training and test subsets of the benchmark under `data_dir` (videos under
    `video_dir`, default `data_dir`), and the dataset. Without `with_videos` (released features only, no frames
    needed) no video is looked up: `Sources.rows` is empty and nothing is a ledger row yet."""
    bench = benchmark(dataset)
    data_path = Path(data_dir).expanduser().resolve()
    files = FileIndex(data_path)
    ds, ann_files, notes, expected = bench.load(data_path, exclude)
    video_path = data_path if video_dir is None else Path(video_dir).expanduser().resolve()
    videos = VideoIndex(files if video_dir is None else FileIndex(video_path)) if with_videos else None
    rows: list[dict[str, Any]] = []
    ledger: list[LedgerRow] = []
    splits: dict[str, dict[str, Any]] = {}
    for role, subset in (("train", ds.protocol.train_subset), ("test", ds.protocol.test_subset)):
        records = ds.subset(subset)
        found = 0
        for v in records:
            if videos is None:
                continue
            names = bench.file_names(v.video_id)
            match = videos.find(names)
            if match.path is None:
                shown = " or ".join(repr(n) for n in names)
                reason = f"no file named {shown} (with a video extension) under {video_path}"
                ledger.append(LedgerRow(v.video_id, subset, NOT_FOUND, reason, False))
                continue
            found += 1
            key = sample_key(v.video_id)
            rows.append({"path": str(match.path), "key": key, "split": role, "captions": [], "video_id": v.video_id})
        splits[subset] = {
            "role": role,
            "annotated": len(records),
            "found": found if videos is not None else None,
            "expected": expected.get(subset),
            "instances": sum(len(v.instances) for v in records),
            "source": f"{dataset} adapter (pipelines.datasets.{dataset})",
        }
    sources = Sources(
        dataset=dataset,
        protocol=ds.protocol.name,
        data_dir=str(data_path),
        video_dir=str(video_path) if with_videos else "",
        rows=rows,
        ledger=ledger,
        splits=splits,
        notes=notes,
        files={name: str(p) for name, p in ann_files.items()},
    )
    return sources, ds


def ground_truth_bytes(ds: WTALDataset, subsets: Iterable[str]) -> bytes:
    """The W-TAL ``gt.json`` of `ds`'s videos in `subsets`: ActivityNet ``database`` entries (subset, duration,
    annotations: the instances, then THUMOS14's Ambiguous segments labelled ``"Ambiguous"``), sorted, compact."""
    keep = set(subsets)
    database = {}
    for vid, v in sorted(ds.videos.items()):
        if v.subset not in keep:
            continue
        annotations = [{"segment": [i.start, i.end], "label": i.label} for i in v.instances]
        annotations += [{"segment": [a, b], "label": AMBIGUOUS} for a, b in v.ambiguous]
        database[vid] = {"subset": v.subset, "duration": v.duration, "annotations": annotations}
    doc = {"version": ds.version or ds.protocol.name, "database": database}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def prepare(
    dataset: str,
    data_dir: str | Path,
    video_dir: str | Path | None,
    folder: str | Path,
    exclude: Sequence[str] = (),
    with_videos: bool = True,
) -> dict[str, Any]:
    """`wtal_sources`, then the ground truth (``ground_truth-<sha256[:12]>.json``) and, `with_videos`, the ingest's
    sources CSV written under `folder`. Returns `Sources.as_dict` plus ``ground_truth``, ``ground_truth_format``,
    ``sources_csv`` ("" without videos), ``classes``, ``found`` (videos found per role) and ``meta`` (key → split,
    subset, labels, duration: what the feature stages store with each sample)."""
    sources, ds = wtal_sources(dataset, data_dir, video_dir, exclude, with_videos)
    subsets = (ds.protocol.train_subset, ds.protocol.test_subset)
    data = ground_truth_bytes(ds, subsets)
    storage.makedirs(str(folder))
    gt_path = Path(folder) / f"ground_truth-{hashlib.sha256(data).hexdigest()[:12]}.json"
    if not (gt_path.is_file() and gt_path.read_bytes() == data):
        storage.write_bytes_atomic(str(gt_path), data)
    csv_path = str(write_csv(sources, folder)) if with_videos and sources.rows else ""
    meta = {
        sample_key(v.video_id): {
            "split": "train" if v.subset == ds.protocol.train_subset else "test",
            "subset": v.subset,
            "labels": list(v.labels),
            "duration": v.duration,
            "video_id": v.video_id,
        }
        for subset in subsets
        for v in ds.subset(subset)
    }
    found = {role: sum(1 for r in sources.rows if r["split"] == role) for role in ("train", "test")}
    return {
        **sources.as_dict(),
        "ground_truth": str(gt_path),
        "ground_truth_format": benchmark(dataset).ground_truth_format,
        "sources_csv": csv_path,
        "classes": list(ds.classes),
        "found": found,
        "meta": meta,
    }


def wtal_ledger(
    prepared: Mapping[str, Any],
    features: Sequence[Mapping[str, Any]],
    frames: Sequence[Mapping[str, Any]] | None = None,
    clip: Sequence[Mapping[str, Any]] | None = None,
    features_dir: str = "",
) -> dict[str, Any]:
    """The run's reproduction ledger from `prepare`'s output and the manifests of the stages the run used: every
    annotated training / test video that did not reach training or evaluation (or reached it with decoder errors),
    with its status and reason, and per subset what the run really holds (``usable``: the video has I3D features —
    and CLIP features when the VLP branch runs, i.e. when `clip` is given)."""
    sources = Sources.from_dict({k: prepared[k] for k in Sources.__dataclass_fields__})
    meta: Mapping[str, Mapping[str, Any]] = prepared["meta"]
    rows = list(sources.ledger)
    listed = {r.id for r in rows}
    by = {
        name: {str(r["key"]): r for r in manifest}
        for name, manifest in (("frames", frames or ()), ("features", features), ("clip", clip or ()))
    }
    usable: dict[str, int] = {}
    for key, m in sorted(meta.items()):
        vid, subset = str(m["video_id"]), str(m["subset"])
        if vid in listed:
            continue  # already a row: no video file
        row = _problem(key, by, frames is not None, clip is not None, features_dir)
        if row is None or row[2]:
            usable[subset] = usable.get(subset, 0) + 1
        if row is not None:
            status, reason, used = row
            rows.append(LedgerRow(vid, subset, status, reason, used, key))
    splits = {name: {**counts, "usable": usable.get(name, 0)} for name, counts in sources.splits.items()}
    test_subset = next(name for name, s in splits.items() if s["role"] == "test")
    test = splits[test_subset]
    evaluated = {
        "subset": test_subset,
        "annotated": test["annotated"],
        "expected": test["expected"],
        "with_features": test["usable"],
        "scored_on": test["annotated"],  # every annotated test video: one without features has its instances missed
        "complete": test["expected"] is not None and test["usable"] == test["expected"],
    }
    rows.sort(key=lambda r: (r.split != test_subset, r.status, r.split, r.id))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {
        "dataset": sources.dataset,
        "protocol": sources.protocol,
        "data_dir": sources.data_dir,
        "video_dir": sources.video_dir,
        "features_dir": features_dir,
        "evaluated": evaluated,
        "splits": splits,
        "counts": dict(sorted(counts.items())),
        "rows": [asdict(r) for r in rows],
        "notes": list(sources.notes),
        "files": dict(sources.files),
    }


def _problem(
    key: str,
    by: Mapping[str, Mapping[str, Mapping[str, Any]]],
    with_frames: bool,
    with_clip: bool,
    features_dir: str,
) -> tuple[str, str, bool] | None:
    """(status, reason, used) of the first thing that kept a video out of the run (or marked it), None if nothing."""
    if with_frames:
        f = by["frames"].get(key)
        if f is None:
            return (NO_FRAMES, "not in the frames stage", False)
        status = str(f.get("status"))
        if status not in OK_STATUSES:
            return (status, str(f.get("error") or status), False)
    feats = by["features"].get(key)
    if feats is None:
        if features_dir:
            reason = (
                f"not imported: its frames are not usable (the VLP branch needs them) or no file under {features_dir}"
            )
            return (NO_FEATURES, reason, False)
        return (FEATURES_FAILED, "not in the I3D feature stage", False)
    if str(feats.get("status")) not in OK_STATUSES:
        error = str(feats.get("error") or "I3D features failed")
        absent = features_dir and error.startswith(("no released feature file", "only the "))
        return (NO_FEATURES if absent else FEATURES_FAILED, error, False)
    if with_clip:
        c = by["clip"].get(key)
        if c is None or str(c.get("status")) not in OK_STATUSES:
            return (FEATURES_FAILED, str((c or {}).get("error") or "no CLIP frame features"), False)
    if with_frames and str(by["frames"][key].get("status")) != "ok":
        f = by["frames"][key]
        return (str(f.get("status")), str(f.get("error") or f.get("status")), True)
    return None
