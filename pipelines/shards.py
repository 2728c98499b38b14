"""WebDataset shards with commit markers: the layout, the write protocol, the generic shard runner and readers.

Layout of one stage (ingest frames, CLIP features, I3D features, ...)::

    <root>/<dataset>/<stage>/<config-hash>/
        _config.json            written first: the stage's full config, its hash and the digests of its input set
        _lock.json              while a run writes the stage: which process (see `acquire_stage_lock`)
        000000.tar              WebDataset tar; members <key>.npy (array) and <key>.json (metadata)
        000000.parquet          one row per *input* of the shard (status, error, sizes, ...), including failures
        000000_stats.json       the shard's commit marker, written last; records the size and SHA-256 of its files
        ...
        _stats.json             the stage's commit marker: written after every shard is committed

A shard counts as done only if its ``_stats.json`` exists: a writer killed half way leaves at most a temporary file
or an uncommitted tar, which the next run rewrites. Inputs are assigned to shards by a pure function of the sorted
keys, so reruns address the same shards; each marker records the digest of its inputs' keys and of their content
(an input row's ``fingerprint``, when the planner gives one). A stage whose config or key set differs from what is on
disk is refused (`StageMismatchError`) instead of being mixed; a shard whose inputs changed content under the same
keys is redone (``updated``), and a committed shard whose files no longer match its marker (missing, truncated,
overwritten) is redone too (``repaired``) instead of being trusted. Before a shard or stage is rewritten its commit is
withdrawn (stage marker first), so readers never see a committed stage with a shard of the wrong content.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import socket
import tarfile
import tempfile
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

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


class StageBusyError(RuntimeError):
    """Another live process holds the stage's lock (it is writing the stage now)."""


LOCK_NAME = "_lock.json"
_SHARD_MARKER = re.compile(r"^\d{6}_stats\.json$")
_SHARD_FILE = re.compile(r"^\d{6}\.(tar|parquet)$")


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


def digest_items(items: Sequence[Mapping[str, Any]]) -> str:
    """Digest of input rows by key *and content*: each row's ``fingerprint`` (set by the planner, e.g. file size,
    mtime and a hash of its ends; see `storage.fingerprint`) enters it next to the key.

    Rows without fingerprints (feature stages, whose inputs are committed shards of another stage) digest to
    `digest_keys` of their keys, the digest every marker recorded before fingerprints existed.
    """
    if not any("fingerprint" in it for it in items):
        return digest_keys([str(it["key"]) for it in items])
    lines = [f"{it['key']}\t{it.get('fingerprint', '')}" for it in items]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


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
    uri: str,
    config: Mapping[str, Any],
    config_hash: str,
    inputs_digest: str,
    n_inputs: int,
    mode: Mode,
    keys_digest: str | None = None,
) -> None:
    """Write ``_config.json`` for a new stage, or check that an existing one matches (else `StageMismatchError`).

    Without `keys_digest`, `inputs_digest` must match. With it (a planner that fingerprints its inputs: `inputs_digest`
    then covers content, `keys_digest` the key set), only the key set must match: the same keys with other content
    are accepted, the stage is un-committed and the record updated, and the shards whose inputs changed are redone
    by `run_shard`. ``overwrite`` removes every shard of the old stage first (`clear_stage`), so that a smaller new
    input set does not leave old shards committed next to it.
    """
    storage.makedirs(uri)
    cfg_uri = storage.join(uri, "_config.json")
    record: dict[str, Any] = {
        "config": dict(config),
        "config_hash": config_hash,
        "inputs_digest": inputs_digest,
        "n_inputs": n_inputs,
    }
    if keys_digest is not None:
        record["keys_digest"] = keys_digest
    if mode == "overwrite":
        clear_stage(uri)
    elif storage.exists(cfg_uri):
        old = storage.read_json(cfg_uri)
        if old.get("config_hash") != config_hash:
            raise StageMismatchError(
                f"{uri} holds shards for config hash {old.get('config_hash')}, not {config_hash}; "
                "use --mode overwrite to rebuild it, or another --out"
            )
        # records written before content fingerprints hold the key digest as their inputs digest
        old_keys = old.get("keys_digest", old.get("inputs_digest"))
        same_keys = old_keys == keys_digest if keys_digest is not None else old.get("inputs_digest") == inputs_digest
        if not same_keys:
            raise StageMismatchError(
                f"{uri} was built from a different input set ({old.get('n_inputs')} inputs, digest "
                f"{old.get('inputs_digest')}) than this run ({n_inputs} inputs, digest {inputs_digest}); "
                "use --mode overwrite to rebuild it, or another --out"
            )
        if old.get("inputs_digest") == inputs_digest:
            return
        log.info("%s: same inputs by key, some with other content; their shards are redone", uri)
        storage.remove(storage.join(uri, "_stats.json"))  # not a committed stage until those shards are
    storage.write_json_atomic(cfg_uri, record)


