"""mini-retrieval: 3-second clips of one object moving in direction A, then B (CLIP4Clip, STAN, UCoFiA).

Rules (also written to ``world.json["rules"]``):

- Clip: 24 frames at 8 fps, 64×64. One object (colour, shape) starts at a random integer position chosen so that
  the whole path stays inside the frame, moves `STEP` = 2 px per frame along A for frames 0..12, then along B:
  offset after frame k = STEP·min(k, 12)·A + STEP·max(k − 12, 0)·B (24 px in each direction, the feasibility
  study's ~22 px). A ≠ B ∈ {left, right, up, down}: 12 ordered pairs, which are also the 12 action classes
  ("left-then-up") for video recognition (STAN's K400-style head).
- Captions: two distinct templates per clip ("a red circle moves left, then up", ...); the meaning depends on
  order, so an order-blind (mean-pooled) video embedding cannot match them all (CLIP4Clip meanP vs seqTransf).
- Split: test = every (colour, shape, direction pair) once; train = `n_per_combo` clips per combination with fresh
  starts and backgrounds. Sizes: tiny 2 colours × 2 shapes, 2 train + 1 test per combination (96 + 48 clips);
  small 6 × 3 with 8 train per combination (1,728 + 216); medium 16 per combination (3,456 + 216).
- Order twins: test clips come in twin pairs of the same (colour, shape) and background, (A-then-B, B-then-A).
  For a *reversal* pair (A-then-opposite(A)) the twin starts 24 px further along A, so its 24 frames are exactly the
  first clip's frames cyclically shifted by 12: the same multiset of frames. Test clips are encoded intra-only
  (every frame a key frame, fixed quantiser), so the decoded frames are identical too, and so are frames sampled
  every other one (4 fps), since the shift is even. Any order-blind pooling provably scores such a pair as a tie:
  these are the ``order_pairs`` with ``provable: true``. *Turn* pairs (left-then-up vs up-then-left) share start,
  end point and background but pass different corners, so their frame sets differ (feasibility: meanP still
  separates them ~79 % of the time); they are listed with ``provable: false``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from pipelines.miniworld.plan import WorldPlan, check_size, draw_seed, rng_for, source_row
from pipelines.miniworld.render import FRAME, Track, VideoJob
from pipelines.miniworld.vocab import (
    COLOURS,
    DIRECTION_PAIRS,
    DIRECTIONS,
    OPPOSITE,
    RETRIEVAL_TEMPLATES,
    SHAPES,
    fill,
    pair_class,
)

PREFIX = "mr"
FPS = 8.0
N_FRAMES = 24  # 3 s at 8 fps
TURN = 12  # the frame at which the direction changes
STEP = 2  # px per frame: 24 px in each direction
MARGIN = 9  # the object centre stays in [MARGIN, FRAME-1-MARGIN]; a triangle's apex reaches 8.4 px from it
N_CAPTIONS = 2

SIZE_TABLE: dict[str, dict[str, Any]] = {
    "tiny": {"colours": ("red", "blue"), "shapes": ("circle", "square"), "n_per_combo": 2},
    "small": {"colours": tuple(COLOURS), "shapes": SHAPES, "n_per_combo": 8},
    "medium": {"colours": tuple(COLOURS), "shapes": SHAPES, "n_per_combo": 16},
}


def offsets(a: str, b: str) -> np.ndarray:
    """Displacement from the start after each frame, (T, 2) int (x, y)."""
    k = np.arange(N_FRAMES)
    da, db = np.asarray(DIRECTIONS[a]), np.asarray(DIRECTIONS[b])
    return STEP * (np.minimum(k, TURN)[:, None] * da[None] + np.maximum(k - TURN, 0)[:, None] * db[None])


def random_start(rng: np.random.Generator, a: str, b: str) -> tuple[int, int]:
    """A uniformly random integer start whose whole path (A then B) stays inside the margins."""
    off = offsets(a, b)  # (T, 2)
    lo = MARGIN - off.min(axis=0)
    hi = FRAME - 1 - MARGIN - off.max(axis=0)
    return int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1))


def clip_job(
    key: str, colour: str, shape: str, a: str, b: str, start: tuple[int, int], bg_seed: int, intra_only: bool
) -> VideoJob:
    path = np.asarray(start)[None] + offsets(a, b)  # (T, 2)
    track = Track.constant(colour, shape, path[:, 0].astype(np.float64), path[:, 1].astype(np.float64))
    return VideoJob(key, FPS, N_FRAMES, bg_seed, (track,), intra_only=intra_only)


def captions_for(rng: np.random.Generator, colour: str, shape: str, a: str, b: str) -> list[str]:
    picks = rng.choice(len(RETRIEVAL_TEMPLATES), size=N_CAPTIONS, replace=False)
    return [fill(RETRIEVAL_TEMPLATES[int(i)], colour, shape, a, b) for i in picks]


def twin_pairs() -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The 6 unordered direction pairs as (A-then-B, B-then-A), in DIRECTION_PAIRS order."""
    return [
        (p, (p[1], p[0])) for p in DIRECTION_PAIRS if DIRECTION_PAIRS.index(p) < DIRECTION_PAIRS.index((p[1], p[0]))
    ]


