"""Stage flows for `prefect.yaml`: ``features``, ``train`` and ``evaluate`` with primitive parameters.

The paper DAGs (`flows/reproduce_<paper>.py`) and the ingest flow (`flows/ingest.py`) are flows already and are
deployed as they are. The other reusable stages are tasks inside those DAGs; the flows here expose them on their own,
so that an operator can re-trigger one stage of a deployment (``prefect deployment run 'train/train' --params ...``)
with parameters that are plain data: a **config file** (a YAML of the stage's typed config, optional) plus dotted
**overrides** (``{"train.epochs": 2}``), checked strictly when the recipe is built (unknown keys are errors).

They only adapt parameters: the work is done by the tasks of `flows.stages` and by `infra.training_job.run_job`, with
the same persisted results and cache keys under the run root, so a stage re-triggered after a crash reuses what
finished (a committed feature stage, a job record ``<root>/jobs/<run>.json``, a Ray checkpoint of the same run name).

- ``features``: CLIP features of a committed frames stage (`stages.extract_clip_features`);
- ``train``: one training job of a registered recipe (`stages.train` → `run_job`); the run name defaults to
  ``<recipe>-<config hash>`` exactly as for ``vlrepro train run``, so the same config is one job, whichever
  started it;
- ``evaluate``: a registered model version (``models:/<name>@champion`` by default) evaluated by its recipe, optionally
  on other data (overrides of the config it was trained with); one MLflow run per (version, overrides) in the
  paper's experiment, tagged ``vlrepro.evaluated_model``, and a record ``<root>/evaluations/<key>.json``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows import stages
from flows.runtime import cached_task, is_transient
from models.config import load
from pipelines import storage
from recipes import RECIPES


def recipe_config(
    recipe: str, config: str | None, overrides: dict[str, Any] | None, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`base` (a stored job config, or nothing) ← the YAML/JSON file `config` ← dotted `overrides`.

    The same dict-level merge as ``vlrepro train run`` (`flows.cli.train.load_config`), so the CLI and this
    deployment give one config — and one run name — for the same inputs. The recipe is built once here, which
    validates the result strictly (unknown keys and bad values raise `models.config.ConfigError`) before any work.
    """
    import yaml

    from infra.ray_train import load_recipe_fn
    from models.config import merge_dict
    from recipes.spec import job_base

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
    data: Any = {}
    if config is not None:
        data = yaml.safe_load(storage.read_bytes(config)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{config}: the top level must be a mapping")
        data = job_base(data, recipe)  # an experiment spec: its base config of this recipe's job
    merged = merge_dict(merge_dict(base or {}, data), overrides or {})
    load_recipe_fn(RECIPES[recipe])(merged)
    return merged


def _stage_dataset(frames_uri: str) -> str:
    """``<root>/<dataset>/frames/<hash>`` → ``<dataset>`` (the layout of `pipelines.shards.stage_uri`)."""
    parts = frames_uri.rstrip("/").split("/")
    if len(parts) < 3:
        raise ValueError(f"{frames_uri!r} is not a stage URI <root>/<dataset>/<stage>/<hash>; pass dataset=")
    return parts[-3]


# --------------------------------------------------------------------------------------------------------- features


@flow(name="features", log_prints=True)
def features_flow(
    frames_uri: str,
    root: str = "runs",
    dataset: str | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CLIP features of the committed frames stage `frames_uri` (config: a `ClipFeatureConfig` YAML).

    Example overrides for the project's mini CLIP: ``{"clip.arch": "vlrepro-mini", "clip.pretrained":
    "<root>/models/<mini-clip run>/clip.pt", "output": "blocks", "last_blocks": 2}``.
    """
    from models.config import build
    from pipelines.features.clip_frames import ClipFeatureConfig

    root = storage.resolve_root(root)
    cfg = load(ClipFeatureConfig, config, overrides or None, base=build(ClipFeatureConfig, {"clip": {}}))
    clip = {"arch": cfg.clip.arch, "pretrained": cfg.clip.pretrained}
    if build(ClipFeatureConfig, {"clip": clip, "output": cfg.output, "last_blocks": cfg.last_blocks}) != cfg:
        raise ValueError(
            "only clip.arch, clip.pretrained, output and last_blocks can be set here "
            "(the arguments of stages.extract_clip_features)"
        )
    extract = stages.cached(root)["extract_clip_features"]
    result: dict[str, Any] = extract(
        frames_uri,
        root,
        dataset or _stage_dataset(frames_uri),
        cfg.clip.arch,
        cfg.clip.pretrained,
        cfg.output,
        cfg.last_blocks,
    )
    return result


# ------------------------------------------------------------------------------------------------------------ train


@flow(name="train", log_prints=True)
def train_flow(
    recipe: str,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    root: str = "runs",
    run_name: str | None = None,
    paper: str | None = None,
    method: str | None = None,
    metric: str = "t2v/R@1",
    higher_is_better: bool = True,
    num_workers: int = 1,
    use_gpu: bool = False,
    register_model: bool = True,
    dataset_stage: str | None = None,
) -> dict[str, Any]:
    """One training job of `recipe` (a key of `recipes.RECIPES`) from a config file + overrides.

    The same resolved config on the same root is the same job: a finished one returns its record, an interrupted one
    resumes from its last Ray checkpoint and keeps its MLflow run (`infra.training_job`).
    """
    root = storage.resolve_root(root)
    cfg = recipe_config(recipe, config, overrides)
    from infra.jobs import recipe_job

    job = recipe_job(  # `vlrepro train run`'s job: the same config, one job
        recipe,
        cfg,
        root,
        run_name=run_name,
        paper=paper,
        method=method,
        metric=metric,
        higher_is_better=higher_is_better,
        num_workers=num_workers,
        use_gpu=use_gpu,
        register=register_model,
        dataset_stage=dataset_stage,
        tags={"vlrepro.deployment": "train"},
    )
    result: dict[str, Any] = stages.cached(root)["train"](job)
    return result


# --------------------------------------------------------------------------------------------------------- evaluate


def evaluation_record_path(root: str, key: str) -> str:
    storage.check_key(key)
    return storage.join(root, "evaluations", f"{key}.json")


@task(name="evaluate-model", retries=1, retry_condition_fn=is_transient)
def evaluate_model(
    root: str, name: str, version: int, config: str | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """Evaluate version `version` of registered model `name` with its recipe; log one MLflow run (idempotent)."""
    import torch

    from infra.jobs import run_name
    from infra.ray_train import load_recipe_fn
    from infra.registry import Registry
    from infra.tracking import Tracker, run_guard
    from infra.training_job import TrainingJob

    tracker = Tracker.for_run_root(root)
    registry = Registry(tracker)
    # the model files are read locally: under the run root when it is a folder, else in a temporary folder
    scratch = tempfile.TemporaryDirectory(prefix="vlrepro-eval-") if not storage.is_local(root) else None
    base_dir = Path(scratch.name) if scratch else storage.local_path(storage.join(root, "evaluations"))
    model_dir = registry.download(f"models:/{name}/{version}", base_dir / f"{name}-v{version}" / "model")
    job = TrainingJob(**json.loads((model_dir / "job.json").read_text()))
    cfg = recipe_config(job.recipe, config, overrides, base=job.config)
    key = run_name("eval", cfg, part=f"{name}-v{version}")
    record_path = evaluation_record_path(root, key)
    if storage.exists(record_path):
        return {**storage.read_json(record_path), "reused": True}
    run_id = tracker.start_or_resume(
        job.paper,
        key,
        key,
        params={"model_uri": f"models:/{name}/{version}", "recipe": job.recipe, "config": cfg},
        tags={"vlrepro.evaluated_model": f"{name}/{version}", "vlrepro.recipe": job.recipe},
    )
    with run_guard(tracker, run_id):
        recipe = load_recipe_fn(RECIPES[job.recipe])(cfg)
        model = recipe.build_model()
        model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in recipe.evaluate(model).items()}
        tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in metrics.items()}, step=0)
    record = {
        "key": key,
        "run_id": run_id,
        "model": {"name": name, "version": version, "trained_as": job.run_name},
        "metrics": metrics,
        "job": asdict(job) | {"config": cfg},
    }
    storage.write_json_atomic(record_path, record)
    return {**record, "reused": False}


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    model: str = "models:/clip4clip@champion",
    root: str = "runs",
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a registered model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``) on the run root.

    The alias is resolved to a version *here*, before the cached task: re-evaluating ``@champion`` after the champion
    moved evaluates the new version instead of returning the old one's cached result.
    """
    from infra.registry import Registry
    from infra.tracking import Tracker

    root = storage.resolve_root(root)
    version = Registry(Tracker.for_run_root(root)).resolve(model)
    task_ = cached_task(evaluate_model, root)
    result: dict[str, Any] = task_(root, version.name, int(version.version), config, overrides or {})
    return result
