"""Ingest: a folder or CSV of videos → decoded frame shards, one manifest row per input.

Pure functions over the decoder and the shard protocol; the Prefect flow (`flows/ingest.py`) maps `ingest_shard` over
the shard jobs, and `ingest` runs the same steps without Prefect (tests, benchmarks, library use).

Inputs:
- a **folder**: every file with a video extension under it (recursively); the key is the path relative to the
  folder without its extension, made safe (see `make_key`);
- a **CSV** with a ``path`` column (relative paths are relative to the CSV's folder) and optional ``key``, ``split``,
  ``label`` and ``captions`` (a JSON list, or a plain string for one caption) / ``caption`` columns; any other
  column is carried into the sample metadata.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.config import config_hash
from pipelines import decode as decode_mod
from pipelines import shards, storage
from pipelines.decode import USABLE, DecodeConfig, decode_video
from pipelines.ffmpeg import ffmpeg_version

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"}
)
FRAMES_STAGE = "frames"


class SourceError(ValueError):
    """The ingest source itself is unusable (not found, bad CSV, duplicate or unsafe keys)."""


@dataclass(frozen=True)
class IngestConfig:
    """Decode settings plus the shard size; all of it is hashed into the stage folder name."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    samples_per_shard: int = 64  # videos per shard (video2dataset uses 1000; small shards resume at a finer grain)

    def hash(self) -> str:
        # Timeouts decide how long we wait, not what a successful decode produces: keep them out of the hash so that
        # raising a timeout and using `retry-failed` works on the same stage.
        d = asdict(self)
        d["decode"] = {k: v for k, v in d["decode"].items() if not k.endswith("timeout_s")}
        return config_hash(d)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(name: str) -> str:
    """A stable, safe sample key for a relative path or id: unsafe runs become ``_``; if anything changed, a short
    digest of the original keeps keys unique (``a.b/c d`` → ``a_b_c_d-<sha1[:8]>``)."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in VIDEO_EXTENSIONS else name
    safe = _UNSAFE.sub("_", stem).strip("_")[:120] or "video"
    if safe != stem:
        safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def _parse_list(value: str) -> list[str]:
    value = (value or "").strip()
    if not value:
        return []
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise SourceError(f"captions/label value is not valid JSON: {value[:80]!r}") from exc
        return [str(v) for v in parsed]
    return [value]


def read_sources(source: str | Path) -> list[dict[str, Any]]:
    """Input rows ``{"key", "path", "split", "label", "captions", "meta"}`` from a folder or a CSV, sorted by key."""
    src = Path(source)
    if not src.exists():
        raise SourceError(f"source not found: {src}")
    rows: list[dict[str, Any]] = []
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
                rel = p.relative_to(src).as_posix()
                rows.append(
                    {"key": make_key(rel), "path": str(p), "split": "", "label": "", "captions": [], "meta": {}}
                )
    else:
        with open(src, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise SourceError(f"{src}: a CSV source needs a 'path' column (columns: {reader.fieldnames})")
            for i, rec in enumerate(reader, start=2):
                raw_path = (rec.get("path") or "").strip()
                if not raw_path:
                    raise SourceError(f"{src}:{i}: empty path")
                p = Path(raw_path)
                p = p if p.is_absolute() else src.parent / p
                key = (rec.get("key") or rec.get("video_id") or "").strip() or make_key(raw_path)
                try:
                    storage.check_key(key)
                except storage.UnsafeKeyError as exc:
                    raise SourceError(f"{src}:{i}: {exc}") from exc
                captions = _parse_list(rec.get("captions", "")) + _parse_list(rec.get("caption", ""))
                label_list = _parse_list(rec.get("label", ""))
                label: Any = (
                    label_list
                    if (rec.get("label") or "").strip().startswith("[")
                    else (label_list[0] if label_list else "")
                )
                known = {"path", "key", "video_id", "split", "label", "captions", "caption"}
                meta = {k: v for k, v in rec.items() if k not in known and k is not None}
                rows.append(
                    {
                        "key": key,
                        "path": str(p),
                        "split": (rec.get("split") or "").strip(),
                        "label": label,
                        "captions": captions,
                        "meta": meta,
                    }
                )
    if not rows:
        raise SourceError(f"no videos found in {src}")
    counts = Counter(r["key"] for r in rows)
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        raise SourceError(f"duplicate keys in {src}: {dupes[:5]} (give a unique 'key' column)")
    return sorted(rows, key=lambda r: r["key"])


def code_version() -> str:
    """Digest of the source of the modules that decide what a shard contains (part of task cache keys)."""
    blob = "".join(inspect.getsource(m) for m in (decode_mod, shards, _this_module()))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _this_module() -> Any:
    import sys

    return sys.modules[__name__]


def plan_ingest(
    rows: Sequence[Mapping[str, Any]], root: str, dataset: str, cfg: IngestConfig, mode: shards.Mode = "incremental"
) -> tuple[str, list[shards.ShardJob]]:
    """Create/check the stage folder and return its URI and one job per shard (no decoding yet)."""
    if mode not in shards.MODES:
        raise ValueError(f"mode must be one of {shards.MODES}, got {mode!r}")
    h = cfg.hash()
    uri = shards.stage_uri(root, dataset, FRAMES_STAGE, h)
    by_key = {r["key"]: r for r in rows}
    plan = shards.plan_shards(list(by_key), cfg.samples_per_shard)
    shards.prepare_stage(uri, asdict(cfg), h, shards.digest_keys(sorted(by_key)), len(by_key), mode)
    jobs = [shards.ShardJob(uri, i, h, tuple(dict(by_key[k]) for k in keys), mode) for i, keys in enumerate(plan)]
    return uri, jobs


def ingest_item(
    item: Mapping[str, Any], cfg: DecodeConfig, config_digest: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Decode one input → (manifest row, tar members or None). Never raises for a bad video."""
    res = decode_video(item["path"], cfg)
    info = res.info
    row: dict[str, Any] = {
        "key": item["key"],
        "source": str(item["path"]),
        "split": item.get("split", ""),
        "label": item.get("label", ""),
        "captions": list(item.get("captions", [])),
        "status": res.status,
        "error": res.error,
        "duration": info.duration if info else None,
        "fps_src": info.fps if info else None,
        "fps_out": cfg.fps,
        "n_frames": res.n_frames,
        "n_expected": res.n_expected,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "rotation": info.rotation if info else None,
        "codec": info.codec if info else None,
        "decode_s": round(res.seconds, 4),
        "config_hash": config_digest,
    }
    if res.status not in USABLE or res.frames is None:
        return row, None
    meta = {
        "key": item["key"],
        "split": row["split"],
        "label": row["label"],
        "captions": row["captions"],
        "status": res.status,
        "fps": cfg.fps,
        "duration": row["duration"],
        "timestamps": res.timestamps,
        "source": row["source"],
        **dict(item.get("meta", {})),
    }
    return row, {"npy": res.frames, "json": meta}


