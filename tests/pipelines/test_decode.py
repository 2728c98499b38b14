"""Decoder: frame counts by timestamp, one status per bad-input kind, rotation, timeouts that kill the group, a
structured probe, bounded decoding, short clips, odd paths, and stopping."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipelines import decode as decode_mod
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


def test_probe_reads_rate_size_duration_and_rotation_from_stream_fields(tmp_path):
    src = encode(tmp_path / "wide.mp4", moving_square(t=20, h=32, w=64), fps=8.0)
    info = ff.probe(src)
    assert (info.codec, info.width, info.height, info.rotation) == ("h264", 64, 32, 0)
    assert info.duration == pytest.approx(2.5) and info.fps == pytest.approx(8.0)
    rot = ff.probe(rotated_copy(src, tmp_path / "rot.mp4", -90))  # 90° clockwise display matrix
    assert (rot.width, rot.height, rot.rotation, rot.display_size) == (64, 32, 90, (32, 64))
    wav = tmp_path / "a.wav"
    res = ff.run_command(
        [ff.ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i", "sine=d=1", ff.input_arg(wav)], timeout=30
    )
    assert res.ok, res.stderr_tail
    with pytest.raises(ff.ProbeError, match="no video stream"):
        ff.probe(wav)


# ---- item 3: the probe never reads free text -------------------------------------------------------------------


def test_probe_ignores_user_metadata_that_looks_like_a_stream_report(tmp_path):
    src = encode(tmp_path / "src.mp4")  # 64x64, no rotation
    tricked = tmp_path / "tricked.mp4"
    argv = [ff.ffmpeg_binary(), "-hide_banner", "-v", "error", "-y", "-i", ff.input_arg(src), "-c", "copy"]
    argv += ["-metadata", "title=Stream #0:0: Video: h264, 9999x16", "-metadata", "comment=rotation of 90 degrees"]
    res = ff.run_command([*argv, str(tricked)], timeout=60)
    assert res.ok, res.stderr_tail
    info = ff.probe(tricked)
    assert (info.width, info.height, info.rotation) == (64, 64, 0)
    dec = decode_video(tricked, DecodeConfig(fps=4, short_side=32, crop=0))
    assert dec.status == "ok" and dec.frames is not None and dec.frames.shape == (12, 32, 32, 3)
    plain = decode_video(src, DecodeConfig(fps=4, short_side=32, crop=0))
    assert plain.frames is not None and np.array_equal(dec.frames, plain.frames)


# ---- item 6: bounded decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"fps": float("nan")},
        {"fps": float("inf")},
        {"fps": 1e9},
        {"fps": 0},
        {"short_side": 0},
        {"short_side": 100_000, "crop": 0},
        {"timeout_s": float("nan")},
        {"timeout_s": float("inf")},
        {"timeout_s": 0},
        {"timeout_s": 1e9},
        {"probe_timeout_s": -1},
        {"max_frames": -1},
        {"max_duration_s": -1.0},
        {"max_duration_s": float("nan")},
        {"max_sample_bytes": 0},
    ],
)
def test_decode_config_refuses_absurd_values(bad):
    with pytest.raises(ValueError, match="|".join(bad)):
        DecodeConfig(**bad)


def test_sane_limits_are_accepted():
    cfg = DecodeConfig(fps=240, short_side=4096, crop=0, timeout_s=3600, max_duration_s=7200, max_frames=10)
    assert (cfg.fps, cfg.max_duration_s, cfg.max_sample_bytes) == (240, 7200, 512 * 2**20)


def test_over_long_video_is_a_status_row_decided_before_decoding(media, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a video the probe already showed too long")

    monkeypatch.setattr(decode_mod, "run_streaming", no_decode)
    res = decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32, max_duration_s=2.0))
    assert res.status == "too_long" and res.frames is None and "max_duration_s 2" in res.error
    assert res.info is not None and res.info.duration == pytest.approx(3.0)
    frame = 32 * 32 * 3  # 12 expected frames of 3 KiB
    res = decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32, max_sample_bytes=11 * frame))
    assert res.status == "too_long" and res.n_expected == 12 and "budget of 11 frames" in res.error


def test_a_container_that_under_reports_its_duration_stops_at_the_byte_cap(media, monkeypatch):
    real_probe = decode_mod.probe

    def lying_probe(path, timeout):
        return dataclasses.replace(real_probe(path, timeout=timeout), duration=0.5)  # really 3 s

    monkeypatch.setattr(decode_mod, "probe", lying_probe)
    frame = 32 * 32 * 3
    seen: list[list[str]] = []
    real_run = decode_mod.run_streaming
    monkeypatch.setattr(decode_mod, "run_streaming", lambda argv, **kw: seen.append(argv) or real_run(argv, **kw))
    res = decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32, max_sample_bytes=5 * frame))
    assert res.status == "too_long" and res.frames is None and "budget of 5 frames" in res.error
    assert seen[0][seen[0].index("-frames:v") + 1] == "6"  # ffmpeg itself stops one frame past the budget


def test_decoding_holds_one_copy_of_the_frames(tmp_path):
    path = encode(tmp_path / "long.mp4", moving_square(t=160), fps=8.0)
    cfg = DecodeConfig(fps=8, short_side=64, crop=64)
    decode_video(path, cfg)  # warm up imports and caches outside the measurement
    tracemalloc.start()
    res = decode_video(path, cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.status == "ok" and res.frames is not None
    sample = res.frames.nbytes
    assert sample == 160 * 64 * 64 * 3
    assert peak < 1.3 * sample, (peak, sample)  # the old list-of-frames + np.stack held two copies


def _testsrc(path: Path, seconds: float, side: int, rate: int = 25) -> Path:
    """A synthetic clip from ffmpeg's lavfi ``testsrc`` (fast to make at any length)."""
    argv = [ff.ffmpeg_binary(), "-hide_banner", "-v", "error", "-y", "-f", "lavfi"]
    argv += ["-i", f"testsrc=size={side}x{side}:rate={rate}", "-t", str(seconds)]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    assert ff.run_command(argv, timeout=60).ok
    return path


