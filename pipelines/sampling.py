"""Frame samplers of the five papers, as named, pure index functions (decoding already sampled by timestamp).

- `uniform_indices` — CLIP4Clip / UCoFiA: frames at 1 fps, then ``np.linspace(0, n-1, max_frames, dtype=int)`` when
  more than ``max_frames`` are available (official ``slice_framepos=2``; paper-code-notes §1.2).
- `segment_indices` — STAN / mmaction ``UniformSample``: split ``[0, n)`` into ``k`` equal segments; a random frame
  per segment in training, the segment middle at test time (paper-code-notes §2.3).
- `snippet_starts` — W-TAL: non-overlapping 16-frame snippets at 25 fps; snippet i covers seconds
  ``[i·16/25, (i+1)·16/25)`` (METHODS §4).
- `clip_windows` — LocVTP: T clips of 16 frames (TSN-style segments; dense every 16 frames at test time).
"""

from __future__ import annotations

import itertools

import numpy as np


def uniform_indices(n: int, max_frames: int) -> np.ndarray:
    """All frames if ``n <= max_frames`` else `max_frames` indices spread uniformly (endpoints included)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n <= max_frames:
        return np.arange(n, dtype=np.int64)
    return np.linspace(0, n - 1, max_frames, dtype=np.int64)


def segment_indices(n: int, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One index per each of `k` equal segments of ``[0, n)``: random within the segment if `rng`, else the middle.

    With ``n < k`` segments are shorter than a frame and indices repeat (as mmaction's sampler does).
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.linspace(0, n, k + 1)
    if rng is None:
        idx = (edges[:-1] + edges[1:]) / 2
    else:
        idx = edges[:-1] + rng.random(k) * (edges[1:] - edges[:-1])
    return np.clip(np.floor(idx), 0, n - 1).astype(np.int64)


def snippet_starts(n_frames: int, snippet: int = 16) -> np.ndarray:
    """First frame of every *complete* non-overlapping snippet (a trailing partial snippet is dropped)."""
    return np.arange(0, n_frames - snippet + 1, snippet, dtype=np.int64)


def snippet_seconds(index: np.ndarray | int, snippet: int = 16, fps: float = 25.0) -> np.ndarray:
    """Start time in seconds of snippet `index` (W-TAL's snippet↔second mapping: i·16/25)."""
    return np.asarray(index, dtype=np.float64) * snippet / fps


def seconds_to_snippet(seconds: np.ndarray | float, snippet: int = 16, fps: float = 25.0) -> np.ndarray:
    """Snippet index containing time `seconds` (floor of t·25/16)."""
    return np.floor(np.asarray(seconds, dtype=np.float64) * fps / snippet).astype(np.int64)


def clip_windows(n_frames: int, n_clips: int, clip_len: int = 16, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n_clips, clip_len) frame indices: the video split into `n_clips` equal segments, one `clip_len` window per
    segment (random offset in training when `rng`, centred otherwise); indices clamp at the video's end."""
    if n_frames <= 0:
        return np.zeros((n_clips, clip_len), dtype=np.int64)
    edges = np.linspace(0, n_frames, n_clips + 1)
    starts = []
    for a, b in itertools.pairwise(edges):
        room = max(0.0, (b - a) - clip_len)
        offset = rng.random() * room if rng is not None else room / 2
        starts.append(int(a + offset))
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(clip_len, dtype=np.int64)[None, :]
    return np.clip(idx, 0, n_frames - 1)
