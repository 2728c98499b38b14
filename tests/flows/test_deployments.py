"""`prefect.yaml` for real: every entrypoint loads and takes its parameters; `vlrepro serve` (Prefect server, process
pool, MLflow server) + `prefect deploy` + a `--run-once` process worker run the tiny CLIP4Clip deployment to
Completed with its metrics in MLflow; the stack stops on SIGINT and no process survives.

No mocks: every server and CLI is a real child process on 127.0.0.1 (reliability notes §2.1, Table 2 "Deployment
definition"). Timings on 2 loaded cores are in the report; the end-to-end test is bounded by `pytest.mark.timeout`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.local_stack import Service, Supervisor, free_port, http_ok

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
POOL = "vlrepro-process"
PAPERS = ("clip4clip", "stan", "ucofia", "dcc", "locvtp")
STAGES = ("ingest", "features", "train", "evaluate")


def _config() -> dict[str, Any]:
    data = yaml.safe_load(PREFECT_YAML.read_text())
    assert isinstance(data, dict)
    return data


def _deployments() -> list[dict[str, Any]]:
    return list(_config()["deployments"])


def _entrypoint_exists(deployment: dict[str, Any]) -> bool:
    return (REPO / deployment["entrypoint"].partition(":")[0]).exists()


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


# ----------------------------------------------------------------------------------------------- static checks


def test_prefect_yaml_has_a_process_deployment_per_paper_and_stage_and_no_secrets() -> None:
    cfg = _config()
    names = [d["name"] for d in cfg["deployments"]]
    assert sorted(names) == sorted([f"reproduce-{p}" for p in PAPERS] + list(STAGES))
    for d in cfg["deployments"]:
        assert d["work_pool"]["name"] == POOL, d["name"]
        params = d.get("parameters") or {}
        assert json.loads(json.dumps(params)) == params, f"{d['name']}: parameters must be plain JSON data"
        if d["name"].startswith("reproduce-"):
            assert params["dataset"].startswith("mini-") and params["overrides"] == {}, d["name"]
    # the workers run the deploying checkout: a build step records its path, the pull step enters it
    (build,) = cfg["build"]
    step = build["prefect.deployments.steps.run_shell_script"]
    (pull,) = cfg["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == f"{{{{ {step['id']}.stdout }}}}"
    assert step["script"] == "pwd" and not cfg.get("push")
    # no secrets inline: credential-looking keys hold templates only, and no value looks like a key or a password
    for path, value in _strings(cfg):
        leaf = path.rsplit(".", 1)[-1].lower()
        if any(word in leaf for word in ("token", "password", "secret", "access_key", "api_key")):
            assert value.startswith("{{") and value.endswith("}}"), f"{path} holds a literal credential"
        assert not re.search(r"AKIA[0-9A-Z]{16}|://[^/\s:@]+:[^/\s@]+@", value), f"{path} embeds a credential"


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["name"])
def test_every_entrypoint_loads_and_accepts_its_parameters(deployment: dict[str, Any]) -> None:
    """What `prefect deploy` does first, without a server (stack notes: there is no offline dry run)."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, name = deployment["entrypoint"].partition(":")
    if not _entrypoint_exists(deployment):
        pytest.skip(f"{path} is not written yet (its deployment is declared ahead of it)")
    flow = load_flow_from_entrypoint(f"{REPO / path}:{name}")
    assert flow.name == deployment["name"]
    params = dict(deployment.get("parameters") or {})
    signature = inspect.signature(flow.fn).parameters
    assert set(params) <= set(signature), f"unknown parameters {set(params) - set(signature)}"
    required = {k: "x" for k, p in signature.items() if p.default is inspect.Parameter.empty}
    flow.validate_parameters({**required, **params})  # types and literals (raises ParameterTypeError)


def test_stage_flows_merge_config_files_and_overrides_like_the_train_cli_and_check_them_strictly() -> None:
    from flows.cli.train import load_config
    from flows.deployments import recipe_config
    from models.config import ConfigError

    yaml_path = str(REPO / "recipes" / "configs" / "clip4clip" / "mini-retrieval.yaml")  # a spec: its job's base
    cfg = recipe_config("clip4clip", yaml_path, {"train.epochs": 2, "model.head": "seqTransf"})
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["head"] == "seqTransf"
    assert cfg["train"]["batch_size"] == 128 and cfg["model"]["input"] == "features"  # from the YAML
    # the `train` deployment and `vlrepro train run --config ... --set ...` give one config, hence one run name
    assert cfg == load_config(yaml_path, ["train.epochs=2", "model.head=seqTransf"], "clip4clip")
    stored = recipe_config("clip4clip", None, {"train.seed": 3}, base=cfg)  # `evaluate`: a job's config + overrides
    assert stored["train"] == {**cfg["train"], "seed": 3} and stored["model"] == cfg["model"]
    with pytest.raises(ConfigError, match="epochz"):
        recipe_config("clip4clip", yaml_path, {"train.epochz": 2})
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_config("nope", None, None)


