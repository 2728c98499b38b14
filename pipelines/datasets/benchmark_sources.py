"""A downloaded retrieval benchmark as the ingest's input, and the run's reproduction ledger.

`benchmark_sources` reads the official files with the dataset's adapter (`pipelines.datasets.registry`), finds the
videos of the splits a run trains and evaluates on, and returns one ingest row per found video (``path, key, split,
captions``: the columns `pipelines.ingest.read_sources` reads) plus a ledger row for every annotated video it cannot
use (no file under the video folder; a video listed in both splits is evaluated, not trained on). `write_csv` writes
those rows as the ingest's sources CSV, named by the digest of its bytes, so the same download gives the same file.

After the ingest, `ledger` adds a row for every video the decoder could not use (``failed_probe``, ``empty``, …) or
kept with errors (``decoded_with_errors``, its frames are used), and counts what each split really holds: the
evaluated gallery may be smaller than the protocol's (1k-A: 1,000), and the result says so. Missing or broken videos
never stop a run; they are rows here. Pure functions: no Prefect, no MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.datasets import registry
from pipelines.datasets.files import FileIndex, VideoIndex
from pipelines.datasets.retrieval_benchmark import RetrievalBenchmark
from pipelines.ingest import make_key
from pipelines.shards import OK_STATUSES

#: the ledger's statuses besides the decoder's (`pipelines.decode.STATUSES`)
NOT_FOUND = "not_found"  # annotated, but no video file under the video folder
EXCLUDED = "excluded"  # listed in the training split and in the evaluated split: evaluated only


@dataclass(frozen=True)
class LedgerRow:
    id: str  # the benchmark's video id
    split: str
    status: str  # NOT_FOUND, EXCLUDED, or the decoder's status when it is not "ok"
    reason: str
    used: bool  # whether its frames reach training / evaluation
    key: str = ""  # the ingest's sample key ("" when never ingested)


@dataclass
class Sources:
    """What a run reads of a downloaded benchmark: ingest rows, the unusable videos found so far, split counts."""

    dataset: str
    protocol: str
    data_dir: str
    video_dir: str
    rows: list[dict[str, Any]]  # ingest rows: path, key, split, captions, video_id
    ledger: list[LedgerRow]
    splits: dict[str, dict[str, Any]]  # split → {"role", "annotated", "found", "expected", "source"}
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # official file name → the file read

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ledger": [asdict(r) for r in self.ledger]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sources:
        fields_ = dict(data)
        fields_["ledger"] = [LedgerRow(**r) for r in data.get("ledger", [])]
        return cls(**fields_)


def retrieval_loader(dataset: str) -> Any:
    """The ``load(data_dir, index=…)`` of the retrieval benchmark `dataset` (any spelling `registry` accepts)."""
    name = registry.canonical(dataset)
    if registry.KIND.get(name) != "retrieval":
        raise registry.UnknownDataset(f"{name} is not a text-video retrieval benchmark")
    return importlib.import_module(f"pipelines.datasets.{registry.MODULES[name]}").load


def sample_key(video_id: str) -> str:
    """The ingest key of a video id: the id itself when it is a safe key, else `pipelines.ingest.make_key`'s
    (DiDeMo's ``10@N00_1_aa.mov`` → ``10_N00_1_aa-<digest>``)."""
    try:
        return storage.check_key(video_id)
    except storage.UnsafeKeyError:
        return make_key(video_id)


def benchmark_sources(
    dataset: str,
    data_dir: str | Path,
    video_dir: str | Path | None,
    train_split: str,
    eval_split: str,
) -> Sources:
    """The ingest rows of `train_split` and `eval_split` of the benchmark under `data_dir` (videos under
    `video_dir`, default `data_dir`); a `DatasetFileError` or `KeyError` names a file or split that is not there."""
    load = retrieval_loader(dataset)
    data_path = Path(data_dir).expanduser().resolve()
    files = FileIndex(data_path)
    bench: RetrievalBenchmark = load(data_path, index=files)
    video_path = data_path if video_dir is None else Path(video_dir).expanduser().resolve()
    videos = VideoIndex(files if video_dir is None else FileIndex(video_path))
    evaluated = bench.split(eval_split)
    trained = bench.split(train_split)
    eval_ids = set(evaluated.ids)
    rows: list[dict[str, Any]] = []
    ledger: list[LedgerRow] = []
    splits: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    for split in (trained, evaluated) if trained.name != evaluated.name else (evaluated,):
        found = 0
        for v in split.videos:
            if split is trained and split is not evaluated and v.video_id in eval_ids:
                reason = f"also in the evaluated split {evaluated.name}: evaluated, not trained on"
                ledger.append(LedgerRow(v.video_id, split.name, EXCLUDED, reason, False))
                continue
            match = videos.find(v.file_names)
            if match.path is None:
                names = " or ".join(repr(n) for n in v.file_names)
                reason = f"no file named {names} (with a video extension) under {video_path}"
                ledger.append(LedgerRow(v.video_id, split.name, NOT_FOUND, reason, False))
                continue
            key = sample_key(v.video_id)
            if keys.setdefault(key, v.video_id) != v.video_id:  # two ids made safe the same way: keep both apart
                key = f"{key}-{hashlib.sha1(v.video_id.encode()).hexdigest()[:8]}"
            found += 1
            rows.append(
                {
                    "path": str(match.path),
                    "key": key,
                    "split": split.name,
                    "captions": list(v.captions),
                    "video_id": v.video_id,
                }
            )
        splits[split.name] = {
            "role": "test" if split is evaluated else "train",
            "annotated": len(split.videos),
            "found": found,
            "expected": split.expected_videos,
            "queries": split.n_queries,
            "source": split.source,
        }
    return Sources(
        dataset=bench.dataset,
        protocol=bench.protocol,
        data_dir=str(data_path),
        video_dir=str(video_path),
        rows=rows,
        ledger=ledger,
        splits=splits,
        notes=list(bench.notes),
        files={name: str(p) for name, p in bench.files.items()},
    )


def csv_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The sources CSV of `rows` (``path,key,split,captions,benchmark_id``; captions a JSON list), key order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "key", "split", "captions", "benchmark_id"])
    for r in sorted(rows, key=lambda r: str(r["key"])):
        writer.writerow([r["path"], r["key"], r["split"], json.dumps(list(r["captions"])), r["video_id"]])
    return buf.getvalue().encode("utf-8", "surrogateescape")


