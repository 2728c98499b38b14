"""The `vlrepro` command line.

Conventions every command keeps:
- ``--help`` everywhere; heavy libraries (torch, prefect, ray, mlflow) are imported inside commands, so ``--help``
  is instant;
- ``--json`` prints exactly one JSON object as the **last line of stdout** (logs and progress go to stderr);
- progress bars only when stderr is a terminal;
- a bad argument or a failed precondition is one line on stderr (``error: ...``) and a non-zero exit
  (2 for usage errors, 1 for everything else); with ``--json`` the same message is also the JSON object
  ``{"error": ...}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

# typer ≥ 0.2x vendors its own click; its exception classes are the ones raised
from typer._click import exceptions as click_exc

from flows.console import emit

# A research CLI should not phone home: Prefect/Ray/MLflow telemetry is off unless the user turns it back on.
for _var, _value in (
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DO_NOT_TRACK", "1"),
    # Prefect's temporary API server gets 20 s to start by default; a loaded 2-core machine needs more.
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"),
):
    os.environ.setdefault(_var, _value)

app = typer.Typer(
    name="vlrepro",
    help="CLIP-era video-language reproductions as runnable, resumable DAGs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Generate the mini video world.", no_args_is_help=True, rich_markup_mode=None)
eval_app = typer.Typer(
    help="Score saved predictions with the project's metrics.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")


def _mount_subcommands() -> None:
    from flows.serve import serve  # light modules: heavy imports happen inside their commands
    from flows.train_cli import train_app

    app.add_typer(train_app, name="train")
    app.command("serve")(serve)


_mount_subcommands()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def is_tty() -> bool:
    return sys.stderr.isatty()


@contextmanager
def progress_bar(desc: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr when interactive; a no-op callback ``(done, total)`` otherwise."""
    if not is_tty():
        yield lambda done, total: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(done: int, total_: int) -> None:
        bar.total = total_
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------------------- data


