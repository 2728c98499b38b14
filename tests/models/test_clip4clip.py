"""CLIP4Clip on the tiny CLIP: gradients reach every trainable parameter, the 3D stem starts as the 2D one, padding and
chunking change nothing, heads match oracles, eval similarity matches training logits, and a tiny set is overfit."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.clip4clip import Clip4Clip, Clip4ClipConfig, build
from models.clip4clip.heads import SeqLSTMHead, SeqTransfHead, TightTransfHead
from models.common.clip import ClipConfig
from models.common.losses import symmetric_infonce
from models.config import ConfigError, merge
from models.config import build as build_config
from models.engine.loop import TrainableModel
from models.engine.optim import param_groups

HEADS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
B, T, D, S = 3, 4, 32, 32  # tiny CLIP: embed 32, 32 px frames
CAPTIONS = ["a red ball moves left", "a blue cube moves up", "a green star spins"]
LENGTHS = (4, 2, 3)  # valid frames per video (prefix masks)
SQUARE_ARCH = "c4c-test-square"  # embed dim == text width, 4 text blocks: the OpenAI-CLIP shape for init tests


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tiny tensors: one thread avoids oversubscribing the shared 2-core machine (10× faster under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def square_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
    }
    path = tmp_path_factory.mktemp("clip_cfg") / f"{SQUARE_ARCH}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return SQUARE_ARCH


def make(head: str = "meanP", input: str = "features", patch: str = "2d", seed: int = 0, **kw: Any) -> Clip4Clip:
    torch.manual_seed(seed)
    return build(dataclasses.replace(Clip4ClipConfig.tiny(), head=head, input=input, patch=patch, **kw))


def prefix_mask(lengths: tuple[int, ...] = LENGTHS, t: int = T) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def make_batch(model: Clip4Clip, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, 3, S, S) if model.cfg.input == "pixels" else (B, T, D)
    return {"video": torch.randn(shape, generator=g), "video_mask": prefix_mask(), "text": model.tokenize(CAPTIONS)}


# ----- gradients ------------------------------------------------------------------------------------------------------

GRAD_CASES = [(h, "features", "2d", {}) for h in HEADS] + [(h, "pixels", p, {}) for h in HEADS for p in ("2d", "3d")]
GRAD_CASES += [
    ("meanP", "pixels", "2d", {"freeze_clip_embeddings": True}),
    ("seqTransf", "pixels", "3d", {"freeze_clip_embeddings": True}),
    ("seqLSTM", "features", "2d", {"freeze_text": True}),
]


@pytest.mark.parametrize(("head", "input", "patch", "extra"), GRAD_CASES)
def test_every_trainable_parameter_gets_a_gradient(head: str, input: str, patch: str, extra: dict[str, Any]) -> None:
    model = make(head, input, patch, **extra)
    assert isinstance(model, TrainableModel)
    out = model.training_step(make_batch(model))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name

    names = {n for n, _ in model.named_parameters()}
    assert "clip.model.logit_scale" not in trainable  # the head's loss owns the scale
    assert ("head.loss.logit_scale" in trainable) == (head != "tightTransf")
    if input == "features":
        assert not any(n.startswith("clip.model.visual.") for n in names)  # no visual tower at all
    else:
        assert "clip.model.visual.transformer.resblocks.0.attn.in_proj_weight" in trainable
        assert ("patch_embed.conv.weight" in trainable) == (patch == "3d")
        assert ("clip.model.visual.conv1.weight" in trainable) == (patch == "2d" and not extra)
    if extra.get("freeze_clip_embeddings"):
        frozen = {"clip.model.token_embedding.weight", "clip.model.positional_embedding"}
        frozen |= {"clip.model.visual.class_embedding", "clip.model.visual.positional_embedding"}
        frozen |= {"clip.model.visual.ln_pre.weight", "clip.model.visual.ln_pre.bias"}
        assert frozen <= names - trainable
        assert "clip.model.transformer.resblocks.0.attn.in_proj_weight" in trainable
    if extra.get("freeze_text"):
        assert not any(n.startswith("clip.") for n in trainable)


def test_lr_scales_put_clip_stem_and_logit_scale_at_the_clip_rate() -> None:
    model = make("seqTransf", "pixels", "3d")
    assert model.lr_scales()["clip."] == 1e-3
    lr_of = {n: g["lr"] for g in param_groups(model, 1e-4, 0.2, model.lr_scales()) for n in g["names"]}
    assert lr_of["clip.model.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(1e-7)
    assert lr_of["patch_embed.conv.weight"] == pytest.approx(1e-7)  # official: `clip.visual.conv2` → coef_lr
    assert lr_of["head.loss.logit_scale"] == pytest.approx(1e-7)  # official: `clip.logit_scale` → coef_lr
    assert lr_of["head.temporal.blocks.0.attn.in_proj_weight"] == pytest.approx(1e-4)


# ----- frame encoders -------------------------------------------------------------------------------------------------


def test_3d_patch_stem_equals_2d_at_init_and_differs_after_perturbing_an_outer_slice() -> None:
    model = make("meanP", "pixels", "3d")
    batch = make_batch(model)
    video, mask = batch["video"], batch["video_mask"]
    per_frame_2d = model.clip.encode_image(video.flatten(0, 1)).reshape(B, T, D)  # CLIP conv1, frame by frame
    with torch.no_grad():
        feats_3d = model.encode_frames(video, mask)
        torch.testing.assert_close(feats_3d[mask], per_frame_2d[mask].detach(), atol=1e-6, rtol=1e-6)
        assert torch.equal(feats_3d[~mask], torch.zeros_like(feats_3d[~mask]))
        model.patch_embed.conv.weight[:, :, 0].normal_(std=0.05)  # the t−1 slice
        perturbed = model.encode_frames(video, mask)
    # every valid frame with a valid predecessor now differs; the first frame of each video only sees zero padding
    has_prev = mask.clone()
    has_prev[:, 0] = False
    assert (perturbed - feats_3d)[has_prev].abs().amax(dim=-1).min() > 1e-4
    torch.testing.assert_close(perturbed[:, 0], feats_3d[:, 0], atol=1e-6, rtol=1e-6)


def test_2d_pixels_frames_are_clip_image_features() -> None:
    model = make("meanP", "pixels", "2d")
    batch = make_batch(model)
    with torch.no_grad():
        feats = model.encode_frames(batch["video"], batch["video_mask"])
        expected = model.clip.encode_image(batch["video"].flatten(0, 1)).reshape(B, T, D)
    mask = batch["video_mask"]
    torch.testing.assert_close(feats[mask], expected[mask])


PAD_CASES = [(h, "features", "2d") for h in HEADS] + [("meanP", "pixels", "2d"), ("meanP", "pixels", "3d")]


@pytest.mark.parametrize(("head", "input", "patch"), PAD_CASES)
def test_padding_changes_nothing(head: str, input: str, patch: str) -> None:
    """A padded video (junk in the padding) scores exactly like its unpadded prefix: nothing leaks from padding."""
    model = make(head, input, patch).eval()
    if patch == "3d":  # at init the outer slices are zero and could hide a leak across the frame boundary
        with torch.no_grad():
            model.patch_embed.conv.weight[:, :, 0].normal_(std=0.05)
            model.patch_embed.conv.weight[:, :, 2].normal_(std=0.05)
    batch = make_batch(model)
    video = batch["video"].clone()
    mask = batch["video_mask"]
    video[~mask] = 50.0 * torch.randn_like(video[~mask])  # junk, not zeros
    with torch.no_grad():
        text = model.encode_text_for_eval(batch["text"])
        padded = model.similarity(text, model.encode_video_for_eval(video, mask))  # (B, B)
        for b, n in enumerate(LENGTHS):
            prefix = model.encode_video_for_eval(video[b : b + 1, :n], torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(padded[:, b], model.similarity(text, prefix)[:, 0], atol=1e-5, rtol=1e-5)


# ----- heads ----------------------------------------------------------------------------------------------------------


def test_meanP_matches_the_paper_formula() -> None:
    """Oracle: logits = exp(logit_scale) · t̂ · normalise(mean over valid frames of normalised frames)."""
    model = make("meanP").eval()
    batch = make_batch(model)
    with torch.no_grad():
        logits = model(batch)
        text = F.normalize(model.clip.encode_text(batch["text"]), dim=-1)
        frames = F.normalize(batch["video"], dim=-1)
        video = torch.stack([frames[b, :n].mean(0) for b, n in enumerate(LENGTHS)])
        expected = math.exp(float(model.head.loss.logit_scale.detach())) * text @ F.normalize(video, dim=-1).T
    torch.testing.assert_close(logits, expected)
    assert float(model.head.loss.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))  # random CLIP's init
    torch.testing.assert_close(model.training_step(batch)["loss"], symmetric_infonce(logits, "mean"))


def test_seqLSTM_matches_the_official_packed_lstm() -> None:
    model = make("seqLSTM").eval()
    head = model.head
    assert isinstance(head, SeqLSTMHead)
    x = torch.randn(B, T, D)
    mask = prefix_mask()
    with torch.no_grad():
        ours = head.contextualise(x, mask)
        # official modeling.py: pack → LSTM → pad → copy the tail back from the input → + input
        packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(head.lstm(packed)[0], batch_first=True)
        official = torch.cat([out, x[:, out.shape[1] :]], dim=1) + x
    torch.testing.assert_close(ours[mask], official[mask])
    with pytest.raises(ValueError, match="prefix"):
        head.contextualise(x, torch.tensor([[True, False, True, True]] * B))


def test_meanP_ignores_frame_order_and_seqTransf_does_not() -> None:
    frames = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, T, dtype=torch.bool)
    reverse = frames.flip(1)
    for head, order_matters in (("meanP", False), ("seqTransf", True)):
        model = make(head).eval()
        with torch.no_grad():
            forward = model.encode_video_for_eval(frames, mask)
            backward = model.encode_video_for_eval(reverse, mask)
        gap = float((forward - backward).abs().max())
        assert (gap > 1e-4) if order_matters else (gap < 1e-6), (head, gap)


def test_seqTransf_and_tightTransf_start_from_clip_text_blocks(square_arch: str) -> None:
    for head_name in ("seqTransf", "tightTransf"):
        torch.manual_seed(0)
        cfg = Clip4ClipConfig(clip=ClipConfig(arch=square_arch, pretrained=None), head=head_name, max_words=16)
        model = build(cfg)
        head = model.head
        transformer = head.temporal if isinstance(head, SeqTransfHead) else head.cross
        assert len(transformer.blocks) == 4
        # official: text `transformer.resblocks.{0..3}` → `transformerClip.*` / `cross.transformer.*`
        for i in range(4):
            for key, value in model.clip.text_blocks[i].state_dict().items():
                assert torch.equal(transformer.blocks[i].state_dict()[key], value), (head_name, i, key)
        rows = transformer.max_positions
        assert rows == (12 if head_name == "seqTransf" else 13)
        assert torch.equal(transformer.positional_embedding.detach(), model.clip.text_positional_embedding[:rows])


def test_text_init_takes_the_text_tower_of_a_saved_model_before_the_head_copies_it(
    square_arch: str, tmp_path: Path
) -> None:
    def cfg(head: str, **kw: Any) -> Clip4ClipConfig:
        return Clip4ClipConfig(
            clip=ClipConfig(arch=square_arch, pretrained=None), head=head, max_words=16, input="features", **kw
        )

    torch.manual_seed(0)
    donor = build(cfg("seqTransf"))
    with torch.no_grad():
        for p in donor.clip.model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # a "trained" text tower, unlike any fresh init
    path = tmp_path / "model.pt"
    torch.save(donor.state_dict(), path)

    torch.manual_seed(1)
    fresh = build(cfg("tightTransf"))
    torch.manual_seed(1)
    model = build(cfg("tightTransf", text_init=str(path), freeze_text=True))
    donor_text = donor.clip.model.state_dict()
    changed = 0
    for name, value in model.clip.model.state_dict().items():
        if name.startswith(("visual.", "logit_scale")):
            assert torch.equal(value, fresh.clip.model.state_dict()[name]), name  # only the text tower is taken
        else:
            assert torch.equal(value, donor_text[name]), name
            changed += not torch.equal(value, fresh.clip.model.state_dict()[name])
    assert changed >= 10
    # the cross encoder's "initialization trick" copies the loaded blocks, not the backbone's own
    for i, block in enumerate(model.head.cross.blocks):
        for key, value in donor.clip.text_blocks[i].state_dict().items():
            assert torch.equal(block.state_dict()[key], value), (i, key)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)  # freeze_text: only the head trains

    with pytest.raises(ConfigError, match="no such file"):
        build(cfg("tightTransf", text_init=str(tmp_path / "missing.pt")))
    other = make("meanP")  # vlrepro-tiny: another text tower shape
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not hold this CLIP's text tower"):
        build(cfg("tightTransf", text_init=str(tmp_path / "other.pt")))


def test_tight_pair_scores_have_pair_shape_and_do_not_depend_on_chunking() -> None:
    model = make("tightTransf").eval()
    head = model.head
    assert isinstance(head, TightTransfHead)
    g = torch.Generator().manual_seed(5)
    text, frames = torch.randn(5, D, generator=g), torch.randn(7, T, D, generator=g)
    mask = prefix_mask((4, 1, 3, 2, 4, 4, 2)[:7])
    with torch.no_grad():
        head.pair_chunk_size = 10_000
        whole = head.pair_scores(text, frames, mask)
        assert whole.shape == (5, 7)
        for chunk in (1, 3, 7, 9):  # single pairs, part of a row, exactly a row, rows + remainder
            head.pair_chunk_size = chunk
            torch.testing.assert_close(head.pair_scores(text, frames, mask), whole, atol=1e-6, rtol=1e-5)
        # brute force: one pair per cross-encoder forward
        brute = torch.stack(
            [
                torch.cat(
                    [head._score_block(text[i : i + 1], frames[j : j + 1], mask[j : j + 1]) for j in range(7)], dim=1
                )[0]
                for i in range(5)
            ]
        )
    torch.testing.assert_close(brute, whole, atol=1e-6, rtol=1e-5)
    assert float(whole.std()) > 0  # scores depend on the pair


@pytest.mark.parametrize("head", HEADS)
def test_similarity_equals_training_logits(head: str) -> None:
    model = make(head).eval()  # eval: tightTransf's dropout off, as in evaluation
    batch = make_batch(model)
    with torch.no_grad():
        logits = model(batch)
        text = model.encode_text_for_eval(batch["text"])
        video = torch.cat(
            [
                model.encode_video_for_eval(batch["video"][i : i + 2], batch["video_mask"][i : i + 2])
                for i in range(0, B, 2)
            ]
        )  # gallery encoded in chunks, concatenated
        sim = model.similarity(text, video)
        chunked = torch.cat([model.similarity(text[i : i + 1], video) for i in range(B)])
    scale = model.head.loss.scale() if head != "tightTransf" else torch.tensor(1.0)
    torch.testing.assert_close(logits, scale * sim)
    torch.testing.assert_close(chunked, sim)
    assert sim.shape == (B, B)


def test_after_step_clamps_the_logit_scale_at_ln_100() -> None:
    model = make("seqTransf")
    with torch.no_grad():
        model.head.loss.logit_scale.fill_(7.0)
    model.after_step()
    assert float(model.head.loss.logit_scale.detach()) == pytest.approx(math.log(100.0))
    with torch.no_grad():
        model.head.loss.logit_scale.fill_(2.0)
    model.after_step()
    assert float(model.head.loss.logit_scale.detach()) == pytest.approx(2.0)  # below the cap: untouched


def test_init_logit_scale_overrides_the_backbone_scale() -> None:
    model = make("meanP", init_logit_scale=math.log(100.0))
    assert float(model.head.loss.logit_scale.detach()) == pytest.approx(math.log(100.0))
    assert float(model.training_step(make_batch(model))["logit_scale"]) == pytest.approx(100.0)


@pytest.mark.parametrize("head", ["meanP", "seqTransf"])
def test_tiny_overfit_reaches_full_recall(head: str) -> None:
    """40 Adam steps on 8 fixed (caption, frame-feature) pairs: text→video R@1 on those pairs reaches 100 %."""
    model = make(head, seed=0)
    captions = [f"{c} object moves {d}" for c in ("red", "blue", "green", "pink") for d in ("left", "up")]
    g = torch.Generator().manual_seed(7)
    batch = {
        "video": torch.randn(8, T, D, generator=g),
        "video_mask": torch.ones(8, T, dtype=torch.bool),
        "text": model.tokenize(captions),
    }

    def recall_at_1() -> float:
        model.eval()
        with torch.no_grad():
            sim = model.similarity(
                model.encode_text_for_eval(batch["text"]),
                model.encode_video_for_eval(batch["video"], batch["video_mask"]),
            )
        model.train()
        return float((sim.argmax(dim=1) == torch.arange(8)).float().mean() * 100)

    before = recall_at_1()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(40):
        loss = model.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step()
    assert before < 100.0
    assert recall_at_1() == 100.0
    assert float(loss.detach()) < 0.1


# ----- configuration --------------------------------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_invalid_combinations(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config(Clip4ClipConfig, {"sim_header": "meanP"})
    with pytest.raises(ConfigError, match="unknown config key"):
        merge(Clip4ClipConfig.tiny(), {"clip.archh": "x"})
    with pytest.raises(ConfigError, match="3d"):
        merge(Clip4ClipConfig.tiny(), {"patch": "3d", "input": "features"})
    with pytest.raises(ConfigError, match="not one of"):
        merge(Clip4ClipConfig.tiny(), {"head": "meanp"})
    with pytest.raises(ConfigError, match="context_length"):
        Clip4ClipConfig(clip=ClipConfig(context_length=77), max_words=32)
    # a CLIP whose embed dim (16) differs from its text width (32): CLIP-text init is impossible and says so
    narrow = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    path = tmp_path / "c4c-test-narrow.json"
    path.write_text(json.dumps(narrow))
    open_clip.add_model_config(path)
    with pytest.raises(ConfigError, match="temporal_init='random'"):
        build(Clip4ClipConfig(clip=ClipConfig(arch="c4c-test-narrow", pretrained=None), head="seqTransf", max_words=16))
    cfg = merge(Clip4ClipConfig.tiny(), {"head": "tightTransf", "cross_layers": "1", "clip.pretrained": None})
    assert (cfg.head, cfg.cross_layers, cfg.clip.arch) == ("tightTransf", 1, "vlrepro-tiny")
    defaults = Clip4ClipConfig()  # the paper's setting
    assert (defaults.head, defaults.patch, defaults.max_frames, defaults.max_words, defaults.cross_layers) == (
        "meanP",
        "2d",
        12,
        32,
        4,
    )
    assert (defaults.clip.arch, defaults.clip.pretrained, defaults.clip_lr_scale) == (
        "ViT-B-32-quickgelu",
        "openai",
        1e-3,
    )


def test_inputs_are_validated() -> None:
    model = make("meanP", "pixels", "2d")
    batch = make_batch(model)
    with pytest.raises(ValueError, match="max_frames"):
        model.encode_frames(torch.randn(1, T + 1, 3, S, S), torch.ones(1, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="expects video"):
        model.encode_frames(torch.randn(1, T, 3, 16, 16), torch.ones(1, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="features"):
        make("meanP").encode_frames(torch.randn(1, T, D + 1), torch.ones(1, T, dtype=torch.bool))
    assert batch["text"].shape == (B, 16)  # tokenised to max_words


def test_the_mini_configs_max_words_fits_every_mini_world_caption() -> None:
    """The mini config shortens captions to `max_words` tokens for speed: that must never cut a caption (a cut one
    would lose its EOT's meaning). Every template × colour × shape × direction pair, tokenised with SOT/EOT."""
    import itertools

    from models.common.clip import tokenize
    from pipelines.miniworld.vocab import COLOURS, DIRECTIONS, RETRIEVAL_TEMPLATES, SHAPES, fill
    from recipes.spec import load_spec

    max_words = load_spec("clip4clip", "mini-retrieval").base("clip4clip")["model"]["max_words"]
    captions = [
        fill(t, c, s, a, b)
        for t, c, s, (a, b) in itertools.product(
            RETRIEVAL_TEMPLATES, COLOURS, SHAPES, itertools.permutations(DIRECTIONS, 2)
        )
    ]
    lengths = (tokenize("vlrepro-mini", captions, 77) != 0).sum(dim=1)
    longest = captions[int(lengths.argmax())]
    assert int(lengths.max()) <= max_words, f"{longest!r} has {int(lengths.max())} tokens > max_words {max_words}"
    assert int(lengths.max()) >= max_words - 2  # and the budget is not far above need: the test tracks the templates


def test_fused_adamw_makes_the_same_update_as_the_default_loop() -> None:
    from models.engine.optim import OptimConfig, build_optimizer

    def run(fused: bool) -> tuple[torch.optim.AdamW, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = build(
            Clip4ClipConfig(
                clip=ClipConfig(arch="vlrepro-tiny", pretrained=None),
                head="seqTransf",
                temporal_init="random",
                max_words=16,
            )
        )
        opt = build_optimizer(model, OptimConfig(lr=1e-3, fused=fused), model.lr_scales())
        for step in range(3):
            torch.manual_seed(step)
            loss = sum((p * torch.randn_like(p)).sum() for p in model.parameters() if p.requires_grad)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return opt, [p.detach().clone() for p in model.parameters()]

    fused_opt, fused = run(True)
    plain_opt, plain = run(False)
    assert fused_opt.defaults["fused"] is True and not plain_opt.defaults["fused"]
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(fused, plain, strict=True))
