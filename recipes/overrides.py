"""The one override grammar of every DAG: ``--set key=value`` reaches every job that has the key, ``--set
<job>.key=value`` only that job; a key no job has is an error naming the close matches.

A DAG's jobs are named by its spec (`recipes.spec.PaperSpec.jobs`: ``stan``; DCC's ``dcc``, ``i3d``, ``tvl1``;
LocVTP's ``pretrain``, ``grounding``) plus the mini CLIP every mini-world DAG pre-trains (``miniclip``). Whether a job
"has" a key is read off its resolved config (a nested dict, `models.config.to_dict` of its typed config), so the
grammar needs no list of keys of its own and follows the dataclasses as they change.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from recipes.spec import SpecError, close_matches


def has_key(config: Mapping[str, Any], dotted: str) -> bool:
    """Whether the nested mapping `config` has the dotted path `dotted` (a leaf or a section)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def flat_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted leaf path of `config`."""
    keys: list[str] = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.extend(flat_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def _hint(key: str, candidates: list[str]) -> str:
    """Close matches of `key`: keys whose last part is (nearly) `key`'s last part first (``rounds`` →
    ``model.stages.rounds``), else the closest whole keys."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if difflib.get_close_matches(leaf, [c.rsplit(".", 1)[-1]], n=1, cutoff=0.85)]
    if same_leaf:
        return "; did you mean " + " or ".join(repr(c) for c in sorted(same_leaf, key=len)[:3]) + "?"
    return close_matches(key, candidates)


def route(overrides: Mapping[str, Any], jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Split the user's dotted `overrides` among `jobs` (job name → its resolved config): job name → its overrides.

    ``<job>.<key>`` goes to that job only (the job must have the key); any other key goes to every job that has it.

    Raises:
        SpecError: a key no job has (or a ``<job>.`` key that job does not have), naming the close matches.
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in jobs}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head in jobs and rest:
            if not has_key(jobs[head], rest):
                hint = close_matches(rest, flat_keys(jobs[head]))
                raise SpecError(f"unknown key {rest!r} for job {head!r}{hint}")
            out[head][rest] = value
            continue
        targets = [name for name, config in jobs.items() if has_key(config, key)]
        if not targets:
            known = sorted({k for config in jobs.values() for k in flat_keys(config)})
            scoped = [f"{name}.{k}" for name, config in jobs.items() for k in flat_keys(config)]
            hint = _hint(key, known + scoped)
            raise SpecError(f"unknown key {key!r}: no job of this DAG ({', '.join(jobs)}) has it{hint}")
        for name in targets:
            out[name][key] = value
    return out
