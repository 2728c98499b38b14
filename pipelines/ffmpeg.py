"""The project's one gateway to the ffmpeg binary: bounded subprocess runs and stream probing.

Why our own runner: ffmpeg-python's ``run()`` has no timeout (kkroening/ffmpeg-python#308), and a Prefect task
timeout cannot interrupt blocking work in a thread (PrefectHQ/prefect#15760). Every call here carries a timeout,
runs in its own process group (``start_new_session``) so that the *whole group* is killed on timeout, and keeps the
tail of stderr, which is where ffmpeg puts the real cause of a failure.

The binary is the static ffmpeg shipped by ``imageio-ffmpeg`` (no system ffmpeg needed); ``VLREPRO_FFMPEG`` points
elsewhere. That package ships no ffprobe, so `probe` reads ffmpeg's own stream report (``ffmpeg -i FILE``), the
same approach imageio-ffmpeg uses, with the same timeout discipline.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class FFmpegNotFound(RuntimeError):
    """No usable ffmpeg binary."""


@functools.cache
def ffmpeg_binary() -> str:
    """Path of the ffmpeg binary: ``$VLREPRO_FFMPEG`` or the one bundled with imageio-ffmpeg."""
    override = os.environ.get("VLREPRO_FFMPEG")
    if override:
        return override
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise FFmpegNotFound("imageio-ffmpeg is not installed; run `make install`") from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


@functools.cache
def ffmpeg_version() -> str:
    """The first line of ``ffmpeg -version`` (recorded in manifests and run tags)."""
    result = run_command([ffmpeg_binary(), "-hide_banner", "-version"], timeout=30)
    first = result.stdout.decode(errors="replace").splitlines()
    return first[0].strip() if first else "unknown"


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one bounded subprocess run."""

    argv: tuple[str, ...]
    returncode: int | None  # None when killed on timeout
    stdout: bytes
    stderr_tail: str  # the last `tail_lines` lines of stderr
    stderr_lines: int  # how many lines stderr had in total
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_command(argv: list[str], timeout: float, tail_lines: int = 20, stdin: bytes | None = None) -> CommandResult:
    """Run `argv` (never through a shell) with a hard timeout; kill its whole process group on timeout.

    stdout is returned in full; stderr is reduced to its last `tail_lines` lines. `stdin` (bytes) is written to the
    child's standard input when given.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # own process group: a timeout kills ffmpeg and anything it spawned
    )
    timed_out = False
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        out, err = proc.communicate()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        # A child that exited normally may have left grandchildren in its group; never leak them.
        if proc.returncode is None:
            _kill_group(proc)
    lines = err.decode(errors="replace").splitlines()
    tail = "\n".join(deque(lines, maxlen=tail_lines))
    return CommandResult(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        stdout=out,
        stderr_tail=tail,
        stderr_lines=len(lines),
        timed_out=timed_out,
        seconds=time.monotonic() - start,
    )


def input_arg(path: str | Path) -> str:
    """The ``-i`` argument for a local file: absolute and behind ``file:`` so that a name like ``-x.mp4`` or
    ``http:x.mp4`` is read as a plain file, never as an option or a protocol."""
    return "file:" + str(Path(path).resolve())


@dataclass(frozen=True)
class ProbeInfo:
    """What ffmpeg reports about a file's first video stream."""

    duration: float  # seconds (container duration; 0.0 when unknown)
    fps: float  # average frame rate of the video stream (0.0 when unknown)
    width: int  # coded width
    height: int  # coded height
    codec: str
    rotation: int  # clockwise display rotation in degrees, one of 0/90/180/270

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after applying the rotation, as ffmpeg's autorotate shows it."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


class ProbeError(RuntimeError):
    """The file could not be probed as a video; `timed_out` tells a hang from a bad file."""

    def __init__(self, message: str, stderr_tail: str = "", timed_out: bool = False) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")
_ROTATE_TAG = re.compile(r"^\s*rotate\s*:\s*(-?\d+)", re.MULTILINE)


def parse_probe(report: str) -> ProbeInfo:
    """Parse ffmpeg's stream report (the stderr of ``ffmpeg -i FILE``) for the first video stream."""
    video_line = next((ln for ln in report.splitlines() if _VIDEO.search(ln)), None)
    if video_line is None:
        raise ProbeError("no video stream found", stderr_tail=report[-2000:])
    match = _VIDEO.search(video_line)
    assert match is not None
    codec, width, height = match.group(1), int(match.group(2)), int(match.group(3))

    def rate(pattern: re.Pattern[str]) -> float:
        m = pattern.search(video_line)
        if not m:
            return 0.0
        return float(m.group(1)) * (1000.0 if m.group(2) else 1.0)

    fps = rate(_FPS) or rate(_TBR)
    d = _DURATION.search(report)
    duration = int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3)) if d else 0.0
    # ffmpeg prints the display matrix as "rotation of -90.00 degrees" (counter-clockwise); old files carry a
    # `rotate: 90` tag (clockwise). Normalise both to clockwise degrees.
    rotation = 0
    r = _ROTATION.search(report)
    if r:
        rotation = round(-float(r.group(1))) % 360
    else:
        t = _ROTATE_TAG.search(report)
        if t:
            rotation = int(t.group(1)) % 360
    return ProbeInfo(duration=duration, fps=fps, width=width, height=height, codec=codec, rotation=rotation)