def _spools(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_a_long_video_streams_to_the_shard_through_a_spool_and_the_tar_is_unchanged(tmp_path):
    """The ingest path: frames go from ffmpeg's pipe into a spool file and from there into the tar, so the peak
    Python allocation is a few frames, not the video; the tar is byte for byte what the in-memory path writes."""
    from pipelines import shards

    path = _testsrc(tmp_path / "long.mp4", seconds=16, side=128)  # 400 frames of 128² RGB: 19.7 MB decoded
    cfg = DecodeConfig(fps=25, short_side=128, crop=128)
    in_memory = decode_video(path, cfg)  # also warms up imports and caches outside the measurement
    assert in_memory.status == "ok" and in_memory.frames is not None
    video_bytes = in_memory.frames.nbytes
    assert in_memory.frames.shape == (400, 128, 128, 3)
    meta = {"timestamps": in_memory.timestamps}
    rows, stats = [{"key": "v", "status": "ok"}], {"n_samples": 1}
    shards.write_shard(str(tmp_path / "a"), 0, [("v", {"npy": in_memory.frames, "json": meta})], rows, stats)
    del in_memory

    spool_dir = tmp_path / "b"
    spool_dir.mkdir()
    tracemalloc.start()
    res = decode_video(path, cfg, spool_dir=spool_dir)
    assert res.frames is None and res.spooled is not None and res.n_frames == 400
    assert _spools(spool_dir) == [res.spooled.path.name]  # the spool lives in the given folder while it is needed
    shards.write_shard(str(spool_dir), 0, [("v", {"npy": res.spooled, "json": meta})], rows, stats)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.status == "ok"
    ratio = peak / video_bytes
    print(f"peak Python allocation {peak} B = {ratio:.4f} x the video's {video_bytes} B of frames")
    # a few frames while decoding, a few 64 KiB copy blocks while writing; the in-memory path holds more than 1.0
    assert ratio < 0.1, (peak, video_bytes)
    assert _spools(spool_dir) == []  # written into the tar, then removed
    assert (spool_dir / "000000.tar").read_bytes() == (tmp_path / "a" / "000000.tar").read_bytes()


def test_a_spooled_decode_leaves_nothing_behind_when_unusable_or_stopped(media, tmp_path, monkeypatch):
    real_probe = decode_mod.probe
    monkeypatch.setattr(
        decode_mod, "probe", lambda path, timeout: dataclasses.replace(real_probe(path, timeout=timeout), duration=0.5)
    )
    frame = 32 * 32 * 3
    cfg = DecodeConfig(fps=4, short_side=32, crop=32, max_sample_bytes=5 * frame)
    with decode_mod.spooling(tmp_path):  # how the ingest sets the folder for a shard's decodes
        res = decode_video(media["good"][0], cfg)  # too long, found at the budget (the container lied)
    assert res.status == "too_long" and res.spooled is None and _spools(tmp_path) == []
    res = decode_video(media["garbage"][0], cfg, spool_dir=tmp_path)
    assert res.status == "failed_probe" and _spools(tmp_path) == []

    def stopped(*args: object, **kwargs: object) -> None:
        kwargs["on_chunk"](b"x" * frame)  # type: ignore[operator]
        assert _spools(tmp_path)  # the spool exists while the decode runs
        raise ff.Stopped("stopped while ffmpeg was running")

    monkeypatch.setattr(decode_mod, "run_streaming", stopped)
    with pytest.raises(ff.Stopped):
        decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32), spool_dir=tmp_path)
    assert _spools(tmp_path) == []


