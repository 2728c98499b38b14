"""Training on a real two-node Ray cluster, and the cluster deployment manifests (issue 7 item 2).

The slow test starts two real Ray nodes on this host with ``ray start --block`` (a head with 1 CPU, a second node
with 1 CPU and a custom ``node2`` resource), runs the real CLI ``vlrepro train run`` as a driver that joins them
through ``RAY_ADDRESS`` with 2 workers of 1 CPU each — so one worker must run on each node — and SIGKILLs the second
node's ``RayTrainWorker`` process mid-training. It asserts that the workers ran on both nodes, that checkpoints
landed in the shared storage under ``<root>/ray/<run>``, that the job resumed from a checkpoint (not from scratch),
restarted its workers on both nodes, and completed with every epoch exactly once, registered and recorded. Cost: about
80 s of CPU in all (measured with ``/usr/bin/time``: 65 s user + 17 s sys), so ~1.5–2 min on an idle 2-core machine;
8–9 min of wall time were measured on a shared 2-core machine at load 20–46.

The fast tests check the deployment manifests (Ray's own JSON schema for the cluster launcher, the RayJob's
entrypoint parsed by the real CLI, GPU worker groups, the storage path as a job parameter, no secret literals) and the
``vlrepro train run`` command itself with `run_job` replaced by a recorder.

How the nodes are run (Ray 2.60 facts, see infra/ray/README.md "Two nodes on one machine"):

- each node is a ``ray start --block`` child in its own session, with its own ``--temp-dir`` (short: Unix socket
  paths are limited to 107 bytes) and its own dashboard-agent port (the default 52365 would collide). Teardown
  signals only those processes, by session id; ``ray stop`` is never used — it kills every Ray process of the user
  on the host, other people's test clusters included;
- ``ray start`` rewrites a loopback ``--node-ip-address`` / ``--address`` to the host's routable address
  (`ray._private.services.resolve_ip_for_localhost`), so the nodes advertise e.g. 192.0.2.2: still this host, no
  traffic leaves it;
- token authentication is on by default in 2.60; the cluster gets a private token (``RAY_AUTH_TOKEN``) instead of
  the user's ``~/.ray/auth_token``;
- ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0``: a SIGTERMed node stops at once instead of draining for 30 s.

After the kill, node 2 is still alive (only its worker process died), so both CPUs come back and Ray Train
reschedules the 2-worker group across the two nodes again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import typer
import typer.main
import yaml
from typer.testing import CliRunner

import infra.training_job
import recipes
from flows.cli.train import app as train_app
from infra import settings
from infra.jobs import run_name
from infra.ray_train import load_recipe_fn
from recipes import RECIPES

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECIPE = "tests.infra.toy_recipe:build"
# `vlrepro train run` builds registered recipes only: the tests register the toy recipe under this key.
TOY = "toy-recipe"
EPOCHS = 6
RUN = "two-node"
# The CLI as `vlrepro`, with the toy recipe registered (the workers get its import path from the driver).
VLREPRO = [
    sys.executable,
    "-c",
    f"import sys, recipes; recipes.RECIPES[{TOY!r}] = {RECIPE!r}; from flows.cli import main; sys.exit(main())",
]


CLUSTER_YAML = ROOT / "infra" / "ray" / "cluster.yaml"
RAYJOB_YAML = ROOT / "infra" / "k8s" / "rayjob.yaml"
# What a credential looks like when pasted into a manifest: AWS key ids, PEM blocks, long hex tokens, a secret-looking
# key with an inline value; and (below) long mixed-case-and-digit runs such as AWS secret keys or base64 tokens.
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[0-9a-f]{32,}\b"),
    re.compile(r"(?i)(password|secret_access_key|auth_token|api_key)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}"),
]
HIGH_ENTROPY = re.compile(r"[A-Za-z0-9+/=]{32,}")


def cli() -> typer.Typer:
    """The `vlrepro` command tree with the train sub-app (what `flows.cli` mounts)."""
    app = typer.Typer()

    @app.callback()
    def root() -> None:  # a callback keeps `train` a sub-command even when it is the only one
        pass

    app.add_typer(train_app, name="train")
    return app


def parse_entrypoint(entrypoint: str) -> dict[str, Any]:
    """The parameters `vlrepro train run` would get from this command line (a parse error fails the test)."""
    args = shlex.split(entrypoint)
    assert args[:3] == ["vlrepro", "train", "run"], entrypoint
    run = typer.main.get_command(cli()).commands["train"].commands["run"]  # type: ignore[attr-defined]
    return dict(run.make_context("run", args[3:]).params)


def assert_no_secret_literals(text: str) -> None:
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"secret-looking literal {pattern.pattern!r}: {pattern.search(text)}"
    for token in HIGH_ENTROPY.findall(text):
        kinds = [any(c.isdigit() for c in token), any(c.isupper() for c in token), any(c.islower() for c in token)]
        assert not all(kinds), f"secret-looking literal {token!r}"


def test_cluster_launcher_yaml_is_valid_and_installs_the_repo_with_shared_storage():
    text = CLUSTER_YAML.read_text()
    cfg = yaml.safe_load(text)
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cfg, json.loads(schema_path.read_text()))  # Ray's own schema: no unknown or missing keys

    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if re.match(r"^(g\d|p\d)", t["node_config"]["InstanceType"])]
    assert gpu_types and all(n != cfg["head_node_type"] for n in gpu_types), "GPU worker node types"
    assert all(types[n]["max_workers"] >= 1 for n in gpu_types)
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start and "--head" in head_start  # no training worker on the head
    # The repository is synced and installed with `make install`; Ray comes from its venv, pinned like ours.
    assert cfg["file_mounts"]["~/vlrepro"] == "." and ".gitignore" in cfg["rsync_filter"]
    assert any("make install" in c for c in cfg["setup_commands"])
    assert f"ray=={ray.__version__}" in (ROOT / "requirements.lock").read_text().splitlines()
    # Every `ray start` sources the node environment, which puts the venv first and sets a shared run root.
    for command in [*cfg["head_start_ray_commands"], *cfg["worker_start_ray_commands"]]:
        assert command.startswith("source ~/vlrepro.env && ")
    env_cmd = next(c for c in cfg["setup_commands"] if "vlrepro.env" in c)
    roots = re.findall(r"export VLREPRO_RUN_ROOT=(\S+?)'", env_cmd)
    assert len(roots) == 1 and roots[0].startswith(("s3://", "gs://", "/")), roots
    assert '.venv/bin:$PATH"' in env_cmd and "RAY_AUTH_MODE=token" in env_cmd
    # The Ray token is a file copied from the launching machine; credentials come from the instance profile.
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "AWS_SECRET_ACCESS_KEY" not in text and "MLFLOW_TRACKING_TOKEN" not in text
    assert_no_secret_literals(text)


def test_rayjob_runs_the_cli_on_gpu_workers_with_shared_storage_and_secrets_from_secrets():
    text = RAYJOB_YAML.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    assert spec["submissionMode"] == "K8sJobMode" and spec["ttlSecondsAfterFinished"] > 0
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["rayVersion"] == ray.__version__ and cluster_spec["authOptions"] == {"mode": "token"}

    # The entrypoint is our CLI and parses with it; nothing in it expands in KubeRay's submitter shell.
    assert "$" not in spec["entrypoint"]
    params = parse_entrypoint(spec["entrypoint"])
    assert params["recipe"] in RECIPES and params["run_name"] and params["gpu"] is True
    assert params["workers"] >= 2 and params["max_failures"] >= 1 and params["as_json"] is True
    # Storage path: the run root is a job parameter (runtimeEnvYAML), shared storage, not a node-local path.
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    root = params["root"] or env_vars["VLREPRO_RUN_ROOT"]
    assert root.startswith(("s3://", "gs://")), root

    # The config file is the ConfigMap, mounted on the head (where the driver runs), and the recipe accepts it.
    head = cluster_spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_pod = head["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for c in head_pod["containers"] for m in c.get("volumeMounts", [])}
    volume = next(
        v for v in head_pod["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]
    )
    config_path = Path(params["config"])
    assert str(config_path.parent) == mounts[volume["name"]] and config_path.name in config_map["data"]
    recipe_config = yaml.safe_load(config_map["data"][config_path.name])
    load_recipe_fn(RECIPES[params["recipe"]])(recipe_config)  # strict: an unknown key raises

    # GPU workers: enough GPU pods for the requested workers, one GPU each.
    gpus = 0
    for group in cluster_spec["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            per_pod = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
            gpus += per_pod * group["replicas"]
    assert gpus >= params["workers"]

    # Secrets only by reference: every credential-like variable comes from a Secret, never a literal value.
    pods = [head_pod] + [g["template"]["spec"] for g in cluster_spec["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["containers"]:
            for var in container.get("env", []):
                if re.search(r"TOKEN|SECRET|PASSWORD|KEY", var["name"]):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
    assert_no_secret_literals(text)


def test_the_secret_scan_catches_pasted_credentials():
    leaks = [
        "aws_secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS's documentation example key
        "- {name: AWS_ACCESS_KEY_ID, value: AKIAIOSFODNN7EXAMPLE}",
        "export RAY_AUTH_TOKEN=" + "3f" * 32,
        "password: hunter2hunter2",
    ]
    for leak in leaks:
        with pytest.raises(AssertionError, match="secret-looking"):
            assert_no_secret_literals(f"env:\n  {leak}\n")
    assert_no_secret_literals("root: s3://vlrepro-runs/vlrepro/msrvtt/frames/REPLACE-with-stage-hash\n")


@pytest.fixture
def captured_job(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str | None]]:
    """Replace `run_job` by a recorder (the CLI imports it at call time), and register the toy recipe in a copy of
    RECIPES (the real one stays untouched)."""
    calls: list[tuple[Any, str | None]] = []

    def fake_run_job(job: Any, ray_address: str | None = None) -> dict[str, Any]:
        calls.append((job, ray_address))
        return {"run_name": job.run_name, "history": [{"epoch": 1.0}], "metrics": {"eval/mse": 0.5}, "reused": False}

    monkeypatch.setattr(infra.training_job, "run_job", fake_run_job)
    monkeypatch.setattr(recipes, "RECIPES", {**recipes.RECIPES, TOY: RECIPE})
    monkeypatch.setattr(settings, "_settings", None)  # re-read the environment below
    return calls


def test_train_run_builds_the_job_from_config_overrides_and_environment(tmp_path, monkeypatch, captured_job):
    monkeypatch.setenv("VLREPRO_RUN_ROOT", "s3://bucket/runs")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    config = tmp_path / "toy.yaml"
    config.write_text("epochs: 2\nextra:\n  a: 1\n")
    args = ["train", "run", "--recipe", TOY, "--config", str(config), "--set", "lr=0.05", "--set", "extra.b=x"]
    result = CliRunner().invoke(cli(), [*args, "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    ((job, address),) = captured_job
    expected = {"epochs": 2, "extra": {"a": 1, "b": "x"}, "lr": 0.05}
    assert job.config == expected
    # The deterministic job key (the same default as the Prefect `train` deployment), the environment's defaults.
    assert job.run_name == run_name("toy-recipe", expected)
    assert (job.root, address) == ("s3://bucket/runs", "10.0.0.1:6379")
    assert (job.recipe, job.paper, job.method, job.num_workers, job.use_gpu) == (
        TOY,
        "toy-recipe",
        "toy-recipe",
        2,
        False,
    )
    assert RECIPE not in recipes.RECIPES  # nothing is registered on the fly
    assert json.loads(result.output.strip().splitlines()[-1])["run_name"] == job.run_name

    # Explicit flags win over the environment; a RECIPES key keeps its name.
    flags = ["--run-name", "c4c-1", "--root", str(tmp_path), "--ray-address", "auto", "--gpu", "--max-failures", "3"]
    flags += ["--metric", "v2t/R@1", "--no-register"]
    result = CliRunner().invoke(cli(), [*args[:3], "clip4clip", "--set", "train.epochs=1", *flags])
    assert result.exit_code == 0, result.output
    job, address = captured_job[-1]
    assert (job.recipe, job.run_name, job.root, address) == ("clip4clip", "c4c-1", str(tmp_path), "auto")
    assert (job.use_gpu, job.max_failures, job.metric, job.register, job.paper) == (
        True,
        3,
        "v2t/R@1",
        False,
        "clip4clip",
    )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--recipe", "nope"], "unknown recipe"),
        # an import path is refused, even of a real recipe: the command line only names registered recipes
        (["--recipe", RECIPE], "import paths are not accepted"),
        (["--recipe", "recipes.clip4clip:build"], "import paths are not accepted"),
        (["--recipe", "toy-recipes"], "did you mean 'toy-recipe'"),
        (["--recipe", TOY, "--set", "epochz=3"], "rejects this config"),  # fails on the driver, not on workers
        (["--recipe", TOY, "--set", "novalue"], "key=value"),
        (["--recipe", TOY, "--config", "/definitely/not/here.yaml"], "does not exist"),
        (["--recipe", TOY, "--run-name", "a/b"], "unsafe"),
        (["--recipe", TOY, "--workers", "0"], "--workers"),
    ],
)
def test_train_run_rejects_bad_input_before_training(extra, needle, captured_job):
    result = CliRunner().invoke(cli(), ["train", "run", *extra])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # typer may draw a wrapped box
    assert captured_job == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def session_processes(sid: int) -> dict[int, str]:
    """pid → command line of every live process in session `sid` (a node's `ray start --block` and its children)."""
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(entry.name)] = cmdline.strip()
    return found


