"""mini-wtal: untrimmed 25 fps videos with video-level labels for weakly-supervised temporal action localization (DCC).

Rules (also written to ``world.json["rules"]``):

- Classes are object appearances from the shared vocabulary, each with its own motion (`CLASSES`): "red circle"
  bounces (vertical oscillation), "green triangle" shakes (horizontal oscillation), "blue square" spins (rotation),
  "yellow circle" pulses (size oscillation), "purple triangle" orbits (small circle). tiny uses the first 3 classes,
  small and medium all 5. The motions differ in optical flow: vertical, horizontal, curl, divergence, rotating.
- An action instance is an object that fades in (4 frames), stays still (context-before, 0.8–1.6 s), ramps its
  motion amplitude linearly from zero (run-up, 1.0–1.5 s), moves at full amplitude (core, 1.5–3 s), ramps down to
  zero (follow-through, 1.0–1.5 s), stays still again (context-after, 0.8–1.6 s) and fades out (4 frames).
  **Ground truth segment = run-up start → follow-through end.** A flow/I3D classifier fires mostly on the core
  (incomplete), a static-frame CLIP classifier on the whole presence including the still context (over-complete):
  the two failure modes DCC's alternating distillation addresses (paper §1, Fig. 1).
- A video has 1–2 labelled classes and 2–4 instances (tiny: exactly 2; medium: 3–6) that never overlap and are
  separated by at least 1 s of empty background. With probability 0.5 it also shows a **distractor**: the still
  appearance of a class that is *not* among its labels, for 2–4 s (so appearance alone does not classify).
- Durations: tiny 14–20 s (two whole instances with their gaps take 13–21 s, so 10–14 s cannot hold them; a tiny
  video is stretched in the rare case it needs more), small 30–40 s, medium 45–90 s. Videos: tiny 3 train + 2 test,
  small 16 + 8, medium 48 + 24. All boundaries lie on the 25 fps frame grid; times are seconds, end exclusive.
- Annotations follow ActivityNet/THUMOS: ``database[key]["subset"]`` is ``"validation"`` for the training split and
  ``"test"`` for the test split (THUMOS14 trains W-TAL models on its validation videos); sources.csv keeps
  ``train``/``test``. Each annotation also carries its ``phases``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipelines.miniworld.plan import WorldPlan, check_size, draw_seed, rng_for, source_row
from pipelines.miniworld.render import FRAME, RADIUS, Track, VideoJob
from pipelines.miniworld.vocab import object_name

PREFIX = "mw"
FPS = 25  # the W-TAL protocol resamples to 25 fps and cuts 16-frame snippets
FADE = 4  # frames of fade-in / fade-out at the ends of a presence
MIN_GAP = 1.0  # s of empty background around and between items
PHASES: tuple[tuple[str, float, float], ...] = (  # (name, min s, max s)
    ("context_before", 0.8, 1.6),
    ("run_up", 1.0, 1.5),
    ("core", 1.5, 3.0),
    ("follow_through", 1.0, 1.5),
    ("context_after", 0.8, 1.6),
)
DISTRACTOR_PROB = 0.5
DISTRACTOR_SECONDS = (2.0, 4.0)

# (colour, shape, motion). Motion parameters: amplitude in px (or relative radius for pulse), frequency in Hz
# (revolutions per second for spin), `reach` = how far from its rest position any part of the object gets beyond
# the triangle's 8.4 px circumradius, which sets the placement margin.
CLASSES: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "bounce"),
    ("green", "triangle", "shake"),
    ("blue", "square", "spin"),
    ("yellow", "circle", "pulse"),
    ("purple", "triangle", "orbit"),
)
MOTIONS: dict[str, dict[str, float]] = {
    "bounce": {"amplitude": 6.0, "frequency": 2.0, "reach": 6.0},  # peak 3.0 px/frame vertical
    "shake": {"amplitude": 5.0, "frequency": 3.0, "reach": 5.0},  # peak 3.8 px/frame horizontal
    "spin": {"amplitude": 1.0, "frequency": 1.0, "reach": 0.0},  # 14.4°/frame, corners ~2 px/frame
    "pulse": {"amplitude": 0.5, "frequency": 2.0, "reach": 4.5},  # radius 6 ± 3 px
    "orbit": {"amplitude": 5.0, "frequency": 1.5, "reach": 10.0},  # circle of radius 5 through the rest point
}

SIZE_TABLE: dict[str, dict[str, Any]] = {
    "tiny": {"n_classes": 3, "duration": (14.0, 20.0), "instances": (2, 2), "n_train": 3, "n_test": 2},
    "small": {"n_classes": 5, "duration": (30.0, 40.0), "instances": (2, 4), "n_train": 16, "n_test": 8},
    "medium": {"n_classes": 5, "duration": (45.0, 90.0), "instances": (3, 6), "n_train": 48, "n_test": 24},
}


def frames_of(seconds: float) -> int:
    return round(seconds * FPS)


def seconds_of(frame: int) -> float:
    return round(frame / FPS, 2)  # multiples of 0.04 s are exact at 2 decimals


def envelope(lengths: list[int]) -> np.ndarray:
    """Motion amplitude per frame of one presence, (T,) in [0, 1]: 0 in the contexts, linear ramps around the core."""
    cb, ru, core, ft, ca = lengths
    return np.concatenate(
        [np.zeros(cb), np.arange(ru) / ru, np.ones(core), 1.0 - (np.arange(ft) + 1) / ft, np.zeros(ca)]
    )


def motion_state(motion: str, env: np.ndarray, tau: np.ndarray, freq_scale: float) -> dict[str, np.ndarray]:
    """Per-frame offsets (dx, dy px), radius and angle of one class motion; `tau` = s since run-up start, (T,)."""
    p = MOTIONS[motion]
    f = p["frequency"] * freq_scale
    w = 2.0 * math.pi * f
    zeros = np.zeros_like(env)
    dx, dy, radius, angle = zeros, zeros, np.full_like(env, RADIUS), zeros
    if motion == "bounce":
        dy = -env * p["amplitude"] * np.sin(w * tau)
    elif motion == "shake":
        dx = env * p["amplitude"] * np.sin(w * tau)
    elif motion == "orbit":
        dx = env * p["amplitude"] * np.sin(w * tau)
        dy = -env * p["amplitude"] * (1.0 - np.cos(w * tau))
    elif motion == "pulse":
        radius = RADIUS * (1.0 + env * p["amplitude"] * np.sin(w * tau))
    elif motion == "spin":  # angular speed follows the envelope; the angle is its running integral
        angle = w * np.cumsum(env) / FPS
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return {"dx": dx, "dy": dy, "radius": radius, "angle": angle}


def fade(n: int) -> np.ndarray:
    """Opacity over a presence of n frames, (n,): FADE-frame linear fade in and out."""
    alpha = np.ones(n)
    ramp = (np.arange(FADE) + 1.0) / (FADE + 1.0)
    alpha[:FADE] = ramp
    alpha[-FADE:] = np.minimum(alpha[-FADE:], ramp[::-1])
    return alpha


def place(rng: np.random.Generator, reach: float) -> tuple[float, float]:
    m = 9.0 + reach
    return float(rng.uniform(m, FRAME - 1 - m)), float(rng.uniform(m, FRAME - 1 - m))


def plan_video(rng: np.random.Generator, spec: dict[str, Any]) -> dict[str, Any]:
    """Draw one video's content: instances (class, phase lengths in frames), distractor, order and gaps."""
    n_classes = spec["n_classes"]
    n_labels = int(rng.integers(1, 3))
    labels = sorted(int(c) for c in rng.choice(n_classes, size=n_labels, replace=False))
    lo, hi = spec["instances"]
    n_inst = max(int(rng.integers(lo, hi + 1)), n_labels)
    inst_classes = labels + [int(c) for c in rng.choice(labels, size=n_inst - n_labels)]
    inst_classes = [inst_classes[i] for i in rng.permutation(n_inst)]
    phases = [[frames_of(rng.uniform(a, b)) for _, a, b in PHASES] for _ in range(n_inst)]
    distractor: dict[str, Any] | None = None
    if rng.random() < DISTRACTOR_PROB:
        others = [c for c in range(n_classes) if c not in labels]
        distractor = {"cls": int(rng.choice(others)), "length": frames_of(rng.uniform(*DISTRACTOR_SECONDS))}
    target = frames_of(rng.uniform(*spec["duration"]))
    gap = frames_of(MIN_GAP)

    def need() -> int:
        items = [sum(p) for p in phases] + ([distractor["length"]] if distractor else [])
        return sum(items) + (len(items) + 1) * gap

    # Too much content for the longest allowed duration: shorten or drop the distractor, then drop instances of
    # classes that have another instance (every label keeps at least one). Only tiny may end up beyond its range.
    max_frames = frames_of(spec["duration"][1])
    if distractor is not None and need() > max_frames:  # first shorten it (down to its minimum), then drop it
        distractor["length"] = max(frames_of(DISTRACTOR_SECONDS[0]), distractor["length"] - (need() - max_frames))
        if need() > max_frames:
            distractor = None
    while need() > max_frames and len(inst_classes) > max(lo, n_labels):
        drop = next(i for i in range(len(inst_classes) - 1, -1, -1) if inst_classes.count(inst_classes[i]) > 1)
        del inst_classes[drop], phases[drop]
    n_frames = max(target, need())
    items: list[tuple[str, int]] = [("instance", i) for i in range(len(inst_classes))]
    if distractor is not None:
        items.append(("distractor", 0))
    items = [items[i] for i in rng.permutation(len(items))]
    slack = n_frames - need()
    weights = rng.dirichlet(np.ones(len(items) + 1))
    extra = np.floor(weights * slack).astype(int)
    extra[-1] += slack - int(extra.sum())
    return {
        "labels": labels,
        "inst_classes": inst_classes,
        "phases": phases,
        "distractor": distractor,
        "items": items,
        "gaps": [gap + int(e) for e in extra],
        "n_frames": n_frames,
    }


