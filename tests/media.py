"""Test media made at test time with the project's own encoder (no binary fixtures in git)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.ffmpeg import encode_video as _encode
from pipelines.ffmpeg import ffmpeg_binary, input_arg, run_command


def moving_square(t: int = 24, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a bright square sliding right over a dark, textured background."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 40, size=(h, w, 3), dtype=np.uint8)
    frames = np.repeat(bg[None], t, axis=0)
    for i in range(t):
        x = (i * 2) % (w - 10)
        frames[i, h // 3 : h // 3 + 10, x : x + 10] = (230, 60, 60)
    return frames


def encode(path: Path, frames: np.ndarray | None = None, fps: float = 8.0, **kwargs: object) -> Path:
    _encode(moving_square() if frames is None else frames, path, fps=fps, **kwargs)  # type: ignore[arg-type]
    return path


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name → (path, expected status) for every bad-input kind the decoder must classify."""
    folder.mkdir(parents=True, exist_ok=True)
    good = encode(folder / "good.mp4")
    out: dict[str, tuple[Path, str]] = {"good": (good, "ok")}
    data = good.read_bytes()
    # moov at the end (no faststart), cut in half: the header is gone → cannot be probed
    tail_moov = encode(folder / "tailmoov.mp4", extra={"movflags": ""})
    trunc = folder / "truncated.mp4"
    trunc.write_bytes(tail_moov.read_bytes()[: len(tail_moov.read_bytes()) // 2])
    out["truncated"] = (trunc, "failed_probe")
    tail_moov.unlink()
    # faststart file cut at 70 %: probes with the full duration, decodes fewer frames, exits 0
    long_data = encode(folder / "long.mp4", moving_square(t=80)).read_bytes()
    (folder / "long.mp4").unlink()
    short = folder / "faststart_truncated.mp4"
    short.write_bytes(long_data[: int(len(long_data) * 0.7)])
    out["faststart_truncated"] = (short, "decoded_with_errors")
    # bytes scrambled in the middle of the media data: rc 0, full length, decoder errors on stderr
    corrupt = bytearray(data)
    rng = np.random.default_rng(1)
    mid = len(corrupt) // 2
    corrupt[mid : mid + 1500] = rng.integers(0, 256, 1500, dtype=np.uint8).tobytes()
    (folder / "midcorrupt.mp4").write_bytes(bytes(corrupt))
    out["midcorrupt"] = (folder / "midcorrupt.mp4", "decoded_with_errors")
    (folder / "empty.mp4").write_bytes(b"")
    out["empty"] = (folder / "empty.mp4", "empty")
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(2).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    out["garbage"] = (folder / "garbage.mp4", "failed_probe")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 50)
    out["nonvideo"] = (folder / "notes.mp4", "failed_probe")
    out["missing"] = (folder / "missing.mp4", "missing")
    return out


def rotated_copy(src: Path, dst: Path, degrees: int) -> Path:
    """Stream-copy `src` with a display-matrix rotation (what phone videos carry)."""
    argv = [ffmpeg_binary(), "-hide_banner", "-v", "error", "-y", "-display_rotation", str(degrees)]
    argv += ["-i", input_arg(src), "-c", "copy", str(dst)]
    res = run_command(argv, timeout=60)
    assert res.ok, res.stderr_tail
    return dst
