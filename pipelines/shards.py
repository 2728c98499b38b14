"""WebDataset shards with commit markers: the layout, the write protocol, the generic shard runner and readers.

Layout of one stage (ingest frames, CLIP features, I3D features, ...)::

    <root>/<dataset>/<stage>/<config-hash>/
        _config.json            written first: the stage's full config, its hash and the digest of its input set
        000000.tar              WebDataset tar; members <key>.npy (array) and <key>.json (metadata)
        000000.parquet          one row per *input* of the shard (status, error, sizes, ...), including failures
        000000_stats.json       the shard's commit marker, written last
        ...
        _stats.json             the stage's commit marker: written after every shard is committed

A shard counts as done only if its ``_stats.json`` exists: a writer killed half way leaves at most a temporary file
or an uncommitted tar, which the next run rewrites. Inputs are assigned to shards by a pure function of the sorted
keys, so reruns address the same shards; each marker records the digest of its inputs, and a stage whose inputs or
config differ from what is on disk is refused (`StageMismatchError`) instead of being mixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage

log = logging.getLogger(__name__)

Mode = Literal["incremental", "overwrite", "retry-failed"]
MODES: tuple[Mode, ...] = ("incremental", "overwrite", "retry-failed")
OK_STATUSES = frozenset({"ok", "decoded_with_errors"})


class StageMismatchError(RuntimeError):
    """The shards on disk were written for another config or input set."""


class StageIncompleteError(RuntimeError):
    """A consumer asked for a stage that has not been committed."""


def stage_uri(root: str, dataset: str, stage: str, config_hash: str) -> str:
    """``<root>/<dataset>/<stage>/<config-hash>``; dataset and stage names are checked like sample keys."""
    storage.check_key(dataset)
    storage.check_key(stage)
    storage.check_key(config_hash)
    return storage.join(root, dataset, stage, config_hash)


def shard_stem(index: int) -> str:
    return f"{index:06d}"


def digest_keys(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def plan_shards(keys: Sequence[str], per_shard: int) -> list[list[str]]:
    """Assign sorted unique keys to consecutive shards of `per_shard` keys (a pure function of the key set)."""
    if per_shard <= 0:
        raise ValueError("per_shard must be positive")
    ordered = sorted(keys)
    dupes = [k for k, n in Counter(ordered).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate sample keys: {dupes[:5]}")
    return [ordered[i : i + per_shard] for i in range(0, len(ordered), per_shard)]


# --------------------------------------------------------------------------------------------------- stage markers


def prepare_stage(
    uri: str, config: Mapping[str, Any], config_hash: str, inputs_digest: str, n_inputs: int, mode: Mode
) -> None:
    """Write ``_config.json`` for a new stage, or check that an existing one matches (else `StageMismatchError`)."""
    storage.makedirs(uri)
    cfg_uri = storage.join(uri, "_config.json")
    record = {"config": dict(config), "config_hash": config_hash, "inputs_digest": inputs_digest, "n_inputs": n_inputs}
    if storage.exists(cfg_uri) and mode != "overwrite":
        old = storage.read_json(cfg_uri)
        if old.get("config_hash") != config_hash:
            raise StageMismatchError(
                f"{uri} holds shards for config hash {old.get('config_hash')}, not {config_hash}; "
                "use --mode overwrite to rebuild it, or another --out"
            )
        if old.get("inputs_digest") != inputs_digest:
            raise StageMismatchError(
                f"{uri} was built from a different input set ({old.get('n_inputs')} inputs, digest "
                f"{old.get('inputs_digest')}) than this run ({n_inputs} inputs, digest {inputs_digest}); "
                "use --mode overwrite to rebuild it, or another --out"
            )
        return
    if mode == "overwrite":
        storage.remove(storage.join(uri, "_stats.json"))
    storage.write_json_atomic(cfg_uri, record)


def committed_shards(uri: str) -> list[int]:
    """Indices of shards whose commit marker exists."""
    out = []
    for name in storage.listdir(uri):
        if name.endswith("_stats.json") and name[:6].isdigit():
            out.append(int(name[:6]))
    return sorted(out)


def shard_stats(uri: str, index: int) -> dict[str, Any] | None:
    marker = storage.join(uri, f"{shard_stem(index)}_stats.json")
    return storage.read_json(marker) if storage.exists(marker) else None


def commit_stage(
    uri: str, summaries: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the stage's ``_stats.json`` (its commit marker) from the per-shard summaries; return it."""
    counts: Counter[str] = Counter()
    for s in summaries:
        counts.update(s.get("status_counts", {}))
    stats = {
        "n_shards": len(summaries),
        "n_inputs": int(sum(counts.values())),
        "n_samples": int(sum(s.get("n_samples", 0) for s in summaries)),
        "status_counts": dict(sorted(counts.items())),
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(extra or {}),
    }
    storage.write_json_atomic(storage.join(uri, "_stats.json"), stats)
    return stats


