"""Typed configuration: frozen dataclasses for the schema, YAML for overrides, strict merging.

Every configurable knob in the project is a field of a (frozen) dataclass whose default is the paper's value, with
its provenance in a comment. YAML files and command-line / Prefect overrides only *override* fields; a key that the
dataclass does not declare is an error (`ConfigError`) that names the valid keys, so a typo never silently falls
back to a default.

`config_hash` gives a short, stable digest of a config; it names output folders (`<root>/<ds>/<stage>/<hash>/`),
so two runs with the same config find each other's work and two different configs never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be built: unknown key, wrong type, or a failed cross-field check."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type `tp`, or raise `ConfigError`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {tp} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return build(tp, value, where=where)
    if origin in (tuple, list):
        if isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            value = [value]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def build(cls: type[T], values: Mapping[str, Any] | None = None, *, where: str = "") -> T:
    """Build dataclass `cls` from a (nested) mapping, rejecting unknown keys.

    Fields missing from `values` keep their defaults. Nested dataclass fields accept nested mappings.
    """
    values = dict(values or {})
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(types_))}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, types_[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without default
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn dotted keys ``{"optim.lr": 1e-4}`` into nested mappings ``{"optim": {"lr": 1e-4}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r} conflicts with a non-mapping value at {part!r}")
            node = child
        node[parts[-1]] = value
    return nested


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def merge_dict(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A plain (nested) config dict with dotted or nested `overrides` applied — for configs that are validated
    later, when the dataclass is known (a recipe built from its name)."""
    return _deep_merge(dict(base), _nest(overrides))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly nested dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def merge(cfg: T, overrides: Mapping[str, Any]) -> T:
    """Return `cfg` with (possibly dotted / nested) overrides applied, strictly typed."""
    merged = _deep_merge(to_dict(cfg), _nest(overrides))
    return build(type(cfg), merged)


def load(
    cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, base: T | None = None
) -> T:
    """Load `cls` from defaults (or `base`), then a YAML file of overrides, then dotted overrides."""
    cfg = base if base is not None else build(cls)
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping")
        cfg = merge(cfg, data)
    if overrides:
        cfg = merge(cfg, overrides)
    return cfg


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse ``key=value`` strings (values in YAML syntax) into a dict for `merge`."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short digest of a config (dataclass or JSON-able mapping)."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
