"""The ingest flow repairs damaged committed shards although its task cache holds the summaries of the intact ones:
the planner flags them (`ShardJob.repair`), which changes their tasks' cache keys (see
``tests/pipelines/test_stage_integrity.py`` for the same damage without Prefect)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import shards
from tests.media import encode, moving_square
from tests.pipelines.test_stage_integrity import damage_stage, folder_of, frames_by_key

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [encode(folder / f"seed{i}.mp4", moving_square(seed=i)) for i in range(5)]


def test_the_flow_repairs_damaged_shards_despite_its_task_cache(clips, tmp_path):
    from flows.ingest import ingest_flow

    src = folder_of(tmp_path / "src", {f"v{i}.mp4": clips[i] for i in range(5)})
    args = (str(src), str(tmp_path / "runs"), "flowdmg", 4.0, 32, 32, 1)
    first = ingest_flow(*args)
    stage = Path(first["stage_uri"])
    want = frames_by_key(first["stage_uri"])
    damage_stage(stage)
    again = ingest_flow(*args)
    got = frames_by_key(again["stage_uri"])  # used to fail: the damaged shards came back from the cache, unrepaired
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert again["shards_repaired"] == 4 and [r["index"] for r in again["redone"]] == [0, 1, 2, 3]
    assert shards.damaged_shards(again["stage_uri"]) == {}
