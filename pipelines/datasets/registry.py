"""Dataset name → its adapter's ``check(data_dir, video_dir, probe) -> DatasetCheck`` (``vlrepro data check``).

Each benchmark has one module in `pipelines.datasets` exposing ``check``: the retrieval benchmarks (MSR-VTT, MSVD,
DiDeMo, ActivityNet Captions) and the localization ones (THUMOS14, ActivityNet 1.2, Charades-STA, ActivityNet
Captions as grounding). Modules are
imported when a name is resolved, so listing the names costs nothing. Names are matched case-insensitively and
without ``-``/``_`` (``MSR-VTT``, ``charades_sta``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from pipelines.datasets.check import DatasetCheck

CheckFn = Callable[[Path, Path | None, bool], DatasetCheck]

#: name → module of `pipelines.datasets` with its adapter
MODULES: dict[str, str] = {
    "msrvtt": "msrvtt",
    "msvd": "msvd",
    "didemo": "didemo",
    "activitynet-captions": "activitynet_captions",
    "thumos14": "thumos14",
    "activitynet12": "activitynet12",
    "charades-sta": "charades_sta",
    "activitynet-captions-grounding": "anet_captions_grounding",
}
#: the papers' evaluation family of each dataset
KIND: dict[str, str] = {
    "msrvtt": "retrieval",
    "msvd": "retrieval",
    "didemo": "retrieval",
    "activitynet-captions": "retrieval",
    "thumos14": "localization",
    "activitynet12": "localization",
    "charades-sta": "localization",
    "activitynet-captions-grounding": "localization",
}


class UnknownDataset(ValueError):
    """No adapter by that name (or its module is not in this version)."""


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def canonical(name: str) -> str:
    """The registry's spelling of `name`; `UnknownDataset` naming the choices when there is none."""
    by_key = {_key(n): n for n in MODULES}
    if _key(name) not in by_key:
        raise UnknownDataset(f"unknown dataset {name!r}; choose one of {', '.join(MODULES)}")
    return by_key[_key(name)]


def available() -> list[str]:
    """The names whose adapter module is present."""
    return [n for n in MODULES if importlib.util.find_spec(f"pipelines.datasets.{MODULES[n]}") is not None]


def checker(name: str) -> CheckFn:
    """The ``check`` of the adapter for `name`."""
    canon = canonical(name)
    module_name = f"pipelines.datasets.{MODULES[canon]}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The localization adapters (thumos14, activitynet12, charades_sta) are written separately and may not be in
        # this tree yet: only their own absence is tolerated; a missing dependency inside a module still raises.
        if exc.name != module_name:
            raise
        raise UnknownDataset(f"dataset {canon!r} has no adapter in this version (no module {module_name})") from None
    check: CheckFn = module.check
    return check
