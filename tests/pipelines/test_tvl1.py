"""TV-L1 flow: recovered translation (sign and magnitude), uint8 storage, the flow stage, 1-vs-2 worker identity."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import shards
from pipelines.features.tvl1 import (
    STAGE,
    TVL1Config,
    compute_flow,
    dequantize,
    extract_flow,
    flow_pixels,
    quantize,
)


def blobs(dx: float = 0.0, dy: float = 0.0, size: int = 64) -> np.ndarray:
    """(H, W, 3) uint8 RGB: three smooth Gaussian blobs on a grey floor, translated by (dx, dy) px."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    v = np.full((size, size), 20.0)
    for cx, cy, s, a in ((32, 32, 6, 200), (20, 40, 4, 120), (44, 22, 5, 150)):
        v += a * np.exp(
            -((xx - cx * size / 64 - dx) ** 2 + (yy - cy * size / 64 - dy) ** 2) / (2 * (s * size / 64) ** 2)
        )
    g = np.clip(v, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def write_frames_stage(root: Path, videos: Mapping[str, np.ndarray], per_shard: int = 2, fps: float = 25.0) -> str:
    """A committed frames stage (the ingest stage's layout and sample metadata) holding `videos`."""
    uri = shards.stage_uri(str(root), "toy", "frames", "framehash01")
    keys = sorted(videos)
    shards.prepare_stage(uri, {"toy": True}, "framehash01", shards.digest_keys(keys), len(keys), "incremental")
    summaries = []
    for i, shard_keys in enumerate(shards.plan_shards(keys, per_shard)):
        samples = [(k, {"npy": videos[k], "json": {"key": k, "split": "train", "fps": fps}}) for k in shard_keys]
        rows = [{"key": k, "status": "ok"} for k in shard_keys]
        stats = {
            "config_hash": "framehash01",
            "inputs_digest": shards.digest_keys(shard_keys),
            "n_samples": len(shard_keys),
            "status_counts": {"ok": len(shard_keys)},
        }
        shards.write_shard(uri, i, samples, rows, stats)
        summaries.append(stats)
    shards.commit_stage(uri, summaries, extra={"config_hash": "framehash01", "stage": "frames"})
    return uri


def translated_video(n: int, step: tuple[float, float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(-3, 3, size=2)
    return np.stack([blobs(x0 + i * step[0], y0 + i * step[1]) for i in range(n)])


def test_recovers_translation_sign_and_magnitude() -> None:
    frames = np.stack([blobs(0, 0), blobs(2, -1)])  # content moves 2 px right, 1 px up
    q = compute_flow(frames)
    assert q.shape == (1, 64, 64, 2) and q.dtype == np.uint8
    f = flow_pixels(q)[0]  # (H, W, 2) px
    textured = frames[0, ..., 0] > 40  # where the blobs give the data term something to match
    assert abs(f[..., 0][textured].mean() - 2.0) < 0.25
    assert abs(f[..., 1][textured].mean() + 1.0) < 0.25
    still = compute_flow(np.stack([blobs(), blobs()]))
    assert np.abs(flow_pixels(still)).max() < 0.2  # zero motion → the uint8 code of 0 px everywhere


def test_reduced_flow_size_returns_frame_pixels() -> None:
    frames = np.stack([blobs(0, 0), blobs(4, -2)])
    q = compute_flow(frames, TVL1Config(flow_size=32))  # computed at 32², reported at 64² in 64² pixels
    assert q.shape == (1, 64, 64, 2)
    f = flow_pixels(q)[0]
    textured = frames[0, ..., 0] > 40
    assert abs(f[..., 0][textured].mean() - 4.0) < 0.5
    assert abs(f[..., 1][textured].mean() + 2.0) < 0.5


def test_quantize_round_trip_and_clipping() -> None:
    f = np.array([-30.0, -20.0, -2.0, 0.0, 2.0, 19.9, 20.0, 25.0], dtype=np.float32)
    q = quantize(f)
    # round((clip(f) + 20) · 255 / 40): 0, 0, 114.75→115, 127.5→128 (half to even), 140.25→140, 254.4→254, 255, 255
    assert q.tolist() == [0, 0, 115, 128, 140, 254, 255, 255]
    assert dequantize(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]
    grid = np.linspace(-20, 20, 1001, dtype=np.float32)
    assert np.abs(flow_pixels(quantize(grid)) - grid).max() <= 20 / 255 + 1e-5  # half a quantisation step
    assert np.allclose(dequantize(quantize(grid)), grid / 20, atol=1 / 255 + 1e-6)  # ≈ f / bound for I3D
    assert quantize(np.float32(3.0), bound=10.0) == round(13 * 255 / 20)


def test_flow_stage_keeps_keys_and_shards_and_is_idempotent(tmp_path: Path) -> None:
    videos = {
        "a": translated_video(5, (1.0, 0.0)),
        "b": translated_video(4, (0.0, 1.0), seed=1),
        "c": translated_video(1, (0.0, 0.0)),  # one frame → no flow field
        "d": np.zeros((3, 64, 64), np.uint8),  # not RGB: a failed row, not a crash
    }
    frames_uri = write_frames_stage(tmp_path / "frames", videos)
    cfg = TVL1Config(nscales=3, warps=3)
    out = extract_flow(frames_uri, str(tmp_path / "out"), "toy", cfg, workers=1)
    assert out["status_counts"] == {"failed": 1, "ok": 3} and out["n_samples"] == 3 and out["pairs"] == 7
    uri = out["stage_uri"]
    assert Path(uri).parent.name == STAGE
    assert shards.committed_shards(uri) == shards.committed_shards(frames_uri) == [0, 1]
    by_shard = {i: [k for k, _ in shards.iter_shard(uri, i)] for i in (0, 1)}
    assert by_shard == {0: ["a", "b"], 1: ["c"]}
    _keys, arrays, metas = shards.load_stage(uri)
    assert [a.shape for a in arrays] == [(4, 64, 64, 2), (3, 64, 64, 2), (0, 64, 64, 2)]
    assert all(a.dtype == np.uint8 for a in arrays)
    assert metas[0]["flow"]["bound"] == 20.0 and metas[0]["split"] == "train" and metas[0]["fps"] == 25.0
    xs = flow_pixels(arrays[0])[..., 0][:, videos["a"][0, ..., 0] > 40]
    assert abs(float(xs.mean()) - 1.0) < 0.3  # video "a" moves 1 px/frame right
    rows = {r["key"]: r for r in shards.read_manifest(uri)}
    assert rows["d"]["status"] == "failed" and "RGB" in rows["d"]["error"]
    tar = (Path(uri) / "000000.tar").read_bytes()
    again = extract_flow(frames_uri, str(tmp_path / "out"), "toy", cfg, workers=1)
    assert again["stage_uri"] == uri and again["shards_written"] == 0 and again["pairs"] == 0
    assert (Path(uri) / "000000.tar").read_bytes() == tar
    other = extract_flow(frames_uri, str(tmp_path / "out"), "toy", TVL1Config(nscales=3, warps=3, bound=10.0))
    assert other["stage_uri"] != uri  # the hash covers the parameters


def test_one_and_two_workers_give_identical_shards(tmp_path: Path) -> None:
    videos = {"p": translated_video(7, (1.5, -0.5)), "q": translated_video(5, (-1.0, 1.0), seed=2)}
    frames_uri = write_frames_stage(tmp_path / "frames", videos, per_shard=1)
    outs: dict[int, dict[str, Any]] = {}
    for workers in (1, 2):
        cfg = TVL1Config(nscales=3, warps=3, chunk_pairs=2)  # several chunks per video reach both workers
        outs[workers] = extract_flow(frames_uri, str(tmp_path / f"w{workers}"), "toy", cfg, workers=workers)
    one, two = (Path(outs[w]["stage_uri"]) for w in (1, 2))
    assert one.name == two.name  # same config hash: workers is not part of it
    for i in (0, 1):
        assert (one / f"00000{i}.tar").read_bytes() == (two / f"00000{i}.tar").read_bytes()


def test_workers_must_be_positive(tmp_path: Path) -> None:
    frames_uri = write_frames_stage(tmp_path / "frames", {"a": translated_video(2, (1.0, 0.0))})
    with pytest.raises(ValueError, match="workers"):
        extract_flow(frames_uri, str(tmp_path / "out"), "toy", workers=0)
