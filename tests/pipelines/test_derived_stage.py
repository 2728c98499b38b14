"""The derived-stage skeleton (`pipelines.derived`) on toy stages: a crashed run resumes without recomputing committed
shards, a truncated shard is repaired, the model is built only when some shard needs work, plan / shard / commit run
separately (the fan-out) give the same shards as one run, missing inputs are failed rows, and every feature module
is built on the skeleton rather than on the shard machinery directly."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import derived, shards
from tests.pipelines.test_tvl1 import write_frames_stage

FEATURES = Path(__file__).resolve().parents[2] / "pipelines" / "features"


def toy_videos() -> dict[str, np.ndarray]:
    """Five tiny 'videos' (T, 2, 2, 3) uint8, frame values = video number + frame index."""
    return {f"v{i}": (i + np.arange(2 + i, dtype=np.uint8))[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
            for i in range(5)}  # fmt: skip


class Doubler:
    """A toy per-item stage: npy → 2·npy + the model's offset, counting calls and model builds / releases."""

    def __init__(self, crash_on: str | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.builds = 0
        self.released: list[int] = []
        self.crash_on = crash_on

    def build(self) -> int:
        self.builds += 1
        return 10  # the "model": an offset

    def item(self, shard: derived.Shard[int], key: str, inputs: tuple[derived.Members, ...]) -> derived.Item:
        if key == self.crash_on:
            raise RuntimeError(f"killed while computing {key}")
        self.calls[key] += 1
        (frames,) = inputs
        out = frames["npy"].astype(np.int16) * 2 + shard.model()  # (T, 2, 2, 3)
        row = derived.sample_row(key, frames["json"]["split"], n=len(out), config_hash=shard.config_hash)
        return row, {"npy": out, "json": frames["json"]}

    def stage(self, frames_uri: str, root: Path) -> derived.DerivedStage[int]:
        return derived.DerivedStage(
            name="doubled",
            uri=shards.stage_uri(str(root), "toy", "doubled", "toyhash0001"),
            config_hash="toyhash0001",
            config={"frames_stage": frames_uri},
            inputs={"frames": frames_uri},
            per_item=self.item,
            model=self.build,
            release=self.released.append,
        )


def test_a_crashed_run_resumes_without_recomputing_committed_shards(tmp_path: Path) -> None:
    videos = toy_videos()
    frames_uri = write_frames_stage(tmp_path / "frames", videos, per_shard=2)  # shards {v0,v1} {v2,v3} {v4}
    crashing = Doubler(crash_on="v3")
    with pytest.raises(RuntimeError, match="killed"):
        derived.run_derived_stage(crashing.stage(frames_uri, tmp_path), "incremental")
    uri = crashing.stage(frames_uri, tmp_path).uri
    assert shards.committed_shards(uri) == [0] and shards.stage_stats(uri) is None  # shard 1 died: no stage marker
    assert crashing.released == [10]  # the model it built was released although the run failed

    resumed = Doubler()
    run = derived.run_derived_stage(resumed.stage(frames_uri, tmp_path), "incremental")
    assert [s["action"] for s in run.shards] == ["skipped", "written", "written"]
    assert resumed.calls == Counter({"v2": 1, "v3": 1, "v4": 1})  # v0, v1 were not recomputed
    assert run.stats["n_samples"] == 5 and run.stats["status_counts"] == {"ok": 5} and run.stats["stage"] == "doubled"
    keys, arrays, _ = shards.load_stage(uri)
    assert keys == sorted(videos)
    for k, a in zip(keys, arrays):
        assert np.array_equal(a, videos[k].astype(np.int16) * 2 + 10)
    assert run.summary() == {
        "stage_uri": uri,
        "config_hash": "toyhash0001",
        "n_samples": 5,
        "seconds": run.summary()["seconds"],
        "shards_written": 2,
    }

    again = Doubler()
    rerun = derived.run_derived_stage(again.stage(frames_uri, tmp_path), "incremental")
    assert rerun.shards_written == 0 and again.builds == 0 and not again.calls  # nothing to do: no model built
    given = Doubler()
    derived.run_derived_stage(given.stage(frames_uri, tmp_path), "overwrite", model=3)
    assert given.builds == 0 and given.released == []  # a caller's model is used as is and not released
    assert np.array_equal(shards.load_stage(uri)[1][0], videos["v0"].astype(np.int16) * 2 + 3)


def test_a_truncated_shard_is_planned_for_repair_and_redone_alone(tmp_path: Path) -> None:
    frames_uri = write_frames_stage(tmp_path / "frames", toy_videos(), per_shard=2)
    first = Doubler()
    run = derived.run_derived_stage(first.stage(frames_uri, tmp_path), "incremental")
    tar = Path(run.uri) / "000001.tar"
    good = tar.read_bytes()
    tar.write_bytes(good[:700])

    fixer = Doubler()
    stage = fixer.stage(frames_uri, tmp_path)
    jobs = derived.plan_stage(stage, "incremental")
    assert [bool(j.repair) for j in jobs] == [False, True, False] and "000001.tar has 700 bytes" in jobs[1].repair
    summaries = [derived.run_stage_shard(stage, job).as_dict() for job in jobs]  # the fan-out path, shard by shard
    assert [s["action"] for s in summaries] == ["skipped", "repaired", "skipped"]
    assert fixer.calls == Counter({"v2": 1, "v3": 1}) and fixer.builds == 1 and fixer.released == [10]
    stats = derived.commit_derived_stage(stage, summaries)
    assert stats["n_samples"] == 5 and stats["config_hash"] == "toyhash0001"
    assert tar.read_bytes() == good  # byte-identical to what the first run wrote
    assert shards.verify_shard(run.uri, 1, deep=True) == ""


def test_batches_read_several_inputs_in_step_and_fail_missing_samples(tmp_path: Path) -> None:
    videos = toy_videos()
    frames_uri = write_frames_stage(tmp_path / "frames", videos, per_shard=3)  # shards {v0,v1,v2} {v3,v4}
    # a second input stage with the same layout whose shard 0 lacks v1 (a damaged or foreign stage)
    side = shards.stage_uri(str(tmp_path), "toy", "side", "sidehash01")
    for index, keys in enumerate([["v0", "v2"], ["v3", "v4"]]):
        shards.write_shard(side, index, [(k, {"npy": np.full(1, i, np.int64)}) for i, k in enumerate(keys)], [], {})
    shards.commit_stage(side, [])
    batches: list[list[str]] = []

    def encode(model: int, samples: list[tuple[str, derived.Members]]) -> list[derived.Members]:
        batches.append([k for k, _ in samples])
        return [{"npy": m["npy"].sum(axis=(1, 2, 3)) * model} for _, m in samples]  # (T,): frame sums

    def row(key: str, members: derived.Members, seconds: float, digest: str) -> dict[str, Any]:
        return derived.sample_row(key, "train", t=len(members["npy"]), config_hash=digest)

    stage: derived.DerivedStage[int] = derived.DerivedStage(
        name="sums",
        uri=shards.stage_uri(str(tmp_path), "toy", "sums", "sumhash001"),
        config_hash="sumhash001",
        config={},
        inputs={"frames": frames_uri, "side": side},
        per_batch=derived.BatchEncoder(encode, row),
        model=lambda: 2,
    )
    run = derived.run_derived_stage(stage)
    assert batches == [["v0", "v2"], ["v3", "v4"]]  # one encoder call per shard, over the samples present
    assert run.stats["status_counts"] == {"failed": 1, "ok": 4}
    rows = {r["key"]: r for r in shards.read_manifest(run.uri)}
    assert rows["v1"]["status"] == "failed" and rows["v1"]["error"] == f"no side for v1 in shard 0 of {side}"
    assert rows["v1"]["split"] == "train" and rows["v2"]["t"] == 4 and rows["v2"]["config_hash"] == "sumhash001"
    _, arrays, _ = shards.load_stage(run.uri)
    assert arrays[1].tolist() == [2 * 12 * f for f in range(2, 6)]  # v2: frames 2..5, 12 values each, times 2


def test_every_feature_module_runs_its_stages_through_the_skeleton() -> None:
    """No module in pipelines/features drives the shard machinery itself (prepare / run shard / commit)."""
    forbidden = {"prepare_stage", "commit_stage", "run_shard", "ShardJob"}
    modules = sorted(p for p in FEATURES.glob("*.py") if p.name != "__init__.py")
    assert {p.stem for p in modules} >= {"clip_frames", "i3d", "tvl1", "locvtp_clips"}
    for path in modules:
        tree = ast.parse(path.read_text())
        calls = [
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in forbidden
        ]
        assert calls == [], f"{path.name} calls shards.{calls} directly; use pipelines.derived"
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert "derived" in imports, f"{path.name} does not use pipelines.derived"
