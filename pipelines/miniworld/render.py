"""The one renderer of the mini world: a static, tinted background plus anti-aliased coloured shapes.

Every frame of every mini dataset, and every image of the image–caption set, comes from `render_frames`, so the
pre-trained mini CLIP sees the same pixel distribution it is later applied to (ARCHITECTURE §5).

- Frame: 64×64 RGB (`FRAME` pixels a side).
- Background: per video, a dark random tint (each channel 8–40) plus a mild *static* texture (8×8-px tiles of σ 3
  levels and a smooth shading of ±6 levels in steps of 3; no per-pixel grain, which would bloat the files); it
  never changes from frame to frame, so identical object states give identical frames. The retrieval order twins
  rely on that (see `retrieval`).
- Objects: circle, square (half side 1.0·r) or upward-pointing equilateral triangle (circumradius 1.4·r), radius
  r ≈ 6 px, drawn with 4×4 supersampling, optional rotation and opacity (fades). Sub-pixel state is quantised
  (1/8 px position, 1/16 px radius, 0.5° angle) so that masks can be cached; rendering is a pure function of the
  job, identical in any process.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.miniworld.vocab import COLOURS

FRAME = 64  # frame side in pixels
RADIUS = 6.0  # default object radius in pixels (feasibility study: ~6 px on 64×64)
TILE = 8  # background texture tile side in pixels
SUPERSAMPLE = 4  # anti-aliasing: SUPERSAMPLE² coverage samples per pixel
SQUARE_HALF_SIDE = 1.0  # × radius: the square circumscribes the circle, so its corners tell it apart at 64 px
TRIANGLE_CIRCUMRADIUS = 1.4  # × radius; a triangle of similar visual size


@dataclass(frozen=True)
class Track:
    """One object through a video: per-frame state arrays, each of shape (T,)."""

    colour: str
    shape: str
    x: np.ndarray  # (T,) centre column in pixels (pixel i has its centre at i)
    y: np.ndarray  # (T,) centre row in pixels
    radius: np.ndarray  # (T,) pixels
    angle: np.ndarray  # (T,) clockwise rotation in radians (0: triangle points up)
    alpha: np.ndarray  # (T,) opacity, 0 = absent, 1 = opaque

    @staticmethod
    def constant(colour: str, shape: str, x: np.ndarray, y: np.ndarray, present: np.ndarray | None = None) -> Track:
        """A rigid object of the default radius, unrotated, following the path (x, y)."""
        n = len(x)
        alpha = np.ones(n, np.float32) if present is None else present.astype(np.float32)
        return Track(
            colour, shape, np.asarray(x, np.float64), np.asarray(y, np.float64), np.full(n, RADIUS), np.zeros(n), alpha
        )


@dataclass(frozen=True)
class VideoJob:
    """Everything needed to render and encode one video, independent of the process that does it."""

    key: str
    fps: float
    n_frames: int
    background_seed: int
    tracks: tuple[Track, ...]
    intra_only: bool = False  # every frame a key frame with a fixed quantiser (retrieval test clips)


def background(seed: int) -> np.ndarray:
    """The static background of one video, (H, W, 3) uint8, from its seed."""
    rng = np.random.default_rng(seed)
    tint = rng.uniform(8.0, 40.0, size=3)
    # Texture kept cheap to store: 8×8-px tiles (aligned with H.264's blocks) and a smooth shading quantised to
    # steps of 3 levels; per-pixel grain would make image_text.npz ~20× larger and the mp4s ~2× larger.
    tiles = rng.normal(0.0, 3.0, size=(FRAME // TILE, FRAME // TILE, 3)).repeat(TILE, axis=0).repeat(TILE, axis=1)
    shade = cv2.resize(
        rng.normal(0.0, 1.0, size=(3, 3, 3)).astype(np.float32), (FRAME, FRAME), interpolation=cv2.INTER_CUBIC
    )
    shade = 3.0 * np.round(2.0 * np.clip(shade, -1.0, 1.0))  # levels -6, -3, 0, 3, 6
    img = np.rint(tint[None, None, :] + tiles + shade)  # (H, W, 3)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _inside(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of sample offsets (u right, v down, already rotated into the object frame) inside the shape."""
    if shape == "circle":
        return np.asarray(u * u + v * v <= r * r)
    if shape == "square":
        h = SQUARE_HALF_SIDE * r
        return np.asarray((np.abs(u) <= h) & (np.abs(v) <= h))
    if shape == "triangle":
        big_r = TRIANGLE_CIRCUMRADIUS * r
        inside = np.ones(u.shape, bool)
        for deg in (90.0, 210.0, 330.0):  # outward edge normals; the vertices sit at -90°, 30°, 150°
            a = math.radians(deg)
            inside &= u * math.cos(a) + v * math.sin(a) <= big_r / 2.0  # inradius = circumradius / 2
        return inside
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=4096)
def _sprite(shape: str, fx8: int, fy8: int, r16: int, deg2: int) -> tuple[int, np.ndarray]:
    """Coverage mask (2E+1, 2E+1) float32 in [0, 1] of a shape whose centre lies (fx8/8, fy8/8) px right/below the
    pixel at the mask's centre; returns (E, mask)."""
    r = r16 / 16.0
    ext = math.ceil(TRIANGLE_CIRCUMRADIUS * r) + 2
    offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    grid = (np.arange(-ext, ext + 1)[:, None] + offs[None, :]).reshape(-1)  # (N,) sample offsets, N = (2E+1)·S
    v, u = np.meshgrid(grid - fy8 / 8.0, grid - fx8 / 8.0, indexing="ij")  # (N, N)
    a = math.radians(deg2 / 2.0)
    ur = math.cos(a) * u + math.sin(a) * v  # rotate the sample points by -angle into the object frame
    vr = -math.sin(a) * u + math.cos(a) * v
    n = 2 * ext + 1
    cover = _inside(shape, ur, vr, r).reshape(n, SUPERSAMPLE, n, SUPERSAMPLE).mean(axis=(1, 3))  # (n, n)
    return ext, cover.astype(np.float32)