def write_csv(sources: Sources, folder: str | Path) -> Path:
    """Write the ingest's sources CSV under `folder` as ``sources-<sha256[:12]>.csv`` (the same rows, the same
    file: a rerun finds it instead of writing another); returns its path."""
    data = csv_bytes(sources.rows)
    path = Path(folder) / f"sources-{hashlib.sha256(data).hexdigest()[:12]}.csv"
    if not (path.is_file() and path.read_bytes() == data):
        storage.write_bytes_atomic(str(path), data)
    return path


def ledger(
    sources: Sources, manifest: Sequence[Mapping[str, Any]], train_split: str, eval_split: str
) -> dict[str, Any]:
    """The run's reproduction ledger: every annotated video the run could not use (or used with decoder errors),
    with its status and reason, and per split what it really holds (``usable``: videos whose frames are in the
    stage); ``gallery``: the evaluated split's usable videos and queries beside the protocol's number."""
    rows = list(sources.ledger)
    by_key = {str(r["key"]): r for r in manifest}
    ids = {r["key"]: r["video_id"] for r in sources.rows}
    usable: dict[str, int] = {}
    queries: dict[str, int] = {}
    for src in sources.rows:
        m = by_key.get(src["key"])
        status = "missing" if m is None else str(m.get("status"))
        ok = status in OK_STATUSES
        if ok:
            usable[src["split"]] = usable.get(src["split"], 0) + 1
            queries[src["split"]] = queries.get(src["split"], 0) + len(src["captions"])
        if status != "ok":
            reason = (m or {}).get("error") or ("not in the frames stage" if m is None else status)
            rows.append(LedgerRow(ids[src["key"]], src["split"], status, str(reason), ok, src["key"]))
    splits = {
        name: {**counts, "usable": usable.get(name, 0), "usable_queries": queries.get(name, 0)}
        for name, counts in sources.splits.items()
    }
    test = splits[eval_split]
    gallery = {
        "split": eval_split,
        "annotated": test["annotated"],
        "expected": test["expected"],
        "evaluated": test["usable"],
        "queries": test["usable_queries"],
        "complete": test["expected"] is not None and test["usable"] == test["expected"],
    }
    order = {"not_found": 0, "excluded": 2}
    rows.sort(key=lambda r: (r.split != eval_split, order.get(r.status, 1), r.split, r.id))
    return {
        "dataset": sources.dataset,
        "protocol": sources.protocol,
        "data_dir": sources.data_dir,
        "video_dir": sources.video_dir,
        "train_split": train_split,
        "eval_split": eval_split,
        "gallery": gallery,
        "splits": splits,
        "counts": _counts(rows),
        "rows": [asdict(r) for r in rows],
        "notes": list(sources.notes),
        "files": dict(sources.files),
    }


def _counts(rows: Sequence[LedgerRow]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.status] = out.get(r.status, 0) + 1
    return dict(sorted(out.items()))
