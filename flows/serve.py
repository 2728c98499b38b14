"""`vlrepro serve`: start the local orchestration stack (`infra.local_stack`: Prefect server, process work pool and
workers, MLflow server) and stop it on Ctrl-C/SIGTERM. Heavy libraries are imported inside the command."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import typer

from infra.local_stack import DEFAULT_POOL, LocalStack, StackConfig

# ------------------------------------------------------------------------------------------------------ the command


def _human(info: Mapping[str, Any]) -> str:
    lines = [
        "vlrepro serve: the local stack is up (Ctrl-C stops it)",
        f"  Prefect API  {info['prefect_api_url']}"
        + (f"   UI {info['prefect_ui_url']}" if info["prefect_ui_url"] else ""),
    ]
    if info["mlflow_tracking_uri"]:
        lines.append(f"  MLflow       {info['mlflow_tracking_uri']}   store {info['mlflow_backend_store']}")
    lines += [
        f"  work pool    {info['pool']} ({info['pool_type']}), "
        f"{info['workers']} worker(s) × {info['worker_limit']} run(s) each",
        f"  zombie runs  automation {info['automation']!r} (no heartbeat for 90 s → Crashed)",
        f"  logs         {info['logs']}",
        "In another shell (from the repository root):",
        f"  export PREFECT_API_URL={info['prefect_api_url']}"
        + (f" MLFLOW_TRACKING_URI={info['mlflow_tracking_uri']}" if info["mlflow_tracking_uri"] else ""),
        "  prefect deploy --all",
        "  prefect deployment run 'reproduce-clip4clip/reproduce-clip4clip' --params '{\"size\": \"tiny\"}'",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event instead of raising, so shutdown runs in order from the main loop."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def serve(
    root: Annotated[str, typer.Option("--root", help="Run root: MLflow DB, Prefect server state, logs.")] = "runs",
    host: Annotated[str, typer.Option(help="Interface every server binds to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Prefect server port (API under /api, UI at /).")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow tracking server port.")] = 5000,
    pool: Annotated[str, typer.Option(help="Process work pool the workers poll (prefect.yaml uses this one).")] = (
        DEFAULT_POOL
    ),
    workers: Annotated[int, typer.Option(help="Process workers to start (0: none).")] = 1,
    limit: Annotated[int, typer.Option(help="Concurrent flow runs per worker.")] = 1,
    mlflow: Annotated[bool, typer.Option(help="Start the MLflow tracking server.")] = True,
    ui: Annotated[bool, typer.Option(help="Serve the Prefect UI.")] = True,
    prefect_home: Annotated[
        str | None, typer.Option(help="PREFECT_HOME of the server (default <root>/.serve/prefect-home).")
    ] = None,
    heartbeat: Annotated[int, typer.Option(help="Flow-run heartbeat period in seconds (zombie detection).")] = 30,
    startup_timeout: Annotated[float, typer.Option(help="Seconds each server may take to become healthy.")] = 180.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object once the stack is up.")] = False,
) -> None:
    """Run the local Prefect server + process workers + MLflow server until Ctrl-C."""
    if workers < 0 or limit < 1:
        raise typer.BadParameter("--workers must be >= 0 and --limit >= 1")
    if heartbeat < 30:
        raise typer.BadParameter("Prefect emits heartbeats only for periods >= 30 s", param_hint="--heartbeat")
    cfg = StackConfig(
        root=root,
        host=host,
        port=port,
        mlflow_port=mlflow_port,
        pool=pool,
        workers=workers,
        limit=limit,
        mlflow=mlflow,
        ui=ui,
        prefect_home=prefect_home,
        heartbeat_s=heartbeat,
        startup_timeout_s=startup_timeout,
    )
    with _stop_signals() as stop, LocalStack(cfg) as stack:
        try:
            info = stack.start(should_stop=stop.is_set)
        except KeyboardInterrupt:
            print("vlrepro serve: interrupted while starting; stopping", file=sys.stderr)
            return
        if as_json:
            print(json.dumps(info, sort_keys=True), flush=True)
        else:
            print(_human(info), flush=True)
        while not stop.wait(1.0):
            stack.check()
        print("vlrepro serve: stopping", file=sys.stderr, flush=True)


serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
serve_app.command("serve")(serve)


if __name__ == "__main__":  # `python -m flows.serve --root runs` (same as `vlrepro serve`)
    typer.run(serve)
