"""One training job end to end: MLflow run → Ray Train fit → evaluation → plots, dataset input, registry.

Every paper's DAG trains through `run_job`, so the contracts hold for all of them:

- **the job key** (`TrainingJob.run_name`) names the Ray run *and* the MLflow run (tag ``vlrepro.run_key``): relaunching
  the same job resumes Ray from its last checkpoint and keeps **one** MLflow run (reliability notes §2.3 #17, §2.4 #22);
- per-epoch metrics are logged from rank 0 during training (step = epoch); the final evaluation runs on rank 0 at
  the last epoch (where the accelerator is: a cluster's driver may have none), travels in the final checkpoint
  (``report.json``) and is logged here with the ``final/`` prefix (step = epochs), with plots when the recipe reports
  ranks (retrieval: recall@K curve, rank histogram); runs recorded before that are evaluated here on the driver;
- the recipe's input stage manifest is the run's MLflow dataset input;
- the model folder (``model.pt`` + ``job.json`` + recipe exports) is registered as a version of the method's model;
  ``@champion`` moves only when the metric beats the current champion (idempotent per job key);
- a finished job leaves ``<root>/jobs/<run_name>.json``; running it again returns that record without work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from infra import ray_train
from infra.registry import Registry
from infra.settings import get_settings
from infra.tracking import Tracker, run_guard
from models.common.metrics.retrieval import BLOCK_RANKS
from pipelines import shards, storage
from recipes import RECIPES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingJob:
    paper: str  # MLflow experiment: one per paper ("clip4clip", "stan", ...)
    method: str  # registered model name ("clip4clip", "mini-clip", ...)
    recipe: str  # key of `recipes.RECIPES`, or an importable "package.module:function" recipe builder
    config: dict[str, Any]  # the recipe config, fully resolved (JSON-able)
    run_name: str  # the job key: Ray run name and MLflow run key
    root: str  # run root (Ray storage under <root>/ray, models under <root>/models)
    metric: str = "t2v/R@1"  # champion metric, a key of the recipe's evaluation
    higher_is_better: bool = True
    num_workers: int = 1
    use_gpu: bool = False  # True: GPU workers (NCCL) whatever train.device says; else train.device decides
    max_failures: int = 1
    register: bool = True
    dataset_stage: str | None = None  # stage whose manifest is the run's dataset input
    tags: dict[str, str] = field(default_factory=dict)
    cpus_per_worker: float | None = None  # None: the settings' `cpus_per_worker` (jobs run together get a share)

    def __post_init__(self) -> None:
        # A relative root names another folder in a Ray worker or a later process; the edges resolve it
        # (`storage.resolve_root`), so one that reaches here is a bug in the caller, not something to guess at.
        if not storage.is_resolved_root(self.root):
            raise ValueError(f"TrainingJob.root must be absolute or a URI (storage.resolve_root), got {self.root!r}")


def job_record_path(root: str, run_name: str) -> str:
    storage.check_key(run_name)
    return storage.join(root, "jobs", f"{run_name}.json")


def finished_job(root: str, run_name: str) -> dict[str, Any] | None:
    """The record of a finished job, or None when there is none or it can no longer be trusted.

    A record is the job's commit marker, but the model it points at can be gone since (deleted, or recorded as a
    relative path that resolves elsewhere now): such a record is set aside (renamed ``*.stale-<n>.json``) and the job
    runs again — Ray resumes it from its last checkpoint and MLflow keeps its run — instead of returning paths to
    nothing.
    """
    path = job_record_path(root, run_name)
    if not storage.exists(path):
        return None
    try:
        record = storage.read_json(path)
        reason = _stale_record(record)
    except (OSError, ValueError) as exc:
        record, reason = None, f"unreadable ({type(exc).__name__}: {exc})"
    if reason is None and isinstance(record, dict):
        return record
    log.warning("job %s: its record is stale (%s); running the job again", run_name, reason)
    _set_aside(path)
    return None


def _stale_record(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    model_dir = record.get("model_dir")
    if not isinstance(model_dir, str) or not model_dir:
        return "no model_dir"
    if not storage.is_resolved_root(model_dir):
        return f"model_dir {model_dir!r} is a relative path"
    if not storage.exists(storage.join(model_dir, "model.pt")):
        return f"{model_dir}/model.pt is missing"
    return None


def _set_aside(path: str) -> None:
    """Keep a stale record for inspection under a name no reader takes for a record."""
    for n in range(1, 1000):
        dest = path[: -len(".json")] + f".stale-{n}.json"
        if not storage.exists(dest):
            storage.write_bytes_atomic(dest, storage.read_bytes(path))
            break
    storage.remove(path)


@contextlib.contextmanager
def _model_folder(uri: str) -> Iterator[Path]:
    """A local folder for the model files: `uri` itself when it is local; for an object store, a temporary folder
    whose files are uploaded to `uri` (one PUT each) when the block succeeds. The job record, written after, is the
    whole job's commit marker, so a model folder without a record is an unfinished job, rewritten by the rerun."""
    if storage.is_local(uri):
        folder = storage.local_path(uri)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="vlrepro-model-") as tmp:
        staging = Path(tmp)
        yield staging
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            storage.publish_file(path, storage.join(uri, path.relative_to(staging).as_posix()))