@data_app.command("make")
def data_make(
    name: Annotated[str, typer.Argument(help="mini-retrieval | mini-wtal | mini-grounding")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create.")],
    seed: Annotated[int, typer.Option(help="Generator seed (same seed → same world).")] = 0,
    size: Annotated[str, typer.Option(help="tiny | small | medium (see README: sizes).")] = "small",
    force: Annotated[bool, typer.Option(help="Regenerate even if OUT holds another world.")] = False,
    workers: Annotated[int, typer.Option(help="Encoding processes.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Generate a deterministic mini dataset (ffmpeg-encoded videos + annotations + image–caption set)."""
    from pipelines.miniworld import SIZES, WORLDS, make_world

    if name not in WORLDS:
        raise typer.BadParameter(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(WORLDS))}", param_hint="NAME"
        )
    if size not in SIZES:
        raise typer.BadParameter(f"unknown size {size!r}; choose one of {', '.join(SIZES)}", param_hint="--size")
    with progress_bar(f"make {name}") as progress:
        # absolute, like every run root: the summary's paths are read later from other directories
        summary = make_world(name, out.resolve(), seed=seed, size=size, progress=progress, workers=workers, force=force)
    emit(
        summary,
        as_json,
        lambda s: f"{s['name']}: {s['n_videos']} videos ({s['n_train']} train / {s['n_test']} test) in {s['path']}",
    )


# ----------------------------------------------------------------------------------------------------- ingest


@app.command("ingest")
def ingest_cmd(
    source: Annotated[str, typer.Option("--source", help="Folder of videos, or a CSV with a 'path' column.")],
    out: Annotated[str, typer.Option("--out", help="Run root (local path or fsspec URI).")] = "runs",
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the source folder/CSV name).")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second, sampled by timestamp.")] = 1.0,
    size: Annotated[int, typer.Option(help="Short side after resizing (pixels).")] = 224,
    crop: Annotated[int | None, typer.Option(help="Centre crop (pixels; 0 = none; default = --size).")] = None,
    samples_per_shard: Annotated[int, typer.Option(help="Videos per shard.")] = 64,
    mode: Annotated[str, typer.Option(help="incremental | overwrite | retry-failed")] = "incremental",
    max_failure_ratio: Annotated[
        float, typer.Option(help="Exit non-zero above this fraction of failed inputs.")
    ] = 0.05,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per video decode.")] = 600.0,
    prefect: Annotated[bool, typer.Option(help="Run as a Prefect flow (cached, resumable tasks).")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Decode videos into WebDataset shards with one manifest row per input."""
    from pipelines import ingest as ing
    from pipelines import storage
    from pipelines.decode import DecodeConfig
    from pipelines.shards import MODES

    if mode not in MODES:
        raise typer.BadParameter(f"{mode!r} is not one of {', '.join(MODES)}", param_hint="--mode")
    if not 0.0 <= max_failure_ratio <= 1.0:
        raise typer.BadParameter("must be between 0 and 1", param_hint="--max-failure-ratio")
    src = Path(source)
    if not src.exists():
        raise typer.BadParameter(f"{source} does not exist", param_hint="--source")
    name = dataset or ing.make_key(src.stem if src.is_file() else src.resolve().name)
    source, out = str(src.resolve()), storage.resolve_root(out)  # the edge: no relative path travels further
    crop_px = size if crop is None else crop
    try:
        DecodeConfig(fps=fps, short_side=size, crop=crop_px)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if prefect:
        from flows.ingest import ingest_flow

        result = ingest_flow(source, out, name, fps, size, crop_px, samples_per_shard, mode, timeout)
    else:
        cfg = ing.IngestConfig(
            DecodeConfig(fps=fps, short_side=size, crop=crop_px, timeout_s=timeout), samples_per_shard
        )
        with progress_bar("ingest") as progress:
            result = ing.ingest(source, out, name, cfg, mode, progress=progress).as_dict()
    result["max_failure_ratio"] = max_failure_ratio
    result["ok"] = result["failure_ratio"] <= max_failure_ratio
    emit(
        result,
        as_json,
        lambda r: f"{r['n_samples']}/{r['n_inputs']} videos usable {r['status_counts']} → {r['stage_uri']}",
    )
    if not result["ok"]:
        print(
            f"error: failure ratio {result['failure_ratio']:.3f} is above --max-failure-ratio {max_failure_ratio}",
            file=sys.stderr,
        )
        raise typer.Exit(1)


# -------------------------------------------------------------------------------------------------- reproduce

#: paper → (flow import path, default dataset)
PAPERS: dict[str, tuple[str, str]] = {
    "clip4clip": ("flows.reproduce_clip4clip:reproduce_clip4clip", "mini-retrieval"),
    "stan": ("flows.reproduce_stan:reproduce_stan", "mini-retrieval"),
    "ucofia": ("flows.reproduce_ucofia:reproduce_ucofia", "mini-retrieval"),
    "dcc": ("flows.reproduce_dcc:reproduce_dcc", "mini-wtal"),
    "locvtp": ("flows.reproduce_locvtp:reproduce_locvtp", "mini-grounding"),
}


@app.command("reproduce")
def reproduce_cmd(
    paper: Annotated[str, typer.Argument(help="clip4clip | stan | ucofia | dcc | locvtp")],
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the paper's mini dataset).")] = None,
    root: Annotated[str, typer.Option("--root", help="Run root (shards, checkpoints, MLflow DB).")] = "runs",
    size: Annotated[str, typer.Option(help="Mini-world size: tiny | small | medium.")] = "small",
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

    from models.config import parse_overrides
    from pipelines import storage
    from recipes.spec import SpecError, close_matches, load_spec

    # everything a spec can answer is checked here, before the flow (and Prefect, torch, Ray) is imported
    if paper not in PAPERS:
        hint = close_matches(paper, PAPERS)
        raise typer.BadParameter(
            f"unknown paper {paper!r}; choose one of {', '.join(PAPERS)}{hint}", param_hint="PAPER"
        )
    path, default_dataset = PAPERS[paper]
    try:
        spec = load_spec(paper, dataset or default_dataset)
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset") from exc
    try:
        spec.check_size(size)
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--size") from exc
    if variant:
        try:
            spec.check_variants(list(variant))
        except SpecError as exc:
            raise typer.BadParameter(str(exc), param_hint="--variant") from exc
    if ablations and not spec.has_ablations:
        raise typer.BadParameter(
            f"{paper} has no ablation table (its variants run by default)", param_hint="--ablations"
        )
    if cpus_per_worker is not None:
        if not cpus_per_worker > 0:
            raise typer.BadParameter("must be a positive number of CPUs", param_hint="--cpus-per-worker")
        os.environ["VLREPRO_CPUS_PER_WORKER"] = str(cpus_per_worker)
    if parallel_jobs is not None:
        if parallel_jobs < 1:
            raise typer.BadParameter("must be at least 1", param_hint="--parallel-jobs")
        os.environ["VLREPRO_PARALLEL_JOBS"] = str(parallel_jobs)
    if cpus_per_worker is not None or parallel_jobs is not None:
        from infra.settings import get_settings

        get_settings(reload=True)
    overrides = parse_overrides(set_) if set_ else {}
    # only now the flow module (Prefect, torch): its job configs are what `--set` keys are checked against
    from flows.stages import route_overrides

    module, attr = path.split(":")
    flow_module = importlib.import_module(module)
    choice: dict[str, Any] = {"variants": list(variant) if variant else None, "ablations": ablations}
    try:  # the one grammar, checked before any work: a key no job has is an error naming close matches
        user = route_overrides(overrides, flow_module.job_configs(size, **choice))
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc
    if print_config:
        emit(flow_module.job_configs(size, user, **choice), as_json)
        return
    flow_fn = getattr(flow_module, attr)
    kwargs: dict[str, Any] = {
        "dataset": dataset or default_dataset,
        "root": storage.resolve_root(root),  # the edge: tasks, Ray workers and records only see absolute paths
        "size": size,
        "seed": seed,
        "num_workers": workers,
    }
    if overrides:
        kwargs["overrides"] = overrides
    if ablations:
        kwargs["ablations"] = True
    if variant:
        kwargs["variants"] = list(variant)
    result = flow_fn(**kwargs)
    emit(result, as_json, _format_reproduce)


def _format_reproduce(r: dict[str, Any]) -> str:
    lines = [f"{r.get('paper')} on {r.get('dataset')} ({r.get('seconds')} s)"]
    heads = r.get("heads") or {}
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
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- eval


@eval_app.command("retrieval")
def eval_retrieval(
    similarity: Annotated[
        Path, typer.Option("--similarity", help="A saved (Q, G) .npy matrix; ground truth on the diagonal.")
    ],
    caption_video: Annotated[
        Path | None, typer.Option(help="Optional (Q,) .npy of gallery indices for multi-caption sets.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Text→video and video→text R@1/5/10, MdR, MnR (R@K in percent) from a similarity matrix."""
    import numpy as np

    from models.common.metrics.retrieval import retrieval_report

    sim = _load_npy(similarity, "--similarity")
    if sim.ndim != 2:
        raise typer.BadParameter(f"expected a 2-D matrix, got shape {sim.shape}", param_hint="--similarity")
    gt = None
    if caption_video is not None:
        gt = _load_npy(caption_video, "--caption-video").astype(np.int64)
        if gt.shape != (sim.shape[0],) or gt.min() < 0 or gt.max() >= sim.shape[1]:
            raise typer.BadParameter("must be (Q,) indices into the gallery", param_hint="--caption-video")
    elif sim.shape[0] != sim.shape[1]:
        raise typer.BadParameter(
            f"ground truth on the diagonal needs a square matrix, got {sim.shape}", param_hint="--similarity"
        )
    report = retrieval_report(sim, gt)
    emit(report, as_json, _format_retrieval)


@eval_app.command("detection")
def eval_detection(
    ground_truth: Annotated[Path, typer.Option("--ground-truth", help="ActivityNet/THUMOS ground-truth JSON.")],
    predictions: Annotated[Path, typer.Option("--predictions", help="ActivityNet-format predictions JSON.")],
    subset: Annotated[str | None, typer.Option(help="Evaluate this subset only (e.g. test, validation).")] = None,
    tiou: Annotated[str, typer.Option(help="Comma-separated tIoU thresholds, or 'thumos' / 'anet'.")] = "thumos",
    as_json: JsonOpt = False,
) -> None:
    """Temporal action detection mAP per tIoU and average mAP (fractions), ActivityNet toolkit semantics."""
    from models.common.metrics.detection import ANET_TIOU, THUMOS14_TIOU, detection_map

    named = {"thumos": THUMOS14_TIOU, "anet": ANET_TIOU}
    try:
        thresholds = list(named[tiou]) if tiou in named else [float(t) for t in tiou.split(",") if t.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"{tiou!r} is not a list of numbers", param_hint="--tiou") from exc
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        raise typer.BadParameter("thresholds must lie in (0, 1]", param_hint="--tiou")
    gt = _load_json(ground_truth, "--ground-truth")
    pred = _load_json(predictions, "--predictions")
    database = gt.get("database", gt) if isinstance(gt, dict) else None
    results = pred.get("results", pred) if isinstance(pred, dict) else None
    if not isinstance(database, dict):
        raise typer.BadParameter("expected {'database': {video: {...}}}", param_hint="--ground-truth")
    if not isinstance(results, dict):
        raise typer.BadParameter("expected {'results': {video: [...]}}", param_hint="--predictions")
    out = detection_map(database, results, thresholds, subset=subset)
    result = {"tiou": out["tiou"], "mAP": out["mAP"], "average_mAP": out["average_mAP"]}
    emit(
        result,
        as_json,
        lambda r: (
            "\n".join(f"mAP@{t:.2f} {m:.4f}" for t, m in zip(r["tiou"], r["mAP"])) + f"\naverage {r['average_mAP']:.4f}"
        ),
    )


def _load_json(path: Path, hint: str) -> Any:
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint=hint)
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not valid JSON ({exc})", param_hint=hint) from exc