def build(seed: int, size: str) -> WorldPlan:
    """Plan the whole mini-wtal dataset (see the module docstring for the rules)."""
    check_size(size)
    spec = SIZE_TABLE[size]
    rng = rng_for(seed, 2)
    classes = [object_name(c, s) for c, s, _ in CLASSES[: spec["n_classes"]]]
    database: dict[str, Any] = {}
    jobs: list[VideoJob] = []
    sources: list[dict[str, str]] = []
    for split, n in (("train", spec["n_train"]), ("test", spec["n_test"])):
        for index in range(n):
            key = f"{PREFIX}-{split}-{index:06d}"
            job, entry = realise_video(rng, key, plan_video(rng, spec), classes)
            entry["subset"] = "validation" if split == "train" else "test"  # THUMOS14 naming
            database[key] = entry
            jobs.append(job)
            sources.append(source_row(key, split, entry["labels"], []))
    taxonomy = [
        {"nodeId": i + 1, "nodeName": name, "parentId": 0, "parentName": "Root", "colour": c, "shape": s, "motion": m}
        for i, (name, (c, s, m)) in enumerate(zip(classes, CLASSES))
    ]
    annotations = {"version": "mini-wtal-1", "taxonomy": taxonomy, "classes": classes, "database": database}
    return WorldPlan(jobs=jobs, sources=sources, annotations=annotations, rules=rules(size), image_text_kind="wtal")


