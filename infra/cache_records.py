"""What makes a persisted Prefect task record unsafe or stale to reuse (`flows.runtime.CheckedCache` calls these).

A record under a run root is data anyone with write access there can change, so it is read as data: only Prefect's
plain JSON decoding, a result file inside the results folder, no class named outside a few value types
(`record_problem`); and a result naming a local path that no longer exists, or a relative path, is stale
(`stale_reason`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def record_problem(meta: Any, results_dir: Path) -> tuple[str | None, Path | None]:
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
