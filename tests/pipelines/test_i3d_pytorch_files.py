"""pytorch-i3d's released two-stream files as the DCC spec names them (``rgb_imagenet.pt`` / ``flow_imagenet.pt``,
full width, plain state dicts without ``num_batches_tracked``) loaded through the project's feature path (the spec's
bare file names resolved under the data folder → `I3DFeatureConfig` → `build_two_stream` → `encode_video`): the key
set is pytorch-i3d's, written out by hand below, and the snippet features equal those of the same weights loaded
into a plain `torch.nn.Module.load_state_dict` (what a user of pytorch-i3d does). `tests/models/test_i3d.py` checks
the shapes of every key against pytorch-i3d's constructor calls and strict loading; this adds the files, by name,
end to end at full width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.i3d import I3D, I3DConfig
from pipelines.features.i3d import I3DFeatureConfig, TwoStreamI3D, build_two_stream, encode_video
from recipes.experiments.dcc import feature_configs, resolve_i3d_weights

torch.set_num_threads(1)

# piergiaj/pytorch-i3d pytorch_i3d.py: every Unit3D of InceptionI3d, in its module order (paper-code-notes §7.4)
MIXED = ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c")
UNITS = [
    "Conv3d_1a_7x7",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    *(f"{block}.{branch}" for block in MIXED for branch in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")),
]
EXPECTED_KEYS = [
    *(
        f"{u}.{p}"
        for u in UNITS
        for p in ("conv3d.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    ),
    "logits.conv3d.weight",
    "logits.conv3d.bias",
]
# a few shapes as the released files hold them (RGB stream; flow differs only in Conv3d_1a's 2 input channels)
EXPECTED_SHAPES = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_4e.b2b.conv3d.weight": (64, 32, 3, 3, 3),
    "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
    "Mixed_5c.b3b.bn.running_var": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


def pytorch_i3d_file(path: Path, in_channels: int, seed: int) -> dict[str, torch.Tensor]:
    """A random Kinetics-400 I3D saved as pytorch-i3d saves it: its keys, no ``num_batches_tracked``."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in I3D(I3DConfig(in_channels=in_channels)).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key in EXPECTED_KEYS:  # the hand-written list: a key our model lacks fails here with its name
        shape = shapes[key]
        if key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("bn.weight", "running_mean", "bn.bias")):
            state[key] = torch.randn(shape, generator=gen) * 0.1 + (1.0 if key.endswith("bn.weight") else 0.0)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    torch.save(state, path)
    return state


def test_released_two_stream_files_by_name_give_identical_features(tmp_path: Path) -> None:
    assert len(EXPECTED_KEYS) == 57 * 5 + 2
    with torch.device("meta"):
        ours = I3D(I3DConfig()).state_dict()
    assert sorted(k for k in ours if not k.endswith("num_batches_tracked")) == sorted(EXPECTED_KEYS)
    assert {k: tuple(ours[k].shape) for k in EXPECTED_SHAPES} == EXPECTED_SHAPES
    data = tmp_path / "THUMOS14" / "pytorch-i3d" / "models"
    data.mkdir(parents=True)
    states = {
        "rgb": pytorch_i3d_file(data / "rgb_imagenet.pt", 3, 1),
        "flow": pytorch_i3d_file(data / "flow_imagenet.pt", 2, 2),
    }
    assert "Mixed_5c.b0.bn.num_batches_tracked" not in torch.load(data / "rgb_imagenet.pt", weights_only=True)

    _, i3d = feature_configs("paper", {}, "thumos14")  # the spec: bare names, full width
    assert (i3d["rgb_weights"], i3d["flow_weights"], i3d["width"]) == ("rgb_imagenet.pt", "flow_imagenet.pt", 1.0)
    resolved = resolve_i3d_weights(i3d, str(tmp_path / "THUMOS14"))  # found under the data folder
    assert resolved["rgb_weights"] == str(data / "rgb_imagenet.pt")
    loaded = build_two_stream(I3DFeatureConfig(**resolved))
    assert loaded.feature_dim == 2048

    def plain(in_channels: int, state: dict[str, torch.Tensor]) -> I3D:
        model = I3D(I3DConfig(in_channels=in_channels))
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
        return model.eval()

    reference = TwoStreamI3D(plain(3, states["rgb"]), plain(2, states["flow"]))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(32, 40, 40, 3), dtype=np.uint8)  # 2 snippets
    flow = rng.integers(0, 256, size=(31, 40, 40, 2), dtype=np.uint8)
    got, want = encode_video(loaded, frames, flow), encode_video(reference, frames, flow)
    assert got.shape == (2, 2048) and np.isfinite(got).all() and float(np.abs(got).max()) > 0
    assert np.array_equal(got, want)

    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--set i3d.rgb_weights=/path/to/rgb_imagenet.pt"):
        resolve_i3d_weights(i3d, str(tmp_path / "elsewhere"))