def realise_video(
    rng: np.random.Generator, key: str, video: dict[str, Any], classes: list[str]
) -> tuple[VideoJob, dict[str, Any]]:
    """Lay a planned video out on its timeline: positions, tracks, and its ActivityNet-style database entry."""
    n_frames = video["n_frames"]
    tracks: list[Track] = []
    annotations: list[dict[str, Any]] = []
    distractors: list[dict[str, Any]] = []
    t = video["gaps"][0]
    for (kind, i), gap_after in zip(video["items"], video["gaps"][1:]):
        if kind == "instance":
            cls, lengths = video["inst_classes"][i], video["phases"][i]
            colour, shape, motion = CLASSES[cls]
            x, y = place(rng, MOTIONS[motion]["reach"])
            freq_scale = float(rng.uniform(0.85, 1.15))
            tracks.append(instance_track(colour, shape, motion, x, y, t, lengths, n_frames, freq_scale))
            bounds = np.cumsum([t, *lengths])  # phase boundaries in frames
            phases = {
                name: [seconds_of(int(bounds[j])), seconds_of(int(bounds[j + 1]))]
                for j, (name, _, _) in enumerate(PHASES)
            }
            annotations.append(
                {
                    "segment": [phases["run_up"][0], phases["follow_through"][1]],
                    "label": classes[cls],
                    "phases": phases,
                    "motion": motion,
                    "position": [round(x, 2), round(y, 2)],
                }
            )
            t = int(bounds[-1])
        else:
            d = video["distractor"]
            colour, shape, _ = CLASSES[d["cls"]]
            x, y = place(rng, 0.0)
            tracks.append(still_track(colour, shape, x, y, t, d["length"], n_frames))
            segment = [seconds_of(t), seconds_of(t + d["length"])]
            distractors.append({"label": classes[d["cls"]], "segment": segment, "position": [round(x, 2), round(y, 2)]})
            t += d["length"]
        t += gap_after
    assert t == n_frames, (t, n_frames)
    entry = {
        "subset": "",
        "duration": seconds_of(n_frames),
        "fps": FPS,
        "annotations": annotations,
        "labels": [classes[c] for c in video["labels"]],
        "distractors": distractors,
    }
    return VideoJob(key, float(FPS), n_frames, draw_seed(rng), tuple(tracks)), entry


