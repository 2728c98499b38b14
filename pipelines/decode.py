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
| ``missing`` | the path does not exist (also a broken symbolic link or a link loop) |
| ``too_long`` | longer than ``max_duration_s``, or its frames would pass ``max_sample_bytes``; nothing is kept |

ffmpeg exits 0 on many broken inputs (a truncated faststart MP4 decodes 8/20 frames with rc 0), so success is judged
by the frame count against ``duration × fps`` and by stderr, never by the exit code alone.

Bounded: ffmpeg is told to stop one frame past the budget (``-frames:v``), and a video whose frames would pass
``max_sample_bytes`` (or whose duration passes ``max_duration_s``) becomes a ``too_long`` row, decided from the probe
before decoding when the container tells the truth and at the budget when it lies. Frames come off the pipe one at a
time and go either into one preallocated array sized from the probe (`decode_video` without a spool folder: library
use, tests) or, with ``spool_dir`` (the ingest), straight into a spool file there: the result then holds a
`pipelines.shards.NpyFile`, which `ShardWriter` streams into the tar as the same ``.npy`` bytes, so memory holds one
frame per decode whatever the video's length.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import math
import numbers
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import ffmpeg
import numpy as np

from pipelines import storage
from pipelines.ffmpeg import (
    CommandResult,
    ProbeError,
    ProbeInfo,
    Stopped,
    ffmpeg_binary,
    input_arg,
    printable_path,
    probe,
    run_streaming,
    stopping,
)
from pipelines.shards import NpyFile

Status = Literal[
    "ok", "decoded_with_errors", "failed_probe", "failed_decode", "timeout", "empty", "missing", "too_long"
]
STATUSES: tuple[Status, ...] = (
    "ok",
    "decoded_with_errors",
    "failed_probe",
    "failed_decode",
    "timeout",
    "empty",
    "missing",
    "too_long",
)
#: statuses whose frames are kept in the shards
USABLE: frozenset[str] = frozenset({"ok", "decoded_with_errors"})


