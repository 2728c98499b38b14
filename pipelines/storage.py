"""Storage by URI (local paths or any fsspec URL such as ``s3://bucket/prefix``), with publish-by-rename semantics.

Local files are written to a temporary name in the same folder and moved into place with ``os.replace`` (atomic on
POSIX). Object stores have no rename: an object becomes visible whole on a single PUT, so there the final name is
written directly. Either way *commit markers are written last*, and readers trust only committed units.

Sample keys become parts of paths, so `check_key` rejects anything that could escape the run root.

Temporary names carry their writer (``<name>.tmp-h<host>p<pid>_<random>``, see `temp_name`) so that a cleaner removes
only what a dead writer left, never the file a live writer is still filling (two ingests into one root used to delete
each other's temporaries).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,160}$")


class UnsafeKeyError(ValueError):
    """A sample key that is not a plain token (could contain a path separator, dot or be empty)."""


def check_key(key: str) -> str:
    """Return `key` if it is a safe sample key (letters, digits, ``_`` and ``-``), else raise `UnsafeKeyError`.

    Dots are excluded because WebDataset splits a member name into key and extension at the first dot.
    """
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise UnsafeKeyError(f"unsafe sample key {key!r}: keys may only contain letters, digits, '_' and '-'")
    return key


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path within it.

    Directory listings are never cached. Other processes (Prefect tasks, Ray workers, a rerun after a kill) write
    commit markers and rewrite shards under the same prefix, and s3fs's listing cache would hide the new markers and
    serve the old size of a rewritten object: reading it then fails with ``FileExpired``, seen against moto.
    Endpoint and credentials come from the environment, where s3fs/botocore read them (``AWS_ENDPOINT_URL``, ...).
    """
    fs, path = fsspec.core.url_to_fs(uri, use_listings_cache=False)
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def resolve_root(root: str | os.PathLike[str]) -> str:
    """The run root as every later step sees it: an absolute local path (``~`` expanded, ``file://`` dropped, no
    trailing ``/``) or, for an object store, the URI without its trailing ``/``.

    Called once at each edge (CLI commands, flow entry points, `TrainingJob`): Ray workers, Prefect workers and a
    later rerun do not share the caller's working directory, so a relative root would name another folder there, and
    a path recorded in a job record or a cached result would stop resolving. Idempotent.
    """
    text = os.fspath(root)
    if not text.strip():
        raise ValueError("the run root is empty")
    if not is_local(text):
        return text.rstrip("/")
    return os.path.abspath(os.path.expanduser(str(local_path(text))))


def is_resolved_root(root: str) -> bool:
    """True for a root that `resolve_root` returns unchanged (absolute local path or URI)."""
    return not is_local(root) or (not root.startswith("file://") and os.path.isabs(root))


#: this machine in temporary names: 6 hex digits of its name's hash (two hosts writing under one shared local root
#: collide with odds of 1 in 16 million; the stage lock keeps them from writing one stage at once anyway)
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TEMP_OWNER = re.compile(r"\.tmp-h(?P<host>[0-9a-f]{6})p(?P<pid>\d+)_\w+$")


def temp_name(name: str) -> str:
    """A temporary name next to `name` that records its writer (this host and process): ``<name>.tmp-h…p…_…``.

    The suffix is word characters only (no dots or dashes), so ``<name>.tmp-*`` globs keep finding it.
    """
    return f"{name}.tmp-h{HOST_TAG}p{os.getpid()}_{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine and is not a zombie (a killed, unreaped child is dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OverflowError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        # "pid (comm) S ...": the state follows the last ')' (comm may contain spaces and parentheses)
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def temp_owner_alive(name: str) -> bool | None:
    """For a temporary written by `temp_name`: is its writer alive? None when that cannot be told here (another
    host, or an old-style name without an owner)."""
    m = _TEMP_OWNER.search(name)
    if m is None or m["host"] != HOST_TAG:
        return None
    return pid_alive(int(m["pid"]))


def is_temp_name(name: str) -> bool:
    return ".tmp-" in name


