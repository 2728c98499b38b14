"""The local orchestration stack of one machine (started by `vlrepro serve`, `flows/serve.py`) — Prefect server,
process work pool, workers and an MLflow tracking server — as child processes, stopped together on Ctrl-C.

What it starts, in order (each child in its own session, output in ``<root>/.serve/logs/<name>.log``):

1. ``prefect server start --host 127.0.0.1 --port P`` with ``PREFECT_HOME=<root>/.serve/prefect-home`` (its SQLite
   database lives there), and ``mlflow server`` on the run root's SQLite DB (``<root>/mlflow.db``, migrated once up
   front by `infra.tracking.migrate_tracking_db`) with proxied artefacts under ``<root>/mlartifacts``: the same
   store a laptop run writes, so runs logged before and after the server started sit side by side;
2. once the Prefect API answers ``/api/health``: the ``process`` work pool (created with the process worker's default
   job template if missing) and the zombie-flow automation (``infra/prefect/zombie-flows.automation.json``: a run
   whose heartbeats stop for 90 s is marked ``Crashed``; reliability notes §2.1 #6);
3. ``prefect worker start --pool <pool> --type process`` × ``--workers``, with ``PREFECT_API_URL`` and
   ``MLFLOW_TRACKING_URI`` pointing at the two servers and flow-run heartbeats on
   (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``).

Stopping (Ctrl-C / SIGTERM, or any child dying): workers first, then MLflow, then Prefect; each gets SIGTERM on its
process group and on every descendant seen while it ran (Prefect starts flow-run processes in sessions of their own,
so a group signal alone would orphan them), SIGKILL after a grace period. Children also get SIGTERM from the kernel
if this process dies without cleaning up (Linux ``PR_SET_PDEATHSIG``). A flow run stopped this way is re-triggered
like any crashed run: its deployment, run again with the same parameters, reuses every finished stage
(``infra/OPERATIONS.md``).

Heavy libraries (prefect, mlflow, psutil) are imported inside functions: ``vlrepro --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipelines.procs import with_parent_death_signal  # one implementation, shared with ffmpeg runs

REPO = Path(__file__).resolve().parents[1]
ZOMBIE_AUTOMATION = REPO / "infra" / "prefect" / "zombie-flows.automation.json"
DEFAULT_POOL = "vlrepro-process"


class ServiceError(RuntimeError):
    """A child service did not come up, or died while the stack was running."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (tests; a user picks fixed ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------- one service


@dataclass
class Service:
    """One child process: started in its own session, logged to a file, health-checked over HTTP, stopped as a tree."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    _seen: dict[tuple[int, float], Any] = field(default_factory=dict)  # (pid, create time) → psutil.Process
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the supervisor's watcher thread adds to _seen

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the service, closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603 - argv built here from sys.executable and our own options
            with_parent_death_signal(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # our Ctrl-C reaches only us; we stop the children in order
        )

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def remember_descendants(self) -> None:
        """Record the process tree now: children that outlive their parent are still stopped later."""
        import psutil

        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error), self._lock:
                    self._seen.setdefault((p.pid, p.create_time()), p)
        except psutil.Error:
            pass

    def wait_healthy(self, timeout: float, should_stop: Callable[[], bool] = lambda: False) -> float:
        """Block until the health URL answers 2xx; `ServiceError` (with the log's tail) if the process exits first."""
        assert self.proc is not None and self.health_url is not None
        start = time.monotonic()
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServiceError(f"{self.name} exited with code {rc} while starting:\n{self.log_tail()}")
            if http_ok(self.health_url):
                return time.monotonic() - start
            if should_stop():
                raise KeyboardInterrupt
            if time.monotonic() - start > timeout:
                raise ServiceError(
                    f"{self.name} not healthy at {self.health_url} after {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group and every descendant seen; SIGKILL what is left after `grace` seconds."""
        return self._signal_tree([(signal.SIGTERM, grace), (signal.SIGKILL, 5.0)])

    def kill(self) -> int | None:
        """SIGKILL the group and every descendant seen, at once (what an OOM killer or a lost host does)."""
        return self._signal_tree([(signal.SIGKILL, 10.0)])

    def _signal_tree(self, steps: list[tuple[signal.Signals, float]]) -> int | None:
        import psutil

        if self.proc is None:
            return None
        self.remember_descendants()
        with self._lock:
            procs = list(self._seen.values())
        for sig, wait in steps:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            for p in procs:
                # Only processes outside the group get their own signal: Prefect's CLI escalates a second SIGTERM
                # to SIGKILL. psutil checks the create time, so a reused pid is never signalled.
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getpgid(p.pid) != self.proc.pid:
                        p.send_signal(sig)
            _, alive = psutil.wait_procs(procs, timeout=wait)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0 if alive else wait)
            procs = alive
            if not alive and self.proc.poll() is not None:
                break
        rc = self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def survivors(self) -> list[Any]:
        """Processes of this service's tree (as seen while it ran) that are still running."""
        out = []
        with self._lock:
            seen = list(self._seen.values())
        for p in seen:
            with contextlib.suppress(Exception):
                if p.is_running() and p.status() != "zombie":
                    out.append(p)
        return out


class Supervisor:
    """The child processes of one owner (`vlrepro serve`, a test): trees tracked while they run, stopped together."""

    def __init__(self, log_dir: Path, cwd: Path | None = REPO) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.services: list[Service] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="vlrepro-supervisor", daemon=True)
        self._watcher.start()

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str], health_url: str | None = None) -> Service:
        svc = Service(name, list(argv), dict(env), self.log_dir / f"{name}.log", health_url, cwd=self.cwd)
        svc.start()
        self.services.append(svc)
        return svc

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for svc in list(self.services):
                svc.remember_descendants()

    def check(self) -> None:
        """`ServiceError` if a child exited while it should be up."""
        for svc in self.services:
            rc = svc.returncode()
            if rc is not None:
                raise ServiceError(f"{svc.name} exited with code {rc}:\n{svc.log_tail()}")

    def stop(self, grace: float = 10.0, order: Callable[[Service], Any] | None = None) -> dict[str, int | None]:
        """Stop every service (in `order`, default: last started first); returns each exit code."""
        self._stop.set()
        self._watcher.join(timeout=5)
        services = sorted(self.services, key=order) if order else list(reversed(self.services))
        return {svc.name: svc.stop(grace) for svc in services}

    def survivors(self) -> list[Any]:
        """Every process seen in any tree that still runs (empty after a clean `stop`)."""
        return [p for svc in self.services for p in svc.survivors()]


