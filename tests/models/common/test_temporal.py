"""TemporalTransformer masking and gradients, the CLIP4Clip seqTransf init, and masked_mean against a loop."""

from __future__ import annotations

import pytest
import torch

from models.common.clip import ClipConfig, build_clip
from models.common.temporal import TemporalTransformer, init_from_clip_text, masked_mean

LENGTHS = [6, 3, 1]


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


@pytest.fixture()
def temporal() -> TemporalTransformer:
    torch.manual_seed(0)
    return TemporalTransformer(width=32, layers=2, heads=4, max_positions=8).eval()


def test_padded_frames_do_not_change_valid_outputs(temporal: TemporalTransformer) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 32, generator=gen)
    mask = _mask(LENGTHS, 6)
    noisy = torch.where(mask[..., None], x, 100 * torch.randn(3, 6, 32, generator=gen))
    with torch.no_grad():
        out, out_noisy = temporal(x, mask), temporal(noisy, mask)
    assert out.shape == (3, 6, 32) and torch.isfinite(out).all()
    torch.testing.assert_close(out[mask], out_noisy[mask], rtol=0, atol=1e-5)
    # the check can fail: without the mask, the same change does reach the valid frames
    full = torch.ones_like(mask)
    with torch.no_grad():
        assert (temporal(x, full)[mask] - temporal(noisy, full)[mask]).abs().max() > 1e-2
    # frames attend to each other in both directions (no causal mask): changing frame 2 moves frame 0
    changed = x.clone()
    changed[0, 2] = torch.randn(32, generator=gen)  # not a constant shift, which LayerNorm would erase
    with torch.no_grad():
        assert (temporal(changed, mask)[0, 0] - out[0, 0]).abs().max() > 1e-4


def test_fully_padded_video_stays_finite(temporal: TemporalTransformer) -> None:
    x = torch.randn(2, 4, 32)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    with torch.no_grad():
        out = temporal(x, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(masked_mean(out, mask)[1], torch.zeros(32))


def test_positions_are_added_and_bounded(temporal: TemporalTransformer) -> None:
    x = torch.zeros(1, 3, 32)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        base = temporal(x, mask)
        temporal.positional_embedding[1] += torch.randn(32)
        assert (temporal(x, mask) - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="max_positions"):
        temporal(torch.zeros(1, 9, 32), torch.ones(1, 9, dtype=torch.bool))


def test_every_parameter_gets_a_gradient(temporal: TemporalTransformer) -> None:
    temporal.train()
    x = torch.randn(3, 6, 32, requires_grad=True)
    mask = _mask(LENGTHS, 6)
    out = temporal(x, mask)
    (out[mask] ** 2).sum().backward()  # a loss on valid frames only, as pooling over valid frames gives
    for name, param in temporal.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))  # padding: none


def test_init_from_clip_text_copies_blocks_and_positions() -> None:
    torch.manual_seed(0)
    backbone = build_clip(ClipConfig(arch="vlrepro-tiny", pretrained=None))
    temporal = TemporalTransformer(width=backbone.text_width, layers=2, heads=backbone.text_heads, max_positions=8)
    before = {k: v.clone() for k, v in temporal.state_dict().items()}
    init_from_clip_text(temporal, backbone, n_layers=1)
    for key, value in backbone.text_blocks[0].state_dict().items():
        assert torch.equal(temporal.blocks[0].state_dict()[key], value), key
    for key, value in temporal.blocks[1].state_dict().items():
        assert torch.equal(value, before[f"blocks.1.{key}"]), key  # n_layers=1 leaves block 1 alone
    assert torch.equal(temporal.positional_embedding.detach(), backbone.text_positional_embedding.detach()[:8])
    # copies, not shared storage: training the temporal head must not move CLIP
    assert temporal.blocks[0].mlp.c_fc.weight.data_ptr() != backbone.text_blocks[0].mlp.c_fc.weight.data_ptr()

    # more positions than the text context (16): the first 16 rows are copied, the rest keep their init
    long = TemporalTransformer(width=backbone.text_width, layers=2, heads=2, max_positions=20)
    tail = long.positional_embedding.detach()[16:].clone()
    init_from_clip_text(long, backbone)
    assert torch.equal(long.positional_embedding.detach()[:16], backbone.text_positional_embedding.detach())
    assert torch.equal(long.positional_embedding.detach()[16:], tail)
    for i in range(2):
        assert torch.equal(long.blocks[i].attn.in_proj_weight, backbone.text_blocks[i].attn.in_proj_weight)

    with pytest.raises(ValueError, match="width-64 temporal transformer from the width-32"):
        init_from_clip_text(TemporalTransformer(width=64, layers=1, heads=2), backbone)
    with pytest.raises(ValueError, match="n_layers=3"):
        init_from_clip_text(TemporalTransformer(width=32, layers=3, heads=2), backbone)


def test_masked_mean_matches_a_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, 7, generator=gen)
    mask = torch.rand(4, 5, generator=gen) > 0.4
    mask[0] = False  # an empty video
    mask[1] = True
    x[~mask] = float("nan")  # padding content must not leak
    got = masked_mean(x, mask)
    for b in range(4):
        rows = [x[b, t] for t in range(5) if mask[b, t]]
        want = torch.stack(rows).mean(dim=0) if rows else torch.zeros(7)
        torch.testing.assert_close(got[b], want, rtol=0, atol=1e-6)
