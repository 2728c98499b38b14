"""Reading committed shards for training: equal steps on every rank, deterministic order, resumable position.

Why not `wds.WebDataset(..., nodesplitter=split_by_node)`: uneven per-rank sample counts make DDP hang at the end of
an epoch (webdataset#225/#250), and with fewer shards than ranks × loader workers some worker gets nothing and the
collective waits forever. Here:

- the committed stage's markers give every shard's sample count *before* reading, so every rank computes the same
  ``steps_per_epoch`` — a lower bound that holds for any assignment of shards to ranks (`equal_steps`);
- each epoch the shard order is a permutation drawn from ``(seed, epoch)``; rank r takes every world-th shard; a
  shuffle buffer seeded by ``(seed, epoch, rank)`` mixes samples; so the batches of ``(epoch, rank)`` are a pure
  function of the seed and can be replayed from any batch index (the data position kept in checkpoints);
- fewer shards than ``world × workers`` is an immediate `InsufficientShardsError` that says how to fix it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from pipelines import shards

T = TypeVar("T")
Sample = tuple[str, dict[str, Any]]


class InsufficientShardsError(ValueError):
    """More ranks × loader workers than shards: some would get no data and the job would hang."""


@dataclass(frozen=True)
class ShardIndex:
    """A committed stage's shards and their sample counts (read from the commit markers, not the tars)."""

    uri: str
    shards: tuple[int, ...]
    counts: tuple[int, ...]
    keys: frozenset[str] | None = None  # only these samples (e.g. the training split); None = all

    @classmethod
    def from_stage(cls, uri: str, keys: set[str] | frozenset[str] | None = None) -> ShardIndex:
        """Counts from the commit markers, or — when restricted to `keys` — from the per-shard parquet rows."""
        shards.require_stage(uri)
        idx = tuple(shards.committed_shards(uri))
        counts = []
        for i in idx:
            if keys is None:
                st = shards.shard_stats(uri, i)
                assert st is not None
                counts.append(int(st["n_samples"]))
            else:
                rows = shards.read_rows(uri, i)
                counts.append(sum(1 for r in rows if r["key"] in keys and r.get("status") in shards.OK_STATUSES))
        kept = [(i, c) for i, c in zip(idx, counts) if c > 0]
        return cls(uri, tuple(i for i, _ in kept), tuple(c for _, c in kept), None if keys is None else frozenset(keys))

    @property
    def n_samples(self) -> int:
        return sum(self.counts)


def check_shards(n_shards: int, world_size: int, num_workers: int = 0) -> None:
    need = world_size * max(1, num_workers)
    if n_shards < need:
        raise InsufficientShardsError(
            f"{n_shards} shard(s) cannot feed {world_size} rank(s) × {max(1, num_workers)} loader worker(s) = {need} "
            "readers; re-ingest with a smaller --samples-per-shard, or use fewer workers"
        )