def test_a_dropped_spooled_sample_removes_its_file(media, tmp_path):
    res = decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32), spool_dir=tmp_path)
    assert res.spooled is not None and res.spooled.path.exists()
    assert np.array_equal(res.spooled.load(), decode_video(media["good"][0], DecodeConfig(4, 32, 32)).frames)
    del res  # e.g. a processor error between the decode and the shard writer
    assert _spools(tmp_path) == []


# ---- item 7: short clips, odd paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "fps"), [(2, 1.0), (1, 1.0), (3, 0.5), (1, 3.0)])
def test_clip_shorter_than_one_sampling_period_yields_its_one_frame(tmp_path, frames, fps):
    clip = encode(tmp_path / "short.mp4", moving_square(t=frames), fps=8.0)  # 1-3 frames: 0.125-0.375 s
    res = decode_video(clip, DecodeConfig(fps=fps, short_side=32, crop=32))
    assert res.status == "ok", res.error
    assert res.n_frames == res.n_expected == 1 and res.timestamps == [0.0]
    assert res.frames is not None and res.frames.shape == (1, 32, 32, 3)


def test_links_directories_and_fifos_get_a_status(tmp_path, media):
    (tmp_path / "broken.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    (tmp_path / "dir.mp4").mkdir()
    os.mkfifo(tmp_path / "fifo.mp4")  # would block a probe forever
    (tmp_path / "link.mp4").symlink_to(media["good"][0])
    cfg = DecodeConfig(fps=4, short_side=32, crop=32, probe_timeout_s=5)
    got = {n: decode_video(tmp_path / f"{n}.mp4", cfg) for n in ("broken", "loop", "dir", "fifo", "link")}
    assert {n: r.status for n, r in got.items()} == {
        "broken": "missing",
        "loop": "missing",
        "dir": "failed_probe",
        "fifo": "failed_probe",
        "link": "ok",
    }
    assert "broken symbolic link" in got["broken"].error and "loop" in got["loop"].error
    assert "directory" in got["dir"].error and "not a regular file" in got["fifo"].error


# ---- item 9: stopping ------------------------------------------------------------------------------------------


def _hanging_ffmpeg(tmp_path: Path, marker: str) -> Path:
    fake = tmp_path / "fake-ffmpeg"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'for a in "$@"; do if [ "$a" = "pipe:" ]; then (exec -a {marker} sleep 60) & wait; fi; done\n'
        f'exec {ff.ffmpeg_binary()} "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def _procs_named(marker: str) -> list[psutil.Process]:
    """Processes whose argv[0] is `marker` (the sleepers started with ``exec -a``; not a script that mentions it)."""
    return [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0] == marker]