@pytest.mark.usefixtures("prefect_harness")
def test_features_flow_extracts_a_committed_frames_stage_like_the_stage_task(tmp_path: Path) -> None:
    """The `features` deployment's flow on a tiny frames stage (random-init `vlrepro-tiny` CLIP, 32 px)."""
    from flows.deployments import features_flow
    from pipelines import ingest as ing
    from pipelines import shards
    from pipelines.decode import DecodeConfig
    from tests.media import encode, moving_square

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        encode(videos / f"v{i}.mp4", moving_square(t=16, seed=i))
    root = str(tmp_path / "runs")
    cfg = ing.IngestConfig(DecodeConfig(fps=4.0, short_side=32, crop=32), samples_per_shard=2)
    frames = ing.ingest(str(videos), root, "tinyvids", cfg)
    overrides = {"clip.arch": "vlrepro-tiny", "clip.pretrained": None, "output": "cls"}
    out = features_flow(frames_uri=frames.stage_uri, root=root, overrides=overrides)
    assert out["stage_uri"].startswith(str(tmp_path / "runs" / "tinyvids" / "clip-features"))  # dataset from the URI
    keys, arrays, _ = shards.load_stage(out["stage_uri"])
    assert keys == ["v0", "v1", "v2"]
    n_frames = {r["key"]: r["n_frames"] for r in shards.read_manifest(frames.stage_uri)}
    assert all(a.shape == (n_frames[k], 32) for k, a in zip(keys, arrays))  # (T, embed dim) per video
    assert features_flow(frames_uri=frames.stage_uri, root=root, overrides=overrides) == out  # reused
    with pytest.raises(ValueError, match=r"only clip\.arch"):
        features_flow(frames_uri=frames.stage_uri, root=root, overrides={**overrides, "batch_frames": 8})


# ------------------------------------------------------------------------------------------------ end to end


