"""Training readers over a stage whose shards mix splits: only the requested keys may reach a batch.

Stages are written in input order, so a shard can hold the last test videos and the first training videos (the
mini-retrieval features stage does: shard 1 = 88 test + 40 train). The index counts only the training keys per shard;
the stream must drop the others, or test videos leak into training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import loaders, shards
from pipelines.datasets.retrieval_data import RetrievalData, RetrievalDataConfig
from pipelines.loaders import EpochPlan, ShardIndex


def _mixed_stage(root: Path) -> tuple[str, set[str], set[str]]:
    """3 shards of 6: test videos t00..t07 first, then train videos r00..r09 (shard 1 mixes both)."""
    uri = str(root / "stage")
    keys = [f"t{i:02d}" for i in range(8)] + [f"r{i:02d}" for i in range(10)]
    summaries = []
    for s in range(3):
        chunk = keys[6 * s : 6 * s + 6]
        rows = [{"key": k, "split": "test" if k[0] == "t" else "train", "status": "ok"} for k in chunk]
        samples = [
            (k, {"npy": np.full((4, 3), i, np.float32), "json": {"split": r["split"], "captions": [f"caption {k}"]}})
            for i, (k, r) in enumerate(zip(chunk, rows))
        ]
        stats = {"n_samples": len(chunk), "status_counts": {"ok": len(chunk)}}
        shards.write_shard(uri, s, samples, rows, stats)
        summaries.append(stats)
    shards.commit_stage(uri, summaries)
    return uri, {k for k in keys if k[0] == "r"}, {k for k in keys if k[0] == "t"}


def test_epoch_plan_streams_only_the_index_keys(tmp_path: Path) -> None:
    uri, train, _ = _mixed_stage(tmp_path)
    index = ShardIndex.from_stage(uri, keys=train)
    assert (index.shards, index.counts) == ((1, 2), (4, 6))  # shard 0 holds no training video
    plan = EpochPlan(index, global_batch=2, seed=0, buffer=4)
    for epoch in range(6):  # several shard permutations: shard 1 (mixed) first and last
        got = [k for b in plan.batches(epoch, 0, 1, collate=lambda g, rng: [k for k, _ in g]) for k in b]
        assert len(got) == 2 * plan.steps(1) == 10
        assert set(got) == train  # every training video once per pass, no test video
    # resuming from a data position replays the same batches
    full = list(plan.batches(3, 0, 1, collate=lambda g, rng: [k for k, _ in g]))
    assert list(plan.batches(3, 0, 1, collate=lambda g, rng: [k for k, _ in g], start=2)) == full[2:]


def test_retrieval_training_batches_hold_no_test_video(tmp_path: Path) -> None:
    uri, train, test = _mixed_stage(tmp_path)
    data = RetrievalData(RetrievalDataConfig(stage=uri, max_frames=4, repeats_per_epoch=2), global_batch=2, seed=1)
    seen = [k for epoch in range(3) for b in data.batches(epoch, 0, 1) for k in b["keys"]]
    assert len(seen) == 3 * data.steps_per_epoch(1) * 2
    assert set(seen) == train and not set(seen) & test
    assert sorted(data.eval_set().keys) == sorted(test)


def test_decoded_shard_cache_replays_the_same_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second pass comes from memory (no tar is opened) and equals the first; arrays there are read-only; a
    shard rewritten in place is read afresh; a zero budget caches nothing."""
    uri, train, _ = _mixed_stage(tmp_path)
    loaders.clear_shard_cache()
    plan = EpochPlan(ShardIndex.from_stage(uri, keys=train), global_batch=2, seed=0, buffer=4)

    def keys_of(epoch: int) -> list[list[str]]:
        return list(plan.batches(epoch, 0, 1, collate=lambda g, rng: [k for k, _ in g]))

    first = [keys_of(e) for e in range(3)]
    opened: list[int] = []
    real = shards.iter_shard
    monkeypatch.setattr(shards, "iter_shard", lambda u, i, **kw: opened.append(i) or real(u, i, **kw))
    assert [keys_of(e) for e in range(3)] == first and opened == []
    sample = next(loaders.shard_samples(uri, 2))
    with pytest.raises(ValueError, match="read-only"):
        sample[1]["npy"][0, 0] = 1.0
    # rewrite shard 2 in place with new values: its new commit marker misses the cache
    rows = [{"key": f"r{i:02d}", "split": "train", "status": "ok"} for i in range(4, 10)]
    new = [(r["key"], {"npy": np.full((4, 3), 7.0, np.float32), "json": {"split": "train"}}) for r in rows]
    shards.write_shard(uri, 2, new, rows, {"n_samples": 6, "status_counts": {"ok": 6}, "rewritten": True})
    assert all(m["npy"][0, 0] == 7.0 for _, m in loaders.shard_samples(uri, 2)) and opened == [2]
    loaders.clear_shard_cache()
    monkeypatch.setenv("VLREPRO_SHARD_CACHE_MB", "0")
    list(loaders.shard_samples(uri, 1))
    list(loaders.shard_samples(uri, 1))
    assert opened == [2, 1, 1]