#: Upper bounds of the settings: beyond them a value is a typo (``--fps 1e9`` ran every decode to its timeout at 2 GB),
#: not a use case. Sources above 240 fps are rare and sampling above the source rate only repeats frames.
MAX_FPS = 240.0
MAX_SIDE = 4096  # pixels, short side and crop
MAX_TIMEOUT_S = 24 * 3600.0
MAX_SAMPLE_BYTES_LIMIT = 64 * 2**30
#: Default per-sample cap: 512 MiB, about 57 min of 224² frames at 1 fps. Above it a video is ``too_long``.
DEFAULT_MAX_SAMPLE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are sampled and shaped. Every field that changes a kept sample enters the config hash; the time and
    size limits only decide *whether* a sample is kept, so `IngestConfig.hash` leaves them out."""

    fps: float = 1.0  # sampling rate by timestamp (ffmpeg `fps` filter); CLIP4Clip samples 1 fps (paper §4.1)
    short_side: int = 224  # resize so the shorter side has this many pixels (CLIP4Clip/STAN: 224)
    crop: int = 224  # centre crop to crop×crop after resizing; 0 keeps the resized frame
    max_frames: int = 0  # keep only the first this many frames (0 = no limit); a truncated decode is still `ok`
    strict: bool = False  # `-xerror`: stop at the first decoder error and report failed_decode
    short_tolerance: int = 1  # frames fewer than floor(duration × fps) tolerated before flagging a short decode
    timeout_s: float = 600.0  # hard limit for one decode (whole process group killed)
    probe_timeout_s: float = 30.0  # hard limit for one probe
    max_duration_s: float = 0.0  # longer videos are `too_long` (0 = no limit but the byte cap)
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES  # frames of one sample past this are `too_long`

    def __post_init__(self) -> None:
        # Every bound is checked here so that the CLI, the Prefect flow and library callers refuse the same values
        # (the CLI turns the ValueError into exit code 2). NaN compares false to everything: test finiteness first.
        _check_number("fps", self.fps, 0.0, MAX_FPS, zero_ok=False)
        _check_int("short_side", self.short_side, 1, MAX_SIDE)
        _check_int("crop", self.crop, 0, MAX_SIDE)
        if self.crop and self.crop > self.short_side:
            raise ValueError(
                f"need 0 < crop <= short_side (or crop 0); got crop={self.crop}, short_side={self.short_side}"
            )
        _check_int("max_frames", self.max_frames, 0, 10**9)
        _check_int("short_tolerance", self.short_tolerance, 0, 10**9)
        _check_number("timeout_s", self.timeout_s, 0.0, MAX_TIMEOUT_S, zero_ok=False)
        _check_number("probe_timeout_s", self.probe_timeout_s, 0.0, MAX_TIMEOUT_S, zero_ok=False)
        _check_number("max_duration_s", self.max_duration_s, 0.0, 10 * 24 * 3600.0, zero_ok=True)
        _check_int("max_sample_bytes", self.max_sample_bytes, 1, MAX_SAMPLE_BYTES_LIMIT)


def _check_number(name: str, value: object, low: float, high: float, zero_ok: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or value > high or (value == 0 and not zero_ok):
        bound = f">= {low:g}" if zero_ok else f"> {low:g}"
        raise ValueError(f"{name} must be {bound} and <= {high:g}, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")


@dataclass
class DecodeResult:
    """Frames (T, H, W, 3) uint8 when usable — in memory (`frames`), or spooled to a file (`spooled`, when decoded
    with a ``spool_dir``) — plus everything the manifest records."""

    status: Status
    frames: np.ndarray | None = None
    error: str = ""
    info: ProbeInfo | None = None
    n_expected: int = 0
    timestamps: list[float] = field(default_factory=list)
    seconds: float = 0.0
    spooled: NpyFile | None = None

    @property
    def n_frames(self) -> int:
        if self.spooled is not None:
            return self.spooled.shape[0]
        return 0 if self.frames is None else int(self.frames.shape[0])

    def array(self) -> np.ndarray | NpyFile | None:
        """The frames as a shard member: the in-memory array or the spooled file (None when not usable)."""
        return self.spooled if self.spooled is not None else self.frames


def output_size(info: ProbeInfo, cfg: DecodeConfig) -> tuple[int, int]:
    """(width, height) of the decoded frames: resized on the short side, then centre-cropped if configured."""
    if cfg.crop:
        return cfg.crop, cfg.crop
    w, h = info.display_size
    if w <= h:
        return cfg.short_side, 2 * max(1, round(h * cfg.short_side / w / 2))
    return 2 * max(1, round(w * cfg.short_side / h / 2)), cfg.short_side


def decode_argv(path: str | Path, info: ProbeInfo, cfg: DecodeConfig, frame_limit: int = 0) -> list[str]:
    """The ffmpeg command line for `path` (built with ffmpeg-python; run by `pipelines.ffmpeg`).

    `frame_limit` (> 0) stops ffmpeg after that many output frames (``-frames:v``); 0 uses ``cfg.max_frames``.
    """
    w, h = info.display_size  # ffmpeg autorotates before the filters, so they see the display orientation
    if w <= h:
        sw, sh = cfg.short_side, 2 * max(1, round(h * cfg.short_side / w / 2))
    else:
        sw, sh = 2 * max(1, round(w * cfg.short_side / h / 2)), cfg.short_side
    # ffmpeg-python hashes its arguments as UTF-8, which a non-UTF-8 file name (kept as lone surrogates) cannot be:
    # build with a placeholder and put the real ``-i`` argument into the finished list.
    stream = ffmpeg.input(_INPUT_PLACEHOLDER, nostdin=None)
    if info.duration * cfg.fps < 1:
        # A clip shorter than one sampling period: the default fps filter rounds its only output timestamp (0) away
        # and yields nothing ("empty"); `eof_action=pass` keeps the first frame. Only here: on longer clips `pass`
        # can add a frame past floor(duration × fps) at the end.
        stream = stream.video.filter("fps", fps=cfg.fps, eof_action="pass")
    else:
        stream = stream.video.filter("fps", fps=cfg.fps)
    stream = stream.filter("scale", sw, sh, flags="bicubic")
    if cfg.crop:
        stream = stream.filter("crop", cfg.crop, cfg.crop)  # centred by default
    out_kwargs: dict[str, object] = {"format": "rawvideo", "pix_fmt": "rgb24"}
    limit = frame_limit or cfg.max_frames
    if limit:
        out_kwargs["frames:v"] = limit
    stream = stream.output("pipe:", **out_kwargs)
    global_args = ["-hide_banner", "-v", "error"]
    if cfg.strict:
        global_args.append("-xerror")
    argv = list(stream.global_args(*global_args).compile(cmd=ffmpeg_binary()))
    return [input_arg(path) if a == _INPUT_PLACEHOLDER else a for a in argv]


_INPUT_PLACEHOLDER = "file:vlrepro-input-placeholder"


def expected_frames(info: ProbeInfo, cfg: DecodeConfig) -> int:
    """Frames the fps filter should produce for the probed duration (capped by max_frames); at least one for any
    clip with a positive duration (see `decode_argv`)."""
    n = math.floor(info.duration * cfg.fps + 1e-6)
    if info.duration > 0:
        n = max(n, 1)
    return min(n, cfg.max_frames) if cfg.max_frames else n


def frame_budget(cfg: DecodeConfig, frame_bytes: int) -> int:
    """The most frames one sample may hold: the byte cap, and the duration cap (``max_duration_s × fps``, plus one
    for the frame at the end that the fps filter's rounding may add)."""
    budget = cfg.max_sample_bytes // max(1, frame_bytes)
    if cfg.max_duration_s:
        budget = min(budget, math.floor(cfg.max_duration_s * cfg.fps + 1e-6) + 1)
    return budget


class _FrameBuffer:
    """Frames written in place into one array sized from the probe, grown geometrically only if the container
    under-reported its duration; never more than `limit` frames are stored (the rest are only counted)."""

    def __init__(self, height: int, width: int, initial: int, limit: int) -> None:
        self.shape = (height, width, 3)
        self.limit = limit
        self.array = np.empty((max(1, min(initial, limit)), *self.shape), np.uint8)
        self.n = 0  # frames stored
        self.seen = 0  # frames received

    def add(self, buf: bytes) -> None:
        self.seen += 1
        if self.n >= self.limit:
            return
        if self.n == len(self.array):
            grown = np.empty((min(self.limit, 2 * len(self.array)), *self.shape), np.uint8)
            grown[: self.n] = self.array[: self.n]
            self.array = grown
        self.array[self.n] = np.frombuffer(buf, np.uint8).reshape(self.shape)
        self.n += 1

    def frames(self) -> np.ndarray:
        return self.array[: self.n]


class _FrameSpool:
    """Frames appended to a spool file in `folder` as they arrive (never more than `limit`; the rest are only
    counted): a decode holds one frame in memory, not the video. The file is named as this process's temporary
    (`storage.temp_name`), so a run that dies leaves nothing the next one keeps (`shards.clean_stale_temporaries`)."""

    def __init__(self, folder: str | Path, height: int, width: int, limit: int) -> None:
        self.shape = (height, width, 3)
        self.limit = limit
        self.n = 0
        self.seen = 0
        self.handed_over = False
        self.path = Path(folder) / storage.temp_name("frames.rgb")
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed by finish() / discard()

    def add(self, buf: bytes) -> None:
        self.seen += 1
        if self.n >= self.limit:
            return
        self._fh.write(buf)
        self.n += 1

    def finish(self) -> NpyFile:
        """Close the file and hand it over: the `NpyFile` owns (and eventually removes) it."""
        self._fh.close()
        spooled = NpyFile(self.path, (self.n, *self.shape), np.uint8)
        self.handed_over = True
        return spooled

    def discard(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def _stat_problem(p: Path) -> DecodeResult | None:
    """A status for a path that is not a non-empty regular file (never raises): broken links and link loops are
    `missing`, directories, FIFOs, sockets and devices `failed_probe` (a FIFO would block the probe forever)."""
    try:
        st = p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return DecodeResult(status="missing", error="symbolic link loop")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if p.is_symlink():
                return DecodeResult(
                    status="missing", error=f"broken symbolic link (target: {printable_path(os.readlink(p))})"
                )
            return DecodeResult(status="missing", error=f"no such file: {printable_path(p)}")
        return DecodeResult(status="failed_probe", error=f"cannot stat: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        return DecodeResult(status="failed_probe", error=f"is a directory: {printable_path(p)}")
    if not stat.S_ISREG(st.st_mode):
        return DecodeResult(status="failed_probe", error=f"not a regular file (mode {stat.filemode(st.st_mode)})")
    if st.st_size == 0:
        return DecodeResult(status="empty", error="zero-byte file")
    return None


#: the spool folder of the decodes in this context (`spooling`); None: frames are returned in memory
_SPOOL_DIR: contextvars.ContextVar[str | None] = contextvars.ContextVar("vlrepro_spool_dir", default=None)


@contextlib.contextmanager
def spooling(folder: str | Path) -> Iterator[None]:
    """Decodes in this block (this thread or task) spool their frames into `folder`, as if each `decode_video` call
    were given ``spool_dir=folder``. The ingest sets it around a shard, so that the per-item processors keep their
    ``(path, cfg)`` decoder interface."""
    token = _SPOOL_DIR.set(str(folder))
    try:
        yield
    finally:
        _SPOOL_DIR.reset(token)


def decode_video(path: str | Path, cfg: DecodeConfig, spool_dir: str | Path | None = None) -> DecodeResult:
    """Probe then decode `path`; never raises for a bad input (see the module table for statuses).

    Without a spool folder the frames of a usable decode are in `DecodeResult.frames` (one array sized from the
    probe); with one (`spool_dir`, else the folder `spooling` set) they are streamed into a temporary file there and
    returned as `DecodeResult.spooled` (an `NpyFile` that removes its file when discarded or dropped), so that the
    video is never held in memory. Nothing is left in the folder for an unusable decode, nor when this raises.

    Raises `pipelines.ffmpeg.Stopped` when the run is being stopped (`pipelines.ffmpeg.stop_children`): an
    interrupted decode says nothing about the input, so it must not become a row.
    """
    start = time.monotonic()
    if stopping():
        raise Stopped("stopping: no new decodes")
    p = Path(path)
    problem = _stat_problem(p)
    if problem is not None:
        problem.seconds = time.monotonic() - start
        return problem
    try:
        info = probe(p, timeout=cfg.probe_timeout_s)
    except ProbeError as exc:
        status: Status = "timeout" if exc.timed_out else "failed_probe"
        return DecodeResult(status=status, error=_join(str(exc), exc.stderr_tail), seconds=time.monotonic() - start)
    n_expected = expected_frames(info, cfg)
    ow, oh = output_size(info, cfg)
    frame_bytes = ow * oh * 3
    budget = frame_budget(cfg, frame_bytes)
    if cfg.max_duration_s and info.duration > cfg.max_duration_s:
        return DecodeResult(
            status="too_long",
            info=info,
            n_expected=n_expected,
            seconds=time.monotonic() - start,
            error=f"duration {info.duration:.1f} s is above max_duration_s {cfg.max_duration_s:g}",
        )
    if n_expected > budget:
        return DecodeResult(
            status="too_long",
            info=info,
            n_expected=n_expected,
            seconds=time.monotonic() - start,
            error=_too_long(n_expected, frame_bytes, budget, cfg, "expected "),
        )
    # max_frames truncates on purpose (ffmpeg stops there); otherwise ffmpeg stops one frame past the budget, and
    # that frame only tells us the video is too long (the container under-reported its duration).
    truncating = 0 < cfg.max_frames <= budget
    limit = cfg.max_frames if truncating else budget + 1
    buffer: _FrameBuffer | _FrameSpool
    spool_dir = spool_dir if spool_dir is not None else _SPOOL_DIR.get()
    if spool_dir is None:
        buffer = _FrameBuffer(oh, ow, initial=n_expected + cfg.short_tolerance + 1, limit=min(limit, budget))
    else:
        buffer = _FrameSpool(spool_dir, oh, ow, limit=min(limit, budget))
    try:
        result = run_streaming(
            decode_argv(p, info, cfg, frame_limit=limit),
            chunk_size=frame_bytes,
            on_chunk=buffer.add,
            timeout=cfg.timeout_s,
        )
        res = _classify(result, buffer, info, n_expected, budget, frame_bytes, cfg, start)
        if isinstance(buffer, _FrameSpool) and res.status in USABLE:
            res.spooled = buffer.finish()
    finally:
        if isinstance(buffer, _FrameSpool) and not buffer.handed_over:
            buffer.discard()  # not usable, or an exception (a stop, a full disk): leave nothing behind
    return res


def _classify(
    result: CommandResult,
    buffer: _FrameBuffer | _FrameSpool,
    info: ProbeInfo,
    n_expected: int,
    budget: int,
    frame_bytes: int,
    cfg: DecodeConfig,
    start: float,
) -> DecodeResult:
    """The status of a finished decode run (the frames of a usable one stay in `buffer`'s keeping)."""
    elapsed = time.monotonic() - start
    n = buffer.n
    if result.timed_out:
        return DecodeResult(
            status="timeout",
            info=info,
            n_expected=n_expected,
            seconds=elapsed,
            error=_join(f"decode timed out after {cfg.timeout_s:.0f} s ({n} frames so far)", result.stderr_tail),
        )
    if buffer.seen > budget:
        return DecodeResult(
            status="too_long",
            info=info,
            n_expected=n_expected,
            seconds=elapsed,
            error=_too_long(buffer.seen, frame_bytes, budget, cfg, "more than "),
        )
    if result.returncode == 0 and not n:
        return DecodeResult(
            status="empty",
            info=info,
            n_expected=n_expected,
            seconds=elapsed,
            error=_join("the video stream yielded no frames", result.stderr_tail),
        )
    if not n or (result.returncode != 0 and cfg.strict):
        reason = f"ffmpeg exited {result.returncode}"
        return DecodeResult(
            status="failed_decode",
            info=info,
            n_expected=n_expected,
            seconds=elapsed,
            error=_join(f"{reason} ({n} frames)", result.stderr_tail),
        )
    frames = buffer.frames() if isinstance(buffer, _FrameBuffer) else None  # a view of the preallocated array
    short = n < n_expected - cfg.short_tolerance
    problems = []
    if result.returncode != 0:
        # Recent ffmpeg exits non-zero when decoding hit errors part-way; the frames before are good (non-strict).
        problems.append(f"ffmpeg exited {result.returncode} after {n} frames")
    if short:
        problems.append(f"short decode: {n} of {n_expected} expected frames")
    if result.stderr_lines:
        problems.append(f"{result.stderr_lines} decoder error line(s)")
    timestamps = [round(i / cfg.fps, 6) for i in range(n)]
    return DecodeResult(
        status="decoded_with_errors" if problems else "ok",
        frames=frames,
        error=_join("; ".join(problems), result.stderr_tail) if problems else "",
        info=info,
        n_expected=n_expected,
        timestamps=timestamps,
        seconds=elapsed,
    )


def _too_long(n_frames: int, frame_bytes: int, budget: int, cfg: DecodeConfig, qualifier: str) -> str:
    limits = [f"max_sample_bytes {cfg.max_sample_bytes}"]
    if cfg.max_duration_s:
        limits.append(f"max_duration_s {cfg.max_duration_s:g}")
    return (
        f"{qualifier}{n_frames} frames of {frame_bytes} bytes: above the budget of {budget} frames "
        f"({', '.join(limits)}); raise the limit or lower --fps/--size"
    )


def _join(message: str, stderr_tail: str) -> str:
    return f"{message}\n{stderr_tail}".strip() if stderr_tail else message
