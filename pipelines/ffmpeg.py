"""The project's one gateway to the ffmpeg binary: bounded subprocess runs and stream probing.

Why our own runner: ffmpeg-python's ``run()`` has no timeout (kkroening/ffmpeg-python#308), and a Prefect task
timeout cannot interrupt blocking work in a thread (PrefectHQ/prefect#15760). Every call here carries a timeout,
runs in its own process group (``start_new_session``) so that the *whole group* is killed on timeout, and keeps the
tail of stderr, which is where ffmpeg puts the real cause of a failure.

Stopping: every child gets SIGKILL from the kernel if this process dies (``PR_SET_PDEATHSIG``, `pipelines.procs`),
so a ``kill -9`` of an ingest leaves no ffmpeg behind; `stop_children` (called on SIGTERM / Ctrl-C) kills the
running process groups at once and makes every later run raise `Stopped`, so an interrupted ingest neither waits for
its decodes nor records the killed ones as failed inputs.

The binary is the static ffmpeg shipped by ``imageio-ffmpeg`` (no system ffmpeg needed); ``VLREPRO_FFMPEG`` points
elsewhere. `probe` reads the container's *structured* stream fields with PyAV (``av.open``), never ffmpeg's text
banner: user metadata (a title, a comment) is printed in that banner and could fake a geometry or a rotation.
"""

from __future__ import annotations

import contextlib
import functools
import math
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

from pipelines.procs import with_parent_death_signal


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
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class Stopped(RuntimeError):
    """`stop_children` was called: the run is being stopped. Not a property of the input, so never a status row."""


_LIVE: set[subprocess.Popen[bytes]] = set()  # children now running (each leads its own process group)
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_children() -> int:
    """Kill the process group of every running child and refuse new ones (`Stopped`) until `resume_children`.

    For a SIGTERM / Ctrl-C handler in the main thread: the decode threads' runs return at once and raise `Stopped`
    instead of reporting a failed input, and queued decodes raise before they start. Returns how many were killed.
    """
    with _LIVE_LOCK:
        _STOPPING.set()
        live = list(_LIVE)
    for proc in live:
        _kill_group(proc)
    return len(live)


def resume_children() -> None:
    """Allow new children again after `stop_children` (library use: the next ingest in the same process)."""
    _STOPPING.clear()


def stopping() -> bool:
    """Whether `stop_children` was called (and `resume_children` not since)."""
    return _STOPPING.is_set()


def _spawn(argv: list[str], stdin: int | None) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, killed by the kernel if this process dies, and register it."""
    with _LIVE_LOCK:  # under the lock: `stop_children` either sees this child or we see the flag
        if _STOPPING.is_set():
            raise Stopped("stopping: no new ffmpeg runs")
        proc = subprocess.Popen(
            with_parent_death_signal(argv, signal.SIGKILL),  # ffmpeg has nothing to clean up: SIGKILL
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: a timeout kills ffmpeg and anything it spawned
        )
        _LIVE.add(proc)
    return proc


def _release(proc: subprocess.Popen[bytes]) -> None:
    """Unregister a finished child; raise `Stopped` if it ended because `stop_children` killed it."""
    with _LIVE_LOCK:
        _LIVE.discard(proc)
    if _STOPPING.is_set():
        raise Stopped("stopped while ffmpeg was running")


def run_command(argv: list[str], timeout: float, tail_lines: int = 20, stdin: bytes | None = None) -> CommandResult:
    """Run `argv` (never through a shell) with a hard timeout; kill its whole process group on timeout.

    stdout is returned in full; stderr is reduced to its last `tail_lines` lines. `stdin` (bytes) is written to the
    child's standard input when given.
    """
    start = time.monotonic()
    proc = _spawn(argv, subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
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
        _release(proc)
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


def printable_path(path: str | Path) -> str:
    """`path` as text that encodes to UTF-8: the undecodable bytes of a non-UTF-8 file name (kept by ``os.fsdecode``
    as lone surrogates, which pyarrow and ffmpeg-python refuse) become ``\\xNN``. For messages and manifests only;
    open files by the original path."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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


