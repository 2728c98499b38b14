"""LocVTP on the tiny CLIP: the fine / temporal / coarse losses against direct implementations of the paper's
equations, the correspondence selectors on hand-made matrices, the warping head and its δ range, the encoder equal to
per-frame CLIP at init, gradients for every loss configuration, and the mini config files."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.common.clip import ClipConfig
from models.config import ConfigError
from models.config import build as build_config
from models.engine.loop import TrainableModel, TrainConfig
from models.engine.optim import param_groups
from models.grounding import GroundingHeadConfig
from models.locvtp import LocVTP, LocVTPConfig, build
from models.locvtp.losses import (
    POSITIVE_SELECTORS,
    fine_loss,
    positive_features,
    select_2d_topk,
    select_clip_topk,
    select_word_topk,
)
from models.locvtp.warping import ContextWarpingHead, sample_offsets

B, T, F_, S = 3, 4, 2, 32  # tiny CLIP: 32 px, 2 frames per clip
CAPTIONS = ["a red ball moves left then up", "blue cube", "the green star spins slowly to the right"]
CLIP_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)  # video 2: a hole
TAU = 0.07


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed: int = 0, live_temporal: bool = False, **overrides: Any) -> LocVTP:
    """Tiny LocVTP; `live_temporal` moves the zero-initialised temporal output projections off zero."""
    torch.manual_seed(seed)
    model = build(dataclasses.replace(LocVTPConfig.tiny(), **overrides))
    if live_temporal:
        with torch.no_grad():
            for layer in model.encoder.temporal:
                layer.fc.weight.normal_(std=0.2)
                layer.fc.bias.normal_(std=0.2)
            model.encoder.time_embed.normal_(std=0.2)
    return model


def make_batch(model: LocVTP, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, F_, 3, S, S, generator=g)
    if model.cfg.input == "tokens":
        with torch.no_grad():
            frames = model.frame_tokens(frames)
    return {"frames": frames, "clip_mask": CLIP_MASK.clone(), "text": model.tokenize(CAPTIONS)}


# ----- direct implementations of the paper's equations (loops, float64) -------------------------------------------


def topk_words(clip: torch.Tensor, words: torch.Tensor, real: list[int], k: int) -> list[int]:
    return sorted(real, key=lambda s: -float(clip @ words[s]))[:k]


def oracle_fine(
    clips: torch.Tensor,
    clip_mask: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    k: int,
    anchors: torch.Tensor | None = None,
    use: torch.Tensor | None = None,
) -> float:
    """L_f = mean_b (1/T_b) Σ_t −log exp(a^t·q^t_+/τ) / Σ_i Σ_s exp(a^t·q_i^s/τ), q^t_+ = norm(mean of the clip's
    top-K own words by v^t·q^s); `anchors` = z^t for L_t (default v^t), `use` restricts the clips (δ exists)."""
    clips, words = clips.double(), words.double()
    anchors = clips if anchors is None else anchors.double()
    n_videos, n_clips, n_words = clips.shape[0], clips.shape[1], words.shape[1]
    all_words = [words[i, s] for i in range(words.shape[0]) for s in range(n_words) if word_mask[i, s]]
    per_video = []
    for b in range(n_videos):
        real = [s for s in range(n_words) if word_mask[b, s]]
        terms = []
        for t in range(n_clips):
            if not clip_mask[b, t] or (use is not None and not use[b, t]):
                continue
            chosen = topk_words(clips[b, t], words[b], real, k)
            q_plus = sum(words[b, s] for s in chosen) / len(chosen)
            q_plus = q_plus / q_plus.norm()
            a = anchors[b, t]
            numerator = math.exp(float(a @ q_plus) / TAU)
            denominator = sum(math.exp(float(a @ q) / TAU) for q in all_words)
            terms.append(-math.log(numerator / denominator))
        if terms:
            per_video.append(sum(terms) / len(terms))
    return sum(per_video) / len(per_video)


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def fine_from_parts(clips: torch.Tensor, clip_mask: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, k: int):
    sim = torch.einsum("btd,bld->btl", clips, words)
    positives, has = positive_features(select_clip_topk(sim, clip_mask, word_mask, k, None), words)
    return fine_loss(clips, positives, has & clip_mask, words, word_mask, TAU)


# ----- fine loss ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
def test_fine_loss_matches_the_equation(k: int) -> None:
    clips, words = unit(3, 5, 8, seed=0), unit(3, 6, 8, seed=1)
    clip_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.bool)
    word_mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    # video 1 has 2 words: with K = 3 or 5 its clips average both (min(K, S_b))
    got = fine_from_parts(clips, clip_mask, words, word_mask, k)
    assert float(got) == pytest.approx(oracle_fine(clips, clip_mask, words, word_mask, k), rel=1e-5)


def test_padding_junk_changes_nothing() -> None:
    clips, words = unit(3, 5, 8, seed=2), unit(3, 6, 8, seed=3)
    clip_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    word_mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    clean = fine_from_parts(clips, clip_mask, words, word_mask, 3)
    # huge junk in padded word slots (which would dominate any top-K and denominator) and in padded clips
    junk_words = torch.where(word_mask[:, :, None], words, 50.0 * torch.randn(words.shape))
    junk_clips = torch.where(clip_mask[:, :, None], clips, 50.0 * torch.randn(clips.shape))
    dirty = fine_from_parts(junk_clips, clip_mask, junk_words, word_mask, 3)
    assert float(dirty) == pytest.approx(float(clean), rel=1e-6)
    # and the check can fail: counting one padded word as real changes the loss
    leaky = word_mask.clone()
    leaky[0, 4] = True
    assert float(fine_from_parts(clips, clip_mask, junk_words, leaky, 3)) != pytest.approx(float(clean), rel=1e-3)


def test_positive_is_not_in_the_denominator() -> None:
    # two words equal to the clip feature v: q_+ (their renormalised mean) = v, the numerator is e^{1/τ} and the
    # denominator sums the two words only: L = log 2. A softmax that also counted q_+ would give log 3.
    v = unit(1, 1, 4, seed=5)
    words = torch.cat([v, v], dim=1)
    loss = fine_loss(v, v, torch.ones(1, 1, dtype=torch.bool), words, torch.ones(1, 2, dtype=torch.bool), TAU)
    assert float(loss) == pytest.approx(math.log(2.0), rel=1e-6)


# ----- correspondence discovery ---------------------------------------------------------------------------------------

SIM = torch.tensor([[[0.9, 0.85], [0.1, 0.8], [0.5, 0.3]]])  # (1, T=3 clips, L=2 words)
ALL_CLIPS, ALL_WORDS = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)


def test_selectors_on_a_hand_made_matrix() -> None:
    def pairs(fn: Any, k: int) -> list[list[int]]:
        return fn(SIM, ALL_CLIPS, ALL_WORDS, k, None)[0].int().tolist()

    assert pairs(select_clip_topk, 1) == [[1, 0], [0, 1], [1, 0]]  # each clip: its best word
    assert pairs(select_clip_topk, 3) == [[1, 1], [1, 1], [1, 1]]  # K > S_b: all words
    assert pairs(select_word_topk, 1) == [[1, 1], [0, 0], [0, 0]]  # both words pick clip 0; clips 1, 2: no positive
    assert pairs(select_word_topk, 2) == [[1, 1], [0, 1], [1, 0]]
    assert pairs(select_2d_topk, 1) == [[1, 1], [0, 1], [0, 0]]  # top K·T = 3 cells: .9, .85, .8


def test_selectors_never_pick_padding() -> None:
    sim = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(0))
    sim[:, 3, :] = 10.0  # a padded clip with the best similarities
    sim[:, :, 4] = 10.0  # a padded word with the best similarities
    clip_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    word_mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    valid = clip_mask[:, :, None] & word_mask[:, None, :]
    g = torch.Generator().manual_seed(1)
    for name, select in POSITIVE_SELECTORS.items():
        for _ in range(20 if name == "random" else 1):
            chosen = select(sim, clip_mask, word_mask, 2, g)
            assert not bool((chosen & ~valid).any()), name
    counts = select_clip_topk(sim, clip_mask, word_mask, 2, None).sum(dim=2)
    assert counts.tolist() == [[2, 2, 2, 0], [1, 1, 1, 0]]  # min(K, S_b) per real clip


def test_random_positives_are_k_uniform_words() -> None:
    sim = torch.zeros(1, 2, 6)
    word_mask = torch.tensor([[0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    clip_mask = torch.ones(1, 2, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(6)
    for _ in range(2000):
        chosen = POSITIVE_SELECTORS["random"](sim, clip_mask, word_mask, 2, g)
        assert chosen.sum(dim=2).tolist() == [[2, 2]]
        hits += chosen[0, 0].float()
    assert hits[[0, 5]].tolist() == [0.0, 0.0]
    assert hits[1:5].tolist() == pytest.approx([1000.0] * 4, abs=120)  # each word in 2 of 4 slots: 1000 expected


# ----- context warping --------------------------------------------------------------------------------------------


def test_warping_head_shapes_and_formula() -> None:
    torch.manual_seed(0)
    head = ContextWarpingHead(6)
    assert tuple(head.proj.weight.shape) == (6, 8) and head.proj.bias is None  # W: (D+2) → D
    clips = torch.randn(2, 5, 6)
    delta = torch.tensor([[1, -1, 2, -3, -4], [4, 3, -2, 1, -1]])
    z = head(clips, delta)
    assert z.shape == (2, 5, 6)
    for b, t in [(0, 0), (0, 3), (1, 0), (1, 4)]:
        d = int(delta[b, t])
        x = torch.cat([clips[b, t + d], torch.tensor([math.copysign(1.0, d), abs(d)])])
        torch.testing.assert_close(z[b, t], torch.relu(head.proj.weight @ x))


def test_delta_range_over_many_draws() -> None:
    delta_max = 3
    clip_mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 1, 0, 1, 1, 0, 0],
         [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
        dtype=torch.bool,
    )  # fmt: skip
    b_n, t_n = clip_mask.shape
    mask = clip_mask.tolist()
    offsets = [e for e in range(-delta_max, delta_max + 1) if e != 0]
    admissible = {
        (b, t): [e for e in offsets if mask[b][t] and 0 <= t + e < t_n and mask[b][t + e]]
        for b in range(b_n)
        for t in range(t_n)
    }
    g = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, int, int], int] = {}
    draws = 3000
    for _ in range(draws):
        delta, has = sample_offsets(clip_mask, delta_max, g)
        delta_l, has_l = delta.tolist(), has.tolist()
        for (b, t), options in admissible.items():
            d = delta_l[b][t]
            assert has_l[b][t] == bool(options)
            if options:
                assert d in options  # never 0, |δ| <= δmax, t+δ a real clip of the same video
                counts[(b, t, d)] = counts.get((b, t, d), 0) + 1
            else:
                assert d == 0
    # uniform over the admissible offsets: middle clip of video 0 has 6, clip 0 has 3, video 2 clip 6 has {+1, −2}
    for (b, t), options in {(0, 5): [-3, -2, -1, 1, 2, 3], (0, 0): [1, 2, 3], (2, 6): [-2, 1]}.items():
        expected = draws / len(options)
        for d in options:
            assert counts[(b, t, d)] == pytest.approx(expected, rel=0.12), (b, t, d)
    assert not bool(sample_offsets(clip_mask, delta_max, g)[1][3].any())  # a one-clip video: no δ


# ----- the encoder ----------------------------------------------------------------------------------------------------


def per_frame_clip(model: LocVTP, frames: torch.Tensor) -> torch.Tensor:
    """Mean over each clip's frames of CLIP's image embedding: (B, T, F, 3, S, S) → (B, T, D)."""
    emb = model.clip.encode_image(frames.flatten(0, 2)).view(*frames.shape[:3], -1)
    return emb.mean(dim=2)


def test_encoder_is_per_frame_clip_at_init() -> None:
    model = make()
    batch = make_batch(model)
    with torch.no_grad():
        got = model.encode_clips(batch["frames"], CLIP_MASK, normalize=False)
        want = per_frame_clip(model, batch["frames"]) * CLIP_MASK[:, :, None]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the comparison can fail: once the temporal projections and time embedding move, the features move
    live = make(live_temporal=True)
    with torch.no_grad():
        moved = live.encode_clips(batch["frames"], CLIP_MASK, normalize=False)
    assert float((moved - want).abs().max()) > 1e-2


def test_temporal_attention_stays_inside_a_clip() -> None:
    model = make(live_temporal=True)
    batch = make_batch(model)
    frames = batch["frames"].clone()
    frames[:, 1] = torch.randn(frames[:, 1].shape)  # new frames in clip 1 only
    with torch.no_grad():
        before = model.encode_clips(batch["frames"], CLIP_MASK)
        after = model.encode_clips(frames, CLIP_MASK)
    changed = (before - after).abs().amax(dim=2) > 1e-6  # (B, T)
    assert changed.tolist() == [[False, True, False, False], [False, True, False, False], [False, False, False, False]]


def test_token_input_equals_pixel_input() -> None:
    pixels = make(live_temporal=True, trainable_blocks=1)
    tokens = make(live_temporal=True, trainable_blocks=1, input="tokens")
    tokens.load_state_dict(pixels.state_dict())
    batch = make_batch(pixels)
    with torch.no_grad():
        a = pixels.encode_clips(batch["frames"], CLIP_MASK)
        b = tokens.encode_clips(tokens.frame_tokens(batch["frames"]), CLIP_MASK)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert len(pixels.encoder.temporal) == 1  # temporal attention only in the trainable top block


# ----- the model's terms against the oracles --------------------------------------------------------------------------


def test_model_terms_match_the_equations() -> None:
    model = make(live_temporal=True)
    batch = make_batch(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        terms = model.losses(batch, generator=g)
        clips = model.encode_clips(batch["frames"], CLIP_MASK)
        text = model.encode_text(batch["text"])
    k = model.cfg.top_k
    assert float(terms["fine"]) == pytest.approx(oracle_fine(clips, CLIP_MASK, text.words, text.word_mask, k), rel=1e-4)
    # L_t: the same δ draws (the only random choice of clip_topk), z^t = ReLU(W[v^{t+δ}; sgn δ; |δ|])
    delta, has = sample_offsets(CLIP_MASK, model.cfg.delta_max, torch.Generator().manual_seed(7))
    assert model.warp is not None
    w = model.warp.proj.weight.detach()
    z = torch.zeros_like(clips)
    for b in range(B):
        for t in range(T):
            if has[b, t]:
                d = int(delta[b, t])
                z[b, t] = torch.relu(w @ torch.cat([clips[b, t + d], torch.tensor([math.copysign(1.0, d), abs(d)])]))
    z = F.normalize(z, dim=-1)
    want_t = oracle_fine(clips, CLIP_MASK, text.words, text.word_mask, k, anchors=z, use=has)
    assert float(terms["temporal"]) == pytest.approx(want_t, rel=1e-4)
    # L_c (v2t): v̄ = norm(mean of real clips), q̄ = norm(mean of content words)
    v_bar = F.normalize(torch.stack([clips[b, CLIP_MASK[b]].mean(0) for b in range(B)]), dim=-1).double()
    q_bar = F.normalize(torch.stack([text.words[b, text.word_mask[b]].mean(0) for b in range(B)]), dim=-1).double()
    want_c = (
        sum(
            -math.log(
                math.exp(float(v_bar[b] @ q_bar[b]) / TAU) / sum(math.exp(float(v_bar[b] @ q) / TAU) for q in q_bar)
            )
            for b in range(B)
        )
        / B
    )
    assert float(terms["coarse"]) == pytest.approx(want_c, rel=1e-4)
    # total: 0.5 Lc + Lf + Lt
    torch.manual_seed(3)
    step = model.training_step(batch)
    parts = {k: float(v.detach()) for k, v in step.items()}
    assert parts["loss"] == pytest.approx(0.5 * parts["loss_coarse"] + parts["loss_fine"] + parts["loss_temporal"])


def test_intra_modal_target_against_all_clips() -> None:
    model = make(live_temporal=True, warp_target="intra_modal")
    batch = make_batch(model)
    with torch.no_grad():
        terms = model.losses(batch, generator=torch.Generator().manual_seed(4))
        clips = model.encode_clips(batch["frames"], CLIP_MASK).double()
    delta, has = sample_offsets(CLIP_MASK, model.cfg.delta_max, torch.Generator().manual_seed(4))
    assert model.warp is not None
    z = F.normalize(model.warp(clips.float(), delta).detach(), dim=-1).double()
    bank = [clips[i, s] for i in range(B) for s in range(T) if CLIP_MASK[i, s]]
    per_video = []
    for b in range(B):
        terms_b = [
            -math.log(
                math.exp(float(z[b, t] @ clips[b, t]) / TAU) / sum(math.exp(float(z[b, t] @ c) / TAU) for c in bank)
            )
            for t in range(T)
            if has[b, t]
        ]
        if terms_b:
            per_video.append(sum(terms_b) / len(terms_b))
    assert float(terms["temporal"]) == pytest.approx(sum(per_video) / len(per_video), rel=1e-4)


# ----- gradients and the engine contract ------------------------------------------------------------------------------

GRAD_CASES: list[dict[str, Any]] = [
    {},
    {"fine_weight": 0.0, "temporal_weight": 0.0},  # L_c only
    {"temporal_weight": 0.0},  # L_c + L_f
    {"positives": "word_topk"},
    {"positives": "2d_topk", "top_k": 1},
    {"positives": "random", "top_k": 5},
    {"warp_target": "intra_modal", "fine_weight": 0.0},
    {"sentence": "eot", "coarse": "symmetric"},
    {"trainable_blocks": 1},
    {"trainable_blocks": 1, "input": "tokens"},
]


@pytest.mark.parametrize("overrides", GRAD_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "paper")
def test_every_trainable_parameter_gets_a_gradient(overrides: dict[str, Any]) -> None:
    model = make(live_temporal=True, **overrides)
    assert isinstance(model, TrainableModel)
    out = model.training_step(make_batch(model))
    cfg = model.cfg
    weights = {"coarse": cfg.coarse_weight, "fine": cfg.fine_weight, "temporal": cfg.temporal_weight}
    assert set(out) == {"loss"} | {f"loss_{name}" for name, w in weights.items() if w > 0}
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = {"clip.model.logit_scale"}
    if overrides.get("trainable_blocks") == 1:  # stem + vision blocks 0 .. L−2 form the frozen prefix
        expected |= {
            n for n, _ in model.named_parameters() if n.startswith("clip.model.visual.transformer.resblocks.0.")
        }
        expected |= {"clip.model.visual.conv1.weight", "clip.model.visual.class_embedding",
                     "clip.model.visual.positional_embedding", "clip.model.visual.ln_pre.weight",
                     "clip.model.visual.ln_pre.bias"}  # fmt: skip
    assert frozen == expected
    assert (model.warp is None) == (model.cfg.temporal_weight == 0)


def test_temporal_attention_weights_start_with_zero_gradient() -> None:
    # documented TimeSformer property: with fc = 0 only fc (and the time embedding) move on the first step
    model = make()
    model.training_step(make_batch(model))["loss"].backward()
    layer = model.encoder.temporal[0]
    assert layer.fc.weight.grad is not None and layer.fc.weight.grad.any()
    assert layer.attn.in_proj_weight.grad is not None and not layer.attn.in_proj_weight.grad.any()


def test_lr_scales_split_clip_from_new_modules() -> None:
    model = make(clip_lr_scale=0.1)
    groups = param_groups(model, 1.0, 0.0, model.lr_scales())
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    assert all(lr == pytest.approx(0.1) for name, lr in lr_of.items() if name.startswith("clip."))
    assert all(lr == 1.0 for name, lr in lr_of.items() if not name.startswith("clip."))
    assert any(n.startswith("encoder.temporal") for n in lr_of) and any(n.startswith("warp.") for n in lr_of)


def test_config_checks() -> None:
    with pytest.raises(ConfigError):
        LocVTPConfig(coarse_weight=0.0, fine_weight=0.0, temporal_weight=0.0)
    with pytest.raises(ConfigError):
        LocVTPConfig(frames_per_clip=17)
    with pytest.raises(ConfigError):
        LocVTPConfig(clip=ClipConfig(context_length=16))
    model = make()
    with pytest.raises(ValueError, match="frames_per_clip"):
        model.encode_clips(torch.zeros(1, 1, 3, 3, S, S), torch.ones(1, 1, dtype=torch.bool))


def test_mini_grounding_spec_builds() -> None:
    from recipes.spec import load_spec

    spec = load_spec("locvtp", "mini-grounding")
    model = build_config(LocVTPConfig, spec.base("pretrain")["model"])
    assert model.clip.arch == "vlrepro-mini" and model.frames_per_clip < model.clip_frames
    build_config(GroundingHeadConfig, spec.base("grounding")["model"])
    build_config(TrainConfig, spec.base("pretrain")["train"])
    build_config(TrainConfig, spec.base("grounding")["train"])
