"""What the retrieval DAG (`flows.retrieval.run`) reads on a downloaded benchmark instead of the mini world: the
dataset's adapter → a sources CSV under the run root → the ingest at the spec's frame rate and size → the frame
features when CLIP is frozen; and the run's **reproduction ledger**.

``vlrepro reproduce clip4clip --dataset msrvtt --data-dir DIR`` runs the same DAG body as the mini world; only its
inputs differ (no generated world, no mini CLIP: the spec's CLIP with real weights, ``model.clip.pretrained``):

1. ``benchmark-sources`` (`pipelines.datasets.benchmark_sources`): the official files under ``--data-dir``, the
   videos of the spec's ``data.train_split`` / ``data.eval_split`` under ``--video-dir`` (default: the data folder),
   one CSV row per found video, written as ``<root>/<dataset>/sources/sources-<digest>.csv``;
2. `flows.ingest.ingest_flow` of that CSV into ``<root>/<dataset>/frames/<config-hash>/``: content-identified rows,
   shared by every paper run on the same root with the same frame settings (the three retrieval specs share them);
3. ``extract-clip-features`` only when the chosen variants read a frozen CLIP's features (``model.input`` other than
   ``pixels``; the papers train end to end, so never by default).

Missing or broken videos never stop a run: each is a row of the ledger (id, split, status, reason, whether its
frames are used), written beside the sources CSV before training, returned in the result, and logged on the run's
MLflow summary run (``ledger.json``) with the results and paper-vs-ours (`log_reproduction`); the ledger also says how
many videos and queries the evaluated gallery really holds beside the protocol's number (1k-A: 1,000).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect import task

from flows.ingest import ingest_flow
from flows.runtime import is_transient
from infra.summaries import MiniClip, StageRef
from pipelines import storage
from pipelines.datasets import registry
from recipes.experiments.retrieval import ingest_settings
from recipes.spec import PaperSpec


@dataclass(frozen=True)
class Inputs:
    """What the DAG's jobs read, whichever data it runs on (`flows.retrieval.run`)."""

    key: str  # the dataset key: stage folders and job names (``msrvtt``; ``mini-retrieval-small-s0``)
    frames: str  # the ingest's frames stage
    stage: str  # the stage the jobs read: the frames (pixel input) or a frozen CLIP's features
    subsets: dict[str, list[str]]  # evaluation subsets (the mini world's order twins; none on a benchmark)
    report: dict[str, Any]  # what the DAG reports of its inputs (stages, the mini CLIP, the ledger)
    mini_clip: MiniClip | None = None  # the mini CLIP the jobs start from; None: the spec's own CLIP
    ledger: dict[str, Any] | None = None  # a benchmark's reproduction ledger (None on the mini world)


def is_benchmark(dataset: str) -> bool:
    """Whether `dataset` names a downloaded retrieval benchmark (`pipelines.datasets.registry`), not a mini world."""
    try:
        return registry.KIND.get(registry.canonical(dataset)) == "retrieval"
    except registry.UnknownDataset:
        return False


def registered_model(spec: PaperSpec, size: str, default: str) -> str:
    """The registered model of a benchmark run: ``<paper>-<dataset>`` (a champion on MSR-VTT is not comparable with
    one on the mini world or on DiDeMo), ``…-<size>`` for any size but the paper's (a smoke run's random tiny CLIP
    must never become the champion of the paper's configuration)."""
    return f"{spec.paper}-{spec.dataset}" + ("" if size == default else f"-{size}")


@task(name="benchmark-sources", retries=1, retry_condition_fn=is_transient)
def benchmark_sources(
    dataset: str, data_dir: str, video_dir: str | None, train_split: str, eval_split: str, folder: str
) -> dict[str, Any]:
    """The benchmark's ingest rows and unusable videos (`pipelines.datasets.benchmark_sources`) and its sources CSV
    written under `folder`. Not cached: the download may change between runs (the ingest is, by content)."""
    from pipelines.datasets import benchmark_sources as bs

    sources = bs.benchmark_sources(dataset, data_dir, video_dir, train_split, eval_split)
    csv = bs.write_csv(sources, folder) if sources.rows else None
    return {"sources_csv": None if csv is None else str(csv), "sources": sources.as_dict()}