def stage_stats(uri: str) -> dict[str, Any] | None:
    marker = storage.join(uri, "_stats.json")
    return storage.read_json(marker) if storage.exists(marker) else None


def require_stage(uri: str) -> dict[str, Any]:
    """The stage's stats, or `StageIncompleteError` naming what to run."""
    stats = stage_stats(uri)
    if stats is None:
        raise StageIncompleteError(
            f"{uri} is not a committed stage (no _stats.json); run the stage that produces it first"
        )
    return stats


# ------------------------------------------------------------------------------------------------ writing a shard


def _encode_member(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, sort_keys=True, default=str).encode()


class ShardWriter:
    """Stream samples into shard `index` and commit it: tar (temporary name → final), parquet, marker last.

    Samples are written as they arrive, so memory holds one sample, not a shard. Use as a context manager; leaving
    the block without `commit` (an exception, a kill) publishes nothing and removes the temporary tar.
    """

    def __init__(self, uri: str, index: int) -> None:
        self.uri = uri
        self.index = index
        self.stem = shard_stem(index)
        storage.makedirs(uri)
        local_dir = storage.local_path(uri) if storage.is_local(uri) else Path(tempfile.gettempdir())
        self._tmp = local_dir / f"{self.stem}.tar.tmp-{time.time_ns()}"
        # The writer owns the open tar across add() calls; __exit__ closes and removes it.
        self._tar: tarfile.TarFile | None = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.n_samples = 0

    def add(self, key: str, members: Mapping[str, Any]) -> None:
        """Append one sample: ``{extension: value}``; arrays become ``.npy`` members, dicts ``.json``."""
        assert self._tar is not None, "writer already closed"
        storage.check_key(key)
        for ext in sorted(members):
            data = _encode_member(members[ext])
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0  # byte-identical shards for identical content
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self.n_samples += 1

    def commit(self, rows: Sequence[Mapping[str, Any]], stats: Mapping[str, Any]) -> None:
        """Publish the tar, write the per-input parquet, then the ``_stats.json`` commit marker."""
        assert self._tar is not None, "writer already closed"
        self._tar.close()
        self._tar = None
        storage.publish_file(self._tmp, storage.join(self.uri, f"{self.stem}.tar"))
        table = (
            pa.Table.from_pylist([_parquet_row(r) for r in rows])
            if rows
            else pa.table({"key": pa.array([], pa.string())})
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes_atomic(storage.join(self.uri, f"{self.stem}.parquet"), buf.getvalue())
        storage.write_json_atomic(storage.join(self.uri, f"{self.stem}_stats.json"), dict(stats))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._tmp.unlink(missing_ok=True)


def write_shard(
    uri: str,
    index: int,
    samples: Iterable[tuple[str, Mapping[str, Any]]],
    rows: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
) -> None:
    """Write and commit a whole shard from `(key, members)` pairs (see `ShardWriter`)."""
    with ShardWriter(uri, index) as writer:
        for key, members in samples:
            writer.add(key, members)
        writer.commit(rows, stats)


def _parquet_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        out[k] = json.dumps(v, default=str) if isinstance(v, dict | list | tuple) else v
    return out


def clean_temporaries(uri: str, index: int) -> int:
    """Remove temporary files a killed writer left for shard `index`; return how many."""
    if not storage.is_local(uri):
        return 0
    d = storage.local_path(uri)
    removed = 0
    for p in d.glob(f"{shard_stem(index)}.*.tmp-*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


# --------------------------------------------------------------------------------------------------- shard runner


@dataclass(frozen=True)
class ShardJob:
    """One shard's work: which inputs, where to, under which config. Small and JSON-able (a Prefect task input)."""

    stage_uri: str
    index: int
    config_hash: str
    items: tuple[Mapping[str, Any], ...]  # input rows, each with a "key"
    mode: Mode = "incremental"

    @property
    def keys(self) -> list[str]:
        return [str(it["key"]) for it in self.items]

    @property
    def inputs_digest(self) -> str:
        return digest_keys(self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage_uri": self.stage_uri,
            "index": self.index,
            "config_hash": self.config_hash,
            "items": [dict(i) for i in self.items],
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardJob:
        return cls(
            d["stage_uri"],
            int(d["index"]),
            d["config_hash"],
            tuple(dict(i) for i in d["items"]),
            d.get("mode", "incremental"),
        )


@dataclass
class ShardSummary:
    """What happened to one shard (returned by tasks; small)."""

    index: int
    action: Literal["written", "skipped", "retried"]
    status_counts: dict[str, int] = field(default_factory=dict)
    n_samples: int = 0
    seconds: float = 0.0
    processed: int = 0  # inputs actually processed in this run (0 when skipped)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "action": self.action,
            "status_counts": self.status_counts,
            "n_samples": self.n_samples,
            "seconds": round(self.seconds, 3),
            "processed": self.processed,
        }


#: A per-item processor: input row → (manifest row with at least "key" and "status", tar members or None).
Processor = Callable[[Mapping[str, Any]], tuple[dict[str, Any], dict[str, Any] | None]]


#: A whole-shard processor: the inputs to process (in order) → their (row, members) in the same order. Lets a
#: stage batch work across samples (e.g. one CLIP forward over many videos' frames).
BatchProcessor = Callable[[Sequence[Mapping[str, Any]]], Iterable[tuple[dict[str, Any], dict[str, Any] | None]]]


def run_shard(
    job: ShardJob,
    process: Processor | None = None,
    extra_stats: Mapping[str, Any] | None = None,
    on_sample_written: Callable[[int], None] | None = None,
    process_items: BatchProcessor | None = None,
) -> ShardSummary:
    """Process and commit one shard according to `job.mode`; idempotent and safe to rerun after a crash.

    Give either `process` (one input at a time) or `process_items` (all inputs of the shard that need work).
    """
    if (process is None) == (process_items is None):
        raise TypeError("give exactly one of process / process_items")
    if process_items is None:
        assert process is not None
        per_item = process

        def process_items(items: Sequence[Mapping[str, Any]]) -> Iterable[tuple[dict[str, Any], dict[str, Any] | None]]:
            return (per_item(it) for it in items)

    start = time.monotonic()
    existing = shard_stats(job.stage_uri, job.index)
    if existing is not None and job.mode != "overwrite":
        if existing.get("config_hash") != job.config_hash or existing.get("inputs_digest") != job.inputs_digest:
            raise StageMismatchError(
                f"shard {shard_stem(job.index)} in {job.stage_uri} was committed for other inputs or config "
                f"(hash {existing.get('config_hash')}, inputs {existing.get('inputs_digest')}); use --mode overwrite"
            )
        failed = {k: v for k, v in existing.get("status_counts", {}).items() if k not in OK_STATUSES}
        if job.mode == "incremental" or not failed:
            return ShardSummary(
                job.index,
                "skipped",
                dict(existing["status_counts"]),
                int(existing["n_samples"]),
                time.monotonic() - start,
            )
    clean_temporaries(job.stage_uri, job.index)
    keep: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    if existing is not None and job.mode == "retry-failed":
        keep = _read_ok_samples(job.stage_uri, job.index)
    rows: list[dict[str, Any]] = []
    processed = 0
    todo = [it for it in job.items if storage.check_key(str(it["key"])) not in keep]
    produced = iter(process_items(todo))
    with ShardWriter(job.stage_uri, job.index) as writer:
        for item in job.items:
            key = str(item["key"])
            if key in keep:
                row, members = keep.pop(key)
            else:
                row, members_opt = next(produced)
                processed += 1
                members = members_opt or {}
            if row.get("key") != key:
                raise ValueError(f"processor returned row for {row.get('key')!r} while processing {key!r}")
            rows.append(row)
            if members:
                writer.add(key, members)
                if on_sample_written is not None:
                    on_sample_written(writer.n_samples)
        counts = Counter(str(r["status"]) for r in rows)
        stats = {
            "shard": job.index,
            "config_hash": job.config_hash,
            "inputs_digest": job.inputs_digest,
            "count": len(rows),
            "n_samples": writer.n_samples,
            "status_counts": dict(sorted(counts.items())),
            "seconds": round(time.monotonic() - start, 3),
            **dict(extra_stats or {}),
        }
        writer.commit(rows, stats)
    action: Literal["written", "retried"] = (
        "retried" if existing is not None and job.mode == "retry-failed" else "written"
    )
    return ShardSummary(
        job.index, action, dict(stats["status_counts"]), int(stats["n_samples"]), time.monotonic() - start, processed
    )


def _read_ok_samples(uri: str, index: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The committed rows and members of shard `index` whose status is usable (reused by retry-failed)."""
    rows = {r["key"]: r for r in read_rows(uri, index) if r.get("status") in OK_STATUSES}
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for key, members in iter_shard(uri, index, decode=False):
        if key in rows:
            out[key] = (_unparquet_row(rows[key]), members)
    return out


def _unparquet_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k, v in row.items():
        if isinstance(v, str) and v[:1] in "[{":
            with contextlib.suppress(ValueError):
                out[k] = json.loads(v)
    return out


# -------------------------------------------------------------------------------------------------------- reading


def decode_member(name: str, data: bytes) -> Any:
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if name.endswith(".json"):
        return json.loads(data)
    if name.endswith(".txt"):
        return data.decode()
    return data


def iter_shard(uri: str, index: int, decode: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(key, {ext: value})`` from a shard's tar in order (arrays and dicts when `decode`)."""
    with (
        storage.open_read(storage.join(uri, f"{shard_stem(index)}.tar")) as fh,
        tarfile.open(fileobj=fh, mode="r|") as tar,
    ):
        current: str | None = None
        members: dict[str, Any] = {}
        for info in tar:
            if not info.isfile():
                continue
            key, ext = info.name.split(".", 1)
            f = tar.extractfile(info)
            assert f is not None
            data = f.read()
            if current is not None and key != current:
                yield current, members
                members = {}
            current = key
            members[ext] = decode_member(info.name, data) if decode else data
        if current is not None:
            yield current, members


def read_rows(uri: str, index: int) -> list[dict[str, Any]]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(uri, f"{shard_stem(index)}.parquet"))))
    return [dict(r) for r in table.to_pylist()]


def read_manifest(uri: str) -> list[dict[str, Any]]:
    """All per-input rows of the committed shards of a stage (JSON columns decoded)."""
    rows: list[dict[str, Any]] = []
    for index in committed_shards(uri):
        rows.extend(_unparquet_row(r) for r in read_rows(uri, index))
    return rows


def iter_stage(uri: str, shards: Sequence[int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Samples of every committed shard of a committed stage, in shard order."""
    require_stage(uri)
    for index in shards if shards is not None else committed_shards(uri):
        yield from iter_shard(uri, index)


def load_stage(uri: str, ext: str = "npy") -> tuple[list[str], list[np.ndarray], list[dict[str, Any]]]:
    """Keys, arrays and metadata of a whole (small) stage in memory, in key order."""
    items = sorted(iter_stage(uri), key=lambda kv: kv[0])
    return [k for k, _ in items], [m[ext] for _, m in items], [m.get("json", {}) for _, m in items]
