"""The frame-level image–caption set for pre-training the project's small CLIP, the way CLIP was pre-trained on images.

Rules (also written to ``world.json["rules"]["image_text"]``):

- Images come from the video renderer (`render.background` + `render.draw`) with fresh random backgrounds, so they
  share the videos' pixel distribution; captions are static, with no temporal word (`vocab.TEMPORAL_WORDS`):
  "a red circle at the top left". Position words come from the 3×3 grid cell the object centre falls in
  (feasibility study: they make frame features encode *where* the object is, which a temporal head needs).
- Sizes (train + test images): tiny 400 + 200, small 4,000 + 1,000, medium 8,000 + 2,000. The train split holds
  every (colour, shape, cell) of the full vocabulary (6 × 3 × 9 = 162) ⌊0.8·N/162⌋ times; the test split holds each
  once, rendered afresh. The rest of each split is dataset-specific, to cover what that dataset's frames show:
  retrieval — more single objects; wtal — the class objects in action poses (rotated, resized, as during spin and
  pulse); grounding — 2–3 objects of distinct colours in distinct cells ("a red circle at the top and a blue square
  at the left").
- Stored as ``image_text.npz`` (compressed): ``images`` uint8 (N, 64, 64, 3), ``captions`` (N,) str, ``split`` (N,)
  str in {"train", "test"}. The train part is shuffled.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.miniworld.plan import check_size, draw_seed, rng_for
from pipelines.miniworld.render import FRAME, RADIUS, background, draw
from pipelines.miniworld.vocab import CELLS, COLOURS, SHAPES, static_caption
from pipelines.miniworld.wtal import CLASSES, MOTIONS

SIZE_TABLE: dict[str, tuple[int, int]] = {"tiny": (400, 200), "small": (4000, 1000), "medium": (8000, 2000)}
COVERAGE_FRACTION = 0.8  # of the train split spent on uniform coverage of (colour, shape, cell)
MARGIN = 9.0  # object centres stay this far from the border (triangle apex: 8.4 px)
CELL = FRAME / 3.0
BORDER = 1.0  # px kept between an object centre and its cell's inner edges


def cell_of(x: float, y: float) -> int:
    """Grid cell index (row-major from the top left) of a centre position; pixel i covers [i − 0.5, i + 0.5)."""
    col = min(max(int((x + 0.5) // CELL), 0), 2)
    row = min(max(int((y + 0.5) // CELL), 0), 2)
    return 3 * row + col


def position_in(rng: np.random.Generator, cell: int) -> tuple[float, float]:
    """A uniform centre position inside a grid cell, at least `BORDER` px from its inner edges (so the position word
    is never a coin toss) and inside the margins."""
    row, col = divmod(cell, 3)

    def axis(i: int) -> float:
        lo = max(i * CELL - 0.5 + BORDER, MARGIN)
        hi = min((i + 1) * CELL - 0.5 - BORDER, FRAME - 1 - MARGIN)
        return float(rng.uniform(lo, hi))

    return axis(col), axis(row)


def single(
    rng: np.random.Generator, colour: str, shape: str, cell: int, radius: float = RADIUS, angle: float = 0.0
) -> tuple[np.ndarray, str]:
    frame = background(draw_seed(rng)).copy()  # (H, W, 3)
    x, y = position_in(rng, cell)
    draw(frame, colour, shape, x, y, radius, angle)
    return frame, static_caption([(colour, shape, cell)])


def random_single(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    return single(rng, colour, SHAPES[int(rng.integers(len(SHAPES)))], int(rng.integers(9)))


def wtal_pose(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A W-TAL class object in a pose it takes during its action (any angle for spin, radius 3–9 px for pulse)."""
    colour, shape, motion = CLASSES[int(rng.integers(len(CLASSES)))]
    radius, angle = RADIUS, 0.0
    if motion == "spin":
        angle = float(rng.uniform(0.0, 2.0 * np.pi))
    elif motion == "pulse":
        amp = MOTIONS["pulse"]["amplitude"]
        radius = RADIUS * float(rng.uniform(1.0 - amp, 1.0 + amp))
    return single(rng, colour, shape, int(rng.integers(9)), radius, angle)


