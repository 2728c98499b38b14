"""The one skeleton of a derived stage: committed input shards → per-sample outputs → a committed stage of shards.

Every feature stage (CLIP frame features, TV-L1 flow, two-stream I3D features and their import from released files,
LocVTP's prefix tokens and clip features) is the same loop over `pipelines.shards`::

    plan_stage     _config.json written or checked (`shards.prepare_stage`); one `ShardJob` per shard, keyed like the
                   first input stage (same shard index, same keys); a committed shard whose files no longer match its
                   marker gets ``job.repair`` (so a task cached on its job's dict is not replayed over it)
    run_stage_shard  one shard (`shards.run_shard`): a committed intact shard is skipped, a damaged one is redone,
                   only the inputs that need work reach the stage's function
    commit_derived_stage  ``_stats.json`` last (`shards.commit_stage`), with the stage's name and hash
    run_derived_stage  the three in a row, with the model built lazily and released; returns a `StageRun`

What differs between stages is data, a `DerivedStage`: its hash and URI, its input stages, a per-sample function
(`PerItem`) or a per-shard batch encoder (`BatchEncoder`, for stages that batch frames across videos), and a model
factory called only when some shard needs work (a rerun over a committed stage loads no weights, starts no process
pool). The three steps are separate functions because TV-L1 fans its shards out as parallel tasks (Prefect ``.map``
or Ray tasks, `infra.fanout`): a planner task, one task per `ShardJob`, and a committing task, possibly in three
processes; each rebuilds the (cheap) `DerivedStage` from its JSON arguments.

Input samples are read shard by shard in key order (`in_key_order`): a derived stage keeps its first input's shard
layout, and every input stage of one derived stage shares it (I3D reads frames and TV-L1 flow shard ``i`` side by
side). A sample that an input shard lacks becomes a failed manifest row, never a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from pipelines import shards

M = TypeVar("M")

#: The tar members of one sample: ``{extension: value}`` (``npy`` arrays, ``json`` metadata, ...).
Members = dict[str, Any]
#: What a stage makes of one input: (manifest row with at least "key" and "status", tar members or None if failed).
Item = tuple[dict[str, Any], Members | None]


class Lazy(Generic[M]):
    """A value built on first use (a model, a process pool), so that a run with nothing to compute builds nothing.

    `close` releases the value only if this object built it: a model handed in by the caller stays the caller's.
    """

    def __init__(self, build: Callable[[], M] | None) -> None:
        self._build = build
        self._value: M | None = None
        self._ready = False
        self._owned = False

    @classmethod
    def ready(cls, value: M) -> Lazy[M]:
        """An already-built value (which may be None: TV-L1 without a process pool)."""
        lazy: Lazy[M] = cls(None)
        lazy._value, lazy._ready = value, True
        return lazy

    def __call__(self) -> M:
        if not self._ready:
            if self._build is None:
                raise RuntimeError("this stage has no model to build")
            self._value, self._ready, self._owned = self._build(), True, True
        return cast(M, self._value)

    def close(self, release: Callable[[M], None] | None) -> None:
        if self._owned and release is not None:
            release(cast(M, self._value))
        self._value, self._ready, self._owned = None, False, False


@dataclass(frozen=True)
class Shard(Generic[M]):
    """What a stage's function sees of the shard being computed."""

    index: int
    config_hash: str  # the stage's hash: manifest rows record it
    model: Lazy[M]  # ``shard.model()`` builds it on first use


#: (shard, key, that key's members in each input stage, in `DerivedStage.inputs` order; () for a stage without input
#: stages) → the sample's (row, members). Failures are rows with status "failed" and no members, not exceptions.
PerItem = Callable[[Shard[M], str, tuple[Members, ...]], Item]


@dataclass(frozen=True)
class BatchEncoder(Generic[M]):
    """A stage that encodes all samples of a shard at once (one forward pass over many videos' frames).

    encode: (model, [(key, members of the first input)] in key order) → output members per sample, same order.
    row: (key, output members, seconds per sample, stage hash) → the sample's manifest row.
    """

    encode: Callable[[M, list[tuple[str, Members]]], list[Members]]
    row: Callable[[str, Members, float, str], dict[str, Any]]