def clear_stage(uri: str) -> list[str]:
    """Withdraw and delete every shard of a stage (for ``overwrite``); return the names removed.

    Order matters for a reader or a run killed half way: the stage marker goes first, then every shard marker, then
    the shards' files, so at no point is an old shard committed in a stage that is being rebuilt.
    """
    names = storage.listdir(uri)
    storage.remove(storage.join(uri, "_stats.json"))
    removed = []
    for pattern in (_SHARD_MARKER, _SHARD_FILE):
        for name in names:
            if pattern.match(name):
                storage.remove(storage.join(uri, name))
                removed.append(name)
    if removed:
        log.info("%s: overwrite removed %d files of the previous stage", uri, len(removed))
    return removed


def uncommit_shard(uri: str, index: int) -> None:
    """Withdraw shard `index`'s commit before rewriting it: the stage marker first (a committed stage must never be
    missing one of its shards), then the shard's marker. Its files stay until the rewrite replaces them."""
    storage.remove(storage.join(uri, "_stats.json"))
    storage.remove(storage.join(uri, f"{shard_stem(index)}_stats.json"))


# ------------------------------------------------------------------------------------------------------ stage lock


def _lock_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "host_tag": storage.HOST_TAG,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": uuid.uuid4().hex,
    }


def _read_lock(lock: str) -> dict[str, Any] | None:
    """The lock's record; None if it is gone or unreadable (half written, or garbage)."""
    try:
        rec = storage.read_json(lock)
    except (FileNotFoundError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _held_by_this_process(rec: Mapping[str, Any]) -> bool:
    return rec.get("host_tag") == storage.HOST_TAG and rec.get("pid") == os.getpid()


def _holder_dead(rec: Mapping[str, Any]) -> bool:
    """Only a holder on this machine can be checked; another machine's lock is trusted until removed by hand."""
    pid = rec.get("pid")
    return rec.get("host_tag") == storage.HOST_TAG and (not isinstance(pid, int) or not storage.pid_alive(pid))


def acquire_stage_lock(uri: str, wait_s: float = 0.0, poll_s: float = 0.5) -> dict[str, Any]:
    """Take the stage's lock (``_lock.json``: pid, host, since) for this process; return its record.

    Two runs writing one stage at once used to corrupt each other (one removed the other's temporaries, an
    ``overwrite`` could delete shards the other had just committed). The lock belongs to a *process*: the planner
    takes it, the run's shard tasks (threads of that process, or workers reporting to it) write under it, and the
    finisher releases it (`release_stage_lock`). A lock held by this very process is taken over (a run that failed
    in this process before releasing it); one held by a dead process on this machine is stale and is taken over, with
    a warning; one held by a live process makes this call wait up to `wait_s` seconds, then raise `StageBusyError`
    naming the holder. A lock from another machine cannot be checked: it is honoured until it is released or removed.

    Once the lock is held, every temporary file in the folder that no live process on this machine owns was left
    by a dead writer, and is removed (`clean_stale_temporaries`).

    On an object store the lock is a best-effort marker object (no atomic create-if-absent through fsspec): it stops
    a second run that starts after the first, not two that start within the same fraction of a second.
    """
    storage.makedirs(uri)
    lock = storage.join(uri, LOCK_NAME)
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        mine = _lock_record()
        data = (json.dumps(mine, indent=1, sort_keys=True) + "\n").encode()
        if storage.create_exclusive(lock, data):
            break
        held = _read_lock(lock)
        if held is None:
            if not storage.exists(lock):
                continue  # released between our two calls: try again
            # Locally a lock is created and filled in one go, so an unreadable one is either being written right
            # now (wait a moment) or garbage from a writer that died in between (old); remote objects appear whole.
            age = time.time() - (storage.mtime(lock) or 0.0)
            if age > 10:
                log.warning("%s: removing an unreadable stage lock", uri)
                storage.remove(lock)
                continue
            held = {"pid": "?", "host": "?", "since": "just now"}
        elif _held_by_this_process(held):
            storage.write_json_atomic(lock, mine)
            break
        elif _holder_dead(held):
            log.warning(
                "%s: taking over the stage lock of pid %s on %s (since %s), which is no longer running",
                uri,
                held.get("pid"),
                held.get("host"),
                held.get("since"),
            )
            again = _read_lock(lock)
            if again is not None and again.get("token") == held.get("token"):
                storage.remove(lock)
            continue
        if time.monotonic() >= deadline:
            raise StageBusyError(
                f"{uri} is in use by pid {held.get('pid')} on {held.get('host')} (since {held.get('since')}): "
                "another run is writing this stage. Wait for it to finish (or pass a lock wait), or, if that process "
                f"is gone, remove {lock}"
            )
        time.sleep(max(0.01, min(poll_s, deadline - time.monotonic())))
    removed = clean_stale_temporaries(uri)
    if removed:
        log.info("%s: removed %d temporaries left by dead writers", uri, len(removed))
    return mine


def release_stage_lock(uri: str) -> bool:
    """Release the stage's lock if this process holds it; True if it did."""
    lock = storage.join(uri, LOCK_NAME)
    held = _read_lock(lock)
    if held is None or not _held_by_this_process(held):
        return False
    storage.remove(lock)
    return True


@contextlib.contextmanager
def stage_lock(uri: str, wait_s: float = 0.0) -> Iterator[dict[str, Any]]:
    """`acquire_stage_lock` for the duration of a block."""
    record = acquire_stage_lock(uri, wait_s)
    try:
        yield record
    finally:
        release_stage_lock(uri)


def clean_stale_temporaries(uri: str) -> list[str]:
    """With the stage lock held: remove every temporary in the stage folder that no live process here owns.

    Nobody else may write the stage while we hold its lock, so a temporary whose writer is dead, on another machine
    or unknown (an old-style name) was abandoned; this process's own are kept. Local folders only: on an object
    store temporaries live in the writer's local temp folder, not next to the shards.
    """
    if not storage.is_local(uri):
        return []
    removed = []
    for name in storage.listdir(uri):
        if storage.is_temp_name(name) and storage.temp_owner_alive(name) is not True:
            storage.local_path(storage.join(uri, name)).unlink(missing_ok=True)
            removed.append(name)
    return removed


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


def verify_shard(
    uri: str,
    index: int,
    marker: Mapping[str, Any] | None = None,
    sizes: Mapping[str, int] | None = None,
    deep: bool = False,
) -> str:
    """What is wrong with committed shard `index`, or "" if nothing (or if it is not committed).

    Checked against the marker's ``files`` record: each file exists and has its recorded size, and the parquet (small)
    its recorded SHA-256; the tar's SHA-256 only when `deep` (it can be gigabytes). Markers written before sizes were
    recorded are checked for the files' existence. `sizes` is a listing of the folder (`storage.file_sizes`), to check
    many shards with one listing.
    """
    if marker is None:
        marker = shard_stats(uri, index)
        if marker is None:
            return ""
    stem = shard_stem(index)
    files: Mapping[str, Mapping[str, Any]] = marker.get("files") or {f"{stem}.tar": {}, f"{stem}.parquet": {}}
    problems = []
    for name, rec in sorted(files.items()):
        size = sizes.get(name) if sizes is not None else storage.size(storage.join(uri, name))
        if size is None:
            problems.append(f"{name} is missing")
        elif rec.get("size") is not None and size != rec["size"]:
            problems.append(f"{name} has {size} bytes, its marker records {rec['size']}")
        elif (
            rec.get("sha256")
            and (deep or name.endswith(".parquet"))
            and storage.sha256(storage.join(uri, name)) != rec["sha256"]
        ):
            problems.append(f"{name} does not match its recorded SHA-256")
    return "; ".join(problems)


def damaged_shards(uri: str, indices: Iterable[int] | None = None, deep: bool = False) -> dict[int, str]:
    """``{index: what is wrong}`` for the committed shards among `indices` (default: all) that fail `verify_shard`.

    One listing for the sizes, then each marker (and parquet) is read; an unreadable marker is damage too.
    """
    sizes = storage.file_sizes(uri)
    out = {}
    for index in committed_shards(uri) if indices is None else indices:
        if f"{shard_stem(index)}_stats.json" not in sizes:
            continue
        marker, unreadable = _read_marker(uri, index)
        reason = unreadable or (verify_shard(uri, index, marker, sizes, deep) if marker is not None else "")
        if reason:
            out[index] = reason
    return out


def _read_marker(uri: str, index: int) -> tuple[dict[str, Any] | None, str]:
    """(marker or None, "" or why it cannot be read): a garbage marker must be redone, not crash every rerun."""
    try:
        marker = shard_stats(uri, index)
    except (ValueError, UnicodeDecodeError):
        return None, f"{shard_stem(index)}_stats.json is unreadable"
    if marker is not None and not isinstance(marker, dict):
        return None, f"{shard_stem(index)}_stats.json is not a marker"
    return marker, ""


def commit_stage(
    uri: str, summaries: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the stage's ``_stats.json`` (its commit marker) from the per-shard summaries; return it.

    When the summaries name their shards (``index``), the marker must describe exactly what readers will get: a
    summarised shard that is not committed is refused (`StageIncompleteError`), and a committed shard that no summary
    names (left over from another input set) is un-committed first, so `iter_stage` cannot return more samples than
    ``n_samples`` says.
    """
    indices = {s["index"] for s in summaries if isinstance(s.get("index"), int)}
    if summaries and len(indices) == len(summaries):
        committed = set(committed_shards(uri))
        missing = sorted(indices - committed)
        if missing:
            raise StageIncompleteError(f"{uri}: shards {missing} are summarised but not committed; run the stage again")
        for stray in sorted(committed - indices):
            log.warning("%s: un-committing shard %s, which is not part of this stage's input set", uri, stray)
            storage.remove(storage.join(uri, f"{shard_stem(stray)}_stats.json"))
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


#: block size of a streamed copy into a tar (a spool file, a kept member): memory per copy; the bytes do not change
_COPY_BLOCK = 64 << 10


class NpyFile:
    """A C-order array whose raw bytes are in a local file (frames a decoder spooled there as they came off ffmpeg's
    pipe), written into a tar as a ``.npy`` member by streaming: the header (with the final shape) and then the file,
    in small blocks. The member is byte-identical to ``np.save`` of the same array; the array is never in memory.

    Owns its file: `discard` removes it, and so does garbage collection of the object (a sample dropped on an error
    path does not leave its spool behind). `ShardWriter.add` discards it once written.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: Any = np.uint8) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape},
        )
        self.header = header.getvalue()
        self._finalizer = weakref.finalize(self, _unlink_quietly, self.path)

    @property
    def size(self) -> int:
        """Bytes of the ``.npy`` member: header and data."""
        return len(self.header) + self.nbytes

    def open(self) -> io.BufferedReader:
        """A reader of the whole ``.npy`` member (header, then the file); checks the file holds `nbytes` bytes.
        Buffered: `tarfile` needs every ``read(n)`` to return n bytes until the end."""
        actual = self.path.stat().st_size
        if actual != self.nbytes:
            raise ValueError(f"{self.path} holds {actual} bytes, not the {self.nbytes} of shape {self.shape}")
        return io.BufferedReader(_ChainReader(self.header, self.path), _COPY_BLOCK)

    def load(self) -> np.ndarray:
        """The array in memory (tests and small arrays only: the point of this class is not to do this)."""
        return np.fromfile(self.path, self.dtype).reshape(self.shape)

    def discard(self) -> None:
        """Remove the file (idempotent)."""
        self._finalizer()