@task(name="log-reproduction", retries=1, retry_condition_fn=is_transient)
def log_reproduction(
    root: str, paper: str, dataset: str, jobs: list[str], results: dict[str, Any], ledger: dict[str, Any]
) -> dict[str, Any]:
    """The run's MLflow summary run in the paper's experiment (tag ``vlrepro.kind=reproduction``; same jobs ⇒ same
    run on rerun): results and paper-vs-ours in the one schema (`infra.results`), every variant's metrics, the gallery
    size, and the ledger as ``ledger.json``."""
    from infra.jobs import run_name
    from infra.results import log_summary_run
    from infra.tracking import Tracker

    key = run_name(paper, sorted(jobs), part="reproduction", data=dataset)
    metrics = {
        f"{variant}/{name}": value
        for variant, block in (results.get("variants") or {}).items()
        for name, value in (block.get("metrics") or {}).items()
    }
    gallery = ledger["gallery"]
    metrics.update({"gallery/evaluated": gallery["evaluated"], "gallery/queries": gallery["queries"]})
    run_id = log_summary_run(
        root,
        paper,
        key,
        dataset=dataset,
        jobs=jobs,
        kind="reproduction",
        results=results,
        metrics=metrics,
        paper_vs_ours=results.get("paper_vs_ours"),
    )
    Tracker.for_run_root(root).log_dict(run_id, ledger, "ledger.json")
    return {"run_id": run_id, "run_key": key}


def benchmark_inputs(
    spec: PaperSpec,
    features: Callable[[list[dict[str, Any]]], dict[str, Any]],
    wanted: Sequence[dict[str, Any]],
    root: str,
    size: str,
    data_dir: str | None,
    video_dir: str | None,
    extract: Any,
) -> Inputs:
    """A benchmark's inputs for the jobs whose configs are `wanted` (their splits, input mode and CLIP); `features`
    is the paper's request for a frozen CLIP's features, `extract` the DAG's cached ``extract-clip-features`` task."""
    if not data_dir:
        raise ValueError(f"{spec.dataset} is a downloaded benchmark: give its folder (--data-dir DIR)")
    dataset = registry.canonical(spec.dataset)
    train_split = _agreed(wanted, "data", "train_split")
    eval_split = _agreed(wanted, "data", "eval_split")
    # Ray starts here, in the main thread, as in the mini world's DAG: started from a task thread, its node agents
    # would outlive the process
    from infra.ray_train import connect

    connect()
    folder = storage.join(root, dataset, "sources")
    # the ingest reads a local CSV (the videos are local files too): under a local run root, else in a temporary folder
    local = str(storage.local_path(folder)) if storage.is_local(folder) else tempfile.mkdtemp(prefix="vlrepro-src-")
    found = benchmark_sources(dataset, data_dir, video_dir, train_split, eval_split, local)
    from pipelines import shards
    from pipelines.datasets import benchmark_sources as bs

    sources = bs.Sources.from_dict(found["sources"])
    if found["sources_csv"] is None:
        ledger = bs.ledger(sources, [], train_split, eval_split)
        _write_ledger(folder, ledger)
        raise ValueError(
            f"no video of {dataset}'s {train_split} or {eval_split} split was found under {sources.video_dir} "
            f"({len(ledger['rows'])} annotated videos; give --video-dir where the videos are)"
        )
    frames = StageRef.of(ingest_flow(found["sources_csv"], root, dataset, **ingest_settings(spec, size)))
    ledger = bs.ledger(sources, shards.read_manifest(frames.uri), train_split, eval_split)
    path = _write_ledger(folder, ledger)
    usable = ledger["splits"]
    for split in (train_split, eval_split):
        if not usable[split]["usable"]:
            raise ValueError(f"no usable video in {dataset}'s {split} split (the ledger: {path})")
    stage, features_stage = frames.uri, None
    if _agreed(wanted, "model", "input") != "pixels":  # a frozen CLIP: its features once, shared by the jobs
        clip = _agreed(wanted, "model", "clip")
        features_stage = StageRef.of(
            extract(frames.uri, root, dataset, clip["arch"], clip["pretrained"], **features(list(wanted)))
        ).uri
        stage = features_stage
    summary = {
        "path": path,
        "gallery": ledger["gallery"],
        "splits": {s: {k: v for k, v in c.items() if k != "source"} for s, c in ledger["splits"].items()},
        "counts": ledger["counts"],
        "rows": ledger["rows"],
    }
    report = {"frames_stage": frames.uri, "features_stage": features_stage, "ledger": summary}
    return Inputs(key=dataset, frames=frames.uri, stage=stage, subsets={}, report=report, ledger=ledger)


def _agreed(configs: Sequence[Mapping[str, Any]], section: str, name: str) -> Any:
    """``config[section][name]``, the same in every one of `configs` (the jobs share one frames stage and features)."""
    values = {json.dumps(c[section][name], sort_keys=True) for c in configs}
    if len(values) != 1:
        raise ValueError(f"the chosen variants disagree on {section}.{name} ({sorted(values)}): run them separately")
    return configs[0][section][name]


def _write_ledger(folder: str, ledger: Mapping[str, Any]) -> str:
    """``<folder>/ledger-<digest>.json``: named by its content, so the same data and splits give the same file."""
    digest = hashlib.sha256(json.dumps(ledger, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = storage.join(folder, f"ledger-{digest}.json")
    storage.write_json_atomic(path, dict(ledger))
    return path
