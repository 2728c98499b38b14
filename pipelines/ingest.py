"""Ingest: a folder or CSV of videos → decoded frame shards, one manifest row per input.

Pure functions over the decoder and the shard protocol; the Prefect flow (`flows/ingest.py`) maps `ingest_shard` over
the shard jobs, and `ingest` runs the same steps without Prefect (tests, benchmarks, library use).

Inputs:
- a **folder**: every file with a video extension under it (recursively); the key is the path relative to the
  folder without its extension, made safe (see `make_key`);
- a **CSV** with a ``path`` column (relative paths are relative to the CSV's folder) and optional ``key``, ``split``,
  ``label`` and ``captions`` (a JSON list, or a plain string for one caption) / ``caption`` columns; any other
  column is carried into the sample metadata under ``"extra"`` (never over the decoder's fields).
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from models.config import config_hash
from pipelines import decode as decode_mod
from pipelines import ffmpeg, shards, storage
from pipelines.decode import USABLE, DecodeConfig, decode_video
from pipelines.ffmpeg import ffmpeg_version, printable_path

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

    def __post_init__(self) -> None:
        n = self.samples_per_shard
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
            raise ValueError(f"samples_per_shard must be an integer between 1 and 100000, got {n!r}")

    #: Decode fields that decide how long we wait or whether a sample is kept (`too_long`), never what a kept sample
    #: contains: out of the hash, so raising one and using `retry-failed` works on the same stage (and adding the
    #: size limits did not move existing stages to new folders).
    UNHASHED: ClassVar[frozenset[str]] = frozenset(
        {"timeout_s", "probe_timeout_s", "max_duration_s", "max_sample_bytes"}
    )

    def hash(self) -> str:
        d = asdict(self)
        d["decode"] = {k: v for k, v in d["decode"].items() if k not in self.UNHASHED}
        return config_hash(d)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _digest(name: str) -> str:
    # surrogateescape: a file name that is not UTF-8 (its bytes are kept as lone surrogates by os.fsdecode) used to
    # raise UnicodeEncodeError here and abort the whole ingest.
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def make_key(name: str) -> str:
    """A stable, safe sample key for a relative path or id: unsafe runs become ``_``; if anything changed, a short
    digest of the original keeps keys unique (``a.b/c d`` → ``a_b_c_d-<sha1[:8]>``)."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in VIDEO_EXTENSIONS else name
    safe = _UNSAFE.sub("_", stem).strip("_")[:120] or "video"
    if safe != stem:
        safe = f"{safe}-{_digest(name)}"
    return safe


def _unique_keys(names: Sequence[str], taken: set[str]) -> list[str]:
    """`make_key` for each name, made unique among themselves and against `taken` (keys given by the user).

    `make_key` drops the extension, so ``clip.mp4`` and ``clip.mkv`` both give ``clip``: colliding names keep their
    extension instead (``clip_mp4``, ``clip_mkv``); a name that still collides gets the digest of its full name. The
    result depends only on the set of names, so a rerun on the same folder gives the same keys.
    """
    keys = [make_key(n) for n in names]
    counts = Counter(keys)
    out: list[str] = []
    for name, key in zip(names, keys):
        if counts[key] > 1 or key in taken:
            ext = Path(name).suffix.lstrip(".")
            key = f"{key}_{_UNSAFE.sub('_', ext)}" if ext else f"{key}-{_digest(name)}"
        out.append(key)
    counts = Counter(out) + Counter(k for k in taken)
    return [k if counts[k] == 1 else f"{k}-{_digest(n)}" for n, k in zip(names, out)]


def _parse_list(value: str | None) -> list[str]:
    value = (value or "").strip()
    if not value:
        return []
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise SourceError(f"captions/label value is not valid JSON: {value[:80]!r}") from exc
        if not isinstance(parsed, list):
            raise SourceError(f"captions/label value must be a JSON list: {value[:80]!r}")
        return [str(v) for v in parsed]
    return [value]


#: CSV columns with a meaning; every other column is the user's and lands under ``"extra"`` in the sample JSON.
_KNOWN_COLUMNS = frozenset({"path", "key", "video_id", "split", "label", "captions", "caption"})