class _TarMember:
    """A member of a committed shard's tar, copied into a new tar by streaming (`ShardWriter.add`)."""

    def __init__(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        self.tar = tar
        self.info = info

    @property
    def size(self) -> int:
        return int(self.info.size)

    def open(self) -> IO[bytes]:
        f = self.tar.extractfile(self.info)
        if f is None:
            raise ValueError(f"{self.info.name} is not a regular member")
        return f


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


class _ChainReader(io.RawIOBase):
    """Read `head` bytes, then the file at `path` (opened lazily, closed at the end or on `close`)."""

    def __init__(self, head: bytes, path: Path) -> None:
        self._head = memoryview(head)
        self._path = path
        self._fh: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        if self._head.nbytes:
            n = min(out.nbytes, self._head.nbytes)
            out[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        if self._fh is None:
            self._fh = open(self._path, "rb")  # noqa: SIM115 - closed by close()
        return self._fh.readinto(out)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


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


class _HashingWriter:
    """A binary file wrapper that hashes and counts what is written through it (the tar's checksum, in one pass)."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.fh.tell()

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class ShardWriter:
    """Stream samples into shard `index` and commit it: tar (temporary name → final), parquet, marker last.

    Samples are written as they arrive, so memory holds one sample, not a shard. Use as a context manager; leaving
    the block without `commit` (an exception, a kill) publishes nothing and removes the temporary tar. The marker
    records each file's size and SHA-256 (``files``), which reruns check before trusting the shard (`verify_shard`).
    """

    def __init__(self, uri: str, index: int) -> None:
        self.uri = uri
        self.index = index
        self.stem = shard_stem(index)
        storage.makedirs(uri)
        local_dir = storage.local_path(uri) if storage.is_local(uri) else Path(tempfile.gettempdir())
        # the name records this process, so that a cleaner elsewhere never removes it while we write (`temp_name`)
        self._tmp = local_dir / storage.temp_name(f"{self.stem}.tar")
        # The writer owns the open file and tar across add() calls; __exit__ closes and removes them.
        self._file: _HashingWriter | None = _HashingWriter(open(self._tmp, "wb"))  # noqa: SIM115
        self._tar: tarfile.TarFile | None = tarfile.TarFile(
            fileobj=cast(Any, self._file), mode="w", format=tarfile.USTAR_FORMAT, copybufsize=_COPY_BLOCK
        )
        self.n_samples = 0

    def add(self, key: str, members: Mapping[str, Any]) -> None:
        """Append one sample: ``{extension: value}``; arrays become ``.npy`` members, dicts ``.json``.

        An `NpyFile` value is streamed from its file into the tar (the same bytes as its array would give) and then
        discarded, and a member kept from the committed tar (retry-failed) is streamed from there: memory holds a
        copy block, not the sample.
        """
        assert self._tar is not None, "writer already closed"
        storage.check_key(key)
        try:
            for ext in sorted(members):
                value = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.mtime = 0  # byte-identical shards for identical content
                info.mode = 0o444
                if isinstance(value, NpyFile | _TarMember):
                    info.size = value.size
                    with value.open() as reader:
                        self._tar.addfile(info, reader)
                else:
                    data = _encode_member(value)
                    info.size = len(data)
                    self._tar.addfile(info, io.BytesIO(data))
        finally:
            for value in members.values():
                if isinstance(value, NpyFile):
                    value.discard()
        self.n_samples += 1

    def commit(self, rows: Sequence[Mapping[str, Any]], stats: Mapping[str, Any]) -> None:
        """Publish the tar, write the per-input parquet, then the ``_stats.json`` commit marker."""
        assert self._tar is not None and self._file is not None, "writer already closed"
        self._tar.close()
        self._tar = None
        self._file.flush()
        os.fsync(self._file.fh.fileno())
        self._file.close()
        tar_record = {"size": self._file.size, "sha256": self._file.sha.hexdigest()}
        self._file = None
        storage.publish_file(self._tmp, storage.join(self.uri, f"{self.stem}.tar"))
        table = (
            pa.Table.from_pylist([_parquet_row(r) for r in rows])
            if rows
            else pa.table({"key": pa.array([], pa.string())})
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        storage.write_bytes_atomic(storage.join(self.uri, f"{self.stem}.parquet"), data)
        files = {
            f"{self.stem}.tar": tar_record,
            f"{self.stem}.parquet": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        }
        storage.write_json_atomic(storage.join(self.uri, f"{self.stem}_stats.json"), {**dict(stats), "files": files})

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._file is not None:
            self._file.close()
            self._file = None
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
    """Remove the temporaries that dead writers on this machine left for shard `index` (tar, parquet, marker); return
    how many. A live writer's temporary is kept, even if it is writing the same shard: removing it is what made one of
    two concurrent ingests die. Temporaries of unknown owners are left to `clean_stale_temporaries`."""
    if not storage.is_local(uri):
        return 0
    d = storage.local_path(uri)
    removed = 0
    stem = shard_stem(index)
    for p in [*d.glob(f"{stem}.*.tmp-*"), *d.glob(f"{stem}_stats.json.tmp-*")]:
        if storage.temp_owner_alive(p.name) is False:
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
    items: tuple[Mapping[str, Any], ...]  # input rows, each with a "key" and optionally a content "fingerprint"
    mode: Mode = "incremental"
    # What the planner found wrong with the committed shard ("" if nothing): it is redone. Being part of the job's
    # dict, it also changes the cache key of a task that caches on its inputs, so a cached summary of the intact
    # shard is not replayed over the damaged one.
    repair: str = ""

    @property
    def keys(self) -> list[str]:
        return [str(it["key"]) for it in self.items]

    @property
    def keys_digest(self) -> str:
        return digest_keys(self.keys)

    @property
    def inputs_digest(self) -> str:
        """Keys and content (`digest_items`): a file replaced under the same key changes it."""
        return digest_items(self.items)

    @property
    def fingerprints(self) -> dict[str, str]:
        return {str(it["key"]): str(it["fingerprint"]) for it in self.items if "fingerprint" in it}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "stage_uri": self.stage_uri,
            "index": self.index,
            "config_hash": self.config_hash,
            "items": [dict(i) for i in self.items],
            "mode": self.mode,
        }
        if self.repair:
            d["repair"] = self.repair
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardJob:
        return cls(
            d["stage_uri"],
            int(d["index"]),
            d["config_hash"],
            tuple(dict(i) for i in d["items"]),
            d.get("mode", "incremental"),
            str(d.get("repair", "")),
        )


#: written: no committed shard before; skipped: committed and intact, nothing to do; retried: failed inputs redone
#: (retry-failed); repaired: the committed shard's files did not match its marker (or there were files without a
#: marker), redone; updated: some inputs changed content under the same keys, redone
Action = Literal["written", "skipped", "retried", "repaired", "updated"]


@dataclass
class ShardSummary:
    """What happened to one shard (returned by tasks; small)."""

    index: int
    action: Action
    status_counts: dict[str, int] = field(default_factory=dict)
    n_samples: int = 0
    seconds: float = 0.0
    processed: int = 0  # inputs actually processed in this run (0 when skipped)
    reason: str = ""  # why a committed shard was redone (repaired / updated): what was wrong, which inputs changed

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "action": self.action,
            "status_counts": self.status_counts,
            "n_samples": self.n_samples,
            "seconds": round(self.seconds, 3),
            "processed": self.processed,
            "reason": self.reason,
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

    with contextlib.ExitStack() as opened:  # the committed tar that retry-failed copies its good samples from
        return _run_shard(job, process_items, extra_stats, on_sample_written, opened)


def _run_shard(
    job: ShardJob,
    process_items: BatchProcessor,
    extra_stats: Mapping[str, Any] | None,
    on_sample_written: Callable[[int], None] | None,
    opened: contextlib.ExitStack,
) -> ShardSummary:
    start = time.monotonic()
    uri, index, stem = job.stage_uri, job.index, shard_stem(job.index)
    existing, unreadable = _read_marker(uri, index)
    action: Action = "written"
    reason = ""
    keep: dict[str, tuple[dict[str, Any], dict[str, _TarMember]]] = {}
    if job.mode == "overwrite":
        pass  # everything is rewritten
    elif existing is not None:
        # records from before content fingerprints hold the key digest as their inputs digest
        old_keys = existing.get("keys_digest", existing.get("inputs_digest"))
        if existing.get("config_hash") != job.config_hash or old_keys != job.keys_digest:
            raise StageMismatchError(
                f"shard {stem} in {uri} was committed for other inputs or config "
                f"(hash {existing.get('config_hash')}, inputs {existing.get('inputs_digest')}); use --mode overwrite"
            )
        # A marker is only as good as the files behind it: a truncated, missing or overwritten file is redone, not
        # reused (reading it would fail later, far from here, or return other data).
        damage = job.repair or verify_shard(uri, index, existing)
        if damage:
            action, reason = "repaired", damage
        elif existing.get("inputs_digest") != job.inputs_digest:
            # same keys, other content (a file replaced in place, another folder with the same names)
            action, reason = "updated", _changed_inputs(job)
            if job.mode == "retry-failed":
                keep = _read_ok_samples(uri, index, job.fingerprints, opened)
        else:
            failed = {k: v for k, v in existing.get("status_counts", {}).items() if k not in OK_STATUSES}
            if job.mode == "incremental" or not failed:
                return ShardSummary(
                    index,
                    "skipped",
                    dict(existing["status_counts"]),
                    int(existing["n_samples"]),
                    time.monotonic() - start,
                )
            action = "retried"
            keep = _read_ok_samples(uri, index, job.fingerprints, opened)
        if action != "retried":
            uncommit_shard(uri, index)  # a run killed during the rewrite must not leave the old marker committed
    elif unreadable:
        action, reason = "repaired", unreadable
        uncommit_shard(uri, index)
    else:
        leftovers = [name for name in (f"{stem}.tar", f"{stem}.parquet") if storage.exists(storage.join(uri, name))]
        if leftovers:
            # a deleted marker, or a writer killed between publishing its files and its marker
            action, reason = "repaired", f"{' and '.join(leftovers)} without a commit marker"
    if reason:
        log.warning("%s: redoing shard %s (%s): %s", uri, stem, action, reason)
    # The stage marker says "every shard is committed and matches": whatever this run rewrites, it is withdrawn
    # first, and written again by `commit_stage` once every shard is.
    storage.remove(storage.join(uri, "_stats.json"))
    clean_temporaries(uri, index)
    rows: list[dict[str, Any]] = []
    processed = 0
    todo = [it for it in job.items if storage.check_key(str(it["key"])) not in keep]
    produced = iter(process_items(todo))
    with ShardWriter(uri, index) as writer:
        for item in job.items:
            key = str(item["key"])
            members: Mapping[str, Any]
            if key in keep:
                row, members = keep.pop(key)
            else:
                row, members_opt = next(produced)
                processed += 1
                members = members_opt or {}
                if "fingerprint" in item:  # which version of the input this row describes (retry-failed reuse)
                    row = {**row, "fingerprint": item["fingerprint"]}
            if row.get("key") != key:
                raise ValueError(f"processor returned row for {row.get('key')!r} while processing {key!r}")
            rows.append(row)
            if members:
                writer.add(key, members)
                if on_sample_written is not None:
                    on_sample_written(writer.n_samples)
        counts = Counter(str(r["status"]) for r in rows)
        stats = {
            "shard": index,
            "config_hash": job.config_hash,
            "keys_digest": job.keys_digest,
            "inputs_digest": job.inputs_digest,
            "count": len(rows),
            "n_samples": writer.n_samples,
            "status_counts": dict(sorted(counts.items())),
            "seconds": round(time.monotonic() - start, 3),
            **dict(extra_stats or {}),
        }
        writer.commit(rows, stats)
    return ShardSummary(
        index,
        action,
        dict(stats["status_counts"]),
        int(stats["n_samples"]),
        time.monotonic() - start,
        processed,
        reason,
    )


def _changed_inputs(job: ShardJob) -> str:
    """``inputs changed: a, b``, from the fingerprints the committed rows recorded (all keys if they recorded none)."""
    try:
        old = {r["key"]: r.get("fingerprint") for r in read_rows(job.stage_uri, job.index)}
    except (OSError, ValueError, pa.ArrowException):
        return "inputs changed"
    new = job.fingerprints
    changed = [k for k in job.keys if old.get(k) != new.get(k)]
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    return f"inputs changed: {', '.join(changed[:5])}{more}" if changed else "inputs changed"


def _read_ok_samples(
    uri: str, index: int, fingerprints: Mapping[str, str] | None, opened: contextlib.ExitStack
) -> dict[str, tuple[dict[str, Any], dict[str, _TarMember]]]:
    """The committed rows of shard `index` whose status is usable, each with references to its tar members (reused by
    retry-failed): the members are streamed from the committed tar into the new one, never read into memory (a shard
    of good samples can be gigabytes). The tar stays open in `opened` until the shard is rewritten.

    With `fingerprints` (the inputs' current content), a row is reused only if it recorded the same fingerprint: a
    sample of a file that has since changed is redone, not kept.
    """
    rows = {
        r["key"]: r
        for r in read_rows(uri, index)
        if r.get("status") in OK_STATUSES and (not fingerprints or r.get("fingerprint") == fingerprints.get(r["key"]))
    }
    fh = opened.enter_context(storage.open_read(storage.join(uri, f"{shard_stem(index)}.tar")))
    tar = opened.enter_context(tarfile.TarFile(fileobj=fh, mode="r"))  # seeks: reads headers, data when copied
    out: dict[str, tuple[dict[str, Any], dict[str, _TarMember]]] = {}
    for info in tar.getmembers():
        if not info.isfile():
            continue
        key, ext = info.name.split(".", 1)
        if key in rows:
            out.setdefault(key, (_unparquet_row(rows[key]), {}))[1][ext] = _TarMember(tar, info)
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
