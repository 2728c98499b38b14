"""Decode one video into frames sampled by timestamp, with a status for every outcome.

ffmpeg-python *builds* the command line (filter graph: ``fps`` → ``scale`` → ``crop``); `pipelines.ffmpeg` runs it
with a timeout and process-group kill. Frames arrive as raw RGB on a pipe, one frame at a time.

Status of a decode (exactly one per input, never an exception for a bad input):

| status | meaning |
|---|---|
| ``ok`` | decoded, frame count as expected from duration × fps, no decoder complaints |
| ``decoded_with_errors`` | frames kept, but ffmpeg complained (stderr, non-zero exit) or fewer frames than expected |
| ``failed_probe`` | ffmpeg cannot read it as a video (garbage, truncated header, audio only, not a video) |
| ``failed_decode`` | probed, but no frame could be decoded (or, in strict mode, any decoder error) |
| ``timeout`` | probe or decode ran past its time limit and was killed |
| ``empty`` | zero-byte file, or a video stream with zero duration |
| ``missing`` | the path does not exist |

ffmpeg exits 0 on many broken inputs (a truncated faststart MP4 decodes 8/20 frames with rc 0), so success is judged
by the frame count against ``duration × fps`` and by stderr, never by the exit code alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import ffmpeg
import numpy as np

from pipelines.ffmpeg import ProbeError, ProbeInfo, ffmpeg_binary, input_arg, probe, run_streaming

Status = Literal["ok", "decoded_with_errors", "failed_probe", "failed_decode", "timeout", "empty", "missing"]
STATUSES: tuple[Status, ...] = (
    "ok",
    "decoded_with_errors",
    "failed_probe",
    "failed_decode",
    "timeout",
    "empty",
    "missing",
)
#: statuses whose frames are kept in the shards
USABLE: frozenset[str] = frozenset({"ok", "decoded_with_errors"})


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are sampled and shaped. Every field changes the output, so all of them enter the config hash."""

    fps: float = 1.0  # sampling rate by timestamp (ffmpeg `fps` filter); CLIP4Clip samples 1 fps (paper §4.1)
    short_side: int = 224  # resize so the shorter side has this many pixels (CLIP4Clip/STAN: 224)
    crop: int = 224  # centre crop to crop×crop after resizing; 0 keeps the resized frame
    max_frames: int = 0  # stop after this many frames (0 = no limit)
    strict: bool = False  # `-xerror`: stop at the first decoder error and report failed_decode
    short_tolerance: int = 1  # frames fewer than floor(duration × fps) tolerated before flagging a short decode
    timeout_s: float = 600.0  # hard limit for one decode (whole process group killed)
    probe_timeout_s: float = 30.0  # hard limit for one probe

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.short_side <= 0 or self.crop < 0 or (self.crop and self.crop > self.short_side):
            raise ValueError(
                f"need 0 < crop <= short_side (or crop 0); got crop={self.crop}, short_side={self.short_side}"
            )


@dataclass
class DecodeResult:
    """Frames (T, H, W, 3) uint8 when usable, plus everything the manifest records."""

    status: Status
    frames: np.ndarray | None = None
    error: str = ""
    info: ProbeInfo | None = None
    n_expected: int = 0
    timestamps: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_frames(self) -> int:
        return 0 if self.frames is None else int(self.frames.shape[0])


def output_size(info: ProbeInfo, cfg: DecodeConfig) -> tuple[int, int]:
    """(width, height) of the decoded frames: resized on the short side, then centre-cropped if configured."""
    if cfg.crop:
        return cfg.crop, cfg.crop
    w, h = info.display_size
    if w <= h:
        return cfg.short_side, 2 * max(1, round(h * cfg.short_side / w / 2))
    return 2 * max(1, round(w * cfg.short_side / h / 2)), cfg.short_side