def build(seed: int, size: str) -> WorldPlan:
    """Plan the whole mini-retrieval dataset (see the module docstring for the rules)."""
    check_size(size)
    spec = SIZE_TABLE[size]
    rng = rng_for(seed, 1)
    classes = [pair_class(a, b) for a, b in DIRECTION_PAIRS]
    jobs: list[VideoJob] = []
    videos: list[dict[str, Any]] = []
    sources: list[dict[str, str]] = []
    order_pairs: list[dict[str, Any]] = []
    counts = {"train": 0, "test": 0}

    def add(
        split: str,
        colour: str,
        shape: str,
        a: str,
        b: str,
        start: tuple[int, int],
        bg_seed: int,
        twin: str | None,
        kind: str | None,
    ) -> str:
        key = f"{PREFIX}-{split}-{counts[split]:06d}"
        counts[split] += 1
        caps = captions_for(rng, colour, shape, a, b)
        jobs.append(clip_job(key, colour, shape, a, b, start, bg_seed, intra_only=split == "test"))
        videos.append(
            {
                "key": key,
                "split": split,
                "colour": colour,
                "shape": shape,
                "directions": [a, b],
                "label": pair_class(a, b),
                "captions": caps,
                "twin": twin,
                "twin_kind": kind,
                "start": list(start),
            }
        )
        sources.append(source_row(key, split, pair_class(a, b), caps))
        return key

    # Test first: the twin pairs, adjacent in key order.
    for colour, shape in itertools.product(spec["colours"], spec["shapes"]):
        for (a, b), (b2, a2) in twin_pairs():
            kind = "reversal" if b == OPPOSITE[a] else "turn"
            start = random_start(rng, a, b)
            bg_seed = draw_seed(rng)
            if kind == "reversal":  # the twin starts where the first clip turns: a cyclic shift by TURN frames
                da = DIRECTIONS[a]
                twin_start = (start[0] + STEP * TURN * da[0], start[1] + STEP * TURN * da[1])
            else:  # same start and end point, different corner
                twin_start = start
            n = counts["test"]
            key_a, key_b = f"{PREFIX}-test-{n:06d}", f"{PREFIX}-test-{n + 1:06d}"
            add("test", colour, shape, a, b, start, bg_seed, key_b, kind)
            add("test", colour, shape, b2, a2, twin_start, bg_seed, key_a, kind)
            order_pairs.append({"a": key_a, "b": key_b, "kind": kind, "provable": kind == "reversal"})
    for colour, shape, (a, b) in itertools.product(spec["colours"], spec["shapes"], DIRECTION_PAIRS):
        for _ in range(spec["n_per_combo"]):
            add("train", colour, shape, a, b, random_start(rng, a, b), draw_seed(rng), None, None)

    annotations = {
        "version": "mini-retrieval-1",
        "fps": FPS,
        "n_frames": N_FRAMES,
        "classes": classes,
        "videos": videos,
        "order_pairs": order_pairs,
    }
    return WorldPlan(
        jobs=jobs, sources=sources, annotations=annotations, rules=rules(size), image_text_kind="retrieval"
    )


def rules(size: str) -> dict[str, Any]:
    spec = SIZE_TABLE[size]
    return {
        "clip": f"{N_FRAMES} frames at {FPS:g} fps, 64x64; one object; intra-only H.264 for test clips, crf 18 else",
        "motion": f"offset after frame k = {STEP}*min(k,{TURN})*A + {STEP}*max(k-{TURN},0)*B px; A != B in "
        "left/right/up/down; random integer start keeping the object centre inside the frame margins",
        "classes": "12 ordered direction pairs, named '<A>-then-<B>'",
        "captions": f"{N_CAPTIONS} distinct templates per clip: " + " | ".join(RETRIEVAL_TEMPLATES),
        "colours": list(spec["colours"]),
        "shapes": list(spec["shapes"]),
        "train": f"{spec['n_per_combo']} clips per (colour, shape, direction pair)",
        "sizes": {
            k: {
                "colours": len(v["colours"]),
                "shapes": len(v["shapes"]),
                "train_per_combination": v["n_per_combo"],
                "train": len(v["colours"]) * len(v["shapes"]) * 12 * v["n_per_combo"],
                "test": len(v["colours"]) * len(v["shapes"]) * 12,
            }
            for k, v in SIZE_TABLE.items()
        },
        "test": "each (colour, shape, direction pair) once, as twin pairs (A-then-B, B-then-A) sharing a background",
        "order_twins": "reversal pairs: twin start shifted by 24 px along A, frames = cyclic shift by 12 (identical "
        "multiset of frames, provable for order-blind pooling); turn pairs: same start/end/background, different "
        "corner (not provable)",
    }
