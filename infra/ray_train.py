"""The one Ray Train wrapper every method trains through: a `Recipe` from the engine, run by `TorchTrainer`, resumable.

Checkpoint / resume contract (reliability notes §2.3 #16–#21, §3 item 4):

- **Every epoch ends in a checkpoint.** Rank 0 writes ``state.pt`` (the engine's full `Trainer.state_dict()`: model,
  optimiser, scheduler, progress = epoch/step/data position, plus the python/numpy/torch(/cuda) RNG of *every* rank,
  gathered to rank 0, the per-epoch metrics history and a resume counter), ``model.pt`` (the bare model state dict,
  for evaluation and registry) and ``history.json`` into ``<storage_path>/<name>/epoch_NNNN``. All ranks call
  ``ray.train.report`` (it is a barrier); only rank 0 passes the checkpoint. Then every rank waits until Ray has
  *committed* it (registered, run snapshot written): without that wait a rank dying soon after ``report`` can take
  the un-polled report with it and Ray silently restarts from an older checkpoint. Ray keeps
  ``checkpoints_to_keep``.
- **A dead worker** (OOM, segfault, preemption; #16) makes Ray tear down the whole group and restart it, up to
  ``RunSpec.max_failures`` times; the new workers find the last checkpoint through ``ray.train.get_checkpoint()``,
  restore model + optimiser + schedule + position + each rank's RNG, and replay. Batches are a pure function of
  ``(seed, epoch, rank, start)`` (engine contract, #21), so the end result equals an uninterrupted run bit for bit
  on CPU. ``max_failures=0`` is Ray's default and disables this (#16); local mode (``num_workers=0``) would ignore
  it altogether (#19), so this wrapper always runs real workers.
- **A dead driver or cluster** (#17) is recovered by calling `fit` again with the same ``RunSpec(name,
  storage_path)``. Ray Train V2 (2.60) does this by itself: its controller reloads
  ``<storage_path>/<name>/checkpoint_manager_snapshot.json`` and hands the latest checkpoint to the new workers
  (verified by ``tests/infra/test_ray_train.py``; ``resume_from_checkpoint`` is *removed* in V2 — it raises).
  So the run name is the job key: reusing one resumes that job. To make an accidental reuse loud, the driver keeps a
  small run record ``<storage_path>/<name>/vlrepro_run.json`` holding the spec (recipe path, recipe config, number
  of workers); a different spec under the same name is an error, not a silent resume.
- **A finished run is not retrained.** When training completes, the driver stores the `FitResult` in the run record;
  calling `fit` again returns it at once (``reused=True``) without starting Ray.
- **Worker errors surface as `TrainingError`**, whose message names the rank and the original exception type and
  message (Ray's own error text buries them in tracebacks); the Ray error is kept as ``__cause__``.

**Devices** (`ScalingSpec.for_device`): the recipe's ``train.device`` decides the worker group — ``cpu``: CPU workers
and gloo; ``cuda``: one GPU per worker and NCCL (on a private local Ray without enough GPUs an error, never a wait
that cannot end); ``auto`` (the default): GPUs when the cluster has one per worker, else CPUs, so a CPU-only machine
trains exactly as before. Each worker then takes the device Ray gave it (`models.engine.device.resolve_device`).

Workers build their recipe themselves from an importable ``"package.module:function"`` path plus a JSON-able dict, so
nothing large is pickled from the driver and the same call works on a remote cluster (``RAY_ADDRESS``).
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    CheckpointConsistencyMode,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer

from models.engine.device import DEVICES, DeviceUnavailableError, resolve_device
from models.engine.loop import Recipe, Trainer, seed_everything

RecipeFn = Callable[[dict[str, Any]], Recipe]
EpochCallback = Callable[[Mapping[str, float], int], None]

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"
REPORT_FILE = "report.json"  # rank 0's evaluation of an evaluated epoch: {"metrics": {...}, "report": {...}}
RUN_RECORD = "vlrepro_run.json"
_RECORD_VERSION = 1

logger = logging.getLogger(__name__)
_CONNECT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ScalingSpec:
    """How many workers and what each holds: CPUs and gloo, or GPUs and NCCL (``use_gpu``).

    ``use_gpu=True`` asks for GPUs whatever the recipe says; otherwise `fit` decides from the recipe's
    ``train.device`` (`for_device`): ``cpu`` never, ``cuda`` always, ``auto`` when the Ray cluster has a GPU for
    every worker.
    """

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only when use_gpu
    collective_timeout_s: int = 1800  # torch process-group timeout (TorchConfig default); short in tests (#20)

    @property
    def backend(self) -> str:
        """torch.distributed backend of the worker group: NCCL between GPUs, gloo between CPUs."""
        return "nccl" if self.use_gpu else "gloo"

    def to_ray(self) -> ScalingConfig:
        if self.num_workers < 1:
            # num_workers=0 is Ray's local mode, which ignores FailureConfig (#19): never a silent downgrade.
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        resources: dict[str, float] = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu, resources_per_worker=resources)

    def torch_config(self) -> TorchConfig:
        return TorchConfig(backend=self.backend, timeout_s=self.collective_timeout_s)

    def for_device(self, device: str, cluster_gpus: float, can_autoscale: bool = False) -> ScalingSpec:
        """This spec with ``use_gpu`` decided by the recipe's ``train.device`` and the cluster's GPU count.

        ``can_autoscale``: a remote cluster may add GPU nodes on demand, so too few GPUs now only warns; a private
        local Ray never grows, and waiting for GPUs it lacks would hang, so that is an error naming the fix.
        """
        if device not in DEVICES:
            raise ValueError(f"train.device must be one of {', '.join(DEVICES)}; got {device!r}")
        need = self.num_workers * self.gpus_per_worker
        if device == "cpu":
            if self.use_gpu:
                raise ValueError("use_gpu=True contradicts train.device=cpu: drop one of them")
            return self
        if device == "cuda" or self.use_gpu:
            if cluster_gpus < need:
                message = (
                    f"{self.num_workers} GPU worker(s) need {need:g} GPU(s); this Ray cluster has {cluster_gpus:g}"
                )
                if not can_autoscale:
                    raise DeviceUnavailableError(
                        f"train.device={device}: {message}; fix: fewer workers, RAY_ADDRESS of a cluster with GPUs, "
                        "or --set train.device=cpu (or auto)"
                    )
                logger.warning("%s: waiting for the cluster to provide them", message)
            return replace(self, use_gpu=True)
        use_gpu = cluster_gpus >= need  # auto
        if not use_gpu and cluster_gpus > 0:
            logger.warning(
                "train.device=auto: %d worker(s) need %g GPU(s), the cluster has %g: training on CPUs",
                self.num_workers,
                need,
                cluster_gpus,
            )
        return replace(self, use_gpu=use_gpu)


@dataclass(frozen=True)
class RunSpec:
    """Where a training job lives. ``name`` is the job key: the same name on the same storage resumes the job."""

    name: str
    storage_path: str  # local directory or pyarrow/fsspec-style URI (s3://bucket/prefix, gs://…)
    max_failures: int = 1  # worker-group restarts before giving up (Ray's default 0 disables fault tolerance)
    checkpoints_to_keep: int = 2

    def storage_uri(self) -> str:
        """Ray and pyarrow want an absolute local path or a URI."""
        if "://" in self.storage_path:
            return self.storage_path.rstrip("/")
        return os.path.abspath(os.path.expanduser(self.storage_path))


@dataclass
class FitResult:
    metrics: dict[str, float]  # the last epoch's metrics (rank 0; includes eval metrics when that epoch evaluated)
    history: list[dict[str, float]]  # every epoch in order, each exactly once, across worker and driver restarts
    checkpoint_path: str  # the final checkpoint directory (local path or URI)
    state_path: str  # ``model.pt`` inside it: the trained model's state dict
    run_name: str
    # How many times training continued from a checkpoint (worker-group restarts and driver re-launches; a restart
    # before the first checkpoint starts afresh and is not counted).
    resumes: int = 0
    reused: bool = False  # True when `fit` found the run already finished and returned the stored result
    # ``report.json`` in the final checkpoint: the workers' evaluation of the final weights (None for runs recorded
    # before it existed). The driver reads it instead of evaluating again: on a cluster the driver may have no GPU.
    report_path: str | None = None
    # where the workers trained: "cpu" or "cuda" (`ScalingSpec.for_device`), and how many (the ledger's device count)
    device: str = "cpu"
    num_workers: int = 1


class TrainingError(RuntimeError):
    """Training failed on the workers; the message carries each failing rank's original exception."""

    def __init__(self, run_name: str, message: str, worker_failures: Mapping[int, str] | None = None) -> None:
        super().__init__(f"training run {run_name!r} failed: {message}")
        self.run_name = run_name
        self.worker_failures = dict(worker_failures or {})