def _format_retrieval(r: dict[str, Any]) -> str:
    lines = []
    for d in ("t2v", "v2t"):
        m = r[d]
        lines.append(
            f"{d}: R@1 {m['R@1']:.1f}  R@5 {m['R@5']:.1f}  R@10 {m['R@10']:.1f}  MdR {m['MdR']:.1f}  MnR {m['MnR']:.1f}"
        )
    return "\n".join(lines)


def _load_npy(path: Path, hint: str) -> Any:
    import numpy as np

    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint=hint)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not a readable .npy array ({exc})", param_hint=hint) from exc


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every failure into one line (and `{"error"}` with --json)."""
    args = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in args
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) ends the command like Ctrl-C: Python's default would exit without cleanup, leaving the
        # temporary Prefect server and the local Ray processes this run started behind as orphans.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        rc = app(args=args, prog_name="vlrepro", standalone_mode=False)
        return rc if isinstance(rc, int) else 0  # click returns Exit codes instead of raising here
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        _fail("aborted", wants_json)
        return 130
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.format_message())
        return 0
    except click_exc.UsageError as exc:
        hint = (
            f" (see `vlrepro {exc.ctx.command_path.split(' ', 1)[1]} --help`)"
            if exc.ctx and " " in exc.ctx.command_path
            else ""
        )
        _fail(f"{exc.format_message()}{hint}", wants_json)
        return 2
    except Exception as exc:  # user-facing: one line, never a traceback wall (VLREPRO_DEBUG=1 shows it)
        if os.environ.get("VLREPRO_DEBUG"):
            raise
        if isinstance(exc, CliError | ValueError | FileExistsError | FileNotFoundError | RuntimeError | OSError):
            _fail(
                f"{type(exc).__name__}: {exc}".splitlines()[0] if not isinstance(exc, CliError) else str(exc),
                wants_json,
            )
            return 1
        raise


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _fail(message: str, wants_json: bool) -> None:
    print(f"error: {message}", file=sys.stderr)
    if wants_json:
        print(json.dumps({"error": message}), flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
