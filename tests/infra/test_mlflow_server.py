"""The team's MLflow server, for real on loopback: Postgres backend store, artefacts proxied to S3 (a moto server).

The server is started by the shipped launcher `infra/mlflow/serve.sh` with its configuration in the environment only
(reliability notes §2.4 #23, Table 2 "Experiment tracking server", "Model registry"). Postgres 15 runs from the
Debian server binaries as the ``postgres`` user in a temporary folder, on a free port, with its socket in that folder;
where it cannot run, the test logs why and uses a SQLite backend store instead (the same assertions hold). Then, with
``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>`` and *no* S3 credentials in the client (artefacts go through the
server), `infra.registry.Registry` registers two versions of a tiny mini-CLIP, moves ``@champion`` to the better one,
and evaluation loads ``models:/<name>@champion``: the same weights and the same metrics as before registration.
Every process started here is stopped in teardown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.pipelines.test_s3_storage import BUCKET, free_port, moto_server, object_keys

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "infra" / "mlflow" / "serve.sh"
MODEL = "vlrepro-tiny-miniclip"
METRIC = "frame2caption/MnR"  # mean rank: lower is better, and continuous enough that two random models differ

pytestmark = [pytest.mark.slow]


class BackendUnavailable(RuntimeError):
    """Postgres cannot run here (no binaries, no postgres user, initdb or start failed)."""


def _pg_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise BackendUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) found")


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise BackendUnavailable("running as root and there is no 'postgres' user to run the server as") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise BackendUnavailable("running as root without runuser(1) to drop to the 'postgres' user")
    return [runuser, "-u", "postgres", "--", *argv]


def _run(argv: list[str], timeout: float) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        program = next((Path(a).name for a in argv if a.endswith(("/initdb", "/pg_ctl"))), argv[0])
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-3:]
        raise BackendUnavailable(f"{program} exited with {exc.returncode}: {tail}") from exc
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, float]]:
    """A throw-away Postgres on 127.0.0.1 with a database ``mlflow``: yields (SQLAlchemy URI, start seconds).

    Raises `BackendUnavailable` before yielding if it cannot start. Trust authentication is acceptable only because
    it listens on loopback in a test; a real deployment uses a password from PGPASSWORD / ~/.pgpass.
    """
    start = time.monotonic()
    bindir = _pg_bindir()
    # Directly under /tmp, not in pytest's tmp_path (or $TMPDIR): the postgres user cannot enter root's 0700 folders.
    folder = Path(tempfile.mkdtemp(prefix="vlrepro-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    started = False
    data = folder / "data"
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        port = free_port()
        _run(
            _as_postgres(
                [str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]
            ),
            timeout=180,
        )
        started = True  # from here on, stop whatever pg_ctl may have left running
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w", "-t", "120"]
        _run(_as_postgres([*pg_ctl, "-o", options, "start"]), timeout=150)
        import psycopg2

        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=30)
        except psycopg2.Error as exc:
            raise BackendUnavailable(f"cannot connect to the new Postgres: {exc}") from exc
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        # psycopg2 explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", time.monotonic() - start
    finally:
        if started:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                    capture_output=True,
                    timeout=60,
                )
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, s3_endpoint: str, workdir: Path) -> Iterator[tuple[str, float]]:
    """`infra/mlflow/serve.sh` on a free loopback port: yields (tracking URL, seconds until /health answered)."""
    start = time.monotonic()
    port = free_port()
    bindir = Path(sys.executable).parent
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MLFLOW_TRACKING_", "MLFLOW_S3_", "MLFLOW_BACKEND", "MLFLOW_ARTIFACT"))
    }
    env.update(
        PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_BIN=str(bindir / "mlflow"),
        MLFLOW_BACKEND_STORE_URI=backend_uri,
        MLFLOW_ARTIFACTS_DESTINATION=f"s3://{BUCKET}/mlflow",
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",  # 2 shared cores: one uvicorn worker starts twice as fast
        # the server's own S3 client: dummy credentials for moto, and moto's endpoint
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
    )
    logfile = workdir / "mlflow-server.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(SERVE)], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{logfile.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not healthy after 420 s:\n{logfile.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, time.monotonic() - start
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the whole session: the launcher's exec'd CLI and its uvicorn worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@dataclass(frozen=True)
class Stack:
    url: str
    s3_endpoint: str
    backend: str  # "postgres" or "sqlite"
    backend_uri: str
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("mlflow-server")
    seconds: dict[str, float] = {}
    with contextlib.ExitStack() as exits:
        endpoint, seconds["moto"] = exits.enter_context(moto_server())
        try:
            backend_uri, seconds["postgres"] = exits.enter_context(postgres_server())
            backend = "postgres"
        except BackendUnavailable as exc:
            log.warning("Postgres unavailable (%s): using a SQLite backend store instead", exc)
            backend, backend_uri = "sqlite", f"sqlite:///{workdir / 'mlflow.db'}"
        url, seconds["mlflow_server"] = exits.enter_context(mlflow_server(backend_uri, endpoint, workdir))
        log.warning(
            "started: moto %.1f s, %s %.1f s, mlflow server %.1f s",
            seconds["moto"],
            backend,
            seconds.get("postgres", 0.0),
            seconds["mlflow_server"],
        )
        yield Stack(url, endpoint, backend, backend_uri, seconds)


def backend_rows(stack: Stack, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` read straight from the server's backend store (not through MLflow)."""
    if stack.backend == "postgres":
        import psycopg2

        conn = psycopg2.connect(stack.backend_uri.replace("postgresql+psycopg2://", "postgresql://"))
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()
    with contextlib.closing(sqlite3.connect(stack.backend_uri[len("sqlite:///") :])) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def image_text(path: Path) -> Path:
    """A tiny ``image_text.npz`` in the mini world's format: 36 frames (32 px), 6 captions, 24 train / 12 test."""
    rng = np.random.default_rng(0)
    captions = np.array([f"a {c} square" for c in ("red", "green", "blue", "white", "black", "grey")])
    np.savez(
        path,
        images=rng.integers(0, 256, size=(36, 32, 32, 3), dtype=np.uint8),
        captions=captions[np.arange(36) % 6],
        split=np.array(["train"] * 24 + ["test"] * 12),
    )
    return path