class RunConflictError(ValueError):
    """The run name already holds a job with a different spec: resuming it would mix two configurations."""


@dataclass(frozen=True)
class _FailureInjection:
    """Test hook: make ``rank`` fail once, after ``batch`` batches of (0-based) ``epoch``.

    ``marker`` is a file created just before failing; when it exists the hook does nothing, so the restarted attempt
    runs through. ``how="exit"`` is a hard kill (``os._exit(1)``, like an OOM kill); ``how="raise"`` raises.
    """

    rank: int
    epoch: int
    batch: int
    marker: str
    how: str = "exit"

    def __post_init__(self) -> None:
        if self.how not in ("exit", "raise"):
            raise ValueError(f"inject_failure how must be 'exit' or 'raise', got {self.how!r}")

    def maybe_fail(self, rank: int, epoch: int, batch_in_epoch: int) -> None:
        if (rank, epoch, batch_in_epoch) != (self.rank, self.epoch, self.batch) or os.path.exists(self.marker):
            return
        Path(self.marker).parent.mkdir(parents=True, exist_ok=True)
        Path(self.marker).write_text(f"rank {rank} epoch {epoch} batch {batch_in_epoch}\n")
        if self.how == "raise":
            raise RuntimeError(f"injected failure on rank {rank} at epoch {epoch} batch {batch_in_epoch}")
        os._exit(1)