def read_sources(source: str | Path) -> list[dict[str, Any]]:
    """Input rows ``{"key", "path", "split", "label", "captions", "meta"}`` from a folder or a CSV, sorted by key.

    Every entry with a video extension gets a row, whatever it is: a broken symbolic link, a link loop or a
    directory named ``x.mp4`` is the decoder's to classify (``missing`` / ``failed_probe``), never silently dropped.
    `meta` is merged into the sample JSON: user CSV columns go there as ``{"extra": {...}}`` so that a column named
    ``fps``, ``duration``, ``timestamps``, ``source`` or ``status`` can never overwrite the decoder's values, which the
    I3D, LocVTP and grounding stages read.
    """
    src = Path(source)
    if not src.exists():
        raise SourceError(f"source not found: {printable_path(src)}")
    rows: list[dict[str, Any]] = []
    if src.is_dir():
        # rglob does not descend into symlinked directories (no loops); an unreadable subfolder is skipped by it.
        found = [p for p in sorted(src.rglob("*")) if p.suffix.lower() in VIDEO_EXTENSIONS]
        rels = [p.relative_to(src).as_posix() for p in found]
        for p, key in zip(found, _unique_keys(rels, set())):
            rows.append({"key": key, "path": str(p), "split": "", "label": "", "captions": [], "meta": {}})
    else:
        # surrogateescape: a path column with bytes that are not UTF-8 names the same file os.fsdecode would.
        with open(src, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise SourceError(
                    f"{printable_path(src)}: a CSV source needs a 'path' column (columns: {reader.fieldnames})"
                )
            derived: list[tuple[int, str]] = []  # (row index, raw path) of rows without a user key
            for i, rec in enumerate(reader, start=2):
                raw_path = (rec.get("path") or "").strip()
                if not raw_path:
                    raise SourceError(f"{printable_path(src)}:{i}: empty path")
                p = Path(raw_path)
                p = p if p.is_absolute() else src.parent / p
                key = (rec.get("key") or rec.get("video_id") or "").strip()
                if key:
                    try:
                        storage.check_key(key)
                    except storage.UnsafeKeyError as exc:
                        raise SourceError(f"{printable_path(src)}:{i}: {exc}") from exc
                else:
                    derived.append((len(rows), raw_path))
                captions = _parse_list(rec.get("captions")) + _parse_list(rec.get("caption"))
                label_list = _parse_list(rec.get("label"))
                label: Any = (
                    label_list
                    if (rec.get("label") or "").strip().startswith("[")
                    else (label_list[0] if label_list else "")
                )
                extra = {k: v for k, v in rec.items() if k not in _KNOWN_COLUMNS and k is not None}
                rows.append(
                    {
                        "key": key,
                        "path": str(p),
                        "split": (rec.get("split") or "").strip(),
                        "label": label,
                        "captions": captions,
                        "meta": {"extra": extra} if extra else {},
                    }
                )
            given = {r["key"] for r in rows if r["key"]}
            for (index, _), key in zip(derived, _unique_keys([raw for _, raw in derived], given)):
                rows[index]["key"] = key
    if not rows:
        raise SourceError(f"no videos found in {printable_path(src)}")
    counts = Counter(r["key"] for r in rows)
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        raise SourceError(f"duplicate keys in {printable_path(src)}: {dupes[:5]} (give a unique 'key' column)")
    return sorted(rows, key=lambda r: r["key"])


def code_version() -> str:
    """Digest of the source of the modules that decide what a shard contains (part of task cache keys)."""
    blob = "".join(inspect.getsource(m) for m in (decode_mod, shards, _this_module()))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _this_module() -> Any:
    import sys

    return sys.modules[__name__]


def plan_ingest(
    rows: Sequence[Mapping[str, Any]],
    root: str,
    dataset: str,
    cfg: IngestConfig,
    mode: shards.Mode = "incremental",
    lock_wait_s: float = 0.0,
) -> tuple[str, list[shards.ShardJob]]:
    """Take the stage's lock, create/check the stage folder and return its URI and one job per shard (no decoding).

    The lock (`shards.acquire_stage_lock`) is held by this process until `finish_ingest` (or `ingest`) releases it;
    another live run holding it makes this wait up to `lock_wait_s`, then raise `shards.StageBusyError`.

    Each input row gets a ``fingerprint``: the file's content identity (`storage.fingerprint`: size, mtime, hash of its
    ends) and a digest of the row's fields that go into the sample. Keys alone do not identify inputs: another folder
    with the same relative names, or a file replaced in place, used to be "skipped" and return the old frames. The
    fingerprints enter the stage's inputs digest and every shard's, so such a shard is redone (``updated``).
    Committed shards are checked against their markers (`shards.damaged_shards`); a damaged one gets a ``repair``
    reason, is redone, and the stage is un-committed until it is.
    """
    if mode not in shards.MODES:
        raise ValueError(f"mode must be one of {shards.MODES}, got {mode!r}")
    h = cfg.hash()
    uri = shards.stage_uri(root, dataset, FRAMES_STAGE, h)
    items: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: str(r["key"])):
        item = dict(row)
        described = json.dumps(
            {k: item.get(k) for k in ("split", "label", "captions", "meta")}, sort_keys=True, default=str
        )
        meta_digest = hashlib.sha256(described.encode()).hexdigest()[:8]
        item["fingerprint"] = f"{storage.fingerprint(str(item['path']))};{meta_digest}"
        items[str(item["key"])] = item
    plan = shards.plan_shards(list(items), cfg.samples_per_shard)
    shards.acquire_stage_lock(uri, wait_s=lock_wait_s)
    try:
        ordered = [items[k] for k in sorted(items)]
        shards.prepare_stage(
            uri,
            asdict(cfg),
            h,
            shards.digest_items(ordered),
            len(items),
            mode,
            keys_digest=shards.digest_keys(sorted(items)),
        )
        damaged = {} if mode == "overwrite" else shards.damaged_shards(uri, range(len(plan)))
        if damaged:
            storage.remove(storage.join(uri, "_stats.json"))  # not a committed stage until they are redone
        jobs = [
            shards.ShardJob(uri, i, h, tuple(items[k] for k in keys), mode, repair=damaged.get(i, ""))
            for i, keys in enumerate(plan)
        ]
    except BaseException:
        shards.release_stage_lock(uri)
        raise
    return uri, jobs


