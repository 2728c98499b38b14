"""MLflow tracking for every method: one experiment per paper, one run per training job (kept across restarts).

Where runs go (ARCHITECTURE §3): ``MLFLOW_TRACKING_URI`` when set (a team's ``mlflow server`` with a Postgres backend
and proxied S3 artefacts), else an embedded SQLite file ``<run root>/mlflow.db`` with artefacts under
``<run root>/mlartifacts``. SQLite is MLflow's default backend since 3.7 and the only local store with a model registry;
the ``./mlruns`` file store is legacy (reliability notes §1 item 9). Nothing is ever written to the working directory:
every experiment we create gets an explicit artefact location, and the registry is always addressed through our own
client (``mlflow.artifacts.download_artifacts("models:/…")`` without ``registry_uri`` silently opens
``./mlflow.db`` in the CWD).

**Migration, once, up front.** A fresh SQLite DB is created by running all of MLflow's alembic migrations (measured
~3.5 s on 2 cores). MLflow's own store does that lazily in *every* process that finds tables missing, so two Ray
workers or Prefect tasks opening a fresh DB race each other (hydraflow#245; notes §2.4 #23). `Tracker.for_run_root`
therefore calls `migrate_tracking_db` in the driver, under an exclusive file lock beside the DB, before any parallel
worker exists; workers then only verify the schema. It does what ``mlflow db upgrade <uri>`` does (create on an empty
DB, upgrade an out-of-date one after copying it to ``mlflow.db.bak-<old revision>``). Scale-out runs use an HTTP
tracking server instead: SQLite under concurrent writers gives "database is locked" (mlflow PR #6490).

**No fluent state.** `Tracker` wraps an `mlflow.MlflowClient` and takes ``run_id`` explicitly, so one process can hold
several runs and a Ray worker can log without ``mlflow.start_run``. mlflow is imported lazily (importing it costs
~3 s), so ``import infra.tracking`` stays cheap for the CLI and for unpickling an `EpochLogger` on a Ray worker.

**Replayed steps.** After a restart, a job replays the steps since its last checkpoint and logs them again with the
same ``step``. MLflow keeps *both* entries (its metric rows are keyed by timestamp and value too); the UI and
``run.data.metrics`` show the latest, and `Tracker.metric_history` reads back one value per step (the latest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from infra.settings import get_settings
from pipelines import storage

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

RUN_KEY_TAG = "vlrepro.run_key"
CONFIG_DIGEST_TAG = "vlrepro.config_digest"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT

# MLflow's limits (mlflow/utils/validation.py, 3.17.2): values longer than these are rejected, not truncated.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
DatasetContext = Literal["training", "evaluation"]
_TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

# Metric/param names may hold letters, digits and ``_ - . / : space`` only; ``R@1`` is rejected by MLflow.
_BAD_KEY_CHARS = re.compile(r"[^\w\-./: ]")
# Run keys go into filter strings between single quotes; MLflow's filter grammar has no escape for them.
_RUN_KEY_PATTERN = re.compile(r"^[\w.:/@+=-]{1,250}$")
_SERVER_SCHEMES = ("http://", "https://", "databricks")


class ConfigMismatchError(ValueError):
    """`Tracker.start_or_resume` found the run for a key, but it was logged with a different config."""


# --------------------------------------------------------------------------------------------------------------------
# Where runs go


def _is_server(uri: str) -> bool:
    return uri.startswith(_SERVER_SCHEMES)


def _local_state_dir(run_root: str) -> Path:
    """Where a *remote* run root keeps its SQLite DB: object stores cannot host a database file (same rule as
    ``flows.runtime.prefect_dir``)."""
    return Path.home() / ".vlrepro" / "mlflow" / run_root.replace("://", "_").replace("/", "_")


def tracking_uri(run_root: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute run root>/mlflow.db``."""
    settings = get_settings()
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    root = settings.run_root if run_root is None else run_root
    db_dir = storage.local_path(root).resolve() if storage.is_local(root) else _local_state_dir(root)
    return f"sqlite:///{db_dir / 'mlflow.db'}"


