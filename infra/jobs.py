"""The one place a training job is named and built: every paper's DAG and `vlrepro train run` go through here.

A job's name is its key everywhere — the Ray run, the MLflow run key, ``<root>/jobs/<name>.json``, the model folder —
so one format serves them all::

    <who>[-<part>]-<data>-<hash>      clip4clip-seqTransf-mini-retrieval-tiny-s0-1a2b3c4d
                                      dcc-1B-mini-wtal-tiny-s0-…,  miniclip-mini-retrieval-tiny-s0-…

``who`` is the paper or method, ``part`` the variant or step, ``data`` the dataset key
(`recipes.experiments.dataset_key`), and ``hash`` the config's digest: the same config on the same data is the same
job (a rerun reuses or resumes it), any change is a new one. ``identity`` replaces the config in the digest where the
config holds something that does not make the model different (the mini CLIP's absolute image-text path, which
differs between run roots).

Jobs travel as JSON-able dicts of `TrainingJob` fields (task inputs are small and JSON); building one here validates
it (`TrainingJob.__post_init__`: an absolute root).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.config import config_hash
from pipelines import storage

#: hex digits of the config digest in a job name (collisions need 4 billion configs of one job on one dataset)
HASH_LENGTH = 8


def run_name(who: str, config: Any, *, part: str | None = None, data: str | None = None) -> str:
    """``<who>[-<part>][-<data>]-<hash>`` of a JSON-able `config`; a valid storage key (nothing to escape the root).

    Also names a DAG's MLflow parent and summary runs (``dcc-dag-…``, ``stan-ablations-…``), in the same format."""
    name = "-".join(p for p in (who, part, data, config_hash(config, length=HASH_LENGTH)) if p)
    return storage.check_key(name)


def was_finished(job: Mapping[str, Any]) -> bool:
    """Whether `job` had finished before now (its trusted record exists): a train task's own result cannot say so
    when Prefect hands back a persisted result, and a DAG reports which of its jobs it reused."""
    from infra.training_job import finished_job  # imports Ray: only when a DAG runs, not for --print-config

    return finished_job(job["root"], job["run_name"]) is not None


def training_job(
    *,
    paper: str,
    recipe: str,
    config: Mapping[str, Any],
    root: str,
    metric: str,
    data: str | None = None,
    part: str | None = None,
    method: str | None = None,
    who: str | None = None,
    identity: Mapping[str, Any] | None = None,
    name: str | None = None,
    dataset_stage: str | None = None,
    tags: Mapping[str, str] | None = None,
    after: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """The `TrainingJob` fields of one job, named by `run_name` (or `name`, a user's explicit job key).

    ``method`` (the registered model) defaults to ``paper``, ``who`` (the name's first part) to ``method``.
    ``after`` lists run names of jobs that must finish first (`flows.scheduling.train_together`); ``options`` are the
    other `TrainingJob` fields (``num_workers``, ``register``, ``higher_is_better``, ``use_gpu``, …).
    """
    from infra.training_job import TrainingJob  # imports Ray: only when a DAG runs, not for --print-config

    method = method or paper
    key = storage.check_key(name) if name else run_name(who or method, identity or config, part=part, data=data)
    fields: dict[str, Any] = {
        "paper": paper,
        "method": method,
        "recipe": recipe,
        "config": dict(config),
        "run_name": key,
        "root": root,
        "metric": metric,
        **options,
    }
    if dataset_stage is not None:
        fields["dataset_stage"] = dataset_stage
    if tags:
        fields["tags"] = dict(tags)
    TrainingJob(**fields)  # validates the fields and the root before any task sees the job
    return {**fields, "after": list(after)} if after else fields


def recipe_job(
    recipe: str,
    config: Mapping[str, Any],
    root: str,
    *,
    run_name: str | None = None,
    paper: str | None = None,
    method: str | None = None,
    tags: Mapping[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One job of `recipe` on its own (``vlrepro train run`` and the ``train`` deployment): named ``<recipe>-<config
    hash>`` unless the user names it, so the same config under the same root is one job (a rerun resumes it);
    experiment and registered model default to the recipe's name."""
    return training_job(
        paper=paper or recipe,
        method=method or recipe,
        who=recipe,
        name=run_name,
        recipe=recipe,
        config=config,
        root=root,
        tags=tags,
        **options,
    )


def mini_clip_job(
    root: str, dataset: str, image_text: str, overrides: Mapping[str, Any], cpus_per_worker: float | None = None
) -> tuple[dict[str, Any], str]:
    """The mini CLIP's job on a world's frame–caption pairs (registered as ``mini-clip``), and its architecture.

    Its name digests the config with the pairs' file *name* (`identity`), not their absolute path: the same pairs
    under another run root are the same model. A lone job: it gets all of the DAG's CPUs per worker."""
    from pathlib import Path

    from models.config import merge, to_dict
    from recipes.miniclip import MiniClipConfig

    cfg = merge(MiniClipConfig(image_text=image_text), dict(overrides))
    config = to_dict(cfg)
    job = training_job(
        paper="mini-clip",
        recipe="miniclip",
        config=config,
        root=root,
        metric="frame2caption/R@1",
        who="miniclip",
        data=dataset,
        identity={**config, "image_text": Path(image_text).name},
        tags={"vlrepro.dataset": dataset},
        cpus_per_worker=cpus_per_worker,
    )
    return job, cfg.clip.arch