#: packets of the video stream read, at most, to find the first frame (its display matrix gives the rotation)
_PROBE_PACKETS = 64


def probe(path: str | Path, timeout: float = 30.0) -> ProbeInfo:
    """Probe a local video file from the container's structured fields (PyAV). Raises `ProbeError` for a non-video,
    unreadable or hanging input.

    Nothing here reads free text: the old parser matched ``ffmpeg -i``'s banner, where a title such as
    ``"Stream #0:0: Video: h264, 9999x16"`` or ``"rotation of 90 degrees"`` set the geometry or the rotation. The
    rotation comes from the display matrix of the first decoded frame (what ffmpeg's autorotate applies).
    PyAV runs in this process: `timeout` is enforced by libavformat's interrupt callback (PyAV's ``timeout``), which
    every read and the stream analysis check; `decode_video` only hands it regular files, never a FIFO or a device.
    """
    import av  # heavy (~0.25 s): only when probing

    if _STOPPING.is_set():
        raise Stopped("stopping: no new probes")
    try:
        container = av.open(input_arg(path), timeout=timeout, metadata_errors="ignore")
    except av.ExitError as exc:  # the interrupt callback fired
        raise ProbeError(f"probe timed out after {timeout:.0f} s", timed_out=True) from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ProbeError(_av_message(exc)) from exc
    try:
        with container:
            video = next(iter(container.streams.video), None)
            if video is None:
                kinds: list[str] = sorted({str(st.type) for st in container.streams}) or ["none"]
                raise ProbeError(f"no video stream found (streams: {', '.join(kinds)})")
            ctx = video.codec_context
            width, height = int(ctx.width or 0), int(ctx.height or 0)
            if width <= 0 or height <= 0:
                raise ProbeError(f"video stream has no frame size ({width}x{height})")
            rate = video.average_rate or video.guessed_rate or video.base_rate
            fps = float(rate) if rate else 0.0
            if container.duration and container.duration > 0:  # container duration, in AV_TIME_BASE units (µs)
                duration = container.duration / 1_000_000
            elif video.duration and video.time_base:
                duration = float(video.duration * video.time_base)
            else:
                duration = 0.0
            if not (math.isfinite(fps) and fps >= 0):
                fps = 0.0
            if not (math.isfinite(duration) and duration >= 0):
                duration = 0.0
            rotation = _first_frame_rotation(container, video)
            return ProbeInfo(
                duration=duration, fps=fps, width=width, height=height, codec=str(ctx.name), rotation=rotation
            )
    except av.ExitError as exc:
        raise ProbeError(f"probe timed out after {timeout:.0f} s", timed_out=True) from exc
    except (av.FFmpegError, OSError) as exc:
        raise ProbeError(_av_message(exc)) from exc


def _first_frame_rotation(container: object, video: object) -> int:
    """Clockwise display rotation (0/90/180/270) from the first decodable frame's display matrix; 0 when no frame
    decodes within `_PROBE_PACKETS` packets (the decode then classifies the file)."""
    import av

    assert isinstance(container, av.container.InputContainer) and isinstance(video, av.VideoStream)
    video.codec_context.thread_count = 1  # one frame: no decoder thread pool
    try:
        for i, packet in enumerate(container.demux(video)):
            for frame in packet.decode():
                # PyAV reports the matrix counter-clockwise in [-180, 180]; store clockwise, snapped to 90°.
                return (round(-float(frame.rotation) / 90) * 90) % 360
            if i >= _PROBE_PACKETS:
                break
    except av.ExitError:
        raise
    except (av.FFmpegError, OSError):
        pass  # a broken first packet is the decoder's to report
    return 0


def _av_message(exc: BaseException) -> str:
    """PyAV's error without the file name (which may hold undecodable bytes and is in the manifest already)."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else type(exc).__name__


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
    proc = _spawn(argv, subprocess.DEVNULL)
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
        _release(proc)
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
