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

Prefect's own database (``PREFECT_HOME/prefect.db``, used by the temporary API server a flow starts) is checked before
a command starts a flow (`check_prefect_database`): a garbage file there made the server fail to start, retried for
minutes with thousands of traceback lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.filesystems import LocalFileSystem

from pipelines import storage
from pipelines.shards import StageIncompleteError, StageMismatchError

log = logging.getLogger(__name__)


class PrefectDatabaseError(RuntimeError):
    """Prefect's local database cannot be used; the message names the file and what to do."""


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


#: what a record's serializer must say for its result to be read: plain `json`, Prefect's default object decoder (it
#: builds only the classes a result names, which `_foreign_class` checks), no extra loader arguments
_JSON_READING = {
    "type": "json",
    "jsonlib": "json",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "loads_kwargs": {},
}
#: modules whose classes a result may name in ``{"__class__": …}`` (values Prefect's JSON encoder wraps)
_VALUE_MODULES = frozenset({"builtins", "pathlib", "datetime", "uuid", "decimal"})


def _foreign_class(value: Any) -> str | None:
    """The first ``__class__`` outside `_VALUE_MODULES` (or any ``__exc_type__``) in a JSON result, or None: Prefect's
    decoder would import and build it."""
    if isinstance(value, dict):
        if "__exc_type__" in value:
            return str(value["__exc_type__"])
        name = value.get("__class__")
        if name is not None and (not isinstance(name, str) or name.split(".", 1)[0] not in _VALUE_MODULES):
            return str(name)
        return next((c for c in map(_foreign_class, value.values()) if c is not None), None)
    if isinstance(value, list):
        return next((c for c in map(_foreign_class, value) if c is not None), None)
    return None


def _record_problem(meta: Any, results_dir: Path) -> tuple[str | None, Path | None]:
    """(why a cache-key record must not be used or None, its result file if it lies in `results_dir`)."""
    from prefect.results import ResultRecordMetadata

    if not isinstance(meta, dict):
        return "its record is not a JSON object", None
    serializer = meta.get("serializer")
    if not isinstance(serializer, dict) or serializer.get("type") != "json":
        kind = serializer.get("type") if isinstance(serializer, dict) else serializer
        return f"its result is stored as {kind!r}, not JSON", None
    odd = {k: serializer.get(k) for k, v in _JSON_READING.items() if serializer.get(k, v) != v}
    if odd:
        return f"its record names another JSON decoding ({odd}), which would run code of its choosing", None
    ResultRecordMetadata.load_bytes(json.dumps(meta).encode())  # what Prefect will parse: fail here, not there
    key = meta["storage_key"]
    if not isinstance(key, str) or not key:
        return "its record has no result key", None
    base = results_dir.resolve()
    result_path = (base / key).resolve()  # an absolute key replaces the base
    if base not in result_path.parents:
        return f"its result path {key!r} is outside {base}", None
    result = json.loads(result_path.read_bytes())
    foreign = _foreign_class(result)
    if foreign is not None:
        return f"its result names the class {foreign!r}, which Prefect would import and build", result_path
    return stale_reason(result), result_path


@dataclass
class CheckedCache(CachePolicy):
    """``INPUTS + TASK_SOURCE``, with the stored record checked before Prefect may reuse it (module docstring).

    `compute_key` is the one hook Prefect calls before it looks a record up, so the check lives there: a record that
    is stale (`stale_reason`), unreadable, not JSON or not plain JSON (`_record_problem`) is deleted (with its result
    file when that lies in the results folder, never a file elsewhere), and Prefect then finds no record and runs the
    task, which writes a fresh one.
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
            reason, result_path = _record_problem(json.loads(meta_path.read_bytes()), Path(self.results_dir))
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


def check_prefect_database() -> None:
    """Raise `PrefectDatabaseError` naming the file and the fix if Prefect's local database cannot be opened.

    Only for the local SQLite database the temporary API server uses (no ``PREFECT_API_URL``): a server's database
    is the server's business. Cheap (the header and the schema table, read-only); a missing file is fine (Prefect
    creates it), a locked one too (another run is using it).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return
    home = Path(settings.home).expanduser()
    if home.exists() and not home.is_dir():
        raise PrefectDatabaseError(
            f"PREFECT_HOME {home} is not a folder: remove or rename that file, or set PREFECT_HOME to a folder"
        )
    url = settings.server.database.connection_url
    text = url.get_secret_value() if url is not None else ""
    if not text.startswith("sqlite") or ":///" not in text:
        return
    path = text.split(":///", 1)[1].split("?", 1)[0]
    if not path or path == ":memory:":
        return
    db = Path(path).expanduser()
    if not db.exists():
        return
    fix = (
        "move it aside (or delete it) and Prefect starts a new one — this only loses Prefect's run history; the "
        "cached task results under <run root>/.prefect are kept — or set PREFECT_HOME to another folder"
    )
    if not db.is_file():
        raise PrefectDatabaseError(f"the Prefect database {db} is not a file: {fix}")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0.2)
        try:
            con.execute("PRAGMA schema_version").fetchone()
            con.execute("SELECT name, sql FROM sqlite_master").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # in use by another run: not broken
        raise PrefectDatabaseError(f"the Prefect database {db} cannot be read ({exc}): {fix}") from exc
    except sqlite3.DatabaseError as exc:
        raise PrefectDatabaseError(f"the Prefect database {db} is unusable ({exc}): {fix}") from exc


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
