"""``vlrepro reproduce``: run a paper's whole DAG, on its mini world or on a benchmark the user downloaded."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import JsonOpt, require_prefect_database
from flows.console import emit

#: paper → (flow import path, default dataset)
PAPERS: dict[str, tuple[str, str]] = {
    "clip4clip": ("flows.reproduce_clip4clip:reproduce_clip4clip", "mini-retrieval"),
    "stan": ("flows.reproduce_stan:reproduce_stan", "mini-retrieval"),
    "ucofia": ("flows.reproduce_ucofia:reproduce_ucofia", "mini-retrieval"),
    "dcc": ("flows.reproduce_dcc:reproduce_dcc", "mini-wtal"),
    "locvtp": ("flows.reproduce_locvtp:reproduce_locvtp", "mini-grounding"),
}


def reproduce(
    paper: Annotated[str, typer.Argument(help="clip4clip | stan | ucofia | dcc | locvtp")],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset: the paper's mini dataset (default) or a downloaded benchmark with a spec for this paper "
            "(msrvtt; clip4clip also msvd, didemo, activitynet-captions), which needs --data-dir."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            exists=True,
            file_okay=False,
            help="The downloaded benchmark's folder: its official annotation files are found by name anywhere under "
            "it (`vlrepro data check` says what is there).",
        ),
    ] = None,
    video_dir: Annotated[
        Path | None,
        typer.Option(
            "--video-dir", exists=True, file_okay=False, help="Where the benchmark's videos are (default: --data-dir)."
        ),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(
            "--features", exists=True, help="Released features to read instead of extracting them (flows taking them)."
        ),
    ] = None,
    root: Annotated[str, typer.Option("--root", help="Run root (shards, checkpoints, MLflow DB).")] = "runs",
    size: Annotated[
        str | None,
        typer.Option(
            help="Mini world: tiny | small | medium (default small); a benchmark: paper (default, the paper's "
            "config) | smoke."
        ),
    ] = None,
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="--size smoke: a benchmark's DAG end to end with a tiny random CLIP, 4 frames and a few steps.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Mini-world seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Ray Train workers per training job.")] = 1,
    cpus_per_worker: Annotated[
        float | None,
        typer.Option(help="CPUs (torch threads) per Ray Train worker [env VLREPRO_CPUS_PER_WORKER, default 1]."),
    ] = None,
    parallel_jobs: Annotated[
        int | None,
        typer.Option(
            help="Independent training jobs (CLIP4Clip's heads) run at once, sharing --cpus-per-worker "
            "[env VLREPRO_PARALLEL_JOBS, default 1]."
        ),
    ] = None,
    ablations: Annotated[bool, typer.Option(help="Also run the paper's ablation table.")] = False,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="Train only these variants (repeatable; CLIP4Clip's heads, e.g. --variant tightTransf); the "
            "variants they start from are added. Default: the paper's default set.",
        ),
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override every training config: key=value.")] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print every job's resolved config (job → config; what the stages produce shown as <stand-ins>) and "
            "exit without running anything or creating files.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a paper's whole DAG; finished stages are reused on rerun.

    ``--set key=value`` reaches every job of the DAG that has the key (``train.epochs=2``: every training job, the
    mini CLIP included); ``--set <job>.key=value`` one kind of job (``miniclip.train.batch_size=64``, ``dcc.…``,
    ``pretrain.…``); ``--print-config`` shows the job names and their keys."""
    import importlib

    import yaml

    from models.config import ConfigError, parse_overrides
    from pipelines import storage
    from recipes.experiments.retrieval import default_size
    from recipes.spec import SpecError, close_matches, load_spec

    # everything a spec can answer is checked here, before the flow (and Prefect, torch, Ray) is imported
    if paper not in PAPERS:
        hint = close_matches(paper, PAPERS)
        raise typer.BadParameter(
            f"unknown paper {paper!r}; choose one of {', '.join(PAPERS)}{hint}", param_hint="PAPER"
        )
    path, default_dataset = PAPERS[paper]
    dataset = _spelled(paper, dataset or default_dataset)
    try:
        spec = load_spec(paper, dataset)
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset") from exc
    if smoke and size not in (None, "smoke"):
        raise typer.BadParameter(f"--smoke is --size smoke, not {size!r}: give one of them", param_hint="--smoke")
    size = "smoke" if smoke else size or default_size(spec)
    try:
        spec.check_size(size)
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--size") from exc
    benchmark = registry_kind(dataset) is not None
    if benchmark and data_dir is None and not print_config:
        raise typer.BadParameter(
            f"{dataset} is a downloaded benchmark: give its folder (--data-dir DIR; `vlrepro data check {dataset} "
            "--data-dir DIR` says what it holds)",
            param_hint="--data-dir",
        )
    if variant:
        try:
            spec.check_variants(list(variant))
        except SpecError as exc:
            raise typer.BadParameter(str(exc), param_hint="--variant") from exc
    if ablations and not spec.has_ablations:
        raise typer.BadParameter(
            f"{paper} has no ablation table (its variants run by default)", param_hint="--ablations"
        )
    # NaN and inf pass a plain `> 0`
    if cpus_per_worker is not None and not (math.isfinite(cpus_per_worker) and cpus_per_worker > 0):
        raise typer.BadParameter("must be a positive number of CPUs", param_hint="--cpus-per-worker")
    if parallel_jobs is not None and parallel_jobs < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--parallel-jobs")
    try:
        overrides = parse_overrides(set_) if set_ else {}
    except (ConfigError, yaml.YAMLError) as exc:  # `--set noequals`: a usage error like an unknown key
        raise typer.BadParameter(str(exc), param_hint="--set") from exc
    # only now the flow module (Prefect, torch): its job configs are what `--set` keys are checked against
    from flows.stages import route_overrides

    module, attr = path.split(":")
    flow_module = importlib.import_module(module)
    flow_fn = getattr(flow_module, attr)
    given = {"data_dir": data_dir, "video_dir": video_dir, "features": features}
    takes = inspect.signature(getattr(flow_fn, "fn", flow_fn)).parameters
    for name, value in given.items():  # forwarded only to a flow that takes it, and never to a mini world
        flag = "--" + name.replace("_", "-")
        if value is not None and (name not in takes or (name != "features" and not benchmark)):
            raise typer.BadParameter(f"{paper} on {dataset} does not take {flag}", param_hint=flag)
    choice: dict[str, Any] = {"variants": list(variant) if variant else None, "ablations": ablations}
    if "dataset" in inspect.signature(flow_module.job_configs).parameters:
        choice["dataset"] = dataset  # a benchmark's spec (the retrieval papers); the others run their mini world
    try:  # the one grammar, checked before any work: a key no job has is an error naming close matches
        user = route_overrides(overrides, flow_module.job_configs(size, **choice))
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc
    if print_config:
        emit(flow_module.job_configs(size, user, **choice), as_json)
        return
    require_prefect_database()  # a broken PREFECT_HOME database: one error now, not minutes of server retries
    kwargs: dict[str, Any] = {
        "dataset": dataset,
        "root": storage.resolve_root(root),  # the edge: tasks, Ray workers and records only see absolute paths
        "size": size,
        "seed": seed,
        "num_workers": workers,
        # the DAG's resources, handed to the flow (the settings give only the defaults of those not given)
        "cpus_per_worker": cpus_per_worker,
        "parallel_jobs": parallel_jobs,
    }
    if overrides:
        kwargs["overrides"] = overrides
    if ablations:
        kwargs["ablations"] = True
    if variant:
        kwargs["variants"] = list(variant)
    for name, value in given.items():
        if value is not None:  # resolved once, at the edge, like the root
            kwargs[name] = str(value.expanduser().resolve())
    result = flow_fn(**kwargs)
    emit(result, as_json, _format_reproduce)


