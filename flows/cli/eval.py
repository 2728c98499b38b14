"""``vlrepro eval``: score saved predictions with the project's metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import JsonOpt
from flows.console import emit

app = typer.Typer(
    help="Score saved predictions with the project's metrics.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("retrieval")
def retrieval(
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
    if sim.ndim != 2 or sim.size == 0:
        raise typer.BadParameter(f"expected a non-empty 2-D matrix, got shape {sim.shape}", param_hint="--similarity")
    if not np.issubdtype(sim.dtype, np.number) or not np.isfinite(sim).all():
        # a NaN ranks anywhere (argsort puts it last): the recalls would be silently wrong
        raise typer.BadParameter("expected finite numbers (no NaN or inf)", param_hint="--similarity")
    gt = None
    if caption_video is not None:
        gt = _load_npy(caption_video, "--caption-video")
        integral = (
            np.issubdtype(gt.dtype, np.number) and bool(np.isfinite(gt).all()) and bool((gt == np.round(gt)).all())
        )
        if not integral or gt.shape != (sim.shape[0],) or gt.min() < 0 or gt.max() >= sim.shape[1]:
            raise typer.BadParameter("must be (Q,) integer indices into the gallery", param_hint="--caption-video")
        gt = gt.astype(np.int64)
    elif sim.shape[0] != sim.shape[1]:
        raise typer.BadParameter(
            f"ground truth on the diagonal needs a square matrix, got {sim.shape}", param_hint="--similarity"
        )
    report = retrieval_report(sim, gt)
    emit(report, as_json, _format_retrieval)


@app.command("detection")
def detection(
    ground_truth: Annotated[Path, typer.Option("--ground-truth", help="ActivityNet/THUMOS ground-truth JSON.")],
    predictions: Annotated[Path, typer.Option("--predictions", help="ActivityNet-format predictions JSON.")],
    subset: Annotated[str | None, typer.Option(help="Evaluate this subset only (e.g. test, validation).")] = None,
    tiou: Annotated[str, typer.Option(help="Comma-separated tIoU thresholds, or 'thumos' / 'anet'.")] = "thumos",
    as_json: JsonOpt = False,
) -> None:
    """Temporal action detection mAP per tIoU and average mAP (fractions), ActivityNet toolkit semantics.

    Predictions that cannot be scored are counted, never scored silently: a label absent from the evaluated ground
    truth, or a segment that ends before it starts (``n_ignored_predictions``, by reason in ``ignored_predictions``;
    a warning on stderr). A malformed entry is an error naming it."""
    from models.common.metrics.detection import (
        ANET_TIOU,
        THUMOS14_TIOU,
        check_ground_truth,
        check_predictions,
        detection_map,
    )

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
    try:
        check_ground_truth(database)
    except ValueError as exc:
        raise typer.BadParameter(f"{ground_truth}: {exc}", param_hint="--ground-truth") from exc
    try:
        scorable, n_reversed = check_predictions(results)
    except ValueError as exc:
        raise typer.BadParameter(f"{predictions}: {exc}", param_hint="--predictions") from exc
    out = detection_map(database, scorable, thresholds, subset=subset)
    ignored = {"label_not_in_ground_truth": out["n_ignored_predictions"], "end_before_start": n_reversed}
    result = {
        "tiou": out["tiou"],
        "mAP": out["mAP"],
        "average_mAP": out["average_mAP"],
        "n_ignored_predictions": sum(ignored.values()),
        "ignored_predictions": ignored,
    }
    if result["n_ignored_predictions"]:
        reasons = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in ignored.items() if n)
        print(f"warning: {result['n_ignored_predictions']} predictions not scored ({reasons})", file=sys.stderr)
    emit(result, as_json, _format_detection)


def _format_detection(r: dict[str, Any]) -> str:
    lines = [f"mAP@{t:.2f} {m:.4f}" for t, m in zip(r["tiou"], r["mAP"])]
    lines.append(f"average {r['average_mAP']:.4f}")
    if r["n_ignored_predictions"]:
        lines.append(f"not scored: {r['n_ignored_predictions']} predictions {r['ignored_predictions']}")
    return "\n".join(lines)


def _format_retrieval(r: dict[str, Any]) -> str:
    lines = []
    for d in ("t2v", "v2t"):
        m = r[d]
        lines.append(
            f"{d}: R@1 {m['R@1']:.1f}  R@5 {m['R@5']:.1f}  R@10 {m['R@10']:.1f}  MdR {m['MdR']:.1f}  MnR {m['MnR']:.1f}"
        )
    return "\n".join(lines)


def _load_json(path: Path, hint: str) -> Any:
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint=hint)
    try:
        return json.loads(path.read_bytes())  # bytes: json detects UTF-8 with or without a BOM, and UTF-16/32
    except (ValueError, OSError) as exc:  # a folder, unreadable, not UTF-8, not JSON
        raise typer.BadParameter(f"{path} is not a readable JSON file ({exc})", param_hint=hint) from exc


def _load_npy(path: Path, hint: str) -> Any:
    import numpy as np

    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint=hint)
    try:
        # EOFError: an empty or truncated file (click turned it into a silent "aborted", exit 130)
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise typer.BadParameter(
            f"{path} is not a readable .npy array ({exc or type(exc).__name__})", param_hint=hint
        ) from exc
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive as a lazy NpzFile of several arrays
        array.close()
        raise typer.BadParameter(
            f"{path} is an .npz archive; save the matrix alone with numpy.save (.npy)", param_hint=hint
        )
    return array