def train_workers(sid: int) -> set[int]:
    """PIDs of Ray Train worker actors in a node's session (Ray sets their process title to ``ray::RayTrainWorker``)."""
    return {pid for pid, cmd in session_processes(sid).items() if cmd.startswith("ray::RayTrainWorker")}


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    temp_dir: str

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"ray start for {self.name} exited:\n{self.log.read_text()[-3000:]}")
        return "Ray runtime started" in self.log.read_text()


@dataclass
class LoopbackCluster:
    """Real Ray nodes on this host, each a `ray start --block` session that only we signal."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, head: bool, num_cpus: int, resources: dict[str, float] | None = None) -> Node:
        temp_dir = tempfile.mkdtemp(prefix=f"vlr-{name}-")  # short: socket paths live under it
        args = ["start", "--block", "--num-cpus", str(num_cpus), "--temp-dir", temp_dir, "--disable-usage-stats"]
        args += ["--dashboard-agent-listen-port", str(free_port())]
        if head:
            args += ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port)]
            args += ["--include-dashboard", "false"]
        else:
            args += ["--address", self.address, "--include-log-monitor", "false"]  # one log monitor per host
        if resources:
            args += ["--resources", json.dumps(resources)]
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "ray"), *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = Node(name, proc, log, temp_dir)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=20)
            for pid in session_processes(node.proc.pid):  # whatever outlived it: only processes of our sessions
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if node.proc.poll() is None:
                node.proc.wait(timeout=10)
            shutil.rmtree(node.temp_dir, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LoopbackCluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "VLREPRO_"))}
    env |= {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # this cluster's own token, never ~/.ray/auth_token
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # Read by the Train controller and workers, which inherit the raylet's environment.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_METRICS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    c = LoopbackCluster(tmp_path, env)
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~80 s CPU; 8–9 min wall were measured on a shared 2-core machine at load 20–46
def test_two_node_training_survives_a_killed_worker(cluster: LoopbackCluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    # Node 2 starts together with the head (it retries until the head's GCS answers); the driver starts once the
    # head is up, and Ray Train waits for the second CPU until node 2 has joined.
    head = cluster.start("head", head=True, num_cpus=1)
    node2 = cluster.start("node2", head=False, num_cpus=1, resources={"node2": 1})
    wait_for("the head node", head.started, timeout=180, poll=0.2)
    t_head = time.monotonic()
    root = tmp_path / "root"
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"epochs": EPOCHS}))
    command = [
        *VLREPRO,
        *("train", "run", "--recipe", TOY, "--config", str(config), "--run-name", RUN, "--root", str(root)),
        *("--workers", "2", "--max-failures", "1", "--metric", "eval/mse", "--lower-is-better", "--json"),
    ]
    driver_env = cluster.env | {"RAY_ADDRESS": cluster.address}
    # Files, not pipes: Ray streams worker output to the driver, which must never block on a full pipe.
    driver_out, driver_log = tmp_path / "driver.stdout", tmp_path / "driver.stderr"
    with driver_out.open("w") as out, driver_log.open("w") as err:
        driver = subprocess.Popen(command, cwd=ROOT, env=driver_env, stdout=out, stderr=err)
    try:
        wait_for("node 2", node2.started, timeout=180, poll=0.2)
        t_node2 = time.monotonic()

        # One worker per node: each node has exactly one CPU and each worker takes one.
        def both_nodes() -> tuple[set[int], set[int]] | None:
            if driver.poll() is not None:
                raise AssertionError(f"driver exited early:\n{driver_log.read_text()[-3000:]}")
            on_head, on_node2 = train_workers(head.proc.pid), train_workers(node2.proc.pid)
            return (on_head, on_node2) if on_head and on_node2 else None

        first_head, first_node2 = wait_for("a train worker on each node", both_nodes, timeout=240)
        t_workers = time.monotonic()

        # Kill once epoch 1's checkpoint is committed (in Ray's run snapshot), so the restart must resume from it.
        run_dir = root / "ray" / RUN
        snapshot = run_dir / "checkpoint_manager_snapshot.json"

        def committed() -> bool:
            both_nodes()
            try:
                return "epoch_0001" in snapshot.read_text()
            except OSError:
                return False

        wait_for("the first committed checkpoint", committed, timeout=240, poll=0.05)
        assert not (run_dir / f"epoch_{EPOCHS:04d}").exists(), "training finished before the kill: raise EPOCHS"
        (victim,) = train_workers(node2.proc.pid)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()

        # Ray restarts the whole group; node 2 is still up, so the new group again spans both nodes.
        def restarted() -> tuple[set[int], set[int]] | None:
            pids = both_nodes()
            return pids if pids and not (pids[1] & first_node2) else None

        again_head, _ = wait_for("the restarted workers", restarted, timeout=240)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    t_done = time.monotonic()
    assert driver.returncode == 0, driver_log.read_text()[-5000:]
    record = json.loads(driver_out.read_text().strip().splitlines()[-1])

    # Every epoch exactly once, in order, although a worker died in the middle.
    assert record["run_name"] == RUN and not record["reused"]
    assert [e["epoch"] for e in record["history"]] == [float(e) for e in range(1, EPOCHS + 1)]
    assert again_head.isdisjoint(first_head), "the head's worker must be restarted with the group"
    # Checkpoints are in the shared storage, the newest two kept; the job resumed from one of them.
    assert record["checkpoint"] == str(run_dir / f"epoch_{EPOCHS:04d}")
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == [f"epoch_{EPOCHS - 1:04d}", f"epoch_{EPOCHS:04d}"]
    for name in ("state.pt", "model.pt", "history.json"):
        assert (run_dir / f"epoch_{EPOCHS:04d}" / name).is_file()
    saved = json.loads((run_dir / f"epoch_{EPOCHS:04d}" / "history.json").read_text())
    assert saved["resumes"] == 1, "the restarted group must continue from a checkpoint, not from scratch"
    assert saved["history"] == record["history"]
    assert record["metrics"]["eval/mse"] == pytest.approx(record["history"][-1]["eval/mse"], rel=1e-5)
    assert int(record["registered"]["version"]) == 1

    # The job record that makes the same command return at once, without Ray.
    assert json.loads((root / "jobs" / f"{RUN}.json").read_text())["history"] == record["history"]
    t_end = time.monotonic()
    print(
        f"\nhead {t_head - t0:.1f} s, node2 {t_node2 - t_head:.1f} s, workers up {t_workers - t_head:.1f} s, "
        f"kill at {t_kill - t0:.1f} s, done {t_done - t_kill:.1f} s after the kill, total {t_end - t0:.1f} s"
    )
