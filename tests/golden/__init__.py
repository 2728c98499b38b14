"""Golden metrics of the tiny DAGs: every job's final metrics, stored once and compared on every run.

The tiny DAGs are deterministic (seeded data, seeded training, one thread per worker), so a refactor that claims to
change no behaviour must leave these numbers where they were. ``VLREPRO_UPDATE_GOLDEN=1`` rewrites a file instead of
comparing (do it only for a change that is meant to move the numbers, and say why in the commit).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
#: a run name's trailing config hash (its config holds absolute paths, so it differs from run to run)
_HASH = re.compile(r"-[0-9a-f]{8,}$")
#: metrics that measure the machine, not the model
_NOT_MODEL = re.compile(r"second|time|throughput|per_s\b")


def job_metrics(root: str | Path, *prefixes: str) -> dict[str, dict[str, float]]:
    """The job records under `root` whose run names start with one of `prefixes` (all without): run name without its
    hash → its final metrics (rounded to 6 decimals)."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted(Path(root, "jobs").glob("*.json")):
        if ".stale-" in path.name or (prefixes and not path.name.startswith(prefixes)):
            continue
        record = json.loads(path.read_text())
        name = _HASH.sub("", record["run_name"])
        assert name not in out, f"two jobs named {name} once their hash is dropped"
        out[name] = {
            k: (round(float(v), 6) if v is not None and math.isfinite(float(v)) else None)
            for k, v in sorted(record["metrics"].items())
            if isinstance(v, (int, float)) or v is None
            if not _NOT_MODEL.search(k)
        }
    return out


def check_golden(name: str, metrics: dict[str, dict[str, float]]) -> None:
    """Compare `metrics` with ``tests/golden/<name>.json`` (or write it, with ``VLREPRO_UPDATE_GOLDEN=1``)."""
    path = HERE / f"{name}.json"
    if os.environ.get("VLREPRO_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        return
    if not path.exists():
        pytest.fail(f"no golden file {path.name}: run once with VLREPRO_UPDATE_GOLDEN=1 and commit it")
    expected = json.loads(path.read_text())
    assert sorted(metrics) == sorted(expected), "the DAG's jobs changed"
    for job, values in expected.items():
        assert sorted(metrics[job]) == sorted(values), f"{job}: metric names changed"
        for key, value in values.items():
            got = metrics[job][key]
            assert (got is None) == (value is None) and (value is None or got == pytest.approx(value, abs=2e-6)), (
                f"{job} {key}: {got} != golden {value}"
            )
