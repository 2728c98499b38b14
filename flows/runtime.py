"""Prefect plumbing shared by every flow: where results and cache keys live, what counts as transient.

Results and cache records are persisted **under the run root** (``<root>/.prefect/``) with
``cache_policy=INPUTS+TASK_SOURCE``: a rerun of a flow in a new process (after a crash, or a re-triggered deployment)
finds the records of the tasks that finished and returns them as ``Cached``. Prefect's default policy includes the
run id and would recompute everything (reliability notes §1.1).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.filesystems import LocalFileSystem

from pipelines import storage
from pipelines.shards import StageIncompleteError, StageMismatchError

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


def cache_policy(root: str) -> CachePolicy:
    keys = prefect_dir(root) / "cache-keys"
    keys.mkdir(parents=True, exist_ok=True)
    return (INPUTS + TASK_SOURCE).configure(key_storage=str(keys))


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn`: retry I/O-ish failures, never deterministic ones (a corrupt video is not an exception
    at all — it is a manifest row — so whatever reaches here is infrastructure or a bug)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # pragma: no cover - defensive: unknown state payload
        return False
    return isinstance(exc, Exception) and not isinstance(exc, DETERMINISTIC_ERRORS)