def artifact_root(run_root: str | None = None, uri: str | None = None) -> str | None:
    """Root for the artefacts of experiments we create: ``<run root>/mlartifacts`` (a ``file://`` URI when local).

    None for a tracking *server*: the server decides (``--artifacts-destination``) and proxies uploads.
    """
    uri = tracking_uri(run_root) if uri is None else uri
    if _is_server(uri):
        return None
    root = get_settings().run_root if run_root is None else run_root
    if storage.is_local(root):
        return (storage.local_path(root).resolve() / "mlartifacts").as_uri()
    return storage.join(root, "mlartifacts")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def migrate_tracking_db(uri: str) -> float:
    """Create or upgrade the tracking DB at `uri` once, before parallel workers touch it; returns seconds spent.

    Same steps as ``mlflow db upgrade`` (empty DB → create tables and run every migration; out-of-date → upgrade),
    but serialised by an exclusive lock file beside the DB so that concurrent callers cannot race (hydraflow#245).
    No-op for servers and non-file URIs. Out-of-date DBs are copied to ``mlflow.db.bak-<revision>`` first, as
    MLflow's docs ask.
    """
    path = _sqlite_path(uri)
    if path is None:
        return 0.0
    start = time.monotonic()
    from mlflow.store.db import utils as db_utils  # `mlflow db upgrade`'s own helpers (mlflow/db.py)

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        engine = db_utils.create_sqlalchemy_engine_with_retry(uri)
        try:
            if db_utils._is_empty_database(engine):
                db_utils._initialize_tables(engine)
            else:
                current, head = db_utils._get_schema_version(engine), db_utils._get_latest_schema_revision()
                if current != head:
                    shutil.copy2(path, path.with_name(f"{path.name}.bak-{current}"))
                    db_utils._upgrade_db(engine)
        finally:
            engine.dispose()
    return time.monotonic() - start


# --------------------------------------------------------------------------------------------------------------------
# Pure helpers: keys, params, digests


def mlflow_key(name: str) -> str:
    """A metric/param name MLflow accepts: ``@`` → ``_at_`` (``t2v/R@1`` → ``t2v/R_at_1``), other bad chars → ``_``."""
    key = _BAD_KEY_CHARS.sub("_", name.replace("@", "_at_"))
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"MLflow key {name!r} must have 1..{MAX_KEY_LENGTH} characters")
    return key


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) <= MAX_PARAM_VALUE_LENGTH:
        return text
    # MLflow rejects longer values; keep a prefix plus a hash so two different long values stay different.
    tail = f"...[sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}]"
    return text[: MAX_PARAM_VALUE_LENGTH - len(tail)] + tail


