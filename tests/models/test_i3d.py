"""I3D: TF-"SAME" padding oracle, Mixed_5c shapes, pytorch-i3d key names/shapes, strict loading, save/reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.i3d import (
    I3D,
    I3DCheckpointError,
    I3DConfig,
    Unit3D,
    build_i3d,
    infer_config,
    load_i3d_state_dict,
    same_padding,
)

torch.set_num_threads(1)

# piergiaj/pytorch-i3d pytorch_i3d.py, written out as its constructor calls are: (name, in_channels, branch outs).
_PIERGIAJ_MIXED = [
    ("Mixed_3b", 192, [64, 96, 128, 16, 32, 32]),
    ("Mixed_3c", 256, [128, 128, 192, 32, 96, 64]),
    ("Mixed_4b", 128 + 192 + 96 + 64, [192, 96, 208, 16, 48, 64]),
    ("Mixed_4c", 192 + 208 + 48 + 64, [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", 160 + 224 + 64 + 64, [128, 128, 256, 24, 64, 64]),
    ("Mixed_4e", 128 + 256 + 64 + 64, [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", 112 + 288 + 64 + 64, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5b", 256 + 320 + 128 + 128, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5c", 256 + 320 + 128 + 128, [384, 192, 384, 48, 128, 128]),
]


def pytorch_i3d_shapes(in_channels: int = 3, num_classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Key → shape of an ``InceptionI3d`` state dict as the released files hold it (no num_batches_tracked)."""
    out: dict[str, tuple[int, ...]] = {}

    def unit(prefix: str, cin: int, cout: int, k: int) -> None:
        out[f"{prefix}.conv3d.weight"] = (cout, cin, k, k, k)
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.bn.{name}"] = (cout,)

    out["Conv3d_1a_7x7.conv3d.weight"] = (64, in_channels, 7, 7, 7)
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"Conv3d_1a_7x7.bn.{name}"] = (64,)
    unit("Conv3d_2b_1x1", 64, 64, 1)
    unit("Conv3d_2c_3x3", 64, 192, 3)
    for name, cin, (c0, c1a, c1b, c2a, c2b, c3b) in _PIERGIAJ_MIXED:
        unit(f"{name}.b0", cin, c0, 1)
        unit(f"{name}.b1a", cin, c1a, 1)
        unit(f"{name}.b1b", c1a, c1b, 3)
        unit(f"{name}.b2a", cin, c2a, 1)
        unit(f"{name}.b2b", c2a, c2b, 3)
        unit(f"{name}.b3b", cin, c3b, 1)
    out["logits.conv3d.weight"] = (num_classes, 384 + 384 + 128 + 128, 1, 1, 1)
    out["logits.conv3d.bias"] = (num_classes,)
    return out


def test_same_padding_is_tensorflow_rule() -> None:
    assert same_padding(16, 7, 2) == (2, 3)  # 16 % 2 == 0 → pad 7 − 2 = 5
    assert same_padding(15, 7, 2) == (3, 3)  # 15 % 2 == 1 → pad 7 − 1 = 6
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(4, 2, 2) == (0, 0)
    assert same_padding(3, 2, 2) == (0, 1)
    assert same_padding(1, 3, 2) == (1, 1)  # pad = 3 − (1 % 2) = 2


@pytest.mark.parametrize("tap", [0, 3, 6])
def test_unit3d_same_conv_matches_hand_computed_shift(tap: int) -> None:
    """Kernel (7,1,1) stride 2 with a one-hot tap: out[i] = x[2i + tap − 2] (front padding 2, zeros outside)."""
    unit = Unit3D(1, 1, kernel=(7, 1, 1), stride=(2, 1, 1)).eval()
    with torch.no_grad():
        unit.conv3d.weight.zero_()
        unit.conv3d.weight[0, 0, tap, 0, 0] = 1.0
    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 16, 1, 1)
    out = unit(x).flatten()
    src = [2 * i + tap - 2 for i in range(8)]
    expected = torch.tensor([float(s + 1) if 0 <= s < 16 else 0.0 for s in src]) / np.sqrt(1 + 1e-3)
    assert out.shape == (8,)  # ceil(16 / 2)
    assert torch.allclose(out, expected, atol=1e-6)