@dataclass(frozen=True)
class DerivedStage(Generic[M]):
    """Everything that distinguishes one feature stage from another (module docstring). Give `per_item` or
    `per_batch`; `layout` only for a stage without input stages (imported files)."""

    name: str  # the stage's folder name, e.g. "clip-features"
    uri: str  # <root>/<dataset>/<name>/<config_hash>
    config_hash: str
    config: Mapping[str, Any]  # recorded in _config.json
    inputs: Mapping[str, str] = field(default_factory=dict)  # input name ("frames", "flow") → committed stage URI
    per_item: PerItem[M] | None = None
    per_batch: BatchEncoder[M] | None = None
    model: Callable[[], M] | None = None  # built lazily, once per run, if some shard needs work
    release: Callable[[M], None] | None = None  # frees what `model` built (a process pool's shutdown)
    layout: Mapping[int, Sequence[str]] | None = None  # shard index → keys; None = the first input's committed shards
    commit_extra: Mapping[str, Any] = field(default_factory=dict)  # in _stats.json, beside config_hash and stage
    shard_extra: Mapping[str, Any] = field(default_factory=dict)  # in every shard's marker

    def __post_init__(self) -> None:
        if (self.per_item is None) == (self.per_batch is None):
            raise TypeError(f"{self.name}: give exactly one of per_item / per_batch")
        if self.layout is None and not self.inputs:
            raise TypeError(f"{self.name}: a stage without input stages needs a layout")


@dataclass(frozen=True)
class StageRun:
    """The outcome of `run_derived_stage`: the committed stage's stats and what happened to each shard."""

    uri: str
    config_hash: str
    stats: dict[str, Any]  # the stage's _stats.json
    shards: list[dict[str, Any]]  # `shards.ShardSummary.as_dict` per shard, in shard order
    seconds: float  # wall time of the shard runs and the commit (not of the planning)

    @property
    def shards_written(self) -> int:
        return sum(1 for s in self.shards if s["action"] != "skipped")

    def summary(self, status_counts: bool = False) -> dict[str, Any]:
        """The small dict the feature functions return (and flows pass on)."""
        out: dict[str, Any] = {
            "stage_uri": self.uri,
            "config_hash": self.config_hash,
            "n_samples": self.stats["n_samples"],
        }
        if status_counts:
            out["status_counts"] = self.stats["status_counts"]
        out.update(seconds=round(self.seconds, 3), shards_written=self.shards_written)
        return out


# ----- helpers the stages share -------------------------------------------------------------------------------------


def input_stage_hash(uri: str) -> str:
    """The config hash of a committed input stage (its folder name for stages that did not record one); a derived
    stage's hash includes it, so new inputs never mix with old outputs."""
    stats = shards.require_stage(uri)
    return str(stats.get("config_hash") or Path(uri).name)


def input_layout(uri: str) -> dict[int, list[str]]:
    """{shard index: sorted keys of its usable samples} over the committed shards of stage `uri`."""
    return {
        i: sorted(str(r["key"]) for r in shards.read_rows(uri, i) if r["status"] in shards.OK_STATUSES)
        for i in shards.committed_shards(uri)
    }


def sample_row(key: str, split: str, **fields: Any) -> dict[str, Any]:
    """A manifest row that starts ``key, status="ok", error="", split`` (loaders select training / evaluation
    videos by the split), then `fields` in order (parquet columns follow the first row's key order)."""
    return {"key": key, "status": "ok", "error": "", "split": split, **fields}


def failed(row: Mapping[str, Any], error: str) -> Item:
    """`row` marked failed with `error` (cut to 500 characters), and no members."""
    return {**row, "status": "failed", "error": error[:500]}, None


