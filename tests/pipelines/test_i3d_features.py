"""Two-stream I3D features: input scaling, snippets per frame count, the feature stage, weights, released features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.i3d import I3DCheckpointError, I3DConfig, build_i3d
from pipelines import shards
from pipelines.features.i3d import (
    STAGE,
    I3DFeatureConfig,
    TwoStreamI3D,
    build_two_stream,
    encode_video,
    extract,
    flow_input,
    import_features,
    pad_flow,
    rgb_input,
)
from pipelines.features.tvl1 import TVL1Config, extract_flow
from tests.pipelines.test_tvl1 import write_frames_stage

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> TwoStreamI3D:
    return build_two_stream(I3DFeatureConfig.tiny())


def video(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random RGB frames (n, S, S, 3) and random uint8 flow (n−1, S, S, 2)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    flow = rng.integers(0, 256, size=(max(n - 1, 0), size, size, 2), dtype=np.uint8)
    return frames, flow


def test_rgb_and_flow_inputs_are_scaled_to_unit_range() -> None:
    snips = np.zeros((1, 16, 2, 2, 3), np.uint8)
    snips[0, 0, 0, 0] = (0, 255, 51)
    snips[0, 5, 1, 0, 2] = 102
    x = rgb_input(snips)
    assert x.shape == (1, 3, 16, 2, 2) and x.dtype == torch.float32
    assert x[0, :, 0, 0, 0].tolist() == pytest.approx([-1.0, 1.0, -0.6])  # x/255·2 − 1
    assert float(x[0, 2, 5, 1, 0]) == pytest.approx(-0.2)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    q = np.zeros((1, 16, 2, 2, 2), np.uint8)
    q[0, 3, 1, 1] = (255, 128)
    f = flow_input(q)
    assert f.shape == (1, 2, 16, 2, 2)
    assert float(f[0, 0, 0, 0, 0]) == -1.0 and float(f[0, 0, 3, 1, 1]) == 1.0
    assert float(f[0, 1, 3, 1, 1]) == pytest.approx(1 / 255, abs=1e-6)  # 128 is +0.08 px at bound 20


def test_pad_flow_repeats_the_last_field() -> None:
    _, flow = video(5)
    padded = pad_flow(flow, 5)
    assert padded.shape == (5, 32, 32, 2)
    assert np.array_equal(padded[:4], flow) and np.array_equal(padded[4], flow[3])
    assert (pad_flow(flow[:0], 1) == 128).all()


@pytest.mark.parametrize(("n_frames", "n_snippets"), [(15, 0), (16, 1), (32, 2), (47, 2), (48, 3)])
def test_one_feature_per_complete_16_frame_snippet(tiny: TwoStreamI3D, n_frames: int, n_snippets: int) -> None:
    frames, flow = video(n_frames)
    feats = encode_video(tiny, frames, flow, batch_snippets=2)
    assert feats.shape == (n_snippets, 2 * 64) and feats.dtype == np.float32


def test_features_are_rgb_then_flow_per_snippet(tiny: TwoStreamI3D) -> None:
    frames, flow = video(48)
    feats = encode_video(tiny, frames, flow, batch_snippets=2)
    with torch.no_grad():  # oracle: snippet 1 = frames 16..31 and flow fields 16..31, each stream on its own
        rgb = tiny.rgb.extract_features(rgb_input(frames[None, 16:32]))[0].numpy()
        fl = tiny.flow.extract_features(flow_input(flow[None, 16:32]))[0].numpy()
    assert np.allclose(feats[1, :64], rgb, atol=1e-5) and np.allclose(feats[1, 64:], fl, atol=1e-5)
    # snippets are independent: a 47-frame prefix (46 fields, no padding needed) gives the same first two rows
    assert np.allclose(encode_video(tiny, frames[:47], flow[:46]), feats[:2], atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        encode_video(tiny, frames, flow[:, :16])


# flow quality is irrelevant to these stage tests: one pyramid level, few iterations
FAST_TVL1 = TVL1Config(nscales=1, warps=1, inner_iterations=5, outer_iterations=2)


def _stages(
    tmp_path: Path, fps: float = 25.0, lengths: tuple[int, int] = (33, 20)
) -> tuple[str, str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
    videos = {  # a textured background scrolling right, 1 px per frame (32² crops of a 40² image)
        "v1": np.stack([base[4:36, 8 - i % 8 : 40 - i % 8] for i in range(lengths[0])]),
        "v2": np.stack([base[2:34, 4:36]] * lengths[1]),
    }
    frames_uri = write_frames_stage(tmp_path / "frames", videos, per_shard=1, fps=fps)
    flow = extract_flow(frames_uri, str(tmp_path / "flow"), "toy", FAST_TVL1)
    return frames_uri, flow["stage_uri"], videos


def test_feature_stage_keys_shapes_and_idempotence(tmp_path: Path, tiny: TwoStreamI3D) -> None:
    frames_uri, flow_uri, videos = _stages(tmp_path)
    cfg = I3DFeatureConfig.tiny()
    out = extract(frames_uri, flow_uri, str(tmp_path / "feat"), "toy", cfg)
    assert out["status_counts"] == {"ok": 2} and out["shards_written"] == 2
    uri = out["stage_uri"]
    assert Path(uri).parent.name == STAGE
    keys, arrays, metas = shards.load_stage(uri)
    assert keys == ["v1", "v2"] and [a.shape for a in arrays] == [(2, 128), (1, 128)]
    assert metas[0]["i3d"]["feature_dim"] == 128 and metas[0]["i3d"]["snippet_seconds"] == 0.64
    assert metas[0]["split"] == "train"
    _, flows, _ = shards.load_stage(flow_uri)
    assert np.allclose(arrays[0], encode_video(tiny, videos["v1"], flows[0]), atol=1e-5)  # same seeds, same nets
    again = extract(frames_uri, flow_uri, str(tmp_path / "feat"), "toy", cfg)
    assert again["stage_uri"] == uri and again["shards_written"] == 0
    reseeded = extract(frames_uri, flow_uri, str(tmp_path / "feat"), "toy", I3DFeatureConfig(width=1 / 16, init_seed=5))
    assert reseeded["stage_uri"] != uri
    assert not np.allclose(shards.load_stage(reseeded["stage_uri"])[1][0], arrays[0])


def test_feature_stage_refuses_other_rates_and_foreign_flow(tmp_path: Path) -> None:
    frames_uri, flow_uri, _ = _stages(tmp_path / "a", fps=8.0, lengths=(17, 16))
    out = extract(frames_uri, flow_uri, str(tmp_path / "feat"), "toy", I3DFeatureConfig.tiny())
    assert out["status_counts"] == {"failed": 2}
    assert "25 fps" in shards.read_manifest(out["stage_uri"])[0]["error"]
    other_frames, _, _ = _stages(tmp_path / "b", lengths=(2, 2))
    with pytest.raises(ValueError, match="computed from"):
        extract(other_frames, flow_uri, str(tmp_path / "feat"), "toy", I3DFeatureConfig.tiny())


def test_pytorch_i3d_weight_files_drive_the_features(tmp_path: Path) -> None:
    rgb = build_i3d(I3DConfig(in_channels=3, width=1 / 16), seed=11)
    flow = build_i3d(I3DConfig(in_channels=2, width=1 / 16), seed=12)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    torch.save(flow.state_dict(), tmp_path / "flow.pt")
    cfg = I3DFeatureConfig(rgb_weights=str(tmp_path / "rgb.pt"), flow_weights=str(tmp_path / "flow.pt"), width=1 / 16)
    loaded = build_two_stream(cfg)
    frames, fl = video(16)
    assert np.array_equal(encode_video(loaded, frames, fl), encode_video(TwoStreamI3D(rgb, flow), frames, fl))
    swapped = I3DFeatureConfig(rgb_weights=str(tmp_path / "flow.pt"), width=1 / 16)
    with pytest.raises(I3DCheckpointError, match="2 input channels; the RGB stream needs 3"):
        build_two_stream(swapped)
    with pytest.raises(I3DCheckpointError, match="width"):
        build_two_stream(I3DFeatureConfig(rgb_weights=str(tmp_path / "rgb.pt"), width=1 / 8))


def test_import_released_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    joint, rgb_dir, flow_dir = tmp_path / "joint", tmp_path / "rgb", tmp_path / "flow"
    for d in (joint, rgb_dir, flow_dir):
        d.mkdir()
    lengths = {"video_test_0000004": 7, "video_validation_0000051": 3}
    for vid, n in lengths.items():
        np.save(joint / f"{vid}.npy", rng.normal(size=(n, 2048)).astype(np.float32))
        np.save(rgb_dir / f"{vid}.npy", rng.normal(size=(n, 1024)).astype(np.float32))
        np.save(flow_dir / f"{vid}.npy", rng.normal(size=(n, 1024)).astype(np.float64))
    meta = {"video_test_0000004": {"split": "test"}, "video_validation_0000051": {"split": "train"}}
    out = import_features(joint, str(tmp_path / "st"), "thumos14", meta=meta, samples_per_shard=1)
    keys, arrays, metas = shards.load_stage(out["stage_uri"])
    assert Path(out["stage_uri"]).parent.name == STAGE and keys == sorted(lengths)
    assert np.array_equal(arrays[0], np.load(joint / "video_test_0000004.npy"))
    assert metas[0]["split"] == "test" and metas[1]["split"] == "train" and metas[0]["i3d"]["imported"]
    assert (
        import_features(joint, str(tmp_path / "st"), "thumos14", meta=meta, samples_per_shard=1)["shards_written"] == 0
    )
    two = import_features(rgb_dir, str(tmp_path / "st"), "thumos14", flow_folder=flow_dir)
    _, arrays2, _ = shards.load_stage(two["stage_uri"])
    expected = np.concatenate(
        [np.load(rgb_dir / "video_test_0000004.npy"), np.load(flow_dir / "video_test_0000004.npy")], 1
    )
    assert arrays2[0].dtype == np.float32 and np.allclose(arrays2[0], expected)  # RGB then flow
    assert two["stage_uri"] != out["stage_uri"]
    np.save(tmp_path / "joint" / "bad.name.npy", np.zeros((2, 2048), np.float32))
    with pytest.raises(ValueError, match="unsafe sample key"):
        import_features(joint, str(tmp_path / "st2"), "thumos14")