def flatten_config(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"model.width": "64", ...}`` (dotted keys, string values within MLflow's limits).

    Mappings (and dataclasses) nest; lists and scalars become JSON text (``True`` → ``true``, ``None`` → ``null``) so
    keys do not depend on list lengths. Two keys that sanitise to the same MLflow key are an error.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping or dataclass, got {type(config).__name__}")
    out: dict[str, str] = {}
    for raw_key, value in config.items():
        dotted = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        items = flatten_config(value, dotted) if isinstance(value, Mapping) and value else None
        if items is None:
            items = {mlflow_key(dotted): _param_value(value)}
        for key, text in items.items():
            if key in out:
                raise ValueError(f"config keys collide as MLflow param {key!r}")
            out[key] = text
    return out


def config_digest(params: Mapping[str, str]) -> str:
    """Hash of flattened params: equal digests ⇔ equal configs (stored as a run tag, checked on resume)."""
    blob = json.dumps(sorted(params.items()), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def manifest_digest(rows: Sequence[Mapping[str, Any]]) -> str:
    """Stable hash of a shard manifest's ``(key, status)`` pairs, independent of row order (32 hex characters;
    MLflow caps dataset digests at 36)."""
    try:
        pairs = sorted((str(r["key"]), str(r["status"])) for r in rows)
    except KeyError as err:
        raise ValueError(f"manifest rows need 'key' and 'status' fields (missing {err})") from None
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()[:32]


def _check_run_key(run_key: str) -> str:
    if not _RUN_KEY_PATTERN.match(run_key):
        raise ValueError(f"run key {run_key!r} must match {_RUN_KEY_PATTERN.pattern} (it goes into a filter string)")
    return run_key


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _scalar_column(value: Any) -> Any:
    """Manifest cells for a DataFrame: nested values become JSON text so MLflow's schema inference accepts them."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return json.dumps(value, sort_keys=True, default=str)


@contextlib.contextmanager
def _warnings_silenced() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """Runs, params, metrics, datasets and artefacts through an explicit `MlflowClient` (no fluent global state)."""

    def __init__(self, uri: str, artifact_root: str | None = None) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        #: artefact root for experiments this tracker creates (None: let the server decide)
        self.artifact_root = artifact_root
        self.client: MlflowClient = MlflowClient(tracking_uri=uri, registry_uri=uri)

    @classmethod
    def for_run_root(cls, run_root: str | None = None, migrate: bool = True) -> Tracker:
        """The tracker for a run root (or ``MLFLOW_TRACKING_URI``), migrating an embedded DB first (driver only)."""
        uri = tracking_uri(run_root)
        if migrate:
            migrate_tracking_db(uri)
        return cls(uri, artifact_root(run_root, uri))

    # -- experiments and runs ---------------------------------------------------------------------------------------

    def get_or_create_experiment(self, name: str) -> str:
        """Experiment id for `name` (one per paper), created with an artefact location under our artefact root."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ValueError(f"experiment {name!r} is deleted; restore it in MLflow or pick another name")
            return str(found.experiment_id)
        location = None
        if self.artifact_root is not None:
            location = storage.join(self.artifact_root, re.sub(r"[^\w.-]", "_", name))
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException as err:  # another process created it between our lookup and create
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    def find_runs(self, experiment: str, run_key: str) -> list[Run]:
        """Active runs tagged with `run_key` in any status, oldest first (the first one is the canonical run)."""
        from mlflow.entities import ViewType

        experiment_id = self.get_or_create_experiment(experiment)
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{_check_run_key(run_key)}'",
            run_view_type=ViewType.ACTIVE_ONLY,  # a run someone deleted in the UI is discarded work, not resumed
            max_results=50,
        )
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def start_or_resume(
        self,
        experiment: str,
        run_key: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """The run id for `run_key` in `experiment`: reused (set RUNNING again) if it exists, else created.

        `params` is the whole nested config; it is flattened, tagged with its digest and logged once. Resuming with
        a different config raises `ConfigMismatchError` (MLflow refuses changed param values, and one run must mean
        one config). Params missing from an existing run (a crash while logging) are completed.
        """
        from mlflow.entities import Param, RunTag

        flat = flatten_config(params)
        digest = config_digest(flat)
        user_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        runs = self.find_runs(experiment, run_key)
        if runs:
            run = runs[0]
            self._check_same_config(run, flat, digest, run_key)
            self.client.update_run(run.info.run_id, status="RUNNING")
            extra = {**user_tags, CONFIG_DIGEST_TAG: digest}
        else:
            run = self.client.create_run(
                self.get_or_create_experiment(experiment),
                run_name=run_name,
                tags={**user_tags, RUN_KEY_TAG: run_key, CONFIG_DIGEST_TAG: digest},
            )
            run = self._deduplicate(experiment, run_key, run)
            extra = {}
        run_id = run.info.run_id
        if extra:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in extra.items()])
        missing = [Param(k, v) for k, v in flat.items() if k not in run.data.params]
        for chunk in _chunks(missing, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=list(chunk))
        return run_id

    def _deduplicate(self, experiment: str, run_key: str, mine: Run) -> Run:
        """Two processes that both found no run both create one; both then keep the oldest (notes §2.4 #22)."""
        runs = self.find_runs(experiment, run_key)
        if not runs or runs[0].info.run_id == mine.info.run_id:
            return mine
        log.warning("run key %s: another process created run %s first; using it", run_key, runs[0].info.run_id)
        self.client.delete_run(mine.info.run_id)
        return self.client.get_run(runs[0].info.run_id)

    @staticmethod
    def _check_same_config(run: Run, flat: Mapping[str, str], digest: str, run_key: str) -> None:
        stored = dict(run.data.params)
        changed = sorted(k for k in flat.keys() & stored.keys() if flat[k] != stored[k])
        removed = sorted(stored.keys() - flat.keys())
        added = sorted(flat.keys() - stored.keys())
        stored_digest = run.data.tags.get(CONFIG_DIGEST_TAG)
        if stored_digest == digest or (stored_digest is None and not changed and not removed):
            return
        details = "; ".join(
            f"{label}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
            for label, keys in (("changed", changed), ("removed", removed), ("added", added))
            if keys
        )
        raise ConfigMismatchError(
            f"run key {run_key!r} already has MLflow run {run.info.run_id} logged with a different config "
            f"(digest {stored_digest} != {digest}; {details or 'params differ'}). One run is one config: "
            "use a new run key for a new config, or resume with the original config."
        )

    def finish(self, run_id: str, status: RunStatus = "FINISHED") -> None:
        if status not in _TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {_TERMINAL_STATUSES}, got {status!r}")
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=list(chunk))

    # -- metrics ----------------------------------------------------------------------------------------------------

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log `metrics` at `step` (use the global step, so a replayed step lands on the same x; see module doc).

        Names are passed through `mlflow_key` (``R@1`` → ``R_at_1``).
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=list(chunk))

    def metric_history(self, run_id: str, key: str) -> dict[int, float]:
        """``{step: value}`` for metric `key`, the latest logged value winning on replayed steps."""
        history = self.client.get_metric_history(run_id, mlflow_key(key))
        out: dict[int, float] = {}
        for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
            out[int(m.step)] = float(m.value)
        return out

    def epoch_logger(self, run_id: str) -> EpochLogger:
        return EpochLogger(self.uri, run_id)

    # -- datasets ---------------------------------------------------------------------------------------------------

    def log_dataset(
        self,
        run_id: str,
        rows: Sequence[Mapping[str, Any]],
        source: str,
        name: str,
        context: DatasetContext = "training",
    ) -> str:
        """Log a shard manifest (one row per sample: key, status, ...) as the run's input; returns its digest.

        source = the shard stage URI; digest = `manifest_digest` (keys and statuses). Logging the same
        (name, digest, context) again, e.g. after a restart, is a no-op (notes §2.4 #25).
        """
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        if context not in ("training", "evaluation"):
            raise ValueError(f"context must be 'training' or 'evaluation', got {context!r}")
        digest = manifest_digest(rows)
        if any(d["name"] == name and d["digest"] == digest and d["context"] == context for d in self.datasets(run_id)):
            return digest
        frame = pd.DataFrame([{k: _scalar_column(v) for k, v in r.items()} for r in rows])
        with _warnings_silenced():  # "source can be interpreted in multiple ways", integer-column schema hints
            dataset = from_pandas(frame, source=source, name=name, digest=digest)
            entity = dataset._to_mlflow_entity()  # what mlflow.log_input does (mlflow/tracking/fluent.py)
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag(DATASET_CONTEXT_TAG, context)])])
        return digest

    def datasets(self, run_id: str) -> list[dict[str, Any]]:
        """The run's logged inputs: ``[{"name", "digest", "source", "source_type", "context", "num_rows"}]``."""
        run = self.client.get_run(run_id)
        out = []
        for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
            ds = dataset_input.dataset
            tags = {t.key: t.value for t in dataset_input.tags}
            try:
                source = json.loads(ds.source).get("uri", ds.source)
            except (ValueError, AttributeError):
                source = ds.source
            profile = json.loads(ds.profile) if ds.profile else {}
            out.append(
                {
                    "name": ds.name,
                    "digest": ds.digest,
                    "source": source,
                    "source_type": ds.source_type,
                    "context": tags.get(DATASET_CONTEXT_TAG),
                    "num_rows": profile.get("num_rows"),
                }
            )
        return out

    # -- artefacts --------------------------------------------------------------------------------------------------

    def log_dict(self, run_id: str, obj: Mapping[str, Any] | list[Any], artifact_file: str) -> None:
        """A JSON (``.json``) or YAML (``.yaml``) artefact, e.g. the resolved config or a metrics summary."""
        payload: Any = list(obj) if isinstance(obj, list) else dict(obj)
        self.client.log_dict(run_id, payload, artifact_file)

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_figure(self, run_id: str, figure: Figure, artifact_file: str, close: bool = True) -> None:
        """Save a matplotlib figure as an artefact (e.g. ``plots/recall_t2v.png``) and close it if pyplot owns it."""
        self.client.log_figure(run_id, figure, artifact_file)
        if close and "matplotlib.pyplot" in sys.modules:  # figures from infra.plots are never registered in pyplot
            import matplotlib.pyplot as plt

            plt.close(figure)

    def artifact_uri(self, run_id: str, path: str = "") -> str:
        base = self.client.get_run(run_id).info.artifact_uri
        return storage.join(base, path) if path else str(base)


