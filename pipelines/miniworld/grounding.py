"""mini-grounding: longer 8 fps videos with sentence queries that pick out moments (LocVTP, 2D-TAN protocol).

Rules (also written to ``world.json["rules"]``):

- Video: 8 fps, 64×64, duration on a 0.25 s grid: tiny 12–16 s (4 train + 2 test), small 24–40 s (96 + 32),
  medium 40–64 s (192 + 64).
- Objects: 2–3 per video with distinct colours (shapes free), placed at least 20 px apart; they are still except
  during events.
- Events: 3–6 per video, never overlapping, each 2–8 s, separated by idle gaps of at least 1 s, all boundaries on
  the 0.25 s grid (so the Charades-STA files' 2-decimal times are exact). In an event one object moves in one
  direction (60 %) or in a direction pair, A for the first half and B for the second (40 %), at a constant speed of
  0.3–2 px per frame (at least 12 px in total), never passing within 16 px of another object's centre. The same
  object usually moves several times, so appearance alone cannot localise an event (only motion + direction can).
- Queries: one sentence per event in the retrieval captions' vocabulary ("the red circle moves left", "the blue
  square moves up, then right"). Within a video no query is a part of another (an object that moves "left" never
  also moves "left, then up"), so each query has exactly one correct moment.
- Files: ``charades_sta_train.txt`` / ``charades_sta_test.txt`` in the Charades-STA line format
  ``<key> <start> <end>##<sentence>`` (seconds, 2 decimals, end exclusive), plus annotations.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.miniworld.plan import WorldPlan, check_size, draw_seed, rng_for, source_row
from pipelines.miniworld.render import FRAME, Track, VideoJob
from pipelines.miniworld.vocab import COLOURS, DIRECTIONS, QUERY_TEMPLATES_ONE, QUERY_TEMPLATES_TWO, SHAPES, fill

PREFIX = "mg"
FPS = 8
UNIT = 2  # frames per 0.25 s: every boundary is a multiple of this
MARGIN = 9.0  # object centres stay in [MARGIN, FRAME-1-MARGIN]
MIN_SEPARATION = 20.0  # px between initial object centres
CLEARANCE = 16.0  # px a moving object keeps from every other object's centre
EVENT_SECONDS = (2.0, 8.0)
MIN_GAP_SECONDS = 1.0
EVENTS = (3, 6)
PAIR_PROB = 0.4
SPEED = (0.3, 2.0)  # px per frame
MIN_TRAVEL = 12.0  # px per event

SIZE_TABLE: dict[str, dict[str, Any]] = {
    "tiny": {"duration": (12.0, 16.0), "n_train": 4, "n_test": 2},
    "small": {"duration": (24.0, 40.0), "n_train": 96, "n_test": 32},
    "medium": {"duration": (40.0, 64.0), "n_train": 192, "n_test": 64},
}


def units(seconds: float) -> int:
    """Seconds -> 0.25 s units."""
    return round(seconds * FPS / UNIT)


def place_objects(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    while True:  # rejection sampling; 3 points at 20 px in a 45 px square succeed within a few draws
        pts = [rng.uniform(MARGIN, FRAME - 1 - MARGIN, size=2) for _ in range(n)]
        if all(np.linalg.norm(p - q) >= MIN_SEPARATION for i, p in enumerate(pts) for q in pts[i + 1 :]):
            return pts


def conflicts(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Would queries for direction sequences a and b of the same object be ambiguous (one part of the other)?"""
    if len(a) == 1 or len(b) == 1:
        return bool(set(a) & set(b))
    return a == b