def ingest_shard(job: shards.ShardJob, cfg: IngestConfig) -> shards.ShardSummary:
    """Decode and commit one shard (idempotent; obeys `job.mode`)."""
    digest = cfg.hash()
    return shards.run_shard(
        job, lambda item: ingest_item(item, cfg.decode, digest), extra_stats={"ffmpeg": ffmpeg_version()}
    )


@dataclass
class IngestResult:
    """Summary of a whole ingest (JSON-able via `as_dict`)."""

    stage_uri: str
    config_hash: str
    n_inputs: int
    n_samples: int
    status_counts: dict[str, int]
    shards_written: int
    shards_skipped: int
    seconds: float
    failure_ratio: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failure_ratio(status_counts: Mapping[str, int]) -> float:
    total = sum(status_counts.values())
    failed = sum(n for s, n in status_counts.items() if s not in USABLE)
    return failed / total if total else 0.0


def finish_ingest(uri: str, cfg: IngestConfig, summaries: Sequence[Mapping[str, Any]], seconds: float) -> IngestResult:
    """Commit the stage (``_stats.json`` last) and summarise."""
    stats = shards.commit_stage(uri, summaries, extra={"config_hash": cfg.hash(), "stage": FRAMES_STAGE})
    counts = dict(stats["status_counts"])
    return IngestResult(
        stage_uri=uri,
        config_hash=cfg.hash(),
        n_inputs=int(stats["n_inputs"]),
        n_samples=int(stats["n_samples"]),
        status_counts=counts,
        shards_written=sum(1 for s in summaries if s["action"] != "skipped"),
        shards_skipped=sum(1 for s in summaries if s["action"] == "skipped"),
        seconds=round(seconds, 3),
        failure_ratio=round(failure_ratio(counts), 6),
    )


def ingest(
    source: str | Path,
    root: str,
    dataset: str,
    cfg: IngestConfig,
    mode: shards.Mode = "incremental",
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Ingest without Prefect: shards decoded by a thread pool (ffmpeg runs in subprocesses)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    start = time.monotonic()
    rows = read_sources(source)
    uri, jobs = plan_ingest(rows, root, dataset, cfg, mode)
    summaries: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(ingest_shard, job, cfg) for job in jobs]
        for done, fut in enumerate(as_completed(futures), start=1):
            summaries.append(fut.result().as_dict())
            if progress:
                progress(done, len(jobs))
    summaries.sort(key=lambda s: s["index"])
    return finish_ingest(uri, cfg, summaries, time.monotonic() - start)