def test_mixed_5c_shapes_and_feature_pooling() -> None:
    model = build_i3d(I3DConfig.tiny())
    assert model.feature_dim == 64  # 1024 / 16
    with torch.no_grad():
        big = torch.rand(1, 3, 16, 224, 224) * 2 - 1
        fmap = model.forward_mixed_5c(big)
        assert fmap.shape == (1, 64, 2, 7, 7)  # the pytorch-i3d geometry at 16 × 224²
        # at that size the feature equals pytorch-i3d's AvgPool3d([2, 7, 7], stride 1) after Mixed_5c
        pooled = F.avg_pool3d(fmap, (2, 7, 7), stride=1).flatten(1)
        assert torch.allclose(model.extract_features(big), pooled, atol=1e-6)
        small = torch.rand(3, 3, 16, 64, 64) * 2 - 1
        assert model.forward_mixed_5c(small).shape == (3, 64, 2, 2, 2)  # mini world 64²
        feats = model.extract_features(small)
        assert feats.shape == (3, 64)
        assert model(small).shape == (3, 8, 1)  # per-time logits, T' = 2 − 1
    flow = build_i3d(I3DConfig.tiny(in_channels=2))
    with torch.no_grad():
        assert flow.extract_features(torch.zeros(2, 2, 16, 64, 64)).shape == (2, 64)
    with pytest.raises(ValueError, match="expected"):
        flow.extract_features(torch.zeros(2, 3, 16, 64, 64))


def test_random_init_features_are_order_one_and_seeded() -> None:
    x = torch.rand(2, 3, 16, 64, 64) * 2 - 1
    with torch.no_grad():
        a = build_i3d(I3DConfig.tiny(), seed=0).extract_features(x)
        b = build_i3d(I3DConfig.tiny(), seed=0).extract_features(x)
        c = build_i3d(I3DConfig.tiny(), seed=1).extract_features(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()
    assert 0.05 < float(a.std()) < 20.0  # He fan-in init keeps activations O(1) through ~20 ReLU layers


def test_width_multiplier_feature_dim() -> None:
    with torch.device("meta"):
        assert I3D(I3DConfig()).feature_dim == 1024
        assert I3D(I3DConfig(width=0.25)).feature_dim == 256
        # 384·0.1 → 38, 128·0.1 → 13: the rounded branch widths, not 102.4
        assert I3D(I3DConfig(width=0.1)).feature_dim == 38 + 38 + 13 + 13


def test_state_dict_names_and_shapes_are_pytorch_i3d() -> None:
    for in_channels in (3, 2):
        with torch.device("meta"):
            model = I3D(I3DConfig(in_channels=in_channels))
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert ours == pytorch_i3d_shapes(in_channels)
    bn = model.Conv3d_1a_7x7.bn  # type: ignore[attr-defined]
    assert bn.eps == 1e-3 and bn.momentum == 0.01
    assert model.Conv3d_1a_7x7.conv3d.bias is None  # type: ignore[attr-defined]


def test_loads_a_generated_pytorch_i3d_file_strictly(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) * 0.01 for k, s in pytorch_i3d_shapes(2).items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 1.0
    path = tmp_path / "flow_imagenet.pt"
    torch.save(state, path)
    assert infer_config(path) == I3DConfig(in_channels=2, width=1.0, num_classes=400)
    model = build_i3d(I3DConfig(in_channels=2), weights=path)
    loaded = model.state_dict()
    for k in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_4e.b2b.bn.running_var", "logits.conv3d.bias"):
        assert torch.equal(loaded[k], state[k])
    assert int(loaded["Mixed_5c.b0.bn.num_batches_tracked"]) == 0  # absent from the released files
    with pytest.raises(I3DCheckpointError, match="in_channels=2"):
        build_i3d(I3DConfig(in_channels=3), weights=path)


def test_renamed_or_reshaped_keys_fail_with_names() -> None:
    model = build_i3d(I3DConfig.tiny())
    state = dict(model.state_dict())
    state["Mixed_4c.b1b.conv.weight"] = state.pop("Mixed_4c.b1b.conv3d.weight")
    with pytest.raises(I3DCheckpointError) as err:
        load_i3d_state_dict(build_i3d(I3DConfig.tiny()), state)
    msg = str(err.value)
    assert "1 missing keys: Mixed_4c.b1b.conv3d.weight" in msg
    assert "1 unexpected keys: Mixed_4c.b1b.conv.weight" in msg
    wide = build_i3d(I3DConfig(width=1 / 8, num_classes=8)).state_dict()
    with pytest.raises(I3DCheckpointError, match=r"Conv3d_1a_7x7.conv3d.weight: checkpoint \(8, 3, 7, 7, 7\) vs"):
        load_i3d_state_dict(model, wide)
    hassony = {"conv3d_1a_7x7.conv3d.weight": torch.zeros(1)}
    with pytest.raises(I3DCheckpointError, match="hassony2"):
        load_i3d_state_dict(model, hassony)


def test_saved_and_reloaded_model_gives_identical_features(tmp_path: Path) -> None:
    model = build_i3d(I3DConfig.tiny(), seed=7)
    path = tmp_path / "rgb_tiny.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)  # DataParallel prefix is stripped
    again = build_i3d(I3DConfig.tiny(), weights=path)
    x = torch.rand(2, 3, 16, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.extract_features(x), again.extract_features(x))


def test_every_parameter_gets_a_gradient() -> None:
    model = build_i3d(I3DConfig.tiny()).train()
    torch.manual_seed(0)
    model(torch.rand(2, 3, 16, 32, 32) * 2 - 1).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