# ------------------------------------------------------------------------------------------------------ the stack


@dataclass(frozen=True)
class StackConfig:
    root: str = "runs"
    host: str = "127.0.0.1"
    port: int = 4200
    mlflow_port: int = 5000
    pool: str = DEFAULT_POOL
    workers: int = 1  # 0: servers and pool only (start workers yourself, e.g. `--run-once` in tests)
    limit: int = 1  # concurrent flow runs per worker (each run may start Ray workers itself)
    mlflow: bool = True
    ui: bool = True
    prefect_home: str | None = None  # default <root>/.serve/prefect-home
    heartbeat_s: int = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY for flow runs (the automation expects one per 90 s)
    startup_timeout_s: float = 180.0  # a loaded 2-core machine needs ~15–40 s per server


def _child_env(extra: Mapping[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class LocalStack:
    """The processes of `vlrepro serve`; use as a context manager (`stop` always runs)."""

    def __init__(self, cfg: StackConfig) -> None:
        from pipelines import storage

        if not storage.is_local(cfg.root):
            raise ValueError(f"vlrepro serve keeps its state under a local run root, not {cfg.root!r}")
        self.cfg = cfg
        self.root = storage.local_path(cfg.root).resolve()
        self.state = self.root / ".serve"
        self.prefect_home = Path(cfg.prefect_home).resolve() if cfg.prefect_home else self.state / "prefect-home"
        self.api_url = f"http://{cfg.host}:{cfg.port}/api"
        self.ui_url = f"http://{cfg.host}:{cfg.port}"
        self.mlflow_url = f"http://{cfg.host}:{cfg.mlflow_port}" if cfg.mlflow else None
        self.supervisor: Supervisor | None = None

    # -- services ---------------------------------------------------------------------------------------------------

    def _service(self, name: str, argv: list[str], env: dict[str, str], health: str | None = None) -> Service:
        if self.supervisor is None:
            self.supervisor = Supervisor(self.state / "logs")
        return self.supervisor.spawn(name, argv, env, health)

    def _prefect_server(self) -> Service:
        cfg = self.cfg
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", cfg.host, "--port", str(cfg.port)]
        argv += ["--analytics-off", "--ui" if cfg.ui else "--no-ui"]
        env = _child_env(
            {"PREFECT_HOME": str(self.prefect_home), "PREFECT_API_URL": None, "PREFECT_PROFILES_PATH": None}
        )
        return self._service("prefect-server", argv, env, f"{self.api_url}/health")

    def tracking_store(self) -> tuple[str, str]:
        """(backend store URI, artefact destination) of the run root: the files a laptop run writes."""
        from infra.tracking import artifact_root

        uri = f"sqlite:///{self.root / 'mlflow.db'}"
        return uri, str(artifact_root(str(self.root), uri))

    def _mlflow_server(self) -> Service:
        from infra.tracking import migrate_tracking_db

        cfg = self.cfg
        backend, artefacts = self.tracking_store()
        migrate_tracking_db(backend)  # once, here, before the server's workers open the DB (hydraflow#245)
        argv = [sys.executable, "-m", "mlflow", "server", "--host", cfg.host, "--port", str(cfg.mlflow_port)]
        argv += ["--backend-store-uri", backend, "--artifacts-destination", artefacts, "--workers", "1"]
        # No job-runner processes (7 huey consumers in mlflow 3.17, for GenAI jobs we never submit).
        env = _child_env({"MLFLOW_TRACKING_URI": None, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        return self._service("mlflow-server", argv, env, f"{self.mlflow_url}/health")

    def worker_env(self) -> dict[str, str]:
        return _child_env(
            {
                "PREFECT_API_URL": self.api_url,
                "PREFECT_HOME": str(self.prefect_home),
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.cfg.heartbeat_s),
                "MLFLOW_TRACKING_URI": self.mlflow_url or os.environ.get("MLFLOW_TRACKING_URI"),
                "VLREPRO_RUN_ROOT": str(self.root),
            }
        )

    def _worker(self, index: int) -> Service:
        cfg = self.cfg
        name = f"{socket.gethostname()}-{os.getpid()}-{index}"
        argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", cfg.pool, "--type", "process"]
        argv += ["--limit", str(cfg.limit), "--name", name]
        return self._service(f"worker-{index}", argv, self.worker_env())

    # -- API objects ------------------------------------------------------------------------------------------------

    def ensure_pool_and_automation(self) -> dict[str, Any]:
        """Create the process pool and the zombie automation if missing (idempotent); returns what exists."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.events.schemas.automations import AutomationCore
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.workers.process import ProcessWorker

        spec = json.loads(ZOMBIE_AUTOMATION.read_text())
        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            try:
                pool = client.read_work_pool(self.cfg.pool)
            except ObjectNotFound:
                template = ProcessWorker.get_default_base_job_template()
                pool = client.create_work_pool(
                    WorkPoolCreate(name=self.cfg.pool, type="process", base_job_template=template)
                )
            if pool.type != "process":
                raise ServiceError(f"work pool {self.cfg.pool!r} exists with type {pool.type!r}, not 'process'")
            found = client.read_automations_by_name(spec["name"])
            automation_id = found[0].id if found else client.create_automation(AutomationCore.model_validate(spec))
        return {
            "pool": pool.name,
            "pool_type": pool.type,
            "automation": spec["name"],
            "automation_id": str(automation_id),
        }

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self, should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Start everything, wait until healthy; returns the URLs and process ids (see `serve`)."""
        cfg = self.cfg
        ports = [("--port", cfg.port)] + ([("--mlflow-port", cfg.mlflow_port)] if cfg.mlflow else [])
        busy = [f"{opt} {port}" for opt, port in ports if not port_is_free(cfg.host, port)]
        if busy:
            raise ServiceError(f"already in use on {cfg.host}: {', '.join(busy)} (another `vlrepro serve`?)")
        t0 = time.monotonic()
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        prefect = self._prefect_server()
        mlflow = self._mlflow_server() if cfg.mlflow else None  # both start in parallel
        prefect_s = prefect.wait_healthy(cfg.startup_timeout_s, should_stop)
        objects = self.ensure_pool_and_automation()
        mlflow_s = mlflow.wait_healthy(cfg.startup_timeout_s, should_stop) if mlflow else None
        workers = [self._worker(i) for i in range(cfg.workers)]
        backend, artefacts = self.tracking_store() if cfg.mlflow else (None, None)
        return {
            "prefect_api_url": self.api_url,
            "prefect_ui_url": self.ui_url if cfg.ui else None,
            "mlflow_tracking_uri": self.mlflow_url,
            "mlflow_backend_store": backend,
            "mlflow_artifacts": artefacts,
            **objects,
            "workers": len(workers),
            "worker_limit": cfg.limit,
            "pids": {s.name: s.pid for s in self.services},
            "prefect_home": str(self.prefect_home),
            "logs": str(self.state / "logs"),
            "startup_s": {"prefect": round(prefect_s, 1), "mlflow": None if mlflow_s is None else round(mlflow_s, 1)},
            "seconds": round(time.monotonic() - t0, 1),
        }

    @property
    def services(self) -> list[Service]:
        return [] if self.supervisor is None else self.supervisor.services

    def check(self) -> None:
        """`ServiceError` if a child exited while the stack should be up."""
        if self.supervisor is not None:
            self.supervisor.check()

    def stop(self, grace: float = 10.0) -> dict[str, int | None]:
        """Workers first (their flow runs with them), then MLflow, then Prefect; returns each exit code."""
        if self.supervisor is None:
            return {}
        return self.supervisor.stop(
            grace, order=lambda s: (not s.name.startswith("worker"), s.name == "prefect-server")
        )

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