def ingest_item(
    item: Mapping[str, Any], cfg: DecodeConfig, config_digest: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Decode one input → (manifest row, tar members or None). Never raises for a bad video."""
    res = decode_video(item["path"], cfg)
    info = res.info
    row: dict[str, Any] = {
        "key": item["key"],
        "source": printable_path(item["path"]),  # a name that is not UTF-8 still gets a row (as \xNN escapes)
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
    frames = res.array()  # in memory, or spooled to a file that the shard writer streams into the tar
    if res.status not in USABLE or frames is None:
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
    return row, {"npy": frames, "json": meta}


def spool_folder(stage_uri: str) -> str:
    """Where a shard's decodes spool their frames: the stage folder itself when it is local (same disk as the tar,
    never a RAM-backed /tmp; a dead writer's spool is removed like its other temporaries), else the local temp
    folder, where the shard writer keeps its temporary tar too."""
    return str(storage.local_path(stage_uri)) if storage.is_local(stage_uri) else tempfile.gettempdir()


def ingest_shard(job: shards.ShardJob, cfg: IngestConfig) -> shards.ShardSummary:
    """Decode and commit one shard (idempotent; obeys `job.mode`).

    Frames are spooled (`decode_mod.spooling`): each decode writes its frames to a file as ffmpeg produces them, and
    the shard writer streams that file into the tar, so memory holds a frame per decode, not a video.
    """
    digest = cfg.hash()
    with decode_mod.spooling(spool_folder(job.stage_uri)):
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
    shards_written: int  # every shard (re)written by this run, repaired and updated ones included
    shards_skipped: int
    seconds: float
    failure_ratio: float
    shards_repaired: int = 0  # committed shards found damaged (files missing, truncated, garbled) and redone
    shards_updated: int = 0  # committed shards redone because inputs changed content under the same keys
    # what was redone and why: [{"index", "action", "reason"}] for every repaired or updated shard
    redone: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failure_ratio(status_counts: Mapping[str, int]) -> float:
    """Share of inputs that are not ``ok``. ``decoded_with_errors`` counts: its frames are kept (usable), but they are
    short or came with decoder errors, which is exactly what `--max-failure-ratio` is there to catch."""
    total = sum(status_counts.values())
    failed = sum(n for s, n in status_counts.items() if s != "ok")
    return failed / total if total else 0.0


def finish_ingest(uri: str, cfg: IngestConfig, summaries: Sequence[Mapping[str, Any]], seconds: float) -> IngestResult:
    """Commit the stage (``_stats.json`` last), release the stage lock and summarise."""
    try:
        stats = shards.commit_stage(uri, summaries, extra={"config_hash": cfg.hash(), "stage": FRAMES_STAGE})
    finally:
        shards.release_stage_lock(uri)
    counts = dict(stats["status_counts"])
    redone = [
        {"index": s["index"], "action": s["action"], "reason": s.get("reason", "")}
        for s in summaries
        if s["action"] in ("repaired", "updated")
    ]
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
        shards_repaired=sum(1 for s in summaries if s["action"] == "repaired"),
        shards_updated=sum(1 for s in summaries if s["action"] == "updated"),
        redone=redone,
    )


def ingest(
    source: str | Path,
    root: str,
    dataset: str,
    cfg: IngestConfig,
    mode: shards.Mode = "incremental",
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    lock_wait_s: float = 0.0,
) -> IngestResult:
    """Ingest without Prefect: shards decoded by a thread pool (ffmpeg runs in subprocesses).

    The stage is locked for the whole run (`plan_ingest`): a second ingest into the same stage raises
    `shards.StageBusyError` naming this process, or waits up to `lock_wait_s` for it to finish.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    start = time.monotonic()
    rows = read_sources(source)
    uri, jobs = plan_ingest(rows, root, dataset, cfg, mode, lock_wait_s=lock_wait_s)
    try:
        summaries: list[dict[str, Any]] = []
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = [pool.submit(ingest_shard, job, cfg) for job in jobs]
            for done, fut in enumerate(as_completed(futures), start=1):
                summaries.append(fut.result().as_dict())
                if progress:
                    progress(done, len(jobs))
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C / SIGTERM (the CLI raises KeyboardInterrupt for both): kill the running decodes (their ffmpeg
            # process groups) instead of waiting for them, and start no queued shard; a stopped decode raises, it
            # never becomes a failed row. A shard that fails for another reason lets the others finish and commit,
            # so the rerun has less to do.
            ffmpeg.stop_children()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            ffmpeg.resume_children()
        summaries.sort(key=lambda s: s["index"])
        return finish_ingest(uri, cfg, summaries, time.monotonic() - start)
    finally:
        shards.release_stage_lock(uri)  # also when a shard failed: the next run need not wait for this process
