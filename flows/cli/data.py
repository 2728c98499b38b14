"""``vlrepro data``: generate the mini video world; check a downloaded benchmark against its protocol."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import CliError, JsonOpt, progress_bar
from flows.console import emit

app = typer.Typer(
    help="Generate the mini video world; check a downloaded benchmark.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("make")
def make(
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


#: ids shown per list (the JSON and the text); the counts are always whole
SHOWN_IDS = 20


@app.command("check")
def check(
    dataset: Annotated[
        str,
        typer.Argument(
            help="msrvtt | msvd | didemo | activitynet-captions | thumos14 | activitynet12 | charades-sta",
            show_default=False,
        ),
    ],
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            help="Where the benchmark was unpacked: its official files are found by name anywhere under it.",
            exists=True,
            file_okay=False,
        ),
    ],
    video_dir: Annotated[
        Path | None,
        typer.Option(
            "--video-dir", help="Where the videos are (default: under --data-dir).", exists=True, file_okay=False
        ),
    ] = None,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Open every found video (PyAV) to list the unreadable ones.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Per split: annotated videos, found, missing and unreadable ids, captions, against the protocol's published
    counts. Exit 1 when a test split is incomplete (a missing or unreadable video, or not the published number)."""
    from pipelines.datasets.files import AmbiguousFile, AnnotationNotFound, DatasetFileError
    from pipelines.datasets.registry import UnknownDataset, checker

    try:
        run = checker(dataset)
    except UnknownDataset as exc:
        raise typer.BadParameter(str(exc), param_hint="DATASET") from None
    try:
        report = run(data_dir.resolve(), None if video_dir is None else video_dir.resolve(), probe)
    except (AnnotationNotFound, AmbiguousFile) as exc:  # --data-dir does not hold (exactly one copy of) the dataset
        raise typer.BadParameter(str(exc), param_hint="--data-dir") from None
    except DatasetFileError as exc:
        raise CliError(str(exc)) from None
    result = report.to_json(max_ids=SHOWN_IDS)
    if not report.ok:
        result["error"] = _incomplete(result)
    emit(result, as_json, _human)
    if not report.ok:
        print(f"error: {result['error']}", file=sys.stderr)
        raise typer.Exit(1)


def _incomplete(result: dict[str, Any]) -> str:
    parts = []
    for s in result["splits"]:
        if s["is_test"] and not s["complete"]:
            counts = f"{s['usable']:,} usable of {s['annotated']:,} annotated"
            if s["expected"] is not None:
                counts += f", {s['expected']:,} published"
            parts.append(f"{s['name']} ({s['n_missing']:,} missing, {s['n_unreadable']:,} unreadable; {counts})")
    return f"{result['dataset']}: incomplete test split {'; '.join(parts)}"


def _ids(ids: list[str], n: int, shown: int = 5) -> str:
    more = f", … ({n:,} in all)" if n > shown else ""
    return ", ".join(ids[:shown]) + more


def _human(r: dict[str, Any]) -> str:
    where = f" (videos: {r['video_dir']})" if r["video_dir"] else ""
    lines = [f"{r['dataset']} in {r['data_dir']}{where}{'' if r['probed'] else ' (not probed: --no-probe)'}"]
    header = (
        f"  {'split':<12} {'annotated':>9} {'found':>9} {'missing':>8} {'unreadable':>10} {'captions':>9}  published"
    )
    lines.append(header)
    for s in r["splits"]:
        published = "—" if s["expected"] is None else f"{s['expected']:,}"
        if s["expected_captions"] is not None:
            published += f" / {s['expected_captions']:,} captions"
        name = s["name"] + (" *" if s["is_test"] else "")
        lines.append(
            f"  {name:<12} {s['annotated']:>9,} {s['found']:>9,} {s['n_missing']:>8,} {s['n_unreadable']:>10,} "
            f"{s['captions']:>9,}  {published}"
        )
        if s["n_missing"]:
            lines.append(f"      missing: {_ids(s['missing'], s['n_missing'])}")
        if s["n_unreadable"]:
            lines.append(f"      unreadable: {_ids(s['unreadable'], s['n_unreadable'])}")
        lines.extend(f"      differs: {d}" for d in s["differences"])
    lines.append("  * the evaluated test split; published counts and their sources: --json")
    lines.extend(f"  note: {n}" for n in r["notes"])
    lines.append("ok: every test split is complete" if r["ok"] else f"not ok: {r['error']}")
    return "\n".join(lines)
