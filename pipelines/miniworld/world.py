"""`make_world`: write one mini dataset into a folder, idempotently and crash-safely.

Output layout (every dataset)::

    out/
      videos/<key>.mp4     keys match ^[A-Za-z0-9_-]+$: mr-{train,test}-NNNNNN, mw-..., mg-...
      sources.csv          ingest CSV: key, path (relative to out/), split (train/test), label, captions (JSON list)
      annotations.json     dataset-specific (see retrieval / wtal / grounding)
      image_text.npz       images uint8 (N, 64, 64, 3), captions (N,) str, split (N,) str
      charades_sta_*.txt   mini-grounding only
      world.json           written last: the commit marker, summary, counts and generative rules

Idempotency: ``world.json`` holds (name, seed, size, version). The same parameters return the stored summary with
``cached=True`` (after checking that its files are all still there; missing ones are regenerated); different ones
raise `FileExistsError` unless ``force=True``, which removes the world's own files (never anything else in the
folder) and regenerates. While generating, ``.generating.json`` records the parameters; after a crash, a rerun
with the same parameters keeps the finished videos (each is renamed into place only when complete) and writes the
rest.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.miniworld import grounding, image_text, retrieval, wtal
from pipelines.miniworld.encoding import write_videos
from pipelines.miniworld.plan import SIZES, WorldPlan, check_size

GENERATOR_VERSION = "2"  # bump whenever a rule changes what is generated for a given (name, seed, size)
MARKER = "world.json"
PENDING = ".generating.json"
SOURCES_COLUMNS = ("key", "path", "split", "label", "captions")
OWN_FILES = (
    "videos",
    "sources.csv",
    "annotations.json",
    "image_text.npz",
    "charades_sta_train.txt",
    "charades_sta_test.txt",
    MARKER,
    PENDING,
)

WORLDS: dict[str, Callable[[int, str], WorldPlan]] = {
    "mini-retrieval": retrieval.build,
    "mini-wtal": wtal.build,
    "mini-grounding": grounding.build,
}


def _params(name: str, seed: int, size: str) -> dict[str, Any]:
    return {"name": name, "seed": int(seed), "size": size, "version": GENERATOR_VERSION}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _write_sources(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SOURCES_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _wipe(out: Path) -> None:
    """Remove this generator's files from `out`, leaving anything else alone."""
    for name in OWN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _with_paths(summary: dict[str, Any], out: Path, cached: bool) -> dict[str, Any]:
    """The stored summary with absolute paths for the folder where the world is now."""
    result = dict(summary)
    root = out.resolve()
    result["path"] = str(root)
    for field in ("sources_csv", "annotations", "image_text"):
        result[field] = str(root / summary[field])
    result["extra_files"] = {k: str(root / v) for k, v in summary.get("extra_files", {}).items()}
    result["cached"] = cached
    return result


def _complete(out: Path, summary: dict[str, Any]) -> bool:
    """Are all files of a committed world still there (one mp4 per video)?"""
    files = [summary["sources_csv"], summary["annotations"], summary["image_text"], *summary["extra_files"].values()]
    if not all((out / f).is_file() for f in files):
        return False
    videos = out / "videos"
    return videos.is_dir() and sum(1 for p in videos.glob("[!.]*.mp4")) == summary["n_videos"]


def make_world(
    name: str,
    out: str | Path,
    seed: int = 0,
    size: str = "small",
    progress: Callable[[int, int], None] | None = None,
    workers: int = 2,
    force: bool = False,
) -> dict[str, Any]:
    """Generate dataset `name` ("mini-retrieval", "mini-wtal", "mini-grounding") of `size` into folder `out`.

    Returns a JSON-able summary: name, path, seed, size, n_videos, n_train, n_test, sources_csv, annotations,
    image_text (absolute paths), seconds (generation time), cached, plus version and extra_files.
    `progress(done, total)` is called as videos are written; `workers` processes render and encode (the output is
    identical for any value).
    """
    if name not in WORLDS:
        raise ValueError(f"unknown mini world {name!r}; valid names: {', '.join(WORLDS)}")
    check_size(size)
    out = Path(out)
    params = _params(name, seed, size)
    marker, pending = out / MARKER, out / PENDING
    if marker.exists() and not force:
        stored = json.loads(marker.read_text(encoding="utf-8"))
        found = {k: stored.get(k) for k in params}
        if found != params:
            raise FileExistsError(
                f"{out} already holds a different mini world {found}; asked for {params}. "
                "Use another folder, or force=True (CLI: --force) to delete it and regenerate."
            )
        if _complete(out, stored["summary"]):
            return _with_paths(stored["summary"], out, cached=True)
        # Files went missing after the commit: uncommit and resume (same parameters, so the videos left are valid).
        _write_json(pending, params)
        marker.unlink()
    if force:
        _wipe(out)
    elif pending.exists():
        if json.loads(pending.read_text(encoding="utf-8")) != params:  # an interrupted run with other parameters
            _wipe(out)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no mini world; use an empty folder or force=True")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(pending, params)

    start = time.monotonic()
    plan = WORLDS[name](seed, size)
    image_task = (image_text.make_image_text, (plan.image_text_kind, int(seed), size, str(out / "image_text.npz")))
    image_counts = write_videos(plan.jobs, out / "videos", workers=workers, progress=progress, side_task=image_task)
    _write_sources(out / "sources.csv", plan.sources)
    _write_json(out / "annotations.json", plan.annotations)
    for fname, text in plan.extra_files.items():
        _write_text(out / fname, text)

    n_train = sum(1 for row in plan.sources if row["split"] == "train")
    summary = {
        "name": name,
        "path": ".",
        "seed": int(seed),
        "size": size,
        "version": GENERATOR_VERSION,
        "n_videos": len(plan.jobs),
        "n_train": n_train,
        "n_test": len(plan.jobs) - n_train,
        "sources_csv": "sources.csv",
        "annotations": "annotations.json",
        "image_text": "image_text.npz",
        "extra_files": {Path(f).stem: f for f in plan.extra_files},
        "seconds": round(time.monotonic() - start, 2),
        "cached": False,
    }
    counts = {
        "videos": len(plan.jobs),
        "train": n_train,
        "test": len(plan.jobs) - n_train,
        "frames": sum(job.n_frames for job in plan.jobs),
        **image_counts,
    }
    rules = {**plan.rules, "image_text": image_text.rules(plan.image_text_kind, size), "frame": "64x64 RGB"}
    _write_json(marker, {**params, "counts": counts, "summary": summary, "rules": rules})  # the commit marker, last
    pending.unlink()
    return _with_paths(summary, out, cached=False)


__all__ = ["GENERATOR_VERSION", "SIZES", "WORLDS", "make_world"]