# --------------------------------------------------------------------------------------------------------------------
# Ray workers and process hygiene

_TRACKERS: dict[str, Tracker] = {}
_TRACKERS_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class EpochLogger:
    """A picklable ``(metrics, step) -> None`` for a Ray rank-0 worker: holds only the URI and the run id.

    The client is built on first call in the worker (and cached per process), never pickled. The driver must have
    migrated the DB first (`Tracker.for_run_root`); an embedded SQLite DB only works for workers on the same host,
    a cluster needs ``MLFLOW_TRACKING_URI`` pointing at a server.
    """

    tracking_uri: str
    run_id: str

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        with _TRACKERS_LOCK:
            tracker = _TRACKERS.get(self.tracking_uri)
            if tracker is None:
                tracker = _TRACKERS[self.tracking_uri] = Tracker(self.tracking_uri)
        tracker.log_metrics(self.run_id, metrics, step)


def epoch_logger(tracking_uri: str, run_id: str) -> Callable[[Mapping[str, float], int], None]:
    """The per-epoch metrics callback to hand to the training loop (see `EpochLogger`)."""
    return EpochLogger(tracking_uri, run_id)


class RunTerminated(SystemExit):
    """Raised inside `run_guard` when the process receives SIGTERM (exit code 143 = 128 + SIGTERM)."""


