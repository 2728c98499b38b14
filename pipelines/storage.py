"""Storage by URI (local paths or any fsspec URL such as ``s3://bucket/prefix``), with publish-by-rename semantics.

Local files are written to a temporary name in the same folder and moved into place with ``os.replace`` (atomic on
POSIX). Object stores have no rename: an object becomes visible whole on a single PUT, so there the final name is
written directly. Either way *commit markers are written last*, and readers trust only committed units.

Sample keys become parts of paths, so `check_key` rejects anything that could escape the run root.
"""

from __future__ import annotations

import json
import os
import re
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
        tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
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


def remove(uri: str) -> None:
    if is_local(uri):
        local_path(uri).unlink(missing_ok=True)
        return
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm_file(path)


def open_read(uri: str) -> Any:
    """A binary file object for reading `uri`."""
    if is_local(uri):
        return open(local_path(uri), "rb")
    fs, path = filesystem(uri)
    return fs.open(path, "rb")