def equal_steps(counts: Sequence[int], world_size: int, per_rank_batch: int, num_workers: int = 0) -> int:
    """Batches every rank can produce in any epoch: the smallest ``⌊S/world⌋`` shards (per worker) in batches."""
    check_shards(len(counts), world_size, num_workers)
    readers = max(1, num_workers)
    shards_per_reader = len(counts) // (world_size * readers)
    smallest = sorted(counts)[:shards_per_reader]
    return (sum(smallest) // per_rank_batch) * readers if num_workers else sum(smallest) // per_rank_batch


def rank_shards(index: ShardIndex, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This rank's shards for `epoch`: a (seed, epoch) permutation, every world-th entry from `rank`."""
    check_shards(len(index.shards), world_size)
    perm = np.random.default_rng([seed, epoch]).permutation(len(index.shards))
    return [index.shards[i] for i in perm[rank::world_size]]


#: decoded shards kept in this process, by (stage URI, shard): training reads the same shards every pass, and a
#: features stage (the mini world's: 12 MB) decodes slower than the step it feeds. Bounded by ``VLREPRO_SHARD_CACHE_MB``
#: (default 1024; 0 disables): once full, further shards stream from storage as before. An entry is keyed by the shard's
#: commit marker too, so a shard rewritten in place (ingest ``--mode overwrite``) is read afresh.
_SHARD_CACHE: dict[tuple[str, int, str], list[Sample]] = {}
_SHARD_CACHE_BYTES = [0]


def cache_budget_bytes() -> int:
    return int(float(os.environ.get("VLREPRO_SHARD_CACHE_MB", "1024")) * 2**20)


def _nbytes(members: dict[str, Any]) -> int:
    return sum(v.nbytes if isinstance(v, np.ndarray) else 256 for v in members.values())


def shard_samples(uri: str, index: int) -> Iterator[Sample]:
    """One shard's decoded samples in order, from the process cache when it holds them (arrays are read-only there:
    every consumer indexes or copies them, none may write)."""
    entry = (uri, index, json.dumps(shards.shard_stats(uri, index), sort_keys=True))
    cached = _SHARD_CACHE.get(entry)
    if cached is not None:
        yield from cached
        return
    budget = cache_budget_bytes()
    kept: list[Sample] | None = [] if _SHARD_CACHE_BYTES[0] < budget else None
    size = 0
    for key, members in shards.iter_shard(uri, index):
        if kept is not None:
            for v in members.values():
                if isinstance(v, np.ndarray):
                    v.setflags(write=False)
            kept.append((key, members))
            size += _nbytes(members)
        yield key, members
    if kept is not None and _SHARD_CACHE_BYTES[0] + size <= budget:  # only whole shards, read to the end
        _SHARD_CACHE[entry] = kept
        _SHARD_CACHE_BYTES[0] += size


def clear_shard_cache() -> None:
    _SHARD_CACHE.clear()
    _SHARD_CACHE_BYTES[0] = 0


def iter_samples(
    uri: str, shard_ids: Sequence[int], rng: np.random.Generator | None = None, buffer: int = 256
) -> Iterator[Sample]:
    """Samples of the given shards in order, mixed through a shuffle buffer when `rng` is given."""
    stream = (s for i in shard_ids for s in shard_samples(uri, i))
    if rng is None:
        yield from stream
        return
    pool: list[Sample] = []
    for sample in stream:
        pool.append(sample)
        if len(pool) >= buffer:
            yield pool.pop(int(rng.integers(len(pool))))
    while pool:
        yield pool.pop(int(rng.integers(len(pool))))


def batched(items: Iterator[T], size: int) -> Iterator[list[T]]:
    """Full batches only (a trailing partial batch is dropped, as equal steps require)."""
    batch: list[T] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []


@dataclass(frozen=True)
class EpochPlan:
    """Deterministic batches of one stage for (epoch, rank): what a recipe's `batches()` delegates to."""

    index: ShardIndex
    global_batch: int
    seed: int
    buffer: int = 256

    def per_rank_batch(self, world_size: int) -> int:
        if self.global_batch % world_size:
            raise ValueError(f"global batch {self.global_batch} is not divisible by {world_size} ranks")
        return self.global_batch // world_size

    def steps(self, world_size: int) -> int:
        return equal_steps(self.index.counts, world_size, self.per_rank_batch(world_size))

    def batches(
        self,
        epoch: int,
        rank: int,
        world_size: int,
        collate: Callable[[list[Sample], np.random.Generator], T],
        start: int = 0,
    ) -> Iterator[T]:
        """Exactly `steps(world_size)` collated batches, skipping the first `start` (replay from a data position).

        `collate` gets the samples and a generator seeded by (seed, epoch, rank, batch index), so random choices
        (caption, frame offsets) are reproducible and independent of where a resumed run starts.
        """
        n = self.steps(world_size)
        mix = np.random.default_rng([self.seed, epoch, rank, 1])
        stream = iter_samples(
            self.index.uri, rank_shards(self.index, self.seed, epoch, rank, world_size), mix, self.buffer
        )
        # A shard may mix splits (the stage is written in input order): the index counts only its keys, so the stream
        # must keep only them too — otherwise test videos would leak into training.
        keys = self.index.keys
        samples = stream if keys is None else (s for s in stream if s[0] in keys)
        for i, group in enumerate(batched(samples, self.per_rank_batch(world_size))):
            if i >= n:
                break
            if i < start:
                continue
            yield collate(group, np.random.default_rng([self.seed, epoch, rank, 2, i]))


def load_all(uri: str, ext: str = "npy") -> tuple[list[str], list[np.ndarray], list[dict[str, Any]]]:
    """Every sample of a committed stage in key order (evaluation sets; small stages)."""
    return shards.load_stage(uri, ext)