# ------------------------------------------------------------------------------------------------------ driver side
def load_recipe_fn(path: str) -> RecipeFn:
    """``"package.module:function"`` → the function (imported here, on the driver, and again on every worker)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"recipe_fn must look like 'package.module:function', got {path!r}")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"{path!r} is not a callable in module {module_name!r}")
    return fn


def connect(ray_address: str | None = None) -> None:
    """Join the cluster at ``ray_address`` / ``RAY_ADDRESS``, else start a private Ray on this host; never
    re-initialise.

    On a cluster the workers import the recipe themselves, so the project must be installed in the cluster's image
    (or shipped with a ``runtime_env``); on this host Ray workers see the driver's working directory.

    A private local Ray is one run's alone, so two runs on one host never meet (`_start_local`).
    """
    with _CONNECT_LOCK:  # a DAG's parallel jobs connect from several threads
        if ray.is_initialized():
            return
        address = ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            _start_local()


#: the local Ray this process started last: its temporary folder (removed at exit)
_OWN: dict[str, str | None] = {"temp_dir": None}


def _start_local() -> None:
    """Start Ray on this host for this process only.

    - ``address="local"``: a new instance, never a `ray start` cluster someone else left here (a bare ``ray.init()``
      would attach to it);
    - its own temporary folder (sockets, session files, logs; under `Settings.ray_temp_parent`) instead of the shared
      ``/tmp/ray``, and its workers' ``RAY_ADDRESS`` pinned to it (`infra.ray_hooks.setup_local_worker`), so nothing
      inside it auto-detects a neighbour (with two instances up, Ray's auto-detection fails with "Found multiple
      active Ray instances"). The driver's own environment is left alone: processes it spawns must not inherit an
      address that dies with it;
    - on 127.0.0.1 only;
    - a small object store (`Settings.ray_object_store_mb`): tasks pass URIs and small summaries, never arrays, and
      Ray's default (30 % of RAM per instance) made two runs on one 24 GiB host run out of memory;
    - no dashboard: without it there is no state API, which Ray Train's placement-group cleaner polls every second,
      logging a warning each time; the hook quiets that one logger in every worker process (and must stay light, see
      infra/ray_hooks.py). Ray counts the CPUs itself (cgroup-aware, unlike os.cpu_count()).
    """
    from ray._private import ray_constants

    from infra.settings import get_settings

    settings = get_settings()
    temp_dir = tempfile.mkdtemp(prefix="ray-vlrepro-", dir=settings.ray_temp_parent)  # short: see the setting
    # On Linux `ray.init` swaps a loopback `_node_ip_address` for the host's routable IP, and every process then listens
    # on all interfaces (GCS, raylet and workers on `::`, the autoscaler monitor on 0.0.0.0; seen with psutil on Ray
    # 2.60). The only switch is the constant behind RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read when ray is imported (an
    # environment variable set here is too late): off, the node IP stays 127.0.0.1 and every process binds loopback.
    # Off only while this init runs: a later `ray.init(address=...)` joining a real cluster needs the routable IP.
    enable_cluster = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
            object_store_memory=settings.ray_object_store_mb * 1024 * 1024,
            runtime_env={
                "worker_process_setup_hook": "infra.ray_hooks.setup_local_worker",
                # one machine has no spot preemptions and no metrics exporter: two fewer polling actors per job on a
                # small CPU budget (each costs ~2-3 % of a core while its job runs)
                "env_vars": {
                    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                    "RAY_TRAIN_METRICS_ENABLED": "0",
                    # each reported checkpoint and the end of a run wait for the controller's next poll (the setting)
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(settings.ray_train_poll_s),
                },
            },
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enable_cluster
    _OWN["temp_dir"] = temp_dir
    atexit.register(_stop_local, temp_dir)


def _stop_local(temp_dir: str) -> None:
    """At exit: stop the private Ray if it is still up, then remove its temporary folder."""
    if _OWN["temp_dir"] == temp_dir and ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def fit(
    recipe_fn: str,
    recipe_config: Mapping[str, Any],
    scaling: ScalingSpec,
    run: RunSpec,
    on_epoch: EpochCallback | None = None,
    ray_address: str | None = None,
    inject_failure: Mapping[str, Any] | None = None,
    restore_rng: bool = True,
) -> FitResult:
    """Train ``recipe_fn(recipe_config)`` on Ray workers until its last epoch; resume the job ``run.name`` if it exists.

    ``on_epoch(metrics, epoch)`` runs on rank 0 inside the worker process after each epoch (epoch counts completed
    epochs, from 1), *before* that epoch's checkpoint: it must be picklable and idempotent, because an epoch whose
    checkpoint was lost is replayed (at-least-once; MLflow metrics logged with ``step=epoch`` overwrite themselves).
    ``inject_failure`` (tests only) takes the fields of `_FailureInjection`. ``restore_rng=False`` exists only as the
    negative control of the resume test.
    """
    build_recipe = load_recipe_fn(recipe_fn)  # fail on the driver, not on every worker, for a typo
    try:
        config = json.loads(json.dumps(dict(recipe_config), sort_keys=True))  # JSON-able, and as stored
    except TypeError as e:
        raise TypeError(f"recipe_config must be JSON-serialisable: {e}") from e
    device = build_recipe(config).train.device  # cheap: recipes load their data lazily
    failure = _FailureInjection(**inject_failure) if inject_failure is not None else None
    scaling_config = scaling.to_ray()  # validates before anything is written
    spec = {"recipe_fn": recipe_fn, "recipe_config": config, "num_workers": scaling.num_workers}

    fs, run_dir = _run_dir(run)
    record = _read_json(fs, f"{run_dir}/{RUN_RECORD}")
    if record is not None:
        if record.get("spec") != spec:
            raise RunConflictError(
                f"run {run.name!r} under {run.storage_uri()} was started with {record.get('spec')}, not {spec}: "
                "use a new run name, or delete that directory to start over"
            )
        if record.get("result") is not None:
            logger.info("run %r already finished: returning its stored result", run.name)
            return FitResult(**record["result"], reused=True)
        logger.info("run %r exists under %s: resuming it from its last checkpoint", run.name, run.storage_uri())
    else:
        _write_json(fs, f"{run_dir}/{RUN_RECORD}", {"version": _RECORD_VERSION, "spec": spec, "result": None})

    connect(ray_address)
    remote = bool(ray_address or os.environ.get("RAY_ADDRESS"))
    scaling = scaling.for_device(device, float(ray.cluster_resources().get("GPU", 0.0)), can_autoscale=remote)
    scaling_config = scaling.to_ray()
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "recipe_fn": recipe_fn,
            "recipe_config": config,
            "on_epoch": on_epoch,
            "failure": failure,
            "restore_rng": restore_rng,
        },
        torch_config=scaling.torch_config(),  # gloo on CPUs, NCCL on GPUs
        scaling_config=scaling_config,
        run_config=RunConfig(
            name=run.name,
            storage_path=run.storage_uri(),
            failure_config=FailureConfig(max_failures=run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=run.checkpoints_to_keep),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise _readable_error(run.name, e) from e
    if result.checkpoint is None:
        raise TrainingError(run.name, "finished without reporting a checkpoint (does the recipe have epochs > 0?)")

    ckpt = result.checkpoint
    saved = json.loads(_read_bytes(ckpt.filesystem, f"{ckpt.path}/{HISTORY_FILE}"))
    checkpoint_uri = _uri(run.storage_uri(), ckpt.path)
    has_report = ckpt.filesystem.get_file_info(f"{ckpt.path}/{REPORT_FILE}").type == pyarrow.fs.FileType.File
    out = FitResult(
        metrics=saved["history"][-1],
        history=saved["history"],
        checkpoint_path=checkpoint_uri,
        state_path=f"{checkpoint_uri}/{MODEL_FILE}",
        run_name=run.name,
        resumes=saved["resumes"],
        report_path=f"{checkpoint_uri}/{REPORT_FILE}" if has_report else None,
        device="cuda" if scaling.use_gpu else "cpu",
        num_workers=scaling.num_workers,
    )
    result_fields = asdict(out)
    result_fields.pop("reused")
    _write_json(fs, f"{run_dir}/{RUN_RECORD}", {"version": _RECORD_VERSION, "spec": spec, "result": result_fields})
    return out


def _readable_error(run_name: str, error: Exception) -> TrainingError:
    """Ray wraps worker exceptions in its own types and tracebacks: name the rank and the original exception."""
    failures: dict[int, str] = {}
    for rank, exc in sorted(getattr(error, "worker_failures", {}).items()):
        cause = getattr(exc, "cause", None)  # RayTaskError carries the user's exception as `.cause`
        original = cause if isinstance(cause, BaseException) else exc
        failures[rank] = f"{type(original).__name__}: {original}"
    if failures:
        detail = "; ".join(f"rank {rank}: {text}" for rank, text in failures.items())
    else:
        detail = f"{type(error).__name__}: {error}"
    return TrainingError(run_name, detail, failures)


# ---------------------------------------------------------------------------------------------------------- storage
def _run_dir(run: RunSpec) -> tuple[pyarrow.fs.FileSystem, str]:
    if not run.name or "/" in run.name or run.name in (".", ".."):  # "..": the run dir would escape storage_path
        raise ValueError(f"run name must be a non-empty path component, got {run.name!r}")
    fs, root = pyarrow.fs.FileSystem.from_uri(run.storage_uri())  # the same resolution Ray's storage uses
    return fs, f"{root.rstrip('/')}/{run.name}"


def _uri(storage_uri: str, fs_path: str) -> str:
    scheme, sep, _ = storage_uri.partition("://")
    return f"{scheme}://{fs_path}" if sep and scheme != "file" else fs_path


def _read_bytes(fs: pyarrow.fs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        data: bytes = f.read()
    return data


def _read_json(fs: pyarrow.fs.FileSystem, path: str) -> dict[str, Any] | None:
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    data: dict[str, Any] = json.loads(_read_bytes(fs, path))
    return data


def _write_json(fs: pyarrow.fs.FileSystem, path: str, data: Mapping[str, Any]) -> None:
    """Write-then-move: a crash mid-write must not leave a truncated record that blocks every later resume."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(data, indent=1).encode())
    fs.move(tmp, path)


# ------------------------------------------------------------------------------------------------------ worker side
def _rng_state() -> dict[str, Any]:
    """This rank's RNGs, in types ``torch.load(weights_only=True)`` accepts."""
    # The *legacy global* numpy RNG is what stray np.random.* calls in a recipe draw from, so it is what we save.
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002
    assert isinstance(np_state, dict)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # dropout on GPU draws from the CUDA generator, not the CPU one
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather_rng(world: int) -> list[dict[str, Any]]:
    """Every rank's RNG state, on every rank (ranks can draw different numbers of random values)."""
    mine = _rng_state()
    if world == 1:
        return [mine]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, mine)
    return states