def _load_state(path: str) -> dict[str, torch.Tensor]:
    with storage.open_read(path) as fh:
        state = torch.load(fh, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    return state


def _plots(tracker: Tracker, run_id: str, report: dict[str, Any]) -> None:
    ranks = report.get("ranks")
    if not ranks:
        return
    from infra.plots import rank_histogram_figure, recall_curve_figure

    tracker.log_figure(run_id, recall_curve_figure(ranks), "plots/recall_at_k.png")
    tracker.log_figure(run_id, rank_histogram_figure(ranks), "plots/rank_histogram.png")


def _jsonable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its per-query rank arrays (they stay in the checkpoint's ``report.json``)."""
    return json.loads(json.dumps({k: v for k, v in report.items() if k not in ("ranks", BLOCK_RANKS)}, default=float))


def run_job(job: TrainingJob, ray_address: str | None = None) -> dict[str, Any]:
    """Train, evaluate, track and register `job`; idempotent (see module docstring)."""
    done = finished_job(job.root, job.run_name)
    if done is not None:
        return {**done, "reused": True}
    start = time.monotonic()
    recipe_path = RECIPES.get(job.recipe, job.recipe)  # a registered name, or an importable 'module:function'
    tracker = Tracker.for_run_root(job.root)
    run_id = tracker.start_or_resume(
        job.paper,
        job.run_name,
        job.run_name,
        params={"recipe": job.recipe, "config": job.config},
        tags={"vlrepro.method": job.method, "vlrepro.recipe": job.recipe, **job.tags},
    )
    with run_guard(tracker, run_id):
        fit = ray_train.fit(
            recipe_path,
            job.config,
            ray_train.ScalingSpec(
                num_workers=job.num_workers,
                use_gpu=job.use_gpu,
                cpus_per_worker=job.cpus_per_worker or get_settings().cpus_per_worker,
            ),
            ray_train.RunSpec(
                name=job.run_name, storage_path=storage.join(job.root, "ray"), max_failures=job.max_failures
            ),
            on_epoch=tracker.epoch_logger(run_id),
            ray_address=ray_address,
        )
        trained = time.monotonic()
        recipe = ray_train.load_recipe_fn(recipe_path)(job.config)
        model = recipe.build_model()
        model.load_state_dict(_load_state(fit.state_path))
        model.eval()
        worker_eval = ray_train.read_report(fit)
        if worker_eval is not None:  # rank 0 evaluated these very weights at the last epoch
            metrics, report = worker_eval
        else:  # a run recorded before the workers stored their evaluation
            log.info("%s: evaluating the final weights on the driver", job.run_name)
            with torch.no_grad():
                metrics = dict(recipe.evaluate(model))
            report = dict(getattr(recipe, "last_report", None) or {})
        epochs = len(fit.history)
        tracker.log_metrics(run_id, {f"final/{k}": v for k, v in metrics.items()}, step=epochs)
        _plots(tracker, run_id, report)
        if report:
            tracker.log_dict(run_id, _jsonable(report), "evaluation/report.json")
        if job.dataset_stage:
            rows = shards.read_manifest(job.dataset_stage)
            tracker.log_dataset(run_id, rows, source=job.dataset_stage, name=Path(job.dataset_stage).parent.name)
        model_uri = storage.join(job.root, "models", job.run_name)
        with _model_folder(model_uri) as model_dir:
            torch.save(model.state_dict(), model_dir / "model.pt")
            (model_dir / "job.json").write_text(json.dumps(asdict(job), indent=1, sort_keys=True, default=str))
            export = getattr(recipe, "export", None)
            if callable(export):
                export(model, model_dir)
            registered: dict[str, Any] | None = None
            value = metrics.get(job.metric)
            if job.register:
                if value is None:
                    raise KeyError(f"champion metric {job.metric!r} not in the evaluation: {sorted(metrics)}")
                registered = Registry(tracker).register(
                    job.method, run_id, model_dir, job.metric, float(value), job.run_name, job.higher_is_better
                )
    seconds, fit_seconds = time.monotonic() - start, trained - start
    record = {
        "run_name": job.run_name,
        "run_id": run_id,
        "paper": job.paper,
        "method": job.method,
        "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        "report": _jsonable(report) if report else {},
        "history": fit.history,
        "resumes": fit.resumes,
        "device": fit.device,  # where the workers trained (train.device, use_gpu and the cluster's GPUs decide)
        "num_workers": fit.num_workers,
        "checkpoint": fit.checkpoint_path,
        "model_dir": str(model_dir) if storage.is_local(model_uri) else model_uri,
        "registered": registered,
        "seconds": round(seconds, 2),
        "fit_seconds": round(fit_seconds, 2),  # Ray start-up, training, checkpoints, in-worker evaluation
    }
    log.info(
        "%s: done in %.0f s (fit %.0f s, tracking and registry %.0f s)",
        job.run_name,
        seconds,
        fit_seconds,
        seconds - fit_seconds,
    )
    storage.write_json_atomic(job_record_path(job.root, job.run_name), record)
    return {**record, "reused": False}