def test_stop_children_kills_running_decodes_and_refuses_new_ones(tmp_path, monkeypatch, media):
    marker = f"vlrepro-stop-{os.getpid()}"
    monkeypatch.setenv("VLREPRO_FFMPEG", str(_hanging_ffmpeg(tmp_path, marker)))
    ff.ffmpeg_binary.cache_clear()
    outcome: list[object] = []

    def work() -> None:
        try:
            outcome.append(decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32, timeout_s=120)))
        except ff.Stopped as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work)
    try:
        thread.start()
        deadline = time.monotonic() + 20
        while not _procs_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _procs_named(marker), "the fake decode never started"
        start = time.monotonic()
        assert ff.stop_children() == 1
        thread.join(timeout=10)
        assert not thread.is_alive() and time.monotonic() - start < 5
        assert len(outcome) == 1 and isinstance(outcome[0], ff.Stopped)  # not a failed_decode row
        with pytest.raises(ff.Stopped):
            decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32))
        time.sleep(0.3)
        assert _procs_named(marker) == []
    finally:  # the real binary first: a leftover fake would hang every later test's encode
        monkeypatch.delenv("VLREPRO_FFMPEG")
        ff.ffmpeg_binary.cache_clear()
        for proc in _procs_named(marker):  # only the sleeper this test started
            proc.kill()
        ff.resume_children()
        thread.join(timeout=10)
    assert decode_video(media["good"][0], DecodeConfig(fps=4, short_side=32, crop=32)).status == "ok"


def test_ffmpeg_children_die_with_their_parent(tmp_path):
    marker = f"vlrepro-orphan-{os.getpid()}"
    script = (
        "from pipelines import ffmpeg as ff\n"
        f"ff.run_command(['bash', '-c', 'exec -a {marker} sleep 60'], timeout=120)\n"
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    try:
        deadline = time.monotonic() + 20
        while not _procs_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _procs_named(marker), "the child never started"
        parent.kill()  # SIGKILL: no handler, no cleanup in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _procs_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _procs_named(marker) == []
    finally:
        for proc in _procs_named(marker):  # only the sleeper this test started
            proc.kill()
        if parent.poll() is None:
            parent.kill()


def test_an_interrupted_ingest_kills_its_decodes_instead_of_waiting_and_releases_its_stage(
    tmp_path, monkeypatch, media
):
    """Ctrl-C / SIGTERM (the CLI turns both into an exception in the main thread) during `ingest`: the running
    ffmpeg process groups are killed at once, queued shards never start, and the stage lock is released."""
    import shutil
    import signal

    from pipelines.ingest import IngestConfig, ingest

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        shutil.copyfile(media["good"][0], src / f"v{i}.mp4")
    marker = f"vlrepro-int-{os.getpid()}"
    monkeypatch.setenv("VLREPRO_FFMPEG", str(_hanging_ffmpeg(tmp_path, marker)))
    ff.ffmpeg_binary.cache_clear()

    def interrupt_once_decoding() -> None:
        deadline = time.monotonic() + 20
        while not _procs_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    cfg = IngestConfig(DecodeConfig(fps=4, short_side=32, crop=32, timeout_s=120), samples_per_shard=1)
    timer = threading.Thread(target=interrupt_once_decoding)
    # Python's own Ctrl-C handler: an in-process Ray Train fit of an earlier test leaves its SIGINT handler installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ingest(src, str(tmp_path / "runs"), "int", cfg, workers=2)
        assert time.monotonic() - start < 15  # not the 60 s the hanging decodes would take
        time.sleep(0.3)
        assert _procs_named(marker) == []
        assert not ff.stopping()  # the next ingest in this process may decode again
        locks = list((tmp_path / "runs").rglob("_lock.json"))
        assert locks == [], locks
    finally:
        timer.join(timeout=30)
        signal.signal(signal.SIGINT, previous)
        monkeypatch.delenv("VLREPRO_FFMPEG")
        ff.ffmpeg_binary.cache_clear()
