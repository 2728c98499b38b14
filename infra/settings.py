"""Process settings: the one place that reads environment variables.

Everything that depends on the host (where MLflow, Ray and Prefect live; where the run root is) comes from the
environment, read once into a frozen `Settings`. Configs (YAML) describe experiments and never carry addresses or
secrets: credentials stay in the environment (``MLFLOW_TRACKING_TOKEN``, ``AWS_*``) where the client libraries read
them themselves, and are deliberately *not* copied into `Settings`, so they can never be logged as params.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_RUN_ROOT = "runs"


@dataclass(frozen=True)
class Settings:
    """Host-level settings; every field is optional and has an embedded (single-laptop) default."""

    #: ``MLFLOW_TRACKING_URI``: an MLflow server (``http://…``) or DB; None → SQLite under the run root
    mlflow_tracking_uri: str | None = None
    #: ``RAY_ADDRESS``: an existing Ray cluster; None → ``ray.init()`` on this host
    ray_address: str | None = None
    #: ``PREFECT_API_URL``: a Prefect server; None → Prefect's ephemeral in-process API
    prefect_api_url: str | None = None
    #: ``VLREPRO_RUN_ROOT``: local path or fsspec URI holding shards, features, checkpoints, the MLflow DB
    run_root: str = DEFAULT_RUN_ROOT
    #: ``VLREPRO_CPUS_PER_WORKER``: CPUs Ray reserves for each training worker; Ray sets the worker's
    #: ``OMP_NUM_THREADS`` (torch's intra-op threads) to it. 1 leaves room for parallel jobs; a lone job on a small
    #: host (`make demo` on 2 cores) trains faster with all of them.
    cpus_per_worker: float = 1.0
    #: ``VLREPRO_PARALLEL_JOBS``: how many of a DAG's independent training jobs (CLIP4Clip's heads) run at once. They
    #: share ``cpus_per_worker``: each gets ``cpus_per_worker / min(parallel_jobs, jobs)`` CPUs (at least 1), so
    #: ``--cpus-per-worker 2 --parallel-jobs 2`` trains the lone mini-CLIP job on 2 threads and two heads at a time on
    #: 1 thread each (small models use two single-thread processes better than one two-thread process).
    parallel_jobs: int = 1
    #: ``VLREPRO_RAY_OBJECT_STORE_MB``: object store of a local Ray this process starts (not of a cluster). Tasks
    #: pass URIs and small summaries, so 512 MiB is plenty; Ray's default, 30 % of RAM for each instance, is what
    #: made two runs on one host run out of memory.
    ray_object_store_mb: int = 512
    #: ``VLREPRO_RAY_TEMP_PARENT``: folder under which a local Ray this process starts makes its own temporary folder
    #: (``ray-vlrepro-*``, removed at exit). Keep it short: Ray's socket paths under it must fit 107 bytes.
    ray_temp_parent: str = "/tmp"
    #: ``VLREPRO_RAY_TRAIN_POLL_S``: how often the Ray Train controller of a local Ray this process starts polls its
    #: workers. Each reported checkpoint and the end of a run wait for the next poll, so Ray's default (2 s) cost a
    #: tiny three-epoch job ~8 s of its ~18 s (`benchmarks/ray_train_poll.py`); a poll costs milliseconds.
    ray_train_poll_s: float = 0.2

    def job_cpus(self, concurrent_jobs: int) -> float:
        """CPUs per worker for each of `concurrent_jobs` jobs started together (at most `parallel_jobs` run at once)."""
        return Resources(self.cpus_per_worker, self.parallel_jobs).job_cpus(concurrent_jobs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            # An exported-but-empty variable (`MLFLOW_TRACKING_URI=`) means "unset", as in most shells' idiom.
            value = env.get(name, "").strip()
            return value or None

        return cls(
            mlflow_tracking_uri=get("MLFLOW_TRACKING_URI"),
            ray_address=get("RAY_ADDRESS"),
            prefect_api_url=get("PREFECT_API_URL"),
            run_root=get("VLREPRO_RUN_ROOT") or DEFAULT_RUN_ROOT,
            cpus_per_worker=_positive_float("VLREPRO_CPUS_PER_WORKER", get("VLREPRO_CPUS_PER_WORKER") or "1"),
            parallel_jobs=_positive_int("VLREPRO_PARALLEL_JOBS", get("VLREPRO_PARALLEL_JOBS") or "1"),
            ray_object_store_mb=_positive_int(
                "VLREPRO_RAY_OBJECT_STORE_MB", get("VLREPRO_RAY_OBJECT_STORE_MB") or "512"
            ),
            ray_temp_parent=get("VLREPRO_RAY_TEMP_PARENT") or "/tmp",
            ray_train_poll_s=_positive_float(
                "VLREPRO_RAY_TRAIN_POLL_S", get("VLREPRO_RAY_TRAIN_POLL_S") or "0.2", "number of seconds"
            ),
        )


@dataclass(frozen=True)
class Resources:
    """What a DAG's training jobs may use: handed to each flow explicitly (the CLI's ``--cpus-per-worker`` and
    ``--parallel-jobs``, a deployment's parameters), the settings only giving the defaults."""

    cpus_per_worker: float = 1.0  # CPUs Ray reserves for each training worker (its torch threads)
    parallel_jobs: int = 1  # how many of a DAG's independent jobs run at once, sharing `cpus_per_worker`

    def __post_init__(self) -> None:
        if not (isinstance(self.cpus_per_worker, int | float) and math.isfinite(self.cpus_per_worker)):
            raise ValueError(f"cpus_per_worker must be a positive number of CPUs, got {self.cpus_per_worker!r}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be a positive number of CPUs, got {self.cpus_per_worker!r}")
        if not isinstance(self.parallel_jobs, int) or self.parallel_jobs < 1:
            raise ValueError(f"parallel_jobs must be a whole number >= 1, got {self.parallel_jobs!r}")

    @classmethod
    def resolve(cls, cpus_per_worker: float | None = None, parallel_jobs: int | None = None) -> Resources:
        """The given values, the settings' for those not given."""
        settings = get_settings()
        return cls(
            settings.cpus_per_worker if cpus_per_worker is None else float(cpus_per_worker),
            settings.parallel_jobs if parallel_jobs is None else parallel_jobs,
        )

    def job_cpus(self, concurrent_jobs: int) -> float:
        """CPUs per worker for each of `concurrent_jobs` jobs started together (at most `parallel_jobs` run at once)."""
        share = min(self.parallel_jobs, max(1, concurrent_jobs))
        return max(1.0, float(int(self.cpus_per_worker // share))) if share > 1 else self.cpus_per_worker


def _positive_float(name: str, value: str, what: str = "number of CPUs") -> float:
    try:
        out = float(value)
    except ValueError:
        out = -1.0
    if not out > 0:
        raise ValueError(f"{name}={value!r} must be a positive {what}")
    return out


def _positive_int(name: str, value: str) -> int:
    try:
        out = int(value)
    except ValueError:
        out = 0
    if out < 1:
        raise ValueError(f"{name}={value!r} must be a positive whole number")
    return out


_settings: Settings | None = None


def get_settings(reload: bool = False) -> Settings:
    """The process's settings, read from the environment on first use (or again with ``reload=True``, for tests)."""
    global _settings
    if _settings is None or reload:
        _settings = Settings.from_env()
    return _settings