def registry_kind(dataset: str) -> str | None:
    """The evaluation family of a downloaded benchmark (`pipelines.datasets.registry`), None for a mini world."""
    from pipelines.datasets import registry

    try:
        return registry.KIND.get(registry.canonical(dataset))
    except registry.UnknownDataset:
        return None


def _spelled(paper: str, dataset: str) -> str:
    """`dataset` as the registry spells it when the paper has a spec by that name (``MSR-VTT`` → ``msrvtt``)."""
    from pipelines.datasets import registry
    from recipes.spec import available

    try:
        canon = registry.canonical(dataset)
    except registry.UnknownDataset:
        return dataset
    return canon if canon in available().get(paper, []) else dataset


def _format_reproduce(r: dict[str, Any]) -> str:
    lines = [f"{r.get('paper')} on {r.get('dataset')} ({r.get('seconds')} s)"]
    heads = r.get("variants") or {}
    width = max((len(name) for name in heads), default=0)
    for name, head in heads.items():
        parts = []
        for block in ("overall", "order"):
            if block in head:
                parts.append(
                    f"{block}: t2v R@1 {head[block]['t2v']['R@1']:.1f} v2t R@1 {head[block]['v2t']['R@1']:.1f}"
                )
        lines.append(
            f"  {name:{width}s} " + " | ".join(parts) + f"  (run {head.get('run_id')}, v{head.get('model_version')})"
        )
    ledger = r.get("ledger")
    if ledger:
        g = ledger["gallery"]
        expected = "" if g.get("expected") is None else f" of the protocol's {g['expected']:,}"
        lines.append(f"  gallery {g['split']}: {g['evaluated']:,} videos{expected}, {g['queries']:,} queries")
        counts = ", ".join(f"{n} {status}" for status, n in ledger["counts"].items()) or "none"
        lines.append(f"  ledger ({counts}): {ledger['path']}")
    for row in r.get("paper_vs_ours") or ():
        if row.get("comparable"):
            if row["ours"] is None:  # a variant this run did not train
                lines.append(f"  paper vs ours {row['variant']} {row['metric']}: {row['paper']:.1f} vs – (not trained)")
                continue
            scale = f"global batch {row.get('global_batch')} on {row.get('devices')} {row.get('device')}"
            ours = f"{row['ours']:.1f} (Δ {row['delta']:+.1f}), {scale}"
            lines.append(f"  paper vs ours {row['variant']} {row['metric']}: {row['paper']:.1f} vs {ours}")
    return "\n".join(lines)
