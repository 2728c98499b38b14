"""Prefect plumbing shared by every flow: where results and cache keys live, what counts as transient.

Results and cache records are persisted **under the run root** (``<root>/.prefect/``) with a cache policy of
``INPUTS + TASK_SOURCE``: a rerun of a flow in a new process (after a crash, or a re-triggered deployment) finds the
records of the tasks that finished and returns them as ``Cached``. Prefect's default policy includes the run id and
would recompute everything (reliability notes §1.1).

A cached result is **checked before it is reused** (`CheckedCache`): results are stored as JSON (tasks return small
summaries of URIs and numbers, never arrays), and a record whose result names a local path that no longer exists, or
a relative path (which resolves against whichever working directory reads it), or that is not JSON at all, is dropped,
so the task runs again instead of replaying a result that points at nothing. A corrupt record (truncated or garbage
result, garbage cache-key file, a key whose result is missing) is a miss with a warning, never a failure. JSON also
means a record under a writable run root is never unpickled; and since Prefect takes the deserialiser *named in the
record* (``jsonlib``, ``object_decoder``: any importable callable, fed the result's JSON objects) and turns
``{"__class__": …}`` objects into instances of the named class, a record is only reused when it names Prefect's plain
JSON decoding, its result file lies inside the results folder, and its JSON names no class outside a few value types.

The checks of a record are `infra.cache_records`; Prefect's own database is checked before a command starts a flow
(`infra.prefect_home`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.filesystems import LocalFileSystem

from infra.cache_records import record_problem
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


@dataclass
class CheckedCache(CachePolicy):
    """``INPUTS + TASK_SOURCE``, with the stored record checked before Prefect may reuse it (module docstring).

    `compute_key` is the one hook Prefect calls before it looks a record up, so the check lives there: a record that
    is stale (`stale_reason`), unreadable, not JSON or not plain JSON (`infra.cache_records.record_problem`) is
    deleted (with its result file when that lies in the results folder, never a file elsewhere), and Prefect then
    finds no record and runs the task, which writes a fresh one.
    """

    results_dir: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> Any:
        key = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is not None and self.key_storage is not None:
            self._drop_if_stale(Path(str(self.key_storage)), key)
        return key

    def _drop_if_stale(self, keys: Path, key: str) -> None:
        meta_path = keys / key
        if not meta_path.exists() and not meta_path.is_symlink():
            return
        reason: str | None
        result_path: Path | None = None
        try:
            if not meta_path.is_file():
                raise ValueError("not a regular file")
            reason, result_path = record_problem(json.loads(meta_path.read_bytes()), Path(self.results_dir))
        except Exception as exc:  # whatever is wrong with a record, it is a miss, not a failed run
            reason = f"its record is unreadable ({type(exc).__name__}: {_first_line(exc)})"
            if result_path is None:
                result_path = _result_path_if_inside(meta_path, Path(self.results_dir))
        if reason is None:
            return
        log.warning("not reusing the cached result of %s: %s; running it again", key, reason)
        _remove(meta_path)
        if result_path is not None:
            _remove(result_path)


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:200]


def _result_path_if_inside(meta_path: Path, results_dir: Path) -> Path | None:
    """The result file an unreadable record names, if it can be told and lies in `results_dir` (else None)."""
    try:
        key = json.loads(meta_path.read_bytes())["storage_key"]
        base = results_dir.resolve()
        path = (base / key).resolve()
    except Exception:  # best effort: an unreadable record keeps its result file
        return None
    return path if base in path.parents else None


def _remove(path: Path) -> None:
    """Remove a file (or a directory where a record should be); never raises."""
    import shutil

    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


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
