"""W-TAL timeline plot for MLflow: ground truth vs the CBP CAS vs the VLP CAS vs the final detections, per video.

The figure DCC's argument is about (Ju et al., CVPR 2023, Fig. 1): the classification branch fires on the action
core only (incomplete), the vision-language branch on everything that *looks* like the class, static context
included (over-complete). Per video, four rows on a shared time axis (seconds):

1. **ground truth** — each instance as a bar in its class colour; on the mini world its phases are shaded (core dark,
   run-up / follow-through light, static context hatched) and still distractor objects are grey;
2. **CBP** and 3. **VLP** — the branch's probability of each of the video's labels (one line per label), the
   pseudo-label thresholds δ_h / δ_l dashed, and its confident foreground (top band) / background (bottom band);
4. **detections** — the top detections of the evaluated branch, opacity by rank.

Input: the ``timeline.json`` the DCC recipe exports (`recipes.dcc._timeline`). Built with the
object-oriented API on an Agg canvas, never pyplot (see `infra.plots`); `Tracker.log_figure` saves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

ROWS: tuple[str, ...] = ("ground truth", "CBP", "VLP", "detections")
_PHASE_STYLE: dict[str, dict[str, Any]] = {
    "core": {"alpha": 0.85},
    "run_up": {"alpha": 0.4},
    "follow_through": {"alpha": 0.4},
    "context_before": {"alpha": 0.15, "hatch": "//"},
    "context_after": {"alpha": 0.15, "hatch": "//"},
}


def _colours(classes: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(classes)}


def _bar(ax: Axes, start: float, end: float, y: float, h: float, colour: Any, **kw: Any) -> None:
    ax.broken_barh([(start, max(end - start, 1e-3))], (y, h), facecolors=colour, edgecolor="none", **kw)


def _ground_truth(ax: Axes, video: Mapping[str, Any], colours: Mapping[str, Any]) -> None:
    phases = video.get("phases") or []
    for s, e, label in video.get("instances", []):
        _bar(ax, s, e, 0.55, 0.4, colours[label])
    for s, e, name in phases:
        # phases of an instance: find its label by overlap with the instances
        label = next((lab for a, b, lab in video["instances"] if a - 1e-6 <= s and e <= b + 1e-6), None)
        if label is None:  # context phases lie outside the ground-truth segment: nearest instance
            label = min(video["instances"], key=lambda i: min(abs(i[0] - e), abs(i[1] - s)))[2]
        style = _PHASE_STYLE.get(name, {"alpha": 0.3})
        _bar(ax, s, e, 0.05, 0.4, colours[label], **style)
    for s, e, _ in video.get("distractors", []):
        _bar(ax, s, e, 0.05, 0.4, "0.6", alpha=0.6, hatch="..")
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.75], ["phases" if phases else "", "segments"], fontsize=7)


def _cas(
    ax: Axes,
    cas: Sequence[Sequence[float]],
    pseudo: Mapping[str, Sequence[int]] | None,
    labels: Sequence[str],
    step: float,
    colours: Mapping[str, Any],
    thresholds: tuple[float, float],
) -> None:
    for row, label in zip(cas, labels):
        values = np.asarray(row, dtype=np.float64)
        t = (np.arange(len(values)) + 0.5) * step  # snippet centres
        ax.plot(t, values, color=colours[label], lw=1.2)
    for thr in thresholds:
        ax.axhline(thr, color="0.5", lw=0.6, ls="--")
    if pseudo is not None:
        for name, y0 in (("fg", 1.02), ("bg", -0.1)):
            marks = np.asarray(pseudo.get(name, []), dtype=bool)
            spans = [(i * step, step) for i in np.flatnonzero(marks)]
            if spans:
                ax.broken_barh(spans, (y0, 0.08), facecolors="0.2" if name == "fg" else "0.75", edgecolor="none")
    ax.set_ylim(-0.12, 1.12)
    ax.set_yticks([0, 0.5, 1], ["0", ".5", "1"], fontsize=7)


def _detections(ax: Axes, detections: Sequence[Mapping[str, Any]], colours: Mapping[str, Any]) -> None:
    n = len(detections)
    for rank, d in enumerate(detections):
        s, e = d["segment"]
        y = 0.05 + 0.9 * rank / max(n, 1)
        _bar(ax, s, e, y, 0.9 / max(n, 1), colours.get(d["label"], "0.3"), alpha=1.0 - 0.7 * rank / max(n, 1))
    ax.set_ylim(0, 1)
    ax.set_yticks([])


def timeline_figure(
    timeline: Mapping[str, Any],
    branch: str = "cbp",
    max_videos: int = 3,
    thresholds: tuple[float, float] = (0.3, 0.1),
    title: str | None = None,
) -> Figure:
    """The four-row timeline (module docstring) of the first `max_videos` videos of `timeline`.

    branch: whose detections fill the last row ("cbp" = the paper's inference branch, "vlp", "fused");
    thresholds: (δ_h, δ_l) drawn on the CAS rows.
    """
    videos = list(timeline.get("videos", []))[:max_videos]
    if not videos:
        raise ValueError("the timeline has no videos to plot")
    classes = sorted({c for v in videos for c in v["labels"]} | {i[2] for v in videos for i in v["instances"]})
    colours = _colours(classes)
    fig = Figure(figsize=(10.0, 2.2 * len(videos) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(videos) * len(ROWS), 1, height_ratios=[0.7, 1.0, 1.0, 0.6] * len(videos))
    for i, video in enumerate(videos):
        step = float(video["seconds_per_snippet"])
        n = max((len(r) for rows in video["cas"].values() for r in rows), default=0)
        end = float(video.get("duration") or n * step)
        axes = [fig.add_subplot(grid[i * len(ROWS) + r, 0]) for r in range(len(ROWS))]
        for ax in axes[1:]:
            ax.sharex(axes[0])
        _ground_truth(axes[0], video, colours)
        axes[0].set_title(f"{video['key']}  labels: {', '.join(video['labels'])}", fontsize=8, loc="left")
        for ax, name in zip(axes[1:3], ("cbp", "vlp")):
            if name in video["cas"]:
                pseudo = video.get("pseudo", {}).get(name)
                _cas(ax, video["cas"][name], pseudo, video["labels"], step, colours, thresholds)
            else:
                ax.text(0.5, 0.5, f"no {name.upper()} branch", ha="center", va="center", transform=ax.transAxes)
        _detections(axes[3], video.get("detections", {}).get(branch, []), colours)
        for ax, name in zip(axes, ROWS):
            ax.set_ylabel(name if name != "detections" else f"det. ({branch})", fontsize=7, rotation=0, ha="right")
            ax.set_xlim(0, end)
            ax.tick_params(axis="x", labelsize=7, labelbottom=ax is axes[-1])
        axes[-1].set_xlabel("seconds", fontsize=8)
    handles = [Patch(color=colours[c], label=c) for c in classes]
    handles.append(Patch(facecolor="0.6", hatch="..", label="distractor"))
    fig.legend(handles=handles, loc="outside upper right", ncols=min(len(handles), 6), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def log_timelines(
    tracker: Any, parent_id: str, timelines: Mapping[str, str], branches: Mapping[str, str], main: str, main_run_id: str
) -> list[str]:
    """Each variant's timeline plot (detections of its evaluated branch, `branches`) on the DAG's parent run, and the
    main variant's also on its final step's own run; the artefact names on the parent."""
    from pipelines.storage import read_json

    plots = []
    for variant, path in timelines.items():
        branch = branches[variant]
        figure = timeline_figure(read_json(path), branch=branch, title=f"DCC {variant} (detections: {branch})")
        name = f"plots/timeline_{variant}.png"
        tracker.log_figure(parent_id, figure, name)
        plots.append(name)
    if main in timelines:
        tracker.log_figure(main_run_id, timeline_figure(read_json(timelines[main])), "plots/timeline.png")
    return plots
