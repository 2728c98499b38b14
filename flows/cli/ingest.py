"""``vlrepro ingest``: decode videos into WebDataset shards."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, progress_bar, require_prefect_database
from flows.console import emit

#: config field → the option that sets it (for the hint of a value the config refuses)
_OPTION = {
    "fps": "--fps",
    "short_side": "--size",
    "crop": "--crop",
    "timeout_s": "--timeout",
    "max_frames": "--max-frames",
    "max_duration_s": "--max-duration",
    "samples_per_shard": "--samples-per-shard",
}


def ingest(
    source: Annotated[str, typer.Option("--source", help="Folder of videos, or a CSV with a 'path' column.")],
    out: Annotated[str, typer.Option("--out", help="Run root (local path or fsspec URI).")] = "runs",
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the source folder/CSV name).")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second, sampled by timestamp.")] = 1.0,
    size: Annotated[int, typer.Option(help="Short side after resizing (pixels).")] = 224,
    crop: Annotated[int | None, typer.Option(help="Centre crop (pixels; 0 = none; default = --size).")] = None,
    samples_per_shard: Annotated[int, typer.Option(min=1, help="Videos per shard.")] = 64,
    mode: Annotated[str, typer.Option(help="incremental | overwrite | retry-failed")] = "incremental",
    max_failure_ratio: Annotated[
        float, typer.Option(help="Exit non-zero above this fraction of failed inputs.")
    ] = 0.05,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per video decode.")] = 600.0,
    max_frames: Annotated[
        int, typer.Option("--max-frames", help="Keep only the first this many frames of a video (0 = no limit).")
    ] = 0,
    max_duration: Annotated[
        float,
        typer.Option("--max-duration", help="Seconds: a longer video is a 'too_long' row, not decoded (0 = no limit)."),
    ] = 0.0,
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
    if not 0.0 <= max_failure_ratio <= 1.0:  # NaN fails this too
        raise typer.BadParameter("must be between 0 and 1", param_hint="--max-failure-ratio")
    crop_px = size if crop is None else crop
    try:
        # The decode settings check their own bounds (NaN, inf, negative timeouts, ...): one rule for the CLI, the
        # Prefect flow and library callers; here a refused value is a usage error (exit 2), before any file is read.
        decode = DecodeConfig(
            fps=fps,
            short_side=size,
            crop=crop_px,
            timeout_s=timeout,
            max_frames=max_frames,
            max_duration_s=max_duration,
        )
        cfg = ing.IngestConfig(decode, samples_per_shard)
    except ValueError as exc:  # the message starts with the field's name: point at its option
        raise typer.BadParameter(str(exc), param_hint=_OPTION.get(str(exc).split(" ", 1)[0])) from exc
    src = Path(source)
    if not src.exists():
        raise typer.BadParameter(f"{source} does not exist", param_hint="--source")
    name = dataset or ing.make_key(src.stem if src.is_file() else src.resolve().name)
    source, out = str(src.resolve()), storage.resolve_root(out)  # the edge: no relative path travels further
    if prefect:
        require_prefect_database()
        from flows.ingest import ingest_flow

        result = ingest_flow(
            source,
            out,
            name,
            fps,
            size,
            crop_px,
            samples_per_shard,
            mode,
            timeout,
            max_frames=max_frames,
            max_duration_s=max_duration,
        )
    else:
        with progress_bar("ingest") as progress:
            result = ing.ingest(source, out, name, cfg, mode, progress=progress).as_dict()
    result["max_failure_ratio"] = max_failure_ratio
    result["ok"] = result["failure_ratio"] <= max_failure_ratio
    if not result["ok"]:
        # a failure like any other: the `error` line, and the `error` field in the JSON result
        result["error"] = (
            f"failure ratio {result['failure_ratio']:.3f} is above --max-failure-ratio {max_failure_ratio}"
        )
    emit(
        result,
        as_json,
        lambda r: f"{r['n_samples']}/{r['n_inputs']} videos usable {r['status_counts']} → {r['stage_uri']}",
    )
    if not result["ok"]:
        print(f"error: {result['error']}", file=sys.stderr)
        raise typer.Exit(1)