def probe(path: str | Path, timeout: float = 30.0) -> ProbeInfo:
    """Probe a local video file. Raises `ProbeError` for a non-video, unreadable or hanging input."""
    result = run_command(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", input_arg(path)], timeout=timeout, tail_lines=200
    )
    if result.timed_out:
        raise ProbeError(f"probe timed out after {timeout:.0f} s", stderr_tail=result.stderr_tail, timed_out=True)
    report = result.stderr_tail
    # `ffmpeg -i` without an output always exits 1; the report is what matters.
    if "Invalid data found" in report or "No such file" in report or "moov atom not found" in report:
        raise ProbeError(_last_error_line(report), stderr_tail=report)
    return parse_probe(report)


def _last_error_line(report: str) -> str:
    lines = [ln.strip() for ln in report.splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg reported nothing"


_ERROR_LINE = re.compile(r"error|invalid|corrupt|missing|truncat|non-existing|concealing", re.IGNORECASE)


def count_error_lines(stderr: str) -> int:
    """How many stderr lines look like decoder complaints (ffmpeg exits 0 on many broken inputs)."""
    return sum(1 for ln in stderr.splitlines() if _ERROR_LINE.search(ln))


def run_streaming(
    argv: list[str], chunk_size: int, on_chunk: Callable[[bytes], None], timeout: float, tail_lines: int = 20
) -> CommandResult:
    """Like `run_command`, but hand stdout to `on_chunk` in pieces of exactly `chunk_size` bytes (e.g. one raw
    frame) as they arrive, so memory holds what the consumer keeps, not the whole output. A trailing partial chunk
    is returned as `stdout`. The timeout is enforced by a watchdog that kills the process group.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_pipe = proc.stderr
    tail: deque[str] = deque(maxlen=tail_lines)
    count = [0]

    def drain_stderr() -> None:
        for raw in stderr_pipe:
            tail.append(raw.decode(errors="replace").rstrip("\n"))
            count[0] += 1

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    fired = threading.Event()

    def on_timeout() -> None:
        fired.set()
        _kill_group(proc)

    watchdog = threading.Timer(timeout, on_timeout)
    watchdog.start()
    leftover = b""
    try:
        while True:
            buf = proc.stdout.read(chunk_size)
            if not buf:
                break
            while len(buf) < chunk_size:
                more = proc.stdout.read(chunk_size - len(buf))
                if not more:
                    break
                buf += more
            if len(buf) < chunk_size:
                leftover = buf
                break
            on_chunk(buf)
        proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        watchdog.cancel()
        reader.join(timeout=5)
    timed_out = fired.is_set()
    return CommandResult(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        stdout=leftover,
        stderr_tail="\n".join(tail),
        stderr_lines=count[0],
        timed_out=timed_out,
        seconds=time.monotonic() - start,
    )


class EncodeError(RuntimeError):
    """ffmpeg could not encode the given frames."""


def encode_argv(
    out_path: str | Path,
    width: int,
    height: int,
    fps: float,
    crf: int = 18,
    intra_only: bool = False,
    extra: dict[str, str] | None = None,
) -> list[str]:
    """ffmpeg command (built with ffmpeg-python) that encodes raw RGB frames from stdin into an H.264 MP4.

    `intra_only` makes every frame a key frame and fixes the quantiser, so a frame's decoded pixels depend only on
    its own content (used where the mini world promises identical frames in different videos).
    """
    import ffmpeg

    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
    kwargs: dict[str, object] = {
        "vcodec": "libx264",
        "pix_fmt": "yuv420p",
        "preset": "veryfast",
        "movflags": "+faststart",
    }
    if intra_only:
        kwargs.update({"g": 1, "qp": 10, "x264-params": "keyint=1:scenecut=0:threads=1"})
    else:
        kwargs.update({"crf": crf, "x264-params": "threads=1"})
    kwargs.update(extra or {})
    kwargs = {k: v for k, v in kwargs.items() if v != ""}  # an empty value in `extra` drops a default option
    stream = stream.output(str(Path(out_path)), **kwargs)
    return list(stream.global_args("-hide_banner", "-v", "error", "-y").compile(cmd=ffmpeg_binary()))


def encode_video(
    frames: np.ndarray,
    out_path: str | Path,
    fps: float,
    crf: int = 18,
    intra_only: bool = False,
    timeout: float = 120.0,
    extra: dict[str, str] | None = None,
) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames to an H.264 MP4 at `out_path` (H and W must be even)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    _t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 with yuv420p needs even sizes, got {w}x{h}")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    argv = encode_argv(out_path, w, h, fps, crf=crf, intra_only=intra_only, extra=extra)
    result = run_command(argv, timeout=timeout, stdin=np.ascontiguousarray(frames).tobytes())
    if not result.ok:
        raise EncodeError(
            f"encoding {out_path} failed (rc={result.returncode}, timed_out={result.timed_out}): {result.stderr_tail}"
        )