def draw(
    frame: np.ndarray,
    colour: str,
    shape: str,
    x: float,
    y: float,
    radius: float = RADIUS,
    angle: float = 0.0,
    alpha: float = 1.0,
) -> None:
    """Composite one object onto `frame` (H, W, 3) uint8 in place."""
    if alpha <= 0.0:
        return
    qx, qy = round(x * 8), round(y * 8)
    ix, iy = qx // 8, qy // 8
    deg2 = round(math.degrees(angle) * 2) % 720
    ext, cover = _sprite(shape, qx - 8 * ix, qy - 8 * iy, round(radius * 16), deg2)
    y0, y1, x0, x1 = iy - ext, iy + ext + 1, ix - ext, ix + ext + 1
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, FRAME), max(x0, 0), min(x1, FRAME)
    if cy0 >= cy1 or cx0 >= cx1:
        return
    m = alpha * cover[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]  # (h, w, 1)
    patch = frame[cy0:cy1, cx0:cx1].astype(np.float32)  # (h, w, 3)
    col = np.asarray(COLOURS[colour], np.float32)
    frame[cy0:cy1, cx0:cx1] = np.rint(patch * (1.0 - m) + col * m).astype(np.uint8)


def _quantised_states(job: VideoJob) -> np.ndarray:
    """Per frame, the quantised state of every track as `draw` will see it, (T, 5·tracks)."""
    cols = []
    for tr in job.tracks:
        n = job.n_frames
        cols += [
            np.round(tr.x[:n] * 8),
            np.round(tr.y[:n] * 8),
            np.round(tr.radius[:n] * 16),
            np.round(np.degrees(tr.angle[:n]) * 2) % 720,
            np.where(tr.alpha[:n] > 0, tr.alpha[:n], 0.0),
        ]
    return np.stack(cols, axis=1) if cols else np.zeros((job.n_frames, 0))


def render_frames(job: VideoJob) -> np.ndarray:
    """All frames of a job, (T, H, W, 3) uint8; objects are drawn in track order (later tracks on top).

    A frame whose quantised object states equal the previous frame's is a copy of it (exactly what drawing it would
    give): in W-TAL and grounding videos most frames are still, which makes rendering several times faster.
    """
    bg = background(job.background_seed)
    frames = np.repeat(bg[None], job.n_frames, axis=0)  # (T, H, W, 3)
    states = _quantised_states(job)
    for t in range(job.n_frames):
        if t > 0 and np.array_equal(states[t], states[t - 1]):
            frames[t] = frames[t - 1]
            continue
        for track in job.tracks:
            if track.alpha[t] > 0:
                draw(
                    frames[t],
                    track.colour,
                    track.shape,
                    float(track.x[t]),
                    float(track.y[t]),
                    float(track.radius[t]),
                    float(track.angle[t]),
                    float(track.alpha[t]),
                )
    return frames