def fingerprint(path: str, window: int = 1 << 20) -> str:
    """A cheap content identity of a source file: ``<size>:<mtime_ns>:<sha256 of the first and last window>[:16]``.

    Key names do not identify inputs (two folders can both hold ``clips/c1.mp4``; a file can be replaced in place),
    and hashing whole videos is too slow to do on every rerun: size, mtime and the hash of both ends catch a
    different file, a re-encode and an in-place rewrite (a same-size rewrite that keeps its mtime is caught by the
    hash when it touches either end, which covers every file up to 2 windows). ``missing`` when there is no file.
    """
    if not is_local(path):
        fs, p = filesystem(path)
        try:
            info = fs.info(p)
        except FileNotFoundError:
            return "missing"
        tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        return f"{info.get('size')}:{str(tag).strip(chr(34))}"
    local = local_path(path)
    try:
        st = local.stat()
        h = hashlib.sha256()
        with open(local, "rb") as fh:
            h.update(fh.read(window))
            if st.st_size > window:
                fh.seek(max(window, st.st_size - window))
                h.update(fh.read(window))
    except FileNotFoundError:
        return "missing"
    except OSError as exc:  # a folder, no permission, ...: still an identity, and it changes once the file is fixed
        return f"unreadable:{type(exc).__name__}"
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/' (works for local paths and URLs)."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(uri: str) -> bool:
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def makedirs(uri: str) -> None:
    if is_local(uri):
        local_path(uri).mkdir(parents=True, exist_ok=True)
    # object stores have no folders


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` so that readers see either nothing or the whole content."""
    if is_local(uri):
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(temp_name(dest.name))
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        return
    fs, path = filesystem(uri)
    fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all


def publish_file(local_tmp: Path, uri: str) -> None:
    """Move a finished local temporary file to its final URI (rename locally, upload remotely)."""
    if is_local(uri):
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_tmp, dest)
        return
    fs, path = filesystem(uri)
    fs.put_file(str(local_tmp), path)
    local_tmp.unlink(missing_ok=True)


def read_bytes(uri: str) -> bytes:
    if is_local(uri):
        return local_path(uri).read_bytes()
    fs, path = filesystem(uri)
    return bytes(fs.cat_file(path))


def write_json_atomic(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def listdir(uri: str) -> list[str]:
    """Base names directly under `uri` (empty if it does not exist)."""
    if is_local(uri):
        p = local_path(uri)
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    fs, path = filesystem(uri)
    try:
        return sorted(Path(x).name for x in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def file_sizes(uri: str) -> dict[str, int]:
    """``{base name: size in bytes}`` of the files directly under `uri`, from one listing (empty if absent)."""
    if is_local(uri):
        p = local_path(uri)
        if not p.is_dir():
            return {}
        out = {}
        for x in p.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a temporary renamed away while we list
                if x.is_file():
                    out[x.name] = x.stat().st_size
        return out
    fs, path = filesystem(uri)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {Path(e["name"]).name: int(e.get("size") or 0) for e in entries if e.get("type") != "directory"}


def size(uri: str) -> int | None:
    """Size of the file at `uri` in bytes, or None if there is none."""
    if is_local(uri):
        try:
            return local_path(uri).stat().st_size
        except FileNotFoundError:
            return None
    fs, path = filesystem(uri)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        return None


def sha256(uri: str) -> str:
    """Hex SHA-256 of a file's content, streamed."""
    h = hashlib.sha256()
    with open_read(uri) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove(uri: str) -> None:
    if is_local(uri):
        local_path(uri).unlink(missing_ok=True)
        return
    fs, path = filesystem(uri)
    # parallel shard tasks may remove the same marker: gone is gone
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(path):
            fs.rm_file(path)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create `uri` with `data` only if it does not exist; True if this call created it.

    Locally this is atomic (``O_CREAT | O_EXCL``). Object stores offer no such primitive through fsspec, so there it
    is best effort: check, PUT, read back and compare (two writers racing inside that window can both see their own
    bytes, the later PUT winning afterwards).
    """
    if is_local(uri):
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return True
    if exists(uri):
        return False
    write_bytes_atomic(uri, data)
    time.sleep(0.05)  # let a racing PUT land before we read back
    try:
        return read_bytes(uri) == data
    except FileNotFoundError:
        return False


def mtime(uri: str) -> float | None:
    """Modification time (seconds since the epoch) of a local file, None for a missing or remote one."""
    if not is_local(uri):
        return None
    try:
        return local_path(uri).stat().st_mtime
    except FileNotFoundError:
        return None


def open_read(uri: str) -> Any:
    """A binary file object for reading `uri`."""
    if is_local(uri):
        return open(local_path(uri), "rb")
    fs, path = filesystem(uri)
    return fs.open(path, "rb")