def _base_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_PROFILES_PATH"):
        env.pop(var, None)
    env.update(
        PREFECT_HOME=str(tmp / "client-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


def _wait_json_line(svc: Service, timeout: float) -> dict[str, Any]:
    """The JSON object `serve --json` prints once the stack is up (its output goes to the service log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in reversed(svc.log_path.read_text(errors="replace").splitlines()):
            if line.startswith("{") and '"prefect_api_url"' in line:
                info: dict[str, Any] = json.loads(line)
                return info
        rc = svc.returncode()
        assert rc is None, f"serve exited with {rc}:\n{svc.log_tail(40)}"
        time.sleep(0.5)
    raise AssertionError(f"serve not up after {timeout:.0f} s:\n{svc.log_tail(40)}")


def _run(sup: Supervisor, name: str, argv: list[str], env: dict[str, str], timeout: float) -> Service:
    svc = sup.spawn(name, argv, env)
    assert svc.proc is not None
    try:
        rc = svc.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} still running after {timeout:.0f} s:\n{svc.log_tail(40)}") from None
    assert rc == 0, f"{name} exited with {rc}:\n{svc.log_tail(40)}"
    return svc


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "logs")
    try:
        yield sup
    finally:
        sup.stop(grace=5.0)
        left = sup.survivors()
        assert not left, f"processes survived the teardown: {[(p.pid, p.name()) for p in left]}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_serve_deploy_and_a_process_worker_run_the_tiny_clip4clip_deployment(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.registry import Registry
    from infra.settings import get_settings
    from infra.tracking import Tracker

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    root = tmp_path / "runs"
    env = _base_env(tmp_path)
    py = sys.executable

    # 1. the local stack, as a user starts it (no worker: the test runs one with --run-once)
    serve_argv = [py, "-m", "flows.serve", "--root", str(root), "--port", str(free_port())]
    serve_argv += ["--mlflow-port", str(free_port()), "--workers", "0", "--no-ui", "--json"]
    serve_argv += ["--prefect-home", str(tmp_path / "server-home"), "--startup-timeout", "600"]
    serve = supervisor.spawn("serve", serve_argv, env)
    info = _wait_json_line(serve, timeout=660)
    timings["serve_up"] = time.monotonic() - t0
    api, mlflow_uri = info["prefect_api_url"], info["mlflow_tracking_uri"]
    assert http_ok(f"{api}/health") and http_ok(f"{mlflow_uri}/health")
    assert info["pool"] == POOL and info["pool_type"] == "process"
    assert info["mlflow_backend_store"] == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    env |= {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": mlflow_uri}

    # 2. prefect deploy, non-interactive, from the repository root
    deployable = [d["name"] for d in _deployments() if _entrypoint_exists(d)]
    assert "reproduce-clip4clip" in deployable
    selection = ["--all"] if len(deployable) == len(_deployments()) else [a for n in deployable for a in ("-n", n)]
    t = time.monotonic()
    _run(supervisor, "deploy", [py, "-m", "prefect", "--no-prompt", "deploy", *selection], env, timeout=600)
    timings["deploy"] = time.monotonic() - t

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        for name in deployable:
            dep = client.read_deployment_by_name(f"{name}/{name}")
            assert dep.work_pool_name == POOL
            assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}], (
                dep.pull_steps
            )
        automations = client.read_automations_by_name(info["automation"])
        assert len(automations) == 1 and automations[0].actions[0].type == "change-flow-run-state"
        clip4clip = client.read_deployment_by_name("reproduce-clip4clip/reproduce-clip4clip")

    # 3. trigger the tiny CLIP4Clip DAG; a process worker polls once and runs it
    params = {
        "root": str(root),
        "size": "tiny",
        "variants": ["meanP"],  # size tiny: the tiny head and mini-CLIP budgets (flows/stages.MINI_CLIP_SIZES)
    }
    t = time.monotonic()
    run_argv = [py, "-m", "prefect", "deployment", "run", "reproduce-clip4clip/reproduce-clip4clip"]
    _run(supervisor, "deployment-run", [*run_argv, "--params", json.dumps(params)], env, timeout=300)
    worker_argv = [py, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process", "--run-once"]
    worker = _run(supervisor, "worker", worker_argv, env, timeout=900)
    timings["worker_run_once"] = time.monotonic() - t

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[clip4clip.id]))
        )
    assert len(runs) == 1, runs
    assert runs[0].state is not None and runs[0].state.name == "Completed", (runs[0].state, worker.log_tail(60))
    assert runs[0].parameters["root"] == str(root)

    # 4. its metrics are in MLflow: read the run root's store directly (the server wrote into the same SQLite DB)
    tracker = Tracker(info["mlflow_backend_store"])
    (mlrun,) = tracker.client.search_runs([tracker.get_or_create_experiment("clip4clip")])
    assert mlrun.info.status == "FINISHED"
    r_at_1 = mlrun.data.metrics["final/t2v/R_at_1"]
    assert 0.0 <= r_at_1 <= 100.0
    assert mlrun.data.tags["vlrepro.variant"] == "meanP"
    champion = Registry(tracker).champion("clip4clip")
    assert champion is not None and champion["run_id"] == mlrun.info.run_id

    # 5. the `evaluate` stage flow, here in-process against the same servers: it re-evaluates the champion with the
    #    config it was trained with, so its metrics equal the training run's final ones exactly (CPU, eval mode)
    from flows.deployments import evaluate_flow

    t = time.monotonic()
    with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: api}):
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # artefacts are proxied by the server (mlflow-artifacts:/)
        get_settings(reload=True)
        try:
            evaluated = evaluate_flow(model="models:/clip4clip@champion", root=str(root))
            again = evaluate_flow(model="models:/clip4clip@champion", root=str(root))
        finally:
            mp.undo()
            get_settings(reload=True)
    timings["evaluate_flow_x2"] = time.monotonic() - t
    trained = {"name": "clip4clip", "version": champion["version"], "trained_as": mlrun.info.run_name}
    assert evaluated["model"] == trained
    assert evaluated["metrics"]["t2v/R@1"] == r_at_1
    assert again["key"] == evaluated["key"] and again["metrics"] == evaluated["metrics"]
    (eval_run,) = tracker.find_runs("clip4clip", evaluated["key"])
    assert eval_run.info.status == "FINISHED" and eval_run.data.metrics["eval/t2v/R_at_1"] == r_at_1

    # 6. Ctrl-C stops the stack: serve exits 0 and nothing it started is left
    assert serve.proc is not None
    t = time.monotonic()
    serve.proc.send_signal(signal.SIGINT)
    assert serve.proc.wait(timeout=120) == 0, serve.log_tail(40)
    timings["serve_stop"] = time.monotonic() - t
    deadline = time.monotonic() + 15
    while serve.survivors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not serve.survivors(), [(p.pid, p.cmdline()[:4]) for p in serve.survivors()]
    assert not worker.survivors(), [(p.pid, p.cmdline()[:4]) for p in worker.survivors()]
    timings["total"] = time.monotonic() - t0
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
