"""ClipBackbone against open_clip as the oracle, on the tiny registered architecture with seeded random weights."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from models.common.clip import (
    CLIP_MEAN,
    CLIP_STD,
    ClipBackbone,
    ClipConfig,
    WeightsUnavailableError,
    build_clip,
    preprocess_frames,
    read_clip_state_dict,
    register_clip_configs,
)
from models.config import ConfigError, build

TINY = "vlrepro-tiny"
CAPTIONS = [
    "a red circle moves left, then up",
    "a blue square",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
]


@pytest.fixture(scope="module")
def bb() -> ClipBackbone:
    torch.manual_seed(0)
    backbone = build_clip(ClipConfig(arch=TINY, pretrained=None))
    return backbone.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_registered_archs_have_the_documented_sizes() -> None:
    register_clip_configs()  # idempotent: a second registration must not duplicate or fail
    assert {"vlrepro-tiny", "vlrepro-mini"} <= set(open_clip.list_models())
    mini = build_clip(ClipConfig(arch="vlrepro-mini", pretrained=None))
    got = (mini.embed_dim, mini.image_size, mini.patch_size, mini.grid, mini.n_patches, mini.vision_width)
    assert got == (128, 64, 16, 4, 16, 128)
    assert (mini.vision_layers, mini.vision_heads, mini.text_width, mini.text_layers, mini.context_length) == (
        4,
        4,
        128,
        2,
        32,
    )
    assert type(mini.vision_blocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_tiny_dimensions(bb: ClipBackbone) -> None:
    assert (bb.embed_dim, bb.image_size, bb.grid, bb.n_patches, bb.vision_width, bb.text_width) == (
        32,
        32,
        2,
        4,
        32,
        32,
    )
    assert bb.vision_layers >= 2 and bb.text_layers >= 2 and bb.context_length == 16
    assert bb.logit_scale is bb.model.logit_scale


def test_encode_image_matches_open_clip(bb: ClipBackbone, images: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_image(images), bb.model.encode_image(images), rtol=0, atol=1e-5)


def test_patch_tokens_are_projected_open_clip_tokens(bb: ClipBackbone, images: torch.Tensor) -> None:
    visual = bb.model.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            pooled, tokens = visual(images)  # tokens: after ln_post, before proj
    finally:
        visual.output_tokens = False
    with torch.no_grad():
        cls, patches = bb.encode_image_tokens(images)
    assert patches.shape == (3, bb.n_patches, bb.embed_dim)
    torch.testing.assert_close(patches, tokens @ visual.proj, rtol=0, atol=1e-5)
    torch.testing.assert_close(cls, pooled, rtol=0, atol=1e-5)


def test_vision_pieces_compose_to_encode_image(bb: ClipBackbone, images: torch.Tensor) -> None:
    with torch.no_grad():
        patches = bb.embed_patches(images)
        assert patches.shape == (3, bb.n_patches, bb.vision_width)
        tokens = bb.tokens_from_patches(patches)
        assert tokens.shape == (3, 1 + bb.n_patches, bb.vision_width)
        out, inter = bb.forward_blocks(tokens, return_layers=[0, -1])
        torch.testing.assert_close(bb.pool(out), bb.model.encode_image(images), rtol=0, atol=1e-5)
    assert len(inter) == 2 and all(t.shape == tokens.shape for t in inter)
    torch.testing.assert_close(inter[-1], out, rtol=0, atol=0)
    torch.testing.assert_close(bb.pool(inter[-1]), bb.encode_image(images), rtol=0, atol=1e-5)
    # block 0's output is an intermediate, not the final state
    assert (inter[0] - out).abs().max() > 1e-3
    # block 0's output equals running that block by hand
    with torch.no_grad():
        torch.testing.assert_close(inter[0], bb.vision_blocks[0](tokens), rtol=0, atol=1e-6)
    with pytest.raises(IndexError):
        bb.forward_blocks(tokens, return_layers=[bb.vision_layers])


def test_sequence_first_transformers_give_the_same_features(bb: ClipBackbone, images: torch.Tensor) -> None:
    model = copy.deepcopy(bb.model)
    for transformer in (model.visual.transformer, model.transformer):
        transformer.batch_first = False  # the layout of older open_clip releases: blocks take (S, B, W)
        for block in transformer.resblocks:
            block.attn.batch_first = False
    seq_first = ClipBackbone(model, TINY)
    tokens = bb.tokenize(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(seq_first.encode_image(images), bb.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(seq_first.encode_text(tokens), bb.encode_text(tokens), rtol=0, atol=1e-5)
        _, (block0,) = seq_first.forward_blocks(seq_first.tokens_from_patches(seq_first.embed_patches(images)), [0])
    assert block0.shape == (3, 1 + bb.n_patches, bb.vision_width)


def test_wrong_image_size_is_a_clear_error(bb: ClipBackbone) -> None:
    with pytest.raises(ValueError, match=r"expects images \(B, 3, 32, 32\)"):
        bb.encode_image(torch.zeros(1, 3, 64, 64))


def test_encode_text_matches_open_clip(bb: ClipBackbone) -> None:
    tokens = bb.tokenize(CAPTIONS)
    assert tokens.shape == (3, 16) and tokens.dtype == torch.long
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(tokens), bb.model.encode_text(tokens), rtol=0, atol=1e-5)


def test_encode_words_eot_row_and_mask(bb: ClipBackbone) -> None:
    tokens = bb.tokenize(CAPTIONS)
    with torch.no_grad():
        words, mask = bb.encode_words(tokens)
        sentence = bb.encode_text(tokens)
    assert words.shape == (3, 16, bb.embed_dim) and mask.dtype == torch.bool
    eot = bb.eot_index(tokens)
    torch.testing.assert_close(words[torch.arange(3), eot], sentence, rtol=0, atol=1e-5)
    sot_id, eot_id = int(tokens[0, 0]), int(tokens[0, eot[0]])
    for i in range(3):
        n_real = int((tokens[i] != 0).sum())
        assert mask[i, :n_real].all() and not mask[i, n_real:].any()
        assert tokens[i, 0] == sot_id and tokens[i, n_real - 1] == eot_id
    # the longest caption is truncated to 16 tokens with EOT kept last: no padding
    assert mask[2].all() and eot[2] == 15


def test_shorter_context_slices_positions_without_changing_features(bb: ClipBackbone) -> None:
    short = ClipBackbone(bb.model, TINY, context_length=8)
    captions = ["a blue square", "a red circle at the top"]  # ≤ 8 tokens with SOT and EOT: nothing truncated
    tokens = short.tokenize(captions)
    assert tokens.shape == (2, 8) and (tokens[:, -1] > 0).tolist() == [False, True]
    with torch.no_grad():
        got, want = short.encode_text(tokens), bb.encode_text(bb.tokenize(captions))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="context_length"):
        ClipBackbone(bb.model, TINY, context_length=17)


def test_text_from_embeddings_equals_encode_text_and_has_gradient(bb: ClipBackbone) -> None:
    tokens = bb.tokenize(CAPTIONS[:2])
    eot = bb.eot_index(tokens)
    embeds = bb.token_embedding(tokens).detach().requires_grad_(True)
    out = bb.encode_text_embeddings(embeds, eot)
    torch.testing.assert_close(out, bb.encode_text(tokens).detach(), rtol=0, atol=1e-5)
    (out**2).sum().backward()
    assert embeds.grad is not None
    for i in range(2):
        e = int(eot[i])
        assert (embeds.grad[i, : e + 1].abs().sum(dim=-1) > 0).all()  # every position up to EOT reaches the feature
        assert (embeds.grad[i, e + 1 :] == 0).all()  # causal mask: nothing after EOT does


def test_openai_offline_fails_fast_with_the_fixes(tmp_path: Path) -> None:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was not set before huggingface_hub was imported")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        build_clip(ClipConfig(arch="ViT-B-32-quickgelu", pretrained="openai", cache_dir=str(tmp_path)))
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "\n" not in message
    assert "local checkpoint path" in message and "hub is reachable" in message and "vlrepro-mini" in message


def test_openai_weights_with_gelu_arch_are_rejected() -> None:
    with pytest.raises(ValueError, match="ViT-B-32-quickgelu"):
        build_clip(ClipConfig(arch="ViT-B-32", pretrained="openai"))


def test_missing_checkpoint_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        build_clip(ClipConfig(arch=TINY, pretrained=str(missing)))


def _outputs(backbone: ClipBackbone, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return backbone.encode_image(images), backbone.encode_text(backbone.tokenize(CAPTIONS))


def test_checkpoint_round_trip_in_every_format(bb: ClipBackbone, images: torch.Tensor, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    expected = _outputs(bb, images)
    own = tmp_path / "backbone.pt"
    torch.save(bb.state_dict(), own)
    ddp = tmp_path / "ddp.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in bb.model.state_dict().items()}}, ddp)
    safe = tmp_path / "open_clip.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(safe))
    for path in (own, ddp, safe):
        torch.manual_seed(123)  # different random init: equality below comes only from the loaded weights
        loaded = build_clip(ClipConfig(arch=TINY, pretrained=str(path)))
        for got, want in zip(_outputs(loaded.eval(), images), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert set(read_clip_state_dict(own)) == set(bb.model.state_dict())


def test_checkpoint_of_another_arch_is_rejected(tmp_path: Path) -> None:
    mini = build_clip(ClipConfig(arch="vlrepro-mini", pretrained=None))
    path = tmp_path / "mini.pt"
    torch.save(mini.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit arch vlrepro-tiny"):
        build_clip(ClipConfig(arch=TINY, pretrained=str(path)))


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Path("/")}, path)
    with pytest.raises(Exception, match=r"(?i)weights.only"):
        read_clip_state_dict(path)


def test_clip_config_through_the_config_system() -> None:
    cfg = build(ClipConfig, {"arch": TINY, "pretrained": None, "context_length": 8})
    assert cfg == ClipConfig(arch=TINY, pretrained=None, context_length=8)
    with pytest.raises(ConfigError, match="valid keys"):
        build(ClipConfig, {"archh": TINY})
    with pytest.raises(ValueError, match="unknown CLIP arch"):
        build_clip(ClipConfig(arch="no-such-arch", pretrained=None))


def test_preprocess_frames_normalises_resizes_and_crops() -> None:
    assert (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD)) == (CLIP_MEAN, CLIP_STD)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    # constant frames stay constant under bicubic resize: value check of the normalisation, numpy and torch alike
    frames = np.full((2, 5, 40, 48, 3), 128, dtype=np.uint8)
    out = preprocess_frames(frames, 32)
    assert out.shape == (2, 5, 3, 32, 32) and out.dtype == torch.float32
    expected = ((128 / 255 - mean) / std).expand(3, 32, 32)
    torch.testing.assert_close(out[1, 4], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(preprocess_frames(torch.from_numpy(frames), 32), out, rtol=0, atol=0)
    # already the right size: per-pixel exact
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    manual = (torch.from_numpy(square).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(preprocess_frames(square, 32), manual, rtol=0, atol=1e-6)
    # shorter side already S: no resize, centre crop of the middle 32 columns
    wide = rng.integers(0, 256, size=(32, 64, 3), dtype=np.uint8)
    manual = (torch.from_numpy(wide[:, 16:48]).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(preprocess_frames(wide, 32), manual, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        preprocess_frames(np.zeros((32, 32, 3), dtype=np.float32), 32)


def test_torchscript_archive_like_openai_pt_loads(bb: ClipBackbone, images: torch.Tensor, tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(bb.model)  # OpenAI's ViT-B-32.pt is such an archive
    path = tmp_path / "ViT-tiny.pt"
    scripted.save(str(path))
    torch.manual_seed(321)
    loaded = build_clip(ClipConfig(arch=TINY, pretrained=str(path))).eval()
    for got, want in zip(_outputs(loaded, images), _outputs(bb, images)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
