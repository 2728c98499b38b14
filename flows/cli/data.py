"""``vlrepro data``: generate the mini video world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, progress_bar
from flows.console import emit

app = typer.Typer(help="Generate the mini video world.", no_args_is_help=True, rich_markup_mode=None)


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
