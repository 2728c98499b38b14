"""Decoder: frame counts by timestamp, one status per bad-input kind, rotation, timeouts that kill the group."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipelines import ffmpeg as ff
from pipelines.decode import DecodeConfig, decode_argv, decode_video, output_size
from tests.media import bad_inputs, encode, moving_square, rotated_copy


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return bad_inputs(tmp_path_factory.mktemp("media"))


@pytest.mark.parametrize(("fps", "expected"), [(8.0, 24), (4.0, 12), (2.0, 6), (3.0, 9), (1.0, 3)])
def test_frame_count_matches_duration_times_fps(media, fps, expected):
    res = decode_video(media["good"][0], DecodeConfig(fps=fps, short_side=32, crop=32))
    assert res.status == "ok"
    assert res.n_frames == expected == res.n_expected
    assert res.frames is not None and res.frames.shape == (expected, 32, 32, 3) and res.frames.dtype == np.uint8
    assert res.timestamps == pytest.approx([i / fps for i in range(expected)])


def test_sampling_is_by_timestamp_not_index(media):
    # at 4 fps from an 8 fps source every second frame is kept: the square moves 2 px per source frame → 4 px
    res = decode_video(media["good"][0], DecodeConfig(fps=4, short_side=64, crop=64))
    assert res.frames is not None
    xs = [np.argwhere(f[..., 0] > 150)[:, 1].min() for f in res.frames[:5]]
    assert np.diff(xs).tolist() == pytest.approx([4, 4, 4, 4], abs=1)


@pytest.mark.parametrize(
    "kind", ["good", "truncated", "faststart_truncated", "midcorrupt", "empty", "garbage", "nonvideo", "missing"]
)
def test_every_bad_input_kind_gets_its_status(media, kind):
    path, expected = media[kind]
    res = decode_video(path, DecodeConfig(fps=4, short_side=32, crop=32))
    assert res.status == expected, res.error
    if expected == "ok":
        assert res.error == ""
    else:
        assert res.error  # the cause, from ffmpeg's stderr or our own check
    if expected == "decoded_with_errors":
        assert res.n_frames > 0
    else:
        assert (res.n_frames > 0) == (expected == "ok")


def test_short_decode_is_flagged_against_duration(media):
    res = decode_video(media["faststart_truncated"][0], DecodeConfig(fps=8, short_side=32, crop=32))
    assert res.status == "decoded_with_errors"
    assert 0 < res.n_frames < res.n_expected == 80
    assert "short decode" in res.error


def test_strict_mode_turns_decoder_errors_into_failures(media):
    res = decode_video(media["midcorrupt"][0], DecodeConfig(fps=4, short_side=32, crop=32, strict=True))
    assert res.status == "failed_decode"


def test_rotation_metadata_is_applied(tmp_path):
    frames = moving_square(t=8, h=32, w=64)
    frames[:, :4, :4] = 255  # white marker in the coded top-left corner
    src = encode(tmp_path / "wide.mp4", frames)
    rot = rotated_copy(src, tmp_path / "rot.mp4", 90)  # 90° counter-clockwise display matrix
    info = ff.probe(rot)
    assert (info.width, info.height, info.rotation) == (64, 32, 270)  # stored clockwise
    res = decode_video(rot, DecodeConfig(fps=8, short_side=32, crop=0))
    assert res.status == "ok" and res.frames is not None
    assert res.frames.shape[1:] == (64, 32, 3)  # portrait after rotation
    expected = np.rot90(frames[0], k=1)  # counter-clockwise: coded top-left → bottom-left
    corner = res.frames[0][-4:, :4].mean()
    assert corner > 200 and res.frames[0][:4, :4].mean() < 120
    assert np.abs(res.frames[0].astype(int) - expected.astype(int)).mean() < 12


def test_resize_short_side_and_centre_crop(media):
    res = decode_video(media["good"][0], DecodeConfig(fps=4, short_side=48, crop=40))
    assert res.frames is not None and res.frames.shape[1:] == (40, 40, 3)
    info = ff.probe(media["good"][0])
    assert output_size(info, DecodeConfig(short_side=48, crop=0)) == (48, 48)


def test_argv_is_a_list_and_dash_names_are_files(tmp_path):
    path = encode(tmp_path / "-x.mp4")
    info = ff.probe(path)
    argv = decode_argv(path, info, DecodeConfig(fps=2, short_side=32, crop=32))
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert argv[argv.index("-i") + 1] == "file:" + str(path.resolve())
    assert decode_video(path, DecodeConfig(fps=2, short_side=32, crop=32)).status == "ok"


def test_timeout_kills_the_whole_process_group(tmp_path, monkeypatch, media):
    marker = f"vlrepro-sleeper-{os.getpid()}"
    fake = tmp_path / "fake-ffmpeg"
    # Probes pass through to the real binary; a decode (output to pipe:) hangs in a child process.
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'for a in "$@"; do if [ "$a" = "pipe:" ]; then (exec -a {marker} sleep 60) & wait; fi; done\n'
        f'exec {ff.ffmpeg_binary()} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("VLREPRO_FFMPEG", str(fake))
    ff.ffmpeg_binary.cache_clear()
    try:
        start = time.monotonic()
        res = decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32, timeout_s=2))
        elapsed = time.monotonic() - start
    finally:
        monkeypatch.delenv("VLREPRO_FFMPEG")
        ff.ffmpeg_binary.cache_clear()
    assert res.status == "timeout"
    assert "timed out" in res.error
    assert elapsed < 10
    time.sleep(0.3)
    survivors = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert survivors == []


def test_run_command_keeps_only_the_stderr_tail():
    res = ff.run_command(
        ["bash", "-c", "for i in $(seq 1 100); do echo line$i >&2; done; exit 3"], timeout=10, tail_lines=5
    )
    assert res.returncode == 3 and not res.ok
    assert res.stderr_tail.splitlines() == [f"line{i}" for i in range(96, 101)]
    assert res.stderr_lines == 100


def test_parse_probe_reads_rate_size_duration_and_rotation():
    report = (
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':\n"
        "  Duration: 00:01:02.50, start: 0.000000, bitrate: 33 kb/s\n"
        "  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 640x360, "
        "33 kb/s, 29.97 fps, 29.97 tbr, 30k tbn (default)\n"
        "      Side data:\n        displaymatrix: rotation of -90.00 degrees\n"
    )
    info = ff.parse_probe(report)
    assert (info.codec, info.width, info.height) == ("h264", 640, 360)
    assert info.duration == pytest.approx(62.5) and info.fps == pytest.approx(29.97) and info.rotation == 90
    assert info.display_size == (360, 640)
    with pytest.raises(ff.ProbeError):
        ff.parse_probe("Input #0, wav, from 'a.wav':\n  Stream #0:0: Audio: pcm_s16le, 44100 Hz, mono\n")
