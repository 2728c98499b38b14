"""Prefect plumbing shared by every flow: where results and cache keys live, what counts as transient.

Results and cache records are persisted **under the run root** (``<root>/.prefect/``) with a cache policy of
``INPUTS + TASK_SOURCE``: a rerun of a flow in a new process (after a crash, or a re-triggered deployment) finds the
records of the tasks that finished and returns them as ``Cached``. Prefect's default policy includes the run id and
would recompute everything (reliability notes §1.1).

A cached result is **checked before it is reused** (`CheckedCache`): results are stored as JSON (tasks return small
summaries of URIs and numbers, never arrays), and a record whose result names a local path that no longer exists, or
a relative path (which resolves against whichever working directory reads it), or that is not JSON at all, is dropped,
so the task runs again instead of replaying a result that points at nothing. JSON also means a record under a
writable run root is never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.filesystems import LocalFileSystem

from pipelines import storage
from pipelines.shards import StageIncompleteError, StageMismatchError

log = logging.getLogger(__name__)

#: exceptions that mean "the input or the request is wrong": retrying cannot help
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    StageMismatchError,
    StageIncompleteError,
    FileNotFoundError,
    NotImplementedError,
)


def prefect_dir(root: str) -> Path:
    if not storage.is_local(root):
        # Remote run roots keep Prefect's bookkeeping locally (the shards themselves go to the object store).
        return Path.home() / ".vlrepro" / "prefect" / root.replace("://", "_").replace("/", "_")
    return storage.local_path(root) / ".prefect"


def result_storage(root: str) -> LocalFileSystem:
    """A saved local-file-system block pointing at ``<root>/.prefect/results`` (Prefect requires saved blocks)."""
    path = prefect_dir(root) / "results"
    path.mkdir(parents=True, exist_ok=True)
    name = "vlrepro-results-" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    block = LocalFileSystem(basepath=str(path.resolve()))
    block.save(name, overwrite=True)
    return block


#: result fields that hold a path or URI (besides any string that is an absolute local path)
_PATH_FIELDS = ("uri", "dir", "path", "checkpoint", "csv", "annotations", "image_text", "root", "stage", "model")


def _path_like_field(name: str) -> bool:
    name = name.lower()
    return any(name == f or name.endswith("_" + f) for f in _PATH_FIELDS)


def _strings(value: Any, field: str = "") -> Iterator[tuple[str, str]]:
    """Every (field name, string) pair in a JSON value; list items take their list's field name."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, field)
    elif isinstance(value, str):
        yield field, value


def stale_reason(result: Any) -> str | None:
    """Why a stored task result must not be reused, or None: it names a local path that is gone, or a relative path.

    Checked: every string that is an absolute local path, and every string in a path-like field (``*_uri``,
    ``*_dir``, ``checkpoint``, …) that looks like a path. Remote URIs are left to the stage's own commit marker,
    which the task checks when it runs.
    """
    for field, text in _strings(result):
        if "\n" in text or len(text) > 4096:
            continue
        if text.startswith("/"):
            if not os.path.exists(text):
                return f"{field or 'a value'} names {text}, which no longer exists"
        elif text.startswith("file://"):
            if not os.path.exists(text[len("file://") :]):
                return f"{field or 'a value'} names {text}, which no longer exists"
        elif _path_like_field(field) and "://" not in text and "/" in text and " " not in text:
            return f"{field} names the relative path {text!r}, which resolves against the reader's working directory"
    return None


@dataclass
class CheckedCache(CachePolicy):
    """``INPUTS + TASK_SOURCE``, with the stored record checked before Prefect may reuse it (module docstring).

    `compute_key` is the one hook Prefect calls before it looks a record up, so the check lives there: a record that
    is stale (`stale_reason`), unreadable or not JSON is deleted, and Prefect then finds no record and runs the task.
    """

    results_dir: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> Any:
        key = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is not None and self.key_storage is not None:
            self._drop_if_stale(Path(str(self.key_storage)), key)
        return key

    def _drop_if_stale(self, keys: Path, key: str) -> None:
        meta_path = keys / key
        if not meta_path.is_file():
            return
        reason: str | None
        result_path: Path | None = None
        try:
            meta = json.loads(meta_path.read_text())
            serializer = (meta.get("serializer") or {}).get("type")
            result_path = Path(meta["storage_key"])
            if not result_path.is_absolute():
                result_path = Path(self.results_dir) / result_path
            if serializer != "json":
                reason = f"its result is stored as {serializer!r}, not JSON"
            else:
                reason = stale_reason(json.loads(result_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = f"its record is unreadable ({type(exc).__name__}: {exc})"
        if reason is None:
            return
        log.warning("not reusing the cached result of %s: %s; running it again", key, reason)
        meta_path.unlink(missing_ok=True)
        if result_path is not None and result_path.is_file():
            result_path.unlink(missing_ok=True)


def cache_policy(root: str) -> CachePolicy:
    keys = prefect_dir(root) / "cache-keys"
    keys.mkdir(parents=True, exist_ok=True)
    policy = CheckedCache(results_dir=str((prefect_dir(root) / "results").resolve()))
    return policy.configure(key_storage=str(keys.resolve()))


def cached_task(task: Any, root: str) -> Any:
    """`task` with its result persisted as JSON under `root` and reused by a rerun once checked (`CheckedCache`)."""
    return task.with_options(
        cache_policy=cache_policy(root),
        persist_result=True,
        result_storage=result_storage(root),
        result_serializer="json",
    )


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn`: retry I/O-ish failures, never deterministic ones (a corrupt video is not an exception
    at all — it is a manifest row — so whatever reaches here is infrastructure or a bug)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # pragma: no cover - defensive: unknown state payload
        return False
    return isinstance(exc, Exception) and not isinstance(exc, DETERMINISTIC_ERRORS)