def multi_object(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """2–3 objects of distinct colours in distinct cells, at least 16 px apart (grounding frames)."""
    n = int(rng.integers(2, 4))
    colours = [list(COLOURS)[int(i)] for i in rng.choice(len(COLOURS), size=n, replace=False)]
    shapes = [SHAPES[int(i)] for i in rng.integers(0, len(SHAPES), size=n)]
    cells = [int(c) for c in rng.choice(9, size=n, replace=False)]
    while True:
        pts = [np.asarray(position_in(rng, c)) for c in cells]
        if all(np.linalg.norm(p - q) >= 16.0 for i, p in enumerate(pts) for q in pts[i + 1 :]):
            break
    frame = background(draw_seed(rng)).copy()
    for colour, shape, p in zip(colours, shapes, pts):
        draw(frame, colour, shape, float(p[0]), float(p[1]))
    return frame, static_caption(list(zip(colours, shapes, cells)))


EXTRAS = {"retrieval": random_single, "wtal": wtal_pose, "grounding": multi_object}


def build_image_text(kind: str, seed: int, size: str) -> dict[str, np.ndarray]:
    """The image–caption set of one dataset: images (N, H, W, 3) uint8, captions (N,) str, split (N,) str."""
    check_size(size)
    if kind not in EXTRAS:
        raise ValueError(f"unknown image-text kind {kind!r}; valid: {', '.join(EXTRAS)}")
    rng = rng_for(seed, 100)
    n_train, n_test = SIZE_TABLE[size]
    combos = list(itertools.product(COLOURS, SHAPES, range(len(CELLS))))
    per_combo = int(COVERAGE_FRACTION * n_train // len(combos))
    images: list[np.ndarray] = []
    captions: list[str] = []
    splits: list[str] = []
    for split, n, reps in (("train", n_train, per_combo), ("test", n_test, 1)):
        part = [single(rng, c, s, cell) for _ in range(reps) for c, s, cell in combos]
        part += [EXTRAS[kind](rng) for _ in range(n - len(part))]
        if split == "train":
            part = [part[int(i)] for i in rng.permutation(len(part))]
        images += [img for img, _ in part]
        captions += [cap for _, cap in part]
        splits += [split] * len(part)
    return {"images": np.stack(images), "captions": np.asarray(captions), "split": np.asarray(splits)}


def write_image_text(data: dict[str, np.ndarray], path: Path) -> None:
    """np.savez_compressed to a temporary name, then rename (the final name is always a complete file)."""
    tmp = path.with_name(f".{path.stem}.partial.npz")
    np.savez_compressed(tmp, images=data["images"], captions=data["captions"], split=data["split"])
    tmp.replace(path)


def make_image_text(kind: str, seed: int, size: str, path: str) -> dict[str, int]:
    """Build and write the set; returns its counts. Top-level so that a spawned worker can run it."""
    data = build_image_text(kind, seed, size)
    write_image_text(data, Path(path))
    return {"images_train": int((data["split"] == "train").sum()), "images_test": int((data["split"] == "test").sum())}


def rules(kind: str, size: str) -> dict[str, Any]:
    n_train, n_test = SIZE_TABLE[size]
    return {
        "images": f"{n_train} train + {n_test} test, 64x64, video renderer with fresh backgrounds",
        "captions": "static, no temporal words: 'a <colour> <shape> at the <cell>' (several objects joined by ', ' "
        "and ' and ')",
        "sizes": {k: {"train": a, "test": b} for k, (a, b) in SIZE_TABLE.items()},
        "coverage": f"train: every (colour, shape, cell) {int(COVERAGE_FRACTION * n_train // 162)}x; test: each once",
        "extras": {
            "retrieval": "random single objects",
            "wtal": "class objects in action poses (rotation, size)",
            "grounding": "2-3 objects, distinct colours and cells",
        }[kind],
    }