def _restore(trainer: Trainer, checkpoint: Checkpoint, rank: int, world: int, restore_rng: bool) -> dict[str, Any]:
    with checkpoint.as_directory() as directory:
        saved: dict[str, Any] = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    if saved["world_size"] != world:
        raise RuntimeError(f"checkpoint was written by {saved['world_size']} workers, this run has {world}")
    trainer.load_state_dict(saved["trainer"], restore_rng=restore_rng)
    if restore_rng:
        _set_rng_state(saved["rank_rng"][rank])  # the engine's state has rank 0's torch RNG only
    return saved


def _json_default(value: Any) -> Any:
    """Rank arrays and numpy scalars in an evaluation report → JSON."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return float(value)


def _save_and_report(
    trainer: Trainer,
    history: list[dict[str, float]],
    resumes: int,
    rank: int,
    world: int,
    evaluation: Mapping[str, Any] | None = None,
) -> None:
    rank_rng = _gather_rng(world)  # a collective: every rank, every epoch
    epoch = trainer.progress.epoch
    metrics = history[-1]
    name = f"epoch_{epoch:04d}"  # the same name on every rank (Ray broadcasts rank 0's anyway)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
    else:
        with tempfile.TemporaryDirectory(prefix="vlrepro-ckpt-") as directory:
            state = {
                "trainer": trainer.state_dict(),
                "rank_rng": rank_rng,
                "history": history,
                "resumes": resumes,
                "world_size": world,
            }
            torch.save(state, Path(directory) / STATE_FILE)
            torch.save(trainer.model.state_dict(), Path(directory) / MODEL_FILE)
            (Path(directory) / HISTORY_FILE).write_text(json.dumps({"history": history, "resumes": resumes}))
            if evaluation is not None:
                (Path(directory) / REPORT_FILE).write_text(json.dumps(evaluation, default=_json_default))
            # report() uploads synchronously (CheckpointUploadMode.SYNC), so the temp dir may go afterwards.
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory), checkpoint_dir_name=name)
    # Commit barrier. report() only queues the result in this process; the controller registers the checkpoint
    # once its next poll has collected the report of *every* rank. A rank that dies before being polled takes its
    # queued report with it and the checkpoint is silently lost: the restart begins from the previous one (seen
    # here with 50 ms epochs: a kill in epoch 2 restarted from scratch). Waiting for COMMITTED (the checkpoint is
    # registered and Ray's run snapshot is written) means no rank trains past an epoch whose checkpoint is not
    # durable. Costs up to one controller poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, default 2 s) per epoch.
    ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    recipe = load_recipe_fn(config["recipe_fn"])(config["recipe_config"])
    failure: _FailureInjection | None = config["failure"]
    on_epoch: EpochCallback | None = config["on_epoch"]

    # torch's intra-op threads = the CPUs Ray reserved for this worker. Ray only exports OMP_NUM_THREADS, which OpenMP
    # reads once when it is loaded: anything that imported torch earlier in this process would leave it at the
    # host's core count, and parallel jobs would oversubscribe the CPUs.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    seed_everything(recipe.train.seed)
    # train.device against what Ray gave this worker: a GPU only when the job has use_gpu (`ScalingSpec.for_device`)
    device = resolve_device(recipe.train.device, assigned=ray.train.torch.get_device())
    trainer = Trainer(recipe, recipe.build_model(), rank, world, device=device)
    history: list[dict[str, float]] = []
    resumes = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        saved = _restore(trainer, checkpoint, rank, world, restore_rng=config["restore_rng"])
        history = list(saved["history"])
        resumes = int(saved["resumes"]) + 1
        if rank == 0:
            logger.info("resumed from %s at epoch %d", checkpoint.path, trainer.progress.epoch)

    def on_step(_metrics: Mapping[str, float], _step: int) -> None:
        if failure is not None:
            failure.maybe_fail(rank, trainer.progress.epoch, trainer.progress.batch_in_epoch)

    while trainer.progress.epoch < recipe.train.epochs:
        metrics = trainer.train_epoch(on_step)
        evaluation: dict[str, Any] | None = None
        if trainer.should_evaluate() and rank == 0:  # always at the last epoch: the job's final evaluation
            scores = trainer.evaluate()
            metrics |= scores
            evaluation = {"metrics": scores, "report": getattr(recipe, "last_report", None) or {}}
        history.append(metrics)
        if rank == 0 and on_epoch is not None:
            on_epoch(metrics, trainer.progress.epoch)
        _save_and_report(trainer, history, resumes, rank, world, evaluation)


def read_report(fit_result: FitResult) -> tuple[dict[str, float], dict[str, Any]] | None:
    """The workers' final evaluation ``(metrics, report)`` stored with the final checkpoint, or None."""
    if fit_result.report_path is None:
        return None
    fs, path = pyarrow.fs.FileSystem.from_uri(fit_result.report_path)
    data = json.loads(_read_bytes(fs, path))
    report = dict(data["report"])
    if isinstance(report.get("ranks"), dict):  # plots want arrays
        report["ranks"] = {k: np.asarray(v) for k, v in report["ranks"].items()}
    return {k: float(v) for k, v in data["metrics"].items()}, report


__all__ = [
    "FitResult",
    "RunConflictError",
    "RunSpec",
    "ScalingSpec",
    "TrainingError",
    "connect",
    "fit",
    "load_recipe_fn",
    "read_report",
]