def decode_argv(path: str | Path, info: ProbeInfo, cfg: DecodeConfig) -> list[str]:
    """The ffmpeg command line for `path` (built with ffmpeg-python; run by `pipelines.ffmpeg`)."""
    w, h = info.display_size  # ffmpeg autorotates before the filters, so they see the display orientation
    if w <= h:
        sw, sh = cfg.short_side, 2 * max(1, round(h * cfg.short_side / w / 2))
    else:
        sw, sh = 2 * max(1, round(w * cfg.short_side / h / 2)), cfg.short_side
    stream = ffmpeg.input(input_arg(path), nostdin=None)
    stream = stream.video.filter("fps", fps=cfg.fps)
    stream = stream.filter("scale", sw, sh, flags="bicubic")
    if cfg.crop:
        stream = stream.filter("crop", cfg.crop, cfg.crop)  # centred by default
    out_kwargs: dict[str, object] = {"format": "rawvideo", "pix_fmt": "rgb24"}
    if cfg.max_frames:
        out_kwargs["frames:v"] = cfg.max_frames
    stream = stream.output("pipe:", **out_kwargs)
    global_args = ["-hide_banner", "-v", "error"]
    if cfg.strict:
        global_args.append("-xerror")
    return list(stream.global_args(*global_args).compile(cmd=ffmpeg_binary()))


def expected_frames(info: ProbeInfo, cfg: DecodeConfig) -> int:
    """Frames the fps filter should produce for the probed duration (capped by max_frames)."""
    n = math.floor(info.duration * cfg.fps + 1e-6)
    return min(n, cfg.max_frames) if cfg.max_frames else n


def decode_video(path: str | Path, cfg: DecodeConfig) -> DecodeResult:
    """Probe then decode `path`; never raises for a bad input (see the module table for statuses)."""
    start = time.monotonic()
    p = Path(path)
    if not p.exists():
        return DecodeResult(status="missing", error=f"no such file: {p}", seconds=time.monotonic() - start)
    if p.is_dir():
        return DecodeResult(status="failed_probe", error=f"is a directory: {p}", seconds=time.monotonic() - start)
    if p.stat().st_size == 0:
        return DecodeResult(status="empty", error="zero-byte file", seconds=time.monotonic() - start)
    try:
        info = probe(p, timeout=cfg.probe_timeout_s)
    except ProbeError as exc:
        status: Status = "timeout" if exc.timed_out else "failed_probe"
        return DecodeResult(status=status, error=_join(str(exc), exc.stderr_tail), seconds=time.monotonic() - start)
    n_expected = expected_frames(info, cfg)
    ow, oh = output_size(info, cfg)
    frame_bytes = ow * oh * 3
    frames: list[np.ndarray] = []
    result = run_streaming(
        decode_argv(p, info, cfg),
        chunk_size=frame_bytes,
        on_chunk=lambda buf: frames.append(np.frombuffer(buf, np.uint8).reshape(oh, ow, 3)),
        timeout=cfg.timeout_s,
    )
    elapsed = time.monotonic() - start
    if result.timed_out:
        return DecodeResult(
            status="timeout",
            info=info,
            n_expected=n_expected,
            seconds=elapsed,
            error=_join(
                f"decode timed out after {cfg.timeout_s:.0f} s ({len(frames)} frames so far)", result.stderr_tail
            ),
        )
    if result.returncode == 0 and not frames:
        return DecodeResult(
            status="empty",
            info=info,
            n_expected=n_expected,
            seconds=elapsed,
            error=_join("the video stream yielded no frames", result.stderr_tail),
        )
    if not frames or (result.returncode != 0 and cfg.strict):
        reason = f"ffmpeg exited {result.returncode}"
        return DecodeResult(
            status="failed_decode",
            info=info,
            n_expected=n_expected,
            seconds=elapsed,
            error=_join(f"{reason} ({len(frames)} frames)", result.stderr_tail),
        )
    stacked = np.stack(frames)  # (T, H, W, 3) uint8
    short = stacked.shape[0] < n_expected - cfg.short_tolerance
    problems = []
    if result.returncode != 0:
        # Recent ffmpeg exits non-zero when decoding hit errors part-way; the frames before are good (non-strict).
        problems.append(f"ffmpeg exited {result.returncode} after {stacked.shape[0]} frames")
    if short:
        problems.append(f"short decode: {stacked.shape[0]} of {n_expected} expected frames")
    if result.stderr_lines:
        problems.append(f"{result.stderr_lines} decoder error line(s)")
    timestamps = [round(i / cfg.fps, 6) for i in range(stacked.shape[0])]
    return DecodeResult(
        status="decoded_with_errors" if problems else "ok",
        frames=stacked,
        error=_join("; ".join(problems), result.stderr_tail) if problems else "",
        info=info,
        n_expected=n_expected,
        timestamps=timestamps,
        seconds=elapsed,
    )


def _join(message: str, stderr_tail: str) -> str:
    return f"{message}\n{stderr_tail}".strip() if stderr_tail else message