def leg_lengths(n: int, n_dirs: int) -> list[int]:
    return [n] if n_dirs == 1 else [(n + 1) // 2, n // 2]


def room(pos: np.ndarray, direction: str) -> float:
    """Free travel from pos along a direction before the centre leaves the margins."""
    dx, dy = DIRECTIONS[direction]
    if dx:
        return float((FRAME - 1 - MARGIN - pos[0]) if dx > 0 else (pos[0] - MARGIN))
    return float((FRAME - 1 - MARGIN - pos[1]) if dy > 0 else (pos[1] - MARGIN))


def event_path(start: np.ndarray, dirs: tuple[str, ...], n: int, speed: float) -> np.ndarray:
    """Centre in each of the event's n frames, (n, 2): frame k shows the object after k+1 steps."""
    out = []
    pos = start.astype(np.float64).copy()
    for d, m in zip(dirs, leg_lengths(n, len(dirs))):
        step = speed * np.asarray(DIRECTIONS[d], np.float64)
        out.append(pos[None] + step[None] * (np.arange(m)[:, None] + 1))
        pos = pos + step * m
    return np.concatenate(out)


def try_event(
    rng: np.random.Generator, n: int, positions: list[np.ndarray], moved: list[list[tuple[str, ...]]], want_pair: bool
) -> tuple[int, tuple[str, ...], float, np.ndarray] | None:
    """Pick (object, directions, speed, path) for an event of n frames, or None when nothing fits."""
    names = list(DIRECTIONS)
    singles: list[tuple[str, ...]] = [(d,) for d in names]
    pairs: list[tuple[str, ...]] = [(a, b) for a in names for b in names if a != b]
    kinds = [pairs, singles] if want_pair else [singles, pairs]
    for options in kinds:
        candidates = [(o, dirs) for o in range(len(positions)) for dirs in options]
        for idx in rng.permutation(len(candidates)):
            obj, dirs = candidates[int(idx)]
            if any(conflicts(dirs, prev) for prev in moved[obj]):
                continue
            legs = leg_lengths(n, len(dirs))
            v_min = max(SPEED[0], MIN_TRAVEL / n)
            v_max = min(SPEED[1], room(positions[obj], dirs[0]) / legs[0])
            if len(dirs) == 2 and DIRECTIONS[dirs[1]] != tuple(-c for c in DIRECTIONS[dirs[0]]):
                v_max = min(v_max, room(positions[obj], dirs[1]) / legs[1])  # a turn: B's room is unaffected by A
            if v_max < v_min:
                continue
            speed = float(rng.uniform(v_min, v_max))
            path = event_path(positions[obj], dirs, n, speed)
            others = [p for i, p in enumerate(positions) if i != obj]
            if all(np.min(np.linalg.norm(path - p[None], axis=1)) >= CLEARANCE for p in others):
                return obj, dirs, speed, path
    return None


def plan_video(rng: np.random.Generator, spec: dict[str, Any]) -> dict[str, Any] | None:
    """One video: objects, event timeline and paths; None when fewer than 3 events could be placed."""
    total = units(rng.uniform(*spec["duration"]))
    n_obj = int(rng.integers(2, 4))
    colours = [list(COLOURS)[int(i)] for i in rng.choice(len(COLOURS), size=n_obj, replace=False)]
    shapes = [SHAPES[int(i)] for i in rng.integers(0, len(SHAPES), size=n_obj)]
    positions = place_objects(rng, n_obj)
    ev_min, ev_max, gap_min = units(EVENT_SECONDS[0]), units(EVENT_SECONDS[1]), units(MIN_GAP_SECONDS)
    n_events = int(rng.integers(EVENTS[0], EVENTS[1] + 1))
    while n_events > EVENTS[0] and n_events * ev_min + (n_events + 1) * gap_min > total:
        n_events -= 1
    slack = total - n_events * ev_min - (n_events + 1) * gap_min
    # Part of the slack lengthens events (each by at most ev_max - ev_min), the rest widens the idle gaps.
    to_events = np.floor(rng.dirichlet(np.ones(n_events)) * slack * rng.uniform(0.3, 0.8)).astype(int)
    lengths = ev_min + np.minimum(to_events, ev_max - ev_min)
    rest = total - int(lengths.sum()) - (n_events + 1) * gap_min
    gaps = gap_min + np.floor(rng.dirichlet(np.ones(n_events + 1)) * rest).astype(int)
    gaps[-1] += total - int(lengths.sum()) - int(gaps.sum())
    n_frames = total * UNIT
    xs = np.zeros((n_obj, n_frames))
    ys = np.zeros((n_obj, n_frames))
    for o, p in enumerate(positions):
        xs[o], ys[o] = p[0], p[1]
    moved: list[list[tuple[str, ...]]] = [[] for _ in range(n_obj)]
    events: list[dict[str, Any]] = []
    t = int(gaps[0]) * UNIT
    for length, gap in zip(lengths, gaps[1:]):
        n = int(length) * UNIT
        pick = try_event(rng, n, positions, moved, want_pair=bool(rng.random() < PAIR_PROB))
        if pick is not None:
            obj, dirs, speed, path = pick
            xs[obj, t : t + n], ys[obj, t : t + n] = path[:, 0], path[:, 1]
            xs[obj, t + n :], ys[obj, t + n :] = path[-1, 0], path[-1, 1]
            positions[obj] = path[-1].copy()
            moved[obj].append(dirs)
            events.append({"obj": obj, "dirs": dirs, "start": t, "end": t + n, "speed": speed})
        t += n + int(gap) * UNIT  # an event that fits nowhere becomes idle time
    if len(events) < EVENTS[0]:
        return None
    return {"n_frames": n_frames, "colours": colours, "shapes": shapes, "xs": xs, "ys": ys, "events": events}


def build(seed: int, size: str) -> WorldPlan:
    """Plan the whole mini-grounding dataset (see the module docstring for the rules)."""
    check_size(size)
    spec = SIZE_TABLE[size]
    rng = rng_for(seed, 3)
    jobs: list[VideoJob] = []
    sources: list[dict[str, str]] = []
    videos: list[dict[str, Any]] = []
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, count in (("train", spec["n_train"]), ("test", spec["n_test"])):
        for index in range(count):
            key = f"{PREFIX}-{split}-{index:06d}"
            plan = None
            while plan is None:
                plan = plan_video(rng, spec)
            job, video = realise_video(rng, key, split, plan)
            jobs.append(job)
            videos.append(video)
            sources.append(source_row(key, split, "", [q["sentence"] for q in video["queries"]]))
            lines[split] += [f"{key} {q['start']:.2f} {q['end']:.2f}##{q['sentence']}" for q in video["queries"]]
    extra = {f"charades_sta_{split}.txt": "".join(f"{ln}\n" for ln in lines[split]) for split in ("train", "test")}
    annotations = {"version": "mini-grounding-1", "videos": videos}
    return WorldPlan(jobs, sources, annotations, rules(size), image_text_kind="grounding", extra_files=extra)


def realise_video(
    rng: np.random.Generator, key: str, split: str, plan: dict[str, Any]
) -> tuple[VideoJob, dict[str, Any]]:
    """The render job and the annotation entry (with one query sentence per event) of a planned video."""
    pairs = list(zip(plan["colours"], plan["shapes"]))
    queries = []
    for ev in plan["events"]:
        colour, shape = pairs[ev["obj"]]
        templates = QUERY_TEMPLATES_ONE if len(ev["dirs"]) == 1 else QUERY_TEMPLATES_TWO
        queries.append(
            {
                "sentence": fill(templates[int(rng.integers(len(templates)))], colour, shape, *ev["dirs"]),
                "start": round(ev["start"] / FPS, 2),  # exact: events lie on the 0.25 s grid
                "end": round(ev["end"] / FPS, 2),
                "colour": colour,
                "shape": shape,
                "directions": list(ev["dirs"]),
                "speed": round(ev["speed"], 4),  # px per frame
            }
        )
    tracks = tuple(Track.constant(c, s, plan["xs"][o], plan["ys"][o]) for o, (c, s) in enumerate(pairs))
    objects = [
        {"colour": c, "shape": s, "start": [round(float(plan["xs"][o, 0]), 2), round(float(plan["ys"][o, 0]), 2)]}
        for o, (c, s) in enumerate(pairs)
    ]
    video = {
        "key": key,
        "split": split,
        "duration": round(plan["n_frames"] / FPS, 2),
        "fps": FPS,
        "objects": objects,
        "queries": queries,
    }
    return VideoJob(key, float(FPS), plan["n_frames"], draw_seed(rng), tracks), video


def rules(size: str) -> dict[str, Any]:
    spec = SIZE_TABLE[size]
    return {
        "fps": FPS,
        "duration_seconds": list(spec["duration"]),
        "videos": {"train": spec["n_train"], "test": spec["n_test"]},
        "sizes": {k: {**v, "duration": list(v["duration"])} for k, v in SIZE_TABLE.items()},
        "objects_per_video": [2, 3],
        "objects": "distinct colours, any shape, initial centres >= 20 px apart, still except during their events",
        "events_per_video": list(EVENTS),
        "event_seconds": list(EVENT_SECONDS),
        "min_idle_gap_seconds": MIN_GAP_SECONDS,
        "time_grid_seconds": UNIT / FPS,
        "motion": f"one object per event; one direction or (p={PAIR_PROB}) a pair A then B over the two halves; "
        f"constant speed {SPEED[0]}-{SPEED[1]} px/frame, >= {MIN_TRAVEL:g} px travel, >= {CLEARANCE:g} px from "
        "other objects",
        "queries": " | ".join(QUERY_TEMPLATES_ONE + QUERY_TEMPLATES_TWO),
        "uniqueness": "per object, no query's directions are part of another's (each query has one moment)",
        "files": "charades_sta_{train,test}.txt: '<key> <start> <end>##<sentence>', seconds, 2 decimals, end exclusive",
    }