def instance_track(
    colour: str,
    shape: str,
    motion: str,
    x: float,
    y: float,
    start: int,
    lengths: list[int],
    n_frames: int,
    freq_scale: float,
) -> Track:
    """The track of one action instance that appears at frame `start` (context-before start)."""
    n = sum(lengths)
    env = envelope(lengths)  # (n,)
    tau = (np.arange(n) - lengths[0]) / FPS  # s since run-up start
    st = motion_state(motion, env, tau, freq_scale)
    return _place_presence(colour, shape, start, n, n_frames, x + st["dx"], y + st["dy"], st["radius"], st["angle"])


def still_track(colour: str, shape: str, x: float, y: float, start: int, n: int, n_frames: int) -> Track:
    """A distractor: a class appearance that never moves."""
    return _place_presence(
        colour, shape, start, n, n_frames, np.full(n, x), np.full(n, y), np.full(n, RADIUS), np.zeros(n)
    )


def _place_presence(
    colour: str,
    shape: str,
    start: int,
    n: int,
    n_frames: int,
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
) -> Track:
    """Embed per-presence arrays (n,) into whole-video arrays (T,), absent outside the presence."""

    def full(values: np.ndarray, fill_value: float) -> np.ndarray:
        out = np.full(n_frames, fill_value)
        out[start : start + n] = values
        return out

    return Track(colour, shape, full(x, 0.0), full(y, 0.0), full(radius, RADIUS), full(angle, 0.0), full(fade(n), 0.0))


def rules(size: str) -> dict[str, Any]:
    spec = SIZE_TABLE[size]
    return {
        "fps": FPS,
        "classes": {object_name(c, s): {"motion": m, **MOTIONS[m]} for c, s, m in CLASSES[: spec["n_classes"]]},
        "motion_units": "amplitude in px (pulse: fraction of the radius), frequency in Hz (spin: revolutions per s "
        "at full amplitude), reach = extra placement margin in px",
        "phases_seconds": {name: [a, b] for name, a, b in PHASES},
        "ground_truth": "segment = run_up start -> follow_through end (context phases excluded)",
        "envelope": "motion amplitude 0 in contexts, linear 0->1 over run_up, 1 in core, linear 1->0 over "
        "follow_through; oscillation frequency jittered x U(0.85, 1.15) per instance",
        "fade_frames": FADE,
        "labels_per_video": [1, 2],
        "instances_per_video": list(spec["instances"]),
        "min_gap_seconds": MIN_GAP,
        "distractor": f"p={DISTRACTOR_PROB}: a non-label class appearance, still, {DISTRACTOR_SECONDS[0]:g}-"
        f"{DISTRACTOR_SECONDS[1]:g} s",
        "duration_seconds": list(spec["duration"]),
        "videos": {"train": spec["n_train"], "test": spec["n_test"]},
        "sizes": {
            k: {**v, "duration": list(v["duration"]), "instances": list(v["instances"])} for k, v in SIZE_TABLE.items()
        },
        "subsets": "annotations.json subset 'validation' = train split, 'test' = test split (THUMOS14 naming)",
    }