@pytest.mark.timeout(900)
def test_registry_on_a_postgres_s3_mlflow_server_moves_champion_and_evaluation_loads_it(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.registry import Registry
    from infra.tracking import Tracker
    from recipes.miniclip import build

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.url)
    for name in [k for k in os.environ if k.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(name, raising=False)  # the client holds no S3 credentials: the server proxies artefacts
    monkeypatch.setattr("infra.settings._settings", None)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.monotonic()
        npz = image_text(tmp_path / "image_text.npz")
        config: dict[str, Any] = {
            "image_text": str(npz),
            "clip": {"arch": "vlrepro-tiny", "pretrained": None, "context_length": 16},
        }
        recipe = build(config)
        models, metrics = {}, {}
        for seed in (1, 2):
            torch.manual_seed(seed)
            models[seed] = recipe.build_model().eval()
            metrics[seed] = recipe.evaluate(models[seed])
        worse, better = sorted(models, key=lambda s: -metrics[s][METRIC])
        assert metrics[better][METRIC] < metrics[worse][METRIC], "the two random models must rank differently"

        tracker = Tracker.for_run_root(str(tmp_path / "runs"))
        assert (tracker.uri, tracker.artifact_root) == (stack.url, None)  # the server decides where artefacts go
        registry = Registry(tracker)
        results, run_ids = [], {}
        for key, seed in (("tiny-worse", worse), ("tiny-better", better)):
            run_ids[key] = run_id = tracker.start_or_resume("mlflow-server", key, key, params={"seed": seed, **config})
            folder = tmp_path / "models" / key
            folder.mkdir(parents=True)
            torch.save(models[seed].state_dict(), folder / "model.pt")
            recipe.export(models[seed], folder)
            tracker.log_metrics(run_id, metrics[seed], step=0)
            results.append(registry.register(MODEL, run_id, folder, METRIC, metrics[seed][METRIC], key, False))
            tracker.finish(run_id)
        t_register = time.monotonic() - t0
        assert results[0] == {
            "name": MODEL,
            "version": 1,
            "promoted": True,
            "champion_version": 1,
            "metric": metrics[worse][METRIC],
        }
        assert (results[1]["version"], results[1]["promoted"], results[1]["champion_version"]) == (2, True, 2)
        again = registry.register(MODEL, run_ids["tiny-better"], tmp_path / "models" / "tiny-better", METRIC, 0.0,
                                  "tiny-better", False)  # fmt: skip
        assert again == results[1]  # idempotent per run key: the stored metric wins, no third version
        champion = registry.champion(MODEL)
        assert champion is not None
        assert (champion["version"], champion["run_key"]) == (2, "tiny-better")
        assert champion["run_id"] == run_ids["tiny-better"]
        assert champion["source"].startswith("mlflow-artifacts:/")

        # evaluation: models:/<name>@champion → files → a model built by the recipe → the same numbers
        t1 = time.monotonic()
        folder = registry.download(f"models:/{MODEL}@champion", tmp_path / "eval" / "champion")
        assert sorted(p.name for p in folder.iterdir()) == ["clip.pt", "model.pt"]
        torch.manual_seed(99)
        evaluated = recipe.build_model().eval()
        state = torch.load(folder / "model.pt", weights_only=True)
        reference = models[better].state_dict()
        assert any(not torch.equal(evaluated.state_dict()[k], state[k]) for k in state)  # so loading is what matters
        evaluated.load_state_dict(state)
        assert all(torch.equal(v, reference[k]) for k, v in evaluated.state_dict().items())
        assert recipe.evaluate(evaluated) == metrics[better]
        clip_state = torch.load(folder / "clip.pt", weights_only=True)
        assert all(torch.equal(v, models[better].clip.state_dict()[k]) for k, v in clip_state.items())
        t_eval = time.monotonic() - t1
    finally:
        torch.set_num_threads(threads)

    # where things live: artefacts in the S3 bucket behind the server, the registry in the backend store
    stored = object_keys(stack.s3_endpoint, "mlflow/")
    assert sum(k.endswith("/artifacts/model/model.pt") for k in stored) == 2
    assert sum(k.endswith("/artifacts/model/clip.pt") for k in stored) == 2
    assert backend_rows(stack, f"SELECT alias, version FROM registered_model_aliases WHERE name = '{MODEL}'") == [
        ("champion", 2)
    ]
    assert backend_rows(stack, f"SELECT COUNT(*) FROM model_versions WHERE name = '{MODEL}'") == [(2,)]
    assert list(cwd.iterdir()) == []  # nothing (./mlruns, ./mlflow.db) written to the working directory
    log.warning(
        "backend %s; registration of 2 versions %.1f s, download + evaluation %.1f s", stack.backend, t_register, t_eval
    )
