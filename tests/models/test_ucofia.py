"""UCoFiA on the tiny CLIP: ISA / AOSM / Bi-ISA against loop oracles of their equations, padding that cannot change a
score, perturbed top-K (limit, gradient estimator), deterministic evaluation, Sinkhorn with a training-query bank,
gradients to every trainable parameter, level switches, and the recipe on a fake token stage."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.common.clip import tokenize
from models.common.losses import symmetric_infonce
from models.common.sinkhorn import sinkhorn_prior
from models.config import ConfigError, load, merge
from models.config import build as build_config
from models.engine.loop import TrainableModel, fit_local
from models.engine.optim import param_groups
from models.ucofia import (
    ISA,
    LEVELS,
    BiAggregation,
    MeanAggregation,
    SoftmaxAggregation,
    UCoFiA,
    UCoFiAConfig,
    build,
    hard_topk,
    perturbed_topk,
    sinkhorn_fuse,
)
from pipelines import shards
from recipes.ucofia import UCoFiARecipeConfig
from recipes.ucofia import build as build_recipe

TAU = 0.01
B, T, N, D, S = 3, 4, 4, 32, 32  # tiny CLIP: embed 32, 4 patches of a 32 px frame
CAPTIONS = ["a red ball moves left", "a blue cube", "a green star spins round and round the yard"]
LENGTHS = (4, 2, 3)  # valid frames per video


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tiny tensors: one thread avoids oversubscribing the shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed: int = 0, **kw: Any) -> UCoFiA:
    torch.manual_seed(seed)
    return build(dataclasses.replace(UCoFiAConfig.tiny(), input=kw.pop("input", "tokens"), **kw))


def prefix_mask(lengths: tuple[int, ...] = LENGTHS, t: int = T) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def make_batch(model: UCoFiA, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, 3, S, S) if model.cfg.input == "pixels" else (B, T, 1 + N, D)
    return {"video": torch.randn(shape, generator=g), "video_mask": prefix_mask(), "text": model.tokenize(CAPTIONS)}


def perturb_weights(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Move every ISA/AOSM weight away from the identity so oracles test W, not just W = I."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ----- oracles: the equations, one scalar at a time ------------------------------------------------------------------


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def isa_oracle(s: list[float], valid: list[bool], w: np.ndarray, tau: float, outer: bool = True) -> float:
    """``Σ_k s_k softmax(softmax(s/τ) W / τ)_k`` over the valid positions (outer=False: AOSM, no outer softmax)."""
    keep = [i for i, v in enumerate(valid) if v]
    if not keep:
        return 0.0
    p = _softmax([s[i] / tau for i in keep])
    mixed = [sum(p[a] * float(w[keep[a], keep[b]]) for a in range(len(keep))) for b in range(len(keep))]
    weights = _softmax([m / tau for m in mixed]) if outer else mixed
    return sum(weights[b] * s[keep[b]] for b in range(len(keep)))


def bi_isa_oracle(m: np.ndarray, word_valid: np.ndarray, patch_valid: np.ndarray, ws: dict[str, np.ndarray]) -> float:
    """Bi-ISA for one (text, video) pair, m (L, P): official two-stage structure (paper-code-notes §3.3)."""
    n_words, n_patches = m.shape
    wv, pv = word_valid.tolist(), patch_valid.tolist()
    r = [isa_oracle(m[:, p].tolist(), wv, ws["word_first"], TAU) for p in range(n_patches)]  # words reduced
    c = [isa_oracle(m[w, :].tolist(), pv, ws["patch_first"], TAU) for w in range(n_words)]  # patches reduced
    return 0.5 * (isa_oracle(r, pv, ws["patch_second"], TAU) + isa_oracle(c, wv, ws["word_second"], TAU))


# ----- aggregation ----------------------------------------------------------------------------------------------------


def test_isa_and_aosm_equal_their_equations_with_masks() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 6, generator=g, dtype=torch.float64) * 0.05  # similarities ~ a few τ apart
    mask = torch.rand(5, 6, generator=g) > 0.3
    mask[0] = True
    mask[1] = False  # an all-padded row aggregates to 0
    isa, aosm = ISA(6, TAU).double(), SoftmaxAggregation(6, TAU).double()
    perturb_weights(isa, 1)
    perturb_weights(aosm, 2)
    got_isa, got_aosm = isa(s, mask), aosm(s, mask)
    for i in range(5):
        args = (s[i].tolist(), mask[i].tolist())
        assert got_isa[i].item() == pytest.approx(isa_oracle(*args, isa.weight.detach().numpy(), TAU), abs=1e-12)
        want = isa_oracle(*args, aosm.weight.detach().numpy(), TAU, outer=False)
        assert got_aosm[i].item() == pytest.approx(want, abs=1e-12)
    assert got_isa[1].item() == 0.0 and got_aosm[1].item() == 0.0
    # an axis shorter than W uses its leading block, i.e. the same as padding the axis with masked positions
    padded = torch.cat([s[:, :4], torch.full((5, 2), 9.0, dtype=torch.float64)], dim=1)
    short_mask = torch.cat([mask[:, :4], torch.zeros(5, 2, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(isa(s[:, :4], mask[:, :4]), isa(padded, short_mask), rtol=0, atol=1e-12)


def test_isa_at_identity_is_the_double_softmax_and_aosm_the_single() -> None:
    s = torch.randn(4, 7, 12, dtype=torch.float64) * 0.03
    want_isa = (s * torch.softmax(torch.softmax(s / TAU, -1) / TAU, -1)).sum(-1)
    want_aosm = (s * torch.softmax(s / TAU, -1)).sum(-1)
    torch.testing.assert_close(ISA(12, TAU).double()(s), want_isa, rtol=0, atol=1e-12)
    torch.testing.assert_close(SoftmaxAggregation(12, TAU).double()(s), want_aosm, rtol=0, atol=1e-12)
    # ISA is not AOSM: the outer softmax matters (the ablation compares something real)
    assert (want_isa - want_aosm).abs().max() > 1e-4


def test_mean_aggregation_and_axis_minus_two() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 1, 6, generator=g) > 0.4
    mask[..., 0] = True
    want = torch.stack([s[i][:, mask[i, 0]].mean(-1) for i in range(3)])  # (3, 5)
    torch.testing.assert_close(MeanAggregation()(s, mask), want)
    for agg in (ISA(6, TAU).double(), SoftmaxAggregation(6, TAU).double(), MeanAggregation()):
        perturb_weights(agg, 4)
        # reducing axis −2 of sᵀ is reducing axis −1 of s
        got = agg(s.transpose(-1, -2), mask.transpose(-1, -2), dim=-2)
        torch.testing.assert_close(got, agg(s, mask), rtol=0, atol=1e-12)


def test_bi_isa_equals_its_two_stage_definition() -> None:
    g = torch.Generator().manual_seed(5)
    q, gv, n_words, n_patches = 2, 3, 5, 6
    m = torch.randn(q, gv, n_words, n_patches, generator=g, dtype=torch.float64) * 0.05
    word_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    patch_mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    bi = BiAggregation("isa", n_words, n_patches, TAU).double()
    perturb_weights(bi, 6)
    names = ("word_first", "patch_first", "patch_second", "word_second")
    ws = {name: getattr(bi, name).weight.detach().numpy() for name in names}
    got = bi(m, word_mask, patch_mask)
    for i in range(q):
        for j in range(gv):
            want = bi_isa_oracle(m[i, j].numpy(), word_mask[i].numpy(), patch_mask[j].numpy(), ws)
            assert got[i, j].item() == pytest.approx(want, abs=1e-12)


# ----- padding --------------------------------------------------------------------------------------------------------


def test_padded_words_do_not_change_patch_word_scores() -> None:
    model = make(levels=("patch_word",)).eval()
    perturb_weights(model.levels["patch_word"], 7, scale=0.1)
    batch = make_batch(model)
    text = model.encode_text_for_eval(batch["text"])
    video = model.encode_video_for_eval(batch["video"], batch["video_mask"])
    mask = text["word_mask"]
    assert mask.sum(1).tolist() == [int(t.argmax()) + 1 for t in batch["text"]]  # SOT..EOT, padding excluded
    base = model.similarity(text, video)
    for junk in (1e4 * torch.randn(text["words"].shape), torch.full(text["words"].shape, float("nan"))):
        dirty = dict(text, words=torch.where(mask[..., None], text["words"], junk))
        torch.testing.assert_close(model.similarity(dirty, video), base, rtol=0, atol=0)
    # a real word does count: changing one moves the scores (so the check above could fail)
    changed = text["words"].clone()
    changed[0, 1] = 10 * changed[0, 1]  # τ = 0.01 makes ISA nearly a max: make the word win somewhere
    assert not torch.allclose(model.similarity(dict(text, words=changed), video)[0], base[0])


def test_padded_frames_do_not_change_any_level() -> None:
    model = make().eval()
    perturb_weights(model.levels, 8, scale=0.1)
    batch = make_batch(model)
    mask = batch["video_mask"]
    text = model.encode_text_for_eval(batch["text"])
    clean = model.similarity_levels(text, model.encode_video_for_eval(batch["video"], mask))
    dirty_video = torch.where(mask[..., None, None], batch["video"], 50 * torch.randn(batch["video"].shape))
    dirty = model.similarity_levels(text, model.encode_video_for_eval(dirty_video, mask))
    for name in LEVELS:
        torch.testing.assert_close(dirty[name], clean[name], rtol=0, atol=1e-6)


def test_pair_chunking_changes_nothing() -> None:
    whole, tiny_chunks = make(), make(pair_chunk_size=1)
    tiny_chunks.load_state_dict(whole.state_dict())
    whole.eval(), tiny_chunks.eval()
    batch = make_batch(whole)
    args = (batch["text"],), (batch["video"], batch["video_mask"])
    sims = [
        m.similarity(m.encode_text_for_eval(*args[0]), m.encode_video_for_eval(*args[1])) for m in (whole, tiny_chunks)
    ]
    torch.testing.assert_close(sims[0], sims[1], rtol=0, atol=1e-6)


# ----- patch selection ------------------------------------------------------------------------------------------------


def test_perturbed_topk_tends_to_hard_topk_as_sigma_vanishes() -> None:
    torch.manual_seed(0)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3], [0.2, 0.8, 0.6, 0.0, 0.4]])
    hard = hard_topk(scores, 3)
    assert hard[0].argmax(-1).tolist() == [0, 2, 3] and hard[1].argmax(-1).tolist() == [1, 2, 4]  # ascending slots
    # the top-3 / rest gap is 0.2 in both rows: σ = 0.1 still swaps ranks sometimes, σ = 1e-4 never does
    errors = [(perturbed_topk(scores, 3, 2000, sigma) - hard).abs().mean().item() for sigma in (0.5, 0.1, 1e-4)]
    assert errors[0] > errors[1] > 0.0 and errors[2] == 0.0
    assert torch.allclose(perturbed_topk(scores, 3, 2000, 0.5).sum(-1), torch.ones(2, 3))  # each slot is a distribution


def test_perturbed_topk_gradient_is_the_berthet_estimator() -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 6, generator=g, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(4, 2, 6, generator=g, dtype=torch.float64)
    n, sigma = 300, 0.1
    torch.manual_seed(11)
    (perturbed_topk(scores, 2, n, sigma) * upstream).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    # direct form with the same draws: J = E[onehot ⊗ Z] / σ (TS2-Net "bnkd,bne->bkde"), grad = Σ_{k,d} up[k,d] J[k,d,:]
    torch.manual_seed(11)
    noise = torch.randn(4, n, 6, dtype=torch.float64)
    idx = torch.sort(torch.topk(scores.detach()[:, None] + sigma * noise, 2, dim=-1).indices, dim=-1).values
    onehot = torch.nn.functional.one_hot(idx, 6).double()  # (M, n, K, N)
    jacobian = torch.einsum("bnkd,bne->bkde", onehot, noise) / n / sigma
    torch.testing.assert_close(scores.grad, torch.einsum("bkd,bkde->be", upstream, jacobian), rtol=1e-10, atol=1e-12)


def test_evaluation_is_deterministic_and_training_is_not() -> None:
    model = make()
    batch = make_batch(model)

    def scores() -> torch.Tensor:
        with torch.no_grad():
            text = model.encode_text_for_eval(batch["text"])
            return model.similarity(text, model.encode_video_for_eval(batch["video"], batch["video_mask"]))

    model.eval()
    torch.manual_seed(1)
    first = scores()
    torch.manual_seed(2)
    assert torch.equal(scores(), first)  # hard top-K: no noise at evaluation
    # forward in eval mode is the same formula (training logits == similarity)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), first, rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    noisy = scores()
    torch.manual_seed(2)
    assert not torch.equal(scores(), noisy)  # the perturbed top-K draws noise in training


# ----- Sinkhorn -------------------------------------------------------------------------------------------------------


def test_sinkhorn_prior_comes_from_the_bank_not_the_queries() -> None:
    g = torch.Generator().manual_seed(2)
    levels = {"a": torch.randn(5, 4, generator=g), "b": torch.randn(5, 4, generator=g)}
    other_queries = {k: torch.randn(7, 4, generator=g) for k in levels}
    bank = {"a": 3 * torch.randn(20, 4, generator=g), "b": 3 * torch.randn(20, 4, generator=g)}

    def prior(test: dict[str, torch.Tensor], bank: dict[str, torch.Tensor]) -> torch.Tensor:
        return sinkhorn_fuse(test, bank) - sinkhorn_fuse(test, None)  # (Q, G): the averaged per-video priors

    p = prior(levels, bank)
    want = (sinkhorn_prior(bank["a"]) + sinkhorn_prior(bank["b"])).float() / 2  # (G,)
    torch.testing.assert_close(p, want[None].expand(5, 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(prior(other_queries, bank)[0], p[0], rtol=0, atol=1e-6)  # other queries, same prior
    shifted = {k: v + 7.5 for k, v in bank.items()}
    torch.testing.assert_close(prior(levels, shifted), p, rtol=0, atol=1e-6)  # invariant to a constant
    assert not torch.allclose(prior(levels, {k: v.flip(1) for k, v in bank.items()}), p)  # but it reads the bank
    # v2t: a bank of training videos (Q, M) gives a per-caption prior on the rows
    video_bank = {"a": torch.randn(5, 9, generator=g), "b": torch.randn(5, 9, generator=g)}
    p_v2t = sinkhorn_fuse(levels, video_bank, bank="video") - sinkhorn_fuse(levels, None)
    want_rows = (sinkhorn_prior(video_bank["a"], axis=0) + sinkhorn_prior(video_bank["b"], axis=0)).float() / 2
    torch.testing.assert_close(p_v2t, want_rows[:, None].expand(5, 4), rtol=0, atol=1e-6)


# ----- gradients, lr groups, levels -----------------------------------------------------------------------------------

GRAD_CASES: list[dict[str, Any]] = [
    {"input": "tokens"},
    {"input": "pixels"},
    {"input": "tokens", "aggregation": "softmax"},
    {"input": "tokens", "aggregation": "mean"},
    {"input": "tokens", "levels": ("video_sentence",)},
    {"input": "tokens", "levels": ("sentence_frame",)},
    {"input": "tokens", "levels": ("patch_word",)},
    {"input": "pixels", "levels": ("sentence_frame", "patch_word"), "temporal_init": "clip_text"},
]


@pytest.mark.parametrize("extra", GRAD_CASES, ids=lambda e: "-".join(str(v) for v in e.values()))
def test_every_trainable_parameter_gets_a_gradient(extra: dict[str, Any]) -> None:
    model = make(**extra)
    assert isinstance(model, TrainableModel)
    out = model.training_step(make_batch(model))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    names = {n for n, _ in model.named_parameters()}
    assert ("clip.model.logit_scale" in trainable) == (extra.get("levels") != ("patch_word",))  # ℓ unused there
    assert any(n.startswith("clip.model.visual.") for n in names) == (extra["input"] == "pixels")
    if extra.get("aggregation") == "mean":
        assert not any(n.startswith("levels.") and "aggregate" in n for n in names)  # mean pooling has no weights


def test_levels_switch_really_drops_levels() -> None:
    full = make().eval()
    perturb_weights(full.levels, 9, scale=0.1)
    batch = make_batch(full)
    text = full.encode_text_for_eval(batch["text"])
    video = full.encode_video_for_eval(batch["video"], batch["video_mask"])
    per_level = full.similarity_levels(text, video)
    assert list(per_level) == list(LEVELS)
    torch.testing.assert_close(full.similarity(text, video), torch.stack(list(per_level.values())).mean(0))
    # S_vs by hand: ℓ (ŝ W_g)(v̂ W_g')ᵀ
    vs = full.levels["video_sentence"]
    want = full.logit_scale() * (text["sentence"] @ vs.text_weight) @ (video["video"] @ vs.video_weight).T
    torch.testing.assert_close(per_level["video_sentence"], want)
    for level in LEVELS:
        single = make(levels=(level,)).eval()
        missing, unexpected = single.load_state_dict(full.state_dict(), strict=False)
        assert not missing and unexpected  # the other levels' modules are simply not built
        assert (single.video_encoder is None) == (level != "video_sentence")
        assert (single.selector is None) == (level != "patch_word")
        t = single.encode_text_for_eval(batch["text"])
        v = single.encode_video_for_eval(batch["video"], batch["video_mask"])
        assert ("words" in t) == ("patches" in v) == (level == "patch_word")
        torch.testing.assert_close(single.similarity(t, v), per_level[level], rtol=0, atol=1e-6)


def test_lr_scales_put_clip_and_logit_scale_at_the_clip_rate() -> None:
    model = make(input="pixels")
    lr_of = {n: g["lr"] for g in param_groups(model, 1e-4, 0.2, model.lr_scales()) for n in g["names"]}
    assert lr_of["clip.model.logit_scale"] == pytest.approx(1e-7)
    assert lr_of["clip.model.visual.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(1e-7)
    assert lr_of["levels.patch_word.aggregate.word_first.weight"] == pytest.approx(1e-4)
    assert lr_of["selector.scorer.local.1.weight"] == pytest.approx(1e-4)
    with torch.no_grad():
        model.clip.logit_scale.fill_(9.0)
    model.after_step()
    assert model.clip.logit_scale.item() == pytest.approx(math.log(100))


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="levels"):
        build_config(UCoFiAConfig, {"levels": ["video_sentence", "video_sentence"]})
    with pytest.raises(ConfigError, match="not one of"):
        build_config(UCoFiAConfig, {"levels": ["video_word"]})
    swapped = build_config(UCoFiAConfig, {"levels": "patch_word,video_sentence"})
    assert swapped.levels == ("patch_word", "video_sentence")
    with pytest.raises(ConfigError, match="topk"):
        build(dataclasses.replace(UCoFiAConfig.tiny(), topk=5))  # the tiny CLIP has 4 patches per frame
    from recipes.spec import load_spec

    mini = load(UCoFiARecipeConfig, overrides=load_spec("ucofia", "mini-retrieval").base("ucofia"))
    assert mini.model.input == "tokens" and mini.train.batch_size == 64 and mini.model.levels == LEVELS


def test_training_reduces_the_loss_on_a_tiny_set() -> None:
    model = make()
    batch = make_batch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(15):
        loss = symmetric_infonce(model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ----- the recipe on a fake token stage -------------------------------------------------------------------------------


def _token_stage(root: Path) -> str:
    rng = np.random.default_rng(0)
    uri = str(root / "clip-tokens")
    samples, rows = [], []
    colours, moves = ("red", "blue", "green", "pink"), ("left", "up", "down", "right")
    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            key = f"{split}-{i:03d}"
            caps = [f"{split} {colours[i % 4]} ball moves {moves[i // 2 % 4]}", f"the {colours[i % 4]} one {split}"]
            tokens = rng.standard_normal((6, 1 + N, D)).astype(np.float16)  # 6 stored frames, sampled to T=4
            samples.append((key, {"npy": tokens, "json": {"split": split, "captions": caps}}))
            rows.append({"key": key, "status": "ok", "split": split})
    shards.write_shard(uri, 0, samples, rows, {"n_samples": len(samples)})
    shards.commit_stage(uri, [{"n_samples": len(samples), "status_counts": {"ok": len(samples)}}])
    return uri


def test_recipe_trains_and_evaluates_with_a_training_caption_bank(tmp_path: Path) -> None:
    uri = _token_stage(tmp_path)
    cfg = merge(
        UCoFiARecipeConfig(model=dataclasses.replace(UCoFiAConfig.tiny(), input="tokens")),
        {"data.stage": uri, "data.subsets": {"pair": ["test-000", "test-001"]}, "train.epochs": 1,
         "train.batch_size": 4, "train.optim.lr": 1e-3},
    )  # fmt: skip
    recipe = build_recipe(dataclasses.asdict(cfg))
    assert recipe.cfg.data.input == "tokens" and recipe.steps_per_epoch(1) == 2
    bank = recipe.bank()
    assert bank.captions and all(c.startswith("train") or c.endswith("train") for c in bank.captions)
    assert len(bank.captions) == 16 and len(bank.videos) == 8  # all training captions and videos
    small = build_recipe({**dataclasses.asdict(cfg), "sinkhorn_bank": 3}).bank()  # a seeded subsample
    assert len(small.captions) == 3 and set(small.captions) <= set(bank.captions) and len(small.videos) == 3
    assert set(small.keys) <= {f"train-{i:03d}" for i in range(8)}
    model, history = fit_local(recipe)
    metrics = history[-1]
    for key in ("t2v/R@1", "v2t/R@1", "no_sinkhorn/t2v/R@1", "pair/t2v/R@1", "level-patch_word/t2v/MnR"):
        assert key in metrics and math.isfinite(metrics[key]), key
    model.train()
    recipe.evaluate(model)
    assert model.training  # the recipe evaluates in eval mode and restores the mode it found
    # evaluation is deterministic, and without Sinkhorn the two reports coincide
    assert recipe.evaluate(model) == recipe.evaluate(model)
    assert isinstance(model, UCoFiA)
    model.cfg = dataclasses.replace(model.cfg, sinkhorn=False)
    plain = recipe.evaluate(model)
    assert "no_sinkhorn/t2v/R@1" not in plain
    assert plain["t2v/MnR"] == metrics["no_sinkhorn/t2v/MnR"]
    # tokenisation of the bank goes through the data config (same arch / length as training)
    assert tokenize(recipe.cfg.data.arch, bank.captions[:1], recipe.cfg.data.max_words).shape == (1, 16)