def _status_for(exc: BaseException | None) -> RunStatus:
    if exc is None:
        return "FINISHED"
    if isinstance(exc, RunTerminated | KeyboardInterrupt):
        return "KILLED"
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "FINISHED"
    return "FAILED"


@contextlib.contextmanager
def run_guard(tracker: Tracker, run_id: str) -> Iterator[str]:
    """Mark the run FINISHED on success, FAILED on an exception, KILLED on SIGTERM or Ctrl-C (notes §2.4 #22).

    MLflow never flips a run whose process died; without this a killed job stays RUNNING forever (mlflow#10510).
    SIGTERM (what Ray, Kubernetes and Prefect cancellation send) is turned into `RunTerminated` while the block runs,
    so the run is closed before the process exits with 143; the previous handler is restored afterwards. Handlers
    can only be installed from the main thread; elsewhere (a Ray worker thread) only exceptions are covered. SIGKILL
    cannot be caught: such runs stay RUNNING until the job's restart resumes them (`Tracker.start_or_resume`).
    """

    def on_sigterm(signum: int, frame: object) -> None:
        raise RunTerminated(128 + signum)

    previous: Any = None
    installed = threading.current_thread() is threading.main_thread()
    if installed:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    error: BaseException | None = None
    try:
        yield run_id
    except BaseException as exc:
        error = exc
        raise
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)
        status = _status_for(error)
        try:
            tracker.finish(run_id, status)
        except Exception:  # the tracking backend being down must not hide the job's own error
            if error is None:
                raise
            log.exception("could not mark MLflow run %s as %s", run_id, status)


__all__ = [
    "CONFIG_DIGEST_TAG",
    "RUN_KEY_TAG",
    "ConfigMismatchError",
    "EpochLogger",
    "RunTerminated",
    "Tracker",
    "artifact_root",
    "config_digest",
    "epoch_logger",
    "flatten_config",
    "manifest_digest",
    "migrate_tracking_db",
    "mlflow_key",
    "run_guard",
    "tracking_uri",
]
