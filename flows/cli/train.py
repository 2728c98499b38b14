"""``vlrepro train run``: one training job (Ray Train + MLflow + registry) from the command line.

This is the entrypoint of every cluster deployment (``infra/ray/cluster.yaml`` via ``ray job submit``,
``infra/k8s/rayjob.yaml`` as the KubeRay ``RayJob.spec.entrypoint``): it builds a `infra.training_job.TrainingJob`
and calls `infra.training_job.run_job`, which joins the cluster at ``--ray-address`` / ``RAY_ADDRESS`` (else starts
Ray on this host).

The run name is the job key (reliability notes §2.3 #17): the same command with the same ``--run-name`` and
``--root`` resumes the job from its last checkpoint under ``<root>/ray/<run-name>`` and keeps one MLflow run, so a
re-submitted entrypoint (KubeRay ``backoffLimit``, a Prefect retry, a user after losing the cluster) continues
instead of starting over; a finished job returns its stored record at once. Without ``--run-name`` the key is
``<recipe>-<config hash>``: the same config is the same job. A different config under an existing name is an error,
never a silent mix (`infra.ray_train.RunConflictError`).

``--recipe`` is a key of `recipes.RECIPES`, nothing else: the command calls the recipe's builder on the driver and on
every worker, so an import path (``package.module:function``) would let a command line — a deployment's parameters,
a job manifest — call any importable function. A new recipe is registered in `recipes.RECIPES` (the Python API,
`infra.ray_train.fit`, still takes paths). The config is a YAML or JSON mapping (local path or fsspec URI) with
``--set key=value`` dotted overrides on top; the recipe is built once here, on the driver, so a bad key fails before
any worker starts.

Mounted by `flows.cli` as ``vlrepro train``. Heavy imports (torch, ray, mlflow) happen inside the command, so
``--help`` stays instant; ``--json`` prints the job record as the last stdout line.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Train a recipe as a resumable Ray Train job (local Ray, or a cluster via RAY_ADDRESS).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def resolve_recipe(recipe: str) -> tuple[str, str]:
    """``--recipe`` → (its `RECIPES` key, the registered ``module:function`` path); anything else is a usage error."""
    from recipes import RECIPES
    from recipes.spec import close_matches

    if recipe in RECIPES:
        return recipe, RECIPES[recipe]
    why = " (import paths are not accepted: register the recipe in recipes.RECIPES)" if ":" in recipe else ""
    raise typer.BadParameter(
        f"unknown recipe {recipe!r}{why}; choose one of {', '.join(sorted(RECIPES))}{close_matches(recipe, RECIPES)}",
        param_hint="--recipe",
    )


def load_config(uri: str | None, overrides: list[str], recipe: str | None = None) -> dict[str, Any]:
    """The recipe config: a YAML/JSON mapping (local path or URI; an experiment spec gives its `recipe` job's base,
    `recipes.spec.job_base`) with dotted ``key=value`` overrides merged in."""
    import yaml

    from models.config import ConfigError, merge_dict, parse_overrides
    from pipelines import storage
    from recipes.spec import SpecError, job_base

    data: Any = {}
    if uri is not None:
        if storage.is_local(uri) and not storage.local_path(uri).exists():
            raise typer.BadParameter(f"{uri} does not exist", param_hint="--config")
        try:
            data = yaml.safe_load(storage.read_bytes(uri)) or {}
        except yaml.YAMLError as exc:
            raise typer.BadParameter(f"{uri} is not valid YAML/JSON ({exc})", param_hint="--config") from exc
        if not isinstance(data, Mapping):
            raise typer.BadParameter(f"{uri}: the top level must be a mapping", param_hint="--config")
        try:
            data = job_base(data, recipe)
        except SpecError as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from exc
    try:
        # the recipe's config class is only known to the recipe, which validates the result strictly when it builds
        return merge_dict(data, parse_overrides(overrides))
    except (ConfigError, yaml.YAMLError) as exc:  # `--set noequals`, `--set a=[`
        raise typer.BadParameter(str(exc), param_hint="--set") from exc


def _human(r: dict[str, Any]) -> str:
    history = r.get("history") or []
    metrics = " ".join(f"{k} {v:.4g}" for k, v in sorted((r.get("metrics") or {}).items()) if isinstance(v, float))
    reused = " (finished earlier: reused)" if r.get("reused") else ""
    return f"run {r['run_name']}: {len(history)} epochs{reused}\n  {metrics}\n  checkpoint {r.get('checkpoint')}"


@app.command("run")
def run(
    recipe: Annotated[
        str, typer.Option("--recipe", help="A registered recipe: a recipes.RECIPES key (e.g. clip4clip).")
    ],
    config: Annotated[
        str | None, typer.Option("--config", help="Recipe config: YAML or JSON mapping (path or fsspec URI).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value (dotted keys).")] = None,
    run_name: Annotated[
        str | None,
        typer.Option(
            "--run-name",
            help="Job key: the same name under the same root resumes the job (default: <recipe>-<config hash>).",
        ),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            help="Run root shared by every node (NFS path or s3://...): checkpoints under <root>/ray "
            "(default: VLREPRO_RUN_ROOT, else 'runs').",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Ray Train workers (one process each).")] = 1,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per worker (NCCL); default CPU (gloo).")] = False,
    max_failures: Annotated[
        int, typer.Option("--max-failures", min=0, help="Worker-group restarts from the last checkpoint.")
    ] = 1,
    paper: Annotated[str | None, typer.Option(help="MLflow experiment (default: the recipe name).")] = None,
    method: Annotated[str | None, typer.Option(help="Registered model name (default: the recipe name).")] = None,
    metric: Annotated[str, typer.Option(help="Evaluation metric that decides @champion.")] = "t2v/R@1",
    lower_is_better: Annotated[bool, typer.Option("--lower-is-better", help="For loss-like metrics.")] = False,
    register: Annotated[bool, typer.Option(help="Register the model and move @champion if it is better.")] = True,
    dataset_stage: Annotated[
        str | None, typer.Option(help="Stage URI whose manifest is logged as the run's dataset input.")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else local Ray).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")] = False,
) -> None:
    """Train, evaluate, track and register one job; rerunning the same job resumes it or returns its record."""
    import ray

    from flows.console import emit
    from infra.jobs import recipe_job
    from infra.ray_train import load_recipe_fn
    from infra.settings import get_settings
    from infra.training_job import TrainingJob, run_job
    from pipelines import storage

    recipe_key, recipe_path = resolve_recipe(recipe)
    cfg = load_config(config, list(set_ or []), recipe_key)
    try:
        build = load_recipe_fn(recipe_path)
    except (ImportError, ValueError) as exc:  # a registry entry that does not import (a broken install)
        raise typer.BadParameter(str(exc), param_hint="--recipe") from exc
    try:
        build(cfg)  # strict typed build on the driver: a bad key or value fails here, not on every worker
    except Exception as exc:  # whatever the recipe raises for a bad config (ConfigError, TypeError, ValueError)
        raise typer.BadParameter(
            f"recipe {recipe_key!r} rejects this config: {type(exc).__name__}: {exc}", param_hint="--config/--set"
        ) from exc

    try:
        storage.check_key(run_name or "default")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--run-name") from exc
    settings = get_settings()
    fields = recipe_job(  # the default name: <recipe>-<config hash>, the same config, one job
        recipe_key,
        cfg,
        storage.resolve_root(root or settings.run_root),
        run_name=run_name,
        paper=paper,
        method=method,
        metric=metric,
        higher_is_better=not lower_is_better,
        num_workers=workers,
        use_gpu=gpu,
        max_failures=max_failures,
        register=register,
        dataset_stage=dataset_stage,
        tags={"vlrepro.entrypoint": "vlrepro train run"},
    )
    job = TrainingJob(**fields)
    name = job.run_name
    print(f"training job {name} (root {job.root}, {workers} worker(s), gpu={gpu})", file=sys.stderr, flush=True)
    result = run_job(job, ray_address=ray_address or settings.ray_address)
    if ray.is_initialized():
        # Disconnect before printing: Ray streams worker output to this process's stdout, and a late line must not
        # come after the JSON object that callers read from the last line.
        ray.shutdown()
    emit(result, as_json, _human)


__all__ = ["app", "load_config", "resolve_recipe", "run"]