def in_key_order(
    samples: Iterable[tuple[str, dict[str, Any]]], keys: Sequence[str]
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Yield ``(key, members)`` for each of `keys` in that order from a shard stream (None if it lacks the key).

    Streams when the shard is in key order (it is: shards are written in sorted key order), buffers otherwise.
    """
    wanted = set(keys)
    stream = iter(samples)
    early: dict[str, dict[str, Any]] = {}
    for key in keys:
        while key not in early:
            nxt = next(stream, None)
            if nxt is None:
                break
            if nxt[0] in wanted:
                early[nxt[0]] = nxt[1]
        yield key, early.pop(key, None)


# ----- plan / run one shard / commit --------------------------------------------------------------------------------


def plan_stage(stage: DerivedStage[Any], mode: shards.Mode = "incremental") -> list[shards.ShardJob]:
    """Write or check the stage's ``_config.json``; one job per shard (keys sorted, as shards are written)."""
    layout = stage.layout if stage.layout is not None else input_layout(next(iter(stage.inputs.values())))
    all_keys = sorted(k for keys in layout.values() for k in keys)
    shards.prepare_stage(
        stage.uri, dict(stage.config), stage.config_hash, shards.digest_keys(all_keys), len(all_keys), mode
    )
    damaged = {} if mode == "overwrite" else shards.damaged_shards(stage.uri, layout)
    return [
        shards.ShardJob(
            stage.uri, i, stage.config_hash, tuple({"key": k} for k in sorted(keys)), mode, damaged.get(i, "")
        )
        for i, keys in layout.items()
    ]


def _read_inputs(
    stage: DerivedStage[Any], index: int, keys: Sequence[str]
) -> Iterator[tuple[str, list[Members | None]]]:
    """(key, [its members or None in each input stage]) for `keys` in order, streaming shard `index` of each input."""
    streams = [in_key_order(shards.iter_shard(uri, index), keys) for uri in stage.inputs.values()]
    for key in keys:
        yield key, [next(s)[1] for s in streams]


def _missing(stage: DerivedStage[Any], index: int, key: str, members: Sequence[Members | None]) -> Item:
    meta: Mapping[str, Any] = next((m.get("json", {}) for m in members if m is not None), {})
    name, uri = next((n, u) for (n, u), m in zip(stage.inputs.items(), members) if m is None)
    row = sample_row(key, meta.get("split", ""), label=meta.get("label", ""))
    return failed(row, f"no {name} for {key} in shard {index} of {uri}")


def _per_item(stage: DerivedStage[M], shard: Shard[M], keys: Sequence[str]) -> Iterator[Item]:
    assert stage.per_item is not None
    for key, members in _read_inputs(stage, shard.index, keys):
        if any(m is None for m in members):
            yield _missing(stage, shard.index, key, members)
        else:
            yield stage.per_item(shard, key, tuple(m for m in members if m is not None))


def _per_batch(stage: DerivedStage[M], shard: Shard[M], keys: Sequence[str]) -> Iterator[Item]:
    assert stage.per_batch is not None
    samples = list(_read_inputs(stage, shard.index, keys))  # a shard's worth of inputs: small by design
    present = [(key, ms[0]) for key, ms in samples if ms[0] is not None and all(m is not None for m in ms)]
    outputs: dict[str, Members] = {}
    per = 0.0
    if present:
        start = time.monotonic()
        encoded = stage.per_batch.encode(shard.model(), present)
        per = (time.monotonic() - start) / len(present)
        outputs = {key: out for (key, _), out in zip(present, encoded, strict=True)}
    for key, members in samples:
        if key in outputs:
            yield stage.per_batch.row(key, outputs[key], per, shard.config_hash), outputs[key]
        else:
            yield _missing(stage, shard.index, key, members)


def run_stage_shard(stage: DerivedStage[M], job: shards.ShardJob, model: Lazy[M] | None = None) -> shards.ShardSummary:
    """Compute and commit one shard of `stage` (idempotent; obeys `job.mode`). `model`: shared across the shards of
    a run; without it the stage's own factory is used (lazily) and released after the shard."""
    if job.stage_uri != stage.uri or job.config_hash != stage.config_hash:
        raise ValueError(f"job for {job.stage_uri} ({job.config_hash}) run as {stage.uri} ({stage.config_hash})")
    lazy = model if model is not None else Lazy(stage.model)
    shard = Shard(job.index, job.config_hash, lazy)
    compute = _per_item if stage.per_item is not None else _per_batch

    def process_items(items: Sequence[Mapping[str, Any]]) -> Iterable[Item]:
        return compute(stage, shard, [str(it["key"]) for it in items])

    try:
        return shards.run_shard(job, process_items=process_items, extra_stats=dict(stage.shard_extra) or None)
    finally:
        if model is None:
            lazy.close(stage.release)


def commit_derived_stage(stage: DerivedStage[Any], summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Commit the stage once every shard is (``_stats.json`` last); return its stats."""
    extra = {"config_hash": stage.config_hash, "stage": stage.name, **dict(stage.commit_extra)}
    return shards.commit_stage(stage.uri, summaries, extra=extra)


def run_derived_stage(stage: DerivedStage[M], mode: shards.Mode = "incremental", model: M | None = None) -> StageRun:
    """Plan, run every shard (committed intact shards are skipped: a crashed run resumes where it stopped; damaged
    ones are redone), commit. `model`: an already-built model to use instead of the stage's factory."""
    jobs = plan_stage(stage, mode)
    start = time.monotonic()
    lazy: Lazy[M] = Lazy.ready(model) if model is not None else Lazy(stage.model)
    try:
        summaries = [run_stage_shard(stage, job, lazy).as_dict() for job in jobs]
    finally:
        lazy.close(stage.release)
    stats = commit_derived_stage(stage, summaries)
    return StageRun(stage.uri, stage.config_hash, stats, summaries, time.monotonic() - start)
