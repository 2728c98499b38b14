"""STAN on the tiny CLIP: identity-at-init cross-frame modules, copied intra-frame blocks, the output formula against a
direct implementation, gradients per variant × input mode, order sensitivity, padding, the posterior wiring, the
fixed-temperature summed loss, recognition accuracy, config strictness and blocks/pixels (feature cache) agreement."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.common.losses import ContrastiveLoss, symmetric_infonce
from models.config import ConfigError, merge
from models.config import build as build_config
from models.engine.loop import TrainableModel
from models.engine.optim import param_groups
from models.stan import (
    CrossFrameAttention,
    CrossFrameConv,
    IntraFrame,
    Stan,
    StanConfig,
    build,
    class_name,
    class_prompts,
    fit_prompt_classifier,
    topk_accuracy,
)
from pipelines.features.clip_frames import ClipFeatureConfig, encode_frames

B, T, S, W, N, D = 3, 4, 32, 32, 4, 32  # tiny CLIP: 32 px, width 32, 2×2 patches, embed 32
K = 2  # tiny CLIP has 2 vision blocks
CAPTIONS = ["a red ball moves left", "a blue cube moves up", "a green star spins"]
LENGTHS = (4, 2, 3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed: int = 0, **kw: Any) -> Stan:
    torch.manual_seed(seed)
    return build(dataclasses.replace(StanConfig.tiny(), **kw))


def prefix_mask(lengths: tuple[int, ...] = LENGTHS, t: int = T) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def video_for(model: Stan, seed: int = 1, b: int = B, t: int = T) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if model.cfg.input == "pixels":
        return torch.randn(b, t, 3, S, S, generator=g)
    return torch.randn(b, t, K, 1 + N, W, generator=g)


def batch_for(model: Stan, seed: int = 1) -> dict[str, Any]:
    return {"video": video_for(model, seed), "video_mask": prefix_mask(), "text": model.tokenize(CAPTIONS)}


def activate_cross_frame(model: Stan, seed: int = 5) -> None:
    """Give the zero-initialised last projections of the cross-frame modules random weights (as after training)."""
    g = torch.Generator().manual_seed(seed)
    assert model.branch is not None
    with torch.no_grad():
        for layer in model.branch.layers:
            last = getattr(layer.cross_frame, "proj", None) or getattr(layer.cross_frame, "up", None)
            if last is not None:
                last.weight.copy_(0.3 * torch.randn(last.weight.shape, generator=g))
                last.bias.copy_(0.1 * torch.randn(last.bias.shape, generator=g))


# ----- cross-frame modules --------------------------------------------------------------------------------------------


def cross_modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(3)
    return {"attention": CrossFrameAttention(W, heads=2), "conv": CrossFrameConv(W, grid=2, reduction=2)}


@pytest.mark.parametrize("name", ["attention", "conv"])
def test_cross_frame_module_is_an_exact_identity_at_init_and_not_after_training(name: str) -> None:
    module = cross_modules()[name]
    patches = torch.randn(B, T, N, W)
    mask = prefix_mask()
    assert torch.equal(module(patches, mask), patches)  # bit-exact, not approximately
    last = module.proj if name == "attention" else module.up
    with torch.no_grad():
        last.weight.normal_(std=0.1)
    moved = (module(patches, mask) - patches)[mask]  # (valid frames, N, W)
    assert moved.abs().amax(dim=(-1, -2)).min() > 1e-3  # every valid frame is now updated


def attention_oracle(m: CrossFrameAttention, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paper §3.3, written out: for video b and patch j, LN → softmax(QKᵀ/√d) V over the valid frames → out → Linear."""
    out = patches.clone()
    heads = m.attn.num_heads
    wq, wk, wv = m.attn.in_proj_weight.chunk(3)
    bq, bk, bv = m.attn.in_proj_bias.chunk(3)
    dh = W // heads
    for b in range(patches.shape[0]):
        valid = mask[b]
        for j in range(patches.shape[2]):
            x = F.layer_norm(patches[b, :, j], (W,), m.ln.weight, m.ln.bias, m.ln.eps)  # (T, W)
            q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
            heads_out = []
            for h in range(heads):
                sl = slice(h * dh, (h + 1) * dh)
                scores = q[:, sl] @ k[:, sl].T / math.sqrt(dh)  # (T, T)
                scores = scores.masked_fill(~valid[None, :], float("-inf"))
                heads_out.append(scores.softmax(dim=-1) @ v[:, sl])
            y = m.attn.out_proj(torch.cat(heads_out, dim=-1))
            out[b, :, j] = patches[b, :, j] + m.proj(y)
    return out


def test_cross_frame_attention_matches_the_paper_written_out() -> None:
    m = cross_modules()["attention"].eval()
    with torch.no_grad():
        m.proj.weight.normal_(std=0.2)
        m.proj.bias.normal_(std=0.1)
        patches = torch.randn(B, T, N, W)
        mask = prefix_mask()
        torch.testing.assert_close(m(patches, mask)[mask], attention_oracle(m, patches, mask)[mask])


def test_cross_frame_conv_reaches_exactly_one_neighbour_each_side_and_ignores_padding() -> None:
    m = cross_modules()["conv"].eval()
    with torch.no_grad():
        m.up.weight.normal_(std=0.2)
        patches = torch.randn(1, 6, N, W)
        mask = torch.tensor([[True] * 5 + [False]])
        base = m(patches, mask)
        poked = patches.clone()
        poked[0, 2] += 1.0  # change frame 2 only
        delta = (m(poked, mask) - base)[0].abs().amax(dim=(-1, -2))  # (T,)
        assert torch.all(delta[[1, 2, 3]] > 1e-4)  # kernel 3 in time: frames 1, 2, 3 see frame 2
        assert torch.all(delta[[0, 4]] == 0)  # and nobody else
        junk = patches.clone()
        junk[0, 5] = 1e3  # a padded frame never reaches a valid one
        assert torch.equal(m(junk, mask)[0, :5], base[0, :5])


# ----- intra-frame modules ------------------------------------------------------------------------------------------


def test_intra_frame_modules_start_as_separate_copies_of_the_last_k_clip_blocks() -> None:
    model = make(input="pixels")
    assert model.branch is not None and model.branch.depth == K
    blocks = model.clip.vision_blocks
    for k, layer in enumerate(model.branch.layers):
        clip_state = blocks[len(blocks) - K + k].state_dict()
        copy_state = layer.intra_frame.block.state_dict()
        assert copy_state.keys() == clip_state.keys()
        for name, value in clip_state.items():
            assert torch.equal(copy_state[name], value), name
            assert copy_state[name].data_ptr() != value.data_ptr(), name  # a copy, not shared storage
    original = blocks[-1].mlp.c_fc.weight.detach().clone()
    with torch.no_grad():
        model.branch.layers[-1].intra_frame.block.mlp.c_fc.weight.add_(1.0)
    assert torch.equal(blocks[-1].mlp.c_fc.weight, original)  # training the branch leaves CLIP unchanged


def intra_oracle(block: Any, cls: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor) -> tuple[Any, Any]:
    """Paper §3.3 with CLIP block ops: per frame, attention on [video CLS ; frame patches]; CLS updates averaged over
    valid frames; then the MLP on every token, both with residuals."""
    cls_updates, new_patches = [], []
    for t in range(patches.shape[1]):
        x = torch.cat([cls[:, None], patches[:, t]], dim=1)  # (B, 1+N, W)
        h = block.ln_1(x)
        upd = block.attn(h, h, h, need_weights=False)[0]
        cls_updates.append(upd[:, 0])
        new_patches.append(patches[:, t] + upd[:, 1:])
    m = mask.float()
    cls = cls + (torch.stack(cls_updates, 1) * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    p = torch.stack(new_patches, 1)
    return cls + block.mlp(block.ln_2(cls)), p + block.mlp(block.ln_2(p))


def test_intra_frame_equals_the_paper_and_with_one_frame_the_clip_block() -> None:
    model = make(input="pixels").eval()
    assert model.branch is not None
    block = model.clip.vision_blocks[-1]
    intra = model.branch.layers[-1].intra_frame
    assert isinstance(intra, IntraFrame)
    with torch.no_grad():
        cls, patches, mask = torch.randn(B, W), torch.randn(B, T, N, W), prefix_mask()
        got_cls, got_patches = intra(cls, patches, mask)
        want_cls, want_patches = intra_oracle(block, cls, patches, mask)
        torch.testing.assert_close(got_cls, want_cls)
        torch.testing.assert_close(got_patches[mask], want_patches[mask])
        one_cls, one_patches = intra(cls, patches[:, :1], torch.ones(B, 1, dtype=torch.bool))
        clip_out = block(torch.cat([cls[:, None], patches[:, 0]], dim=1))  # (B, 1+N, W)
        torch.testing.assert_close(one_cls, clip_out[:, 0])
        torch.testing.assert_close(one_patches[:, 0], clip_out[:, 1:])


# ----- the output formula ---------------------------------------------------------------------------------------------


def test_video_embedding_at_init_is_the_paper_formula_computed_directly() -> None:
    """v = mean_t proj(ln_post(CLS_clip_last(t) + CLS_stan)) with the branch written out from the paper (cross-frame
    modules are identities at init): layer 0 input from block L−K, later layers add the re-laid block output."""
    model = make(input="pixels").eval()
    clip = model.clip
    video, mask = video_for(model), prefix_mask()
    with torch.no_grad():
        blocks = clip.vision_blocks
        x = clip.tokens_from_patches(clip.embed_patches(video.flatten(0, 1)))  # (B·T, 1+N, W)
        outs = []
        for blk in blocks:
            x = blk(x)
            outs.append(x.reshape(B, T, 1 + N, W))
        levels = outs[-K:]
        m = mask.float()[..., None]  # (B, T, 1)

        def mean_t(a: torch.Tensor) -> torch.Tensor:
            return (a * m).sum(1) / m.sum(1)

        pos = clip.vision_positional_embedding
        assert model.branch is not None
        time = model.branch.temporal_embedding[:T]
        cls = 0.5 * (mean_t(levels[0][:, :, 0]) + clip.class_embedding + pos[0])
        patches = levels[0][:, :, 1:] + pos[1:] + time[None, :, None]
        for k in range(K):
            if k > 0:
                cls, patches = cls + mean_t(levels[k][:, :, 0]), patches + levels[k][:, :, 1:]
            cls, patches = intra_oracle(blocks[len(blocks) - K + k], cls, patches, mask)
        frames = clip.ln_post(levels[-1][:, :, 0] + cls[:, None]) @ clip.proj  # (B, T, D)
        want = mean_t(frames)
        got = model.encode_video(video, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the branch matters: without it the formula gives CLIP's mean frame embedding, which is far from this
    assert (got - mean_t(clip.ln_post(levels[-1][:, :, 0]) @ clip.proj)).abs().max() > 1e-2


def test_baseline_is_the_mean_of_clip_frame_embeddings() -> None:
    model = make(input="pixels", variant="baseline").eval()
    assert model.branch is None
    video, mask = video_for(model), prefix_mask()
    with torch.no_grad():
        per_frame = model.clip.encode_image(video.flatten(0, 1)).reshape(B, T, D)  # open_clip's own image path
        want = torch.stack([per_frame[b, : LENGTHS[b]].mean(0) for b in range(B)])
        torch.testing.assert_close(model.encode_video(video, mask), want, atol=1e-5, rtol=1e-5)


# ----- gradients ------------------------------------------------------------------------------------------------------

GRAD_CASES = [
    (v, c, i) for v in ("stan", "posterior") for c in ("attention", "conv", "none") for i in ("pixels", "blocks")
]
GRAD_CASES += [("baseline", "attention", "pixels"), ("baseline", "attention", "blocks")]


def _grads(model: Stan, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    model.training_step(batch)["loss"].backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("variant", "cross", "input"), GRAD_CASES)
def test_every_trainable_parameter_gets_a_gradient(variant: str, cross: str, input: str) -> None:
    model = make(variant=variant, cross_frame=cross, input=input)
    assert isinstance(model, TrainableModel)
    batch = batch_for(model)
    grads = _grads(model, batch)
    # At init the zero projection closes the cross-frame path: it gets a gradient, what lies behind it gets exactly 0.
    behind = [n for n in grads if ".cross_frame." in n and not n.split(".cross_frame.")[1].startswith(("proj", "up"))]
    assert all(grads[n] is not None and grads[n].abs().sum() == 0 for n in behind)
    if cross != "none" and variant != "baseline":
        assert behind and all(
            grads[n].abs().sum() > 0 for n in grads if ".cross_frame.proj" in n or ".cross_frame.up" in n
        )
    torch.optim.SGD(model.parameters(), lr=0.05).step()  # one step opens the path; then everything must learn
    for name, grad in _grads(model, batch).items():
        assert grad is not None and grad.abs().sum() > 0, name

    names = {n for n, _ in model.named_parameters()}
    trainable = set(grads)
    assert not any("logit_scale" in n for n in trainable)  # τ is fixed
    assert ("branch.temporal_embedding" in trainable) == (variant != "baseline")
    if input == "blocks":
        assert not any(n.startswith("clip.model.visual.transformer") or "conv1" in n for n in names)
        assert {"clip.model.visual.proj", "clip.model.visual.ln_post.weight"} <= trainable
        assert ("clip.model.visual.class_embedding" in trainable) == (variant != "baseline")
    else:
        assert "clip.model.visual.transformer.resblocks.0.attn.in_proj_weight" in trainable


def test_linear_recognition_head_trains_on_labels() -> None:
    model = make(input="blocks", num_classes=5)
    batch = {**batch_for(model), "label": torch.tensor([0, 3, 4])}
    out = model.training_step(batch)
    torch.testing.assert_close(out["loss"], out["retrieval_loss"] + out["recognition_loss"])
    out["loss"].backward()
    assert model.recognition_head is not None and model.recognition_head.weight.grad.abs().sum() > 0
    with pytest.raises(KeyError):
        model.training_step(batch_for(model))


def test_frozen_options_freeze_what_they_say() -> None:
    model = make(input="pixels", freeze_clip_visual=True, freeze_text=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("branch.") for n in trainable)


def test_text_init_loads_another_jobs_text_tower_and_freeze_text_keeps_it(tmp_path: Any) -> None:
    """`text_init` (the motion-aware tower: a CLIP4Clip job's ``model.pt``) replaces every text parameter and nothing
    else; with `freeze_text` a training step leaves it exactly as loaded; another CLIP's file is refused."""
    donor = make(seed=7, input="blocks")
    path = tmp_path / "model.pt"
    torch.save(donor.state_dict(), path)  # keys clip.model.*, as a CLIP4Clip model.pt
    fresh = make(seed=0, input="blocks")
    model = make(seed=0, input="blocks", text_init=str(path), freeze_text=True)
    own, theirs, before = fresh.state_dict(), donor.state_dict(), model.state_dict()
    text = [
        k for k in own if k.startswith("clip.model.") and not k.startswith(("clip.model.visual.", "clip.model.logit"))
    ]
    assert "clip.model.token_embedding.weight" in text and "clip.model.text_projection" in text
    for k in own:
        want = theirs[k] if k in text and k != "clip.model.attn_mask" else own[k]
        torch.testing.assert_close(before[k], want, rtol=0, atol=0, msg=k)
    assert not torch.equal(own["clip.model.text_projection"], theirs["clip.model.text_projection"])
    before = {k: v.clone() for k, v in before.items()}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).zero_grad()
    model.training_step(batch_for(model))["loss"].backward()
    for p in model.parameters():
        if p.requires_grad and p.grad is not None:
            p.data.sub_(0.1 * p.grad)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in text)
    assert not all(torch.equal(after[k], before[k]) for k in after if k.startswith("branch."))
    with pytest.raises(ConfigError, match="no such file"):
        make(input="blocks", text_init=str(tmp_path / "missing.pt"))
    torch.save({"clip.model.token_embedding.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not hold this CLIP's text tower"):
        make(input="blocks", text_init=str(tmp_path / "other.pt"))


def test_lr_scales_put_the_branch_at_ten_times_the_clip_rate() -> None:
    model = make(input="pixels", num_classes=3)
    lr_of = {n: g["lr"] for g in param_groups(model, 2e-6, 0.05, model.lr_scales()) for n in g["names"]}
    assert lr_of["clip.model.visual.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(2e-6)
    assert lr_of["clip.model.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(2e-6)
    assert lr_of["branch.layers.0.intra_frame.block.attn.in_proj_weight"] == pytest.approx(2e-5)
    assert lr_of["branch.layers.1.cross_frame.proj.weight"] == pytest.approx(2e-5)
    assert lr_of["branch.temporal_embedding"] == pytest.approx(2e-5)
    assert lr_of["recognition_head.weight"] == pytest.approx(2e-5)


def test_drop_path_rates_are_linspace_and_off_in_eval() -> None:
    assert StanConfig(depth=4).drop_path_rates == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    model = make(input="blocks", drop_path=0.5)
    assert model.branch is not None
    assert [layer.intra_frame.drop_path.p for layer in model.branch.layers] == pytest.approx([0.0, 0.5])
    assert [layer.cross_frame.drop_path.p for layer in model.branch.layers] == pytest.approx([0.0, 0.5])
    model.eval()
    video, mask = video_for(model), prefix_mask()
    with torch.no_grad():
        assert torch.equal(model.encode_video(video, mask), model.encode_video(video, mask))


# ----- temporal behaviour ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cross", ["attention", "conv"])
def test_stan_is_order_sensitive_and_baseline_order_invariant(cross: str) -> None:
    full = torch.ones(B, T, dtype=torch.bool)
    for variant in ("stan", "posterior", "baseline"):
        model = make(input="blocks", variant=variant, cross_frame=cross).eval()
        if model.branch is not None:
            activate_cross_frame(model)
        video = video_for(model)
        with torch.no_grad():
            forward = model.encode_video(video, full)
            backward = model.encode_video(video.flip(1), full)
        if variant == "baseline":
            torch.testing.assert_close(forward, backward, atol=1e-6, rtol=1e-6)
        else:
            assert (forward - backward).abs().amax(dim=-1).min() > 1e-3, variant


@pytest.mark.parametrize(("variant", "cross", "input"), [("stan", "attention", "pixels"), ("stan", "conv", "blocks")])
def test_padded_frames_change_nothing(variant: str, cross: str, input: str) -> None:
    model = make(input=input, variant=variant, cross_frame=cross).eval()
    activate_cross_frame(model)
    video = video_for(model)
    mask = prefix_mask()
    junk = video.clone()
    junk[~mask] = 7.0 * torch.randn_like(junk[~mask])
    with torch.no_grad():
        padded = model.encode_video(junk, mask)
        for b, n in enumerate(LENGTHS):
            alone = model.encode_video(video[b : b + 1, :n], torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(padded[b : b + 1], alone, atol=1e-5, rtol=1e-5)


def test_posterior_reads_only_the_final_block_and_stan_every_level() -> None:
    full = torch.ones(B, T, dtype=torch.bool)
    for variant, reads_lower in (("stan", True), ("posterior", False), ("baseline", False)):
        model = make(input="blocks", variant=variant).eval()
        video = video_for(model)
        other = video.clone()
        other[:, :, 0] += torch.randn_like(other[:, :, 0])  # block L−2 only
        with torch.no_grad():
            change = (model.encode_video(video, full) - model.encode_video(other, full)).abs().max()
        assert (change > 1e-3) if reads_lower else (change == 0), variant


# ----- loss -----------------------------------------------------------------------------------------------------------


def test_temperature_is_fixed_and_the_loss_sums_both_directions() -> None:
    model = make(input="blocks", temperature=0.05)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "logit_scale" in n)
    assert not any("loss." in n for n, _ in model.named_parameters())  # a buffer, never a parameter
    assert float(model.loss.scale()) == pytest.approx(20.0)
    batch = batch_for(model)
    model.eval()  # no drop-path noise between the two forwards
    with torch.no_grad():
        loss = model.training_step(batch)["loss"]
        text = F.normalize(model.encode_text(batch["text"]), dim=-1)
        video = F.normalize(model.encode_video(batch["video"], batch["video_mask"]), dim=-1)
        logits = text @ video.T / 0.05  # (B, B)
        targets = torch.arange(B)
        oracle = F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
        torch.testing.assert_close(loss, oracle)
        averaged = ContrastiveLoss(temperature=0.05, reduction="mean")(text, video)
        torch.testing.assert_close(loss, 2 * averaged)
        # symmetric inputs (texts = videos): both directions are equal, so the sum is twice one of them
        symmetric = model.loss(video, video)
        one_direction = F.cross_entropy(video @ video.T / 0.05, targets)
        torch.testing.assert_close(symmetric, 2 * one_direction)
        torch.testing.assert_close(symmetric, symmetric_infonce(video @ video.T / 0.05, "sum"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.training_step(batch)["loss"].backward()
    opt.step()
    model.after_step()
    assert float(model.loss.scale()) == pytest.approx(20.0)


def test_eval_api_gives_cosine_similarities() -> None:
    model = make(input="blocks").eval()
    batch = batch_for(model)
    with torch.no_grad():
        t = model.encode_text_for_eval(batch["text"])
        v = model.encode_video_for_eval(batch["video"], batch["video_mask"])
        sim = model.similarity(t, v)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(sim, F.cosine_similarity(t[:, None], v[None, :], dim=-1))
    torch.testing.assert_close(model.recognition_scores(v, t), sim.T)


# ----- recognition ----------------------------------------------------------------------------------------------------


def test_top1_top5_accuracy_on_a_hand_made_case() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # true 0 ranked 1st
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # true 2 ranked 5th → top-5 only
            [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # true 6 ranked 7th → neither
            [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],  # true 1 tied with class 0 → pessimistic: 2nd
        ]
    )
    labels = np.array([0, 2, 6, 1])
    assert topk_accuracy(scores, labels) == {"top1": 25.0, "top5": 75.0}


def test_trained_prompt_classifier_learns_a_toy_separable_set_the_prompts_miss() -> None:
    """The class-prompt cross-entropy over cos/τ, fitted on fixed video embeddings: from prompts that name the wrong
    classes (zero-shot gets every video wrong) to every held-out video right; deterministic; 0 steps = the prompts."""
    g = torch.Generator().manual_seed(0)
    c, d, n = 4, 16, 40
    centres = torch.eye(d)[:c]  # class k lies along axis k
    prompts = centres.roll(1, dims=0)  # prompt k points at class k − 1
    labels = torch.arange(2 * n) % c
    videos = centres[labels] + 0.1 * torch.randn(2 * n, d, generator=g)
    train, test = slice(0, n), slice(n, 2 * n)
    zero_shot = topk_accuracy((F.normalize(videos[test], dim=-1) @ prompts.T).numpy(), labels[test].numpy(), (1,))
    assert zero_shot["top1"] == 0.0
    weight = fit_prompt_classifier(videos[train], labels[train], prompts, temperature=0.1, steps=100, lr=0.05)
    scores = (F.normalize(videos[test], dim=-1) @ weight.T).numpy()
    assert topk_accuracy(scores, labels[test].numpy(), (1,))["top1"] == 100.0
    again = fit_prompt_classifier(videos[train], labels[train], prompts, temperature=0.1, steps=100, lr=0.05)
    assert torch.equal(weight, again)
    torch.testing.assert_close(fit_prompt_classifier(videos, labels, 2 * prompts, 0.1, 0, 0.05), prompts)
    with pytest.raises(ValueError, match="do not match"):
        fit_prompt_classifier(videos, labels[:3], prompts, 0.1, 1, 0.05)


def test_class_prompts_read_the_direction_pairs() -> None:
    assert class_name("left-then-up") == "left, then up"
    assert class_name("playing_guitar") == "playing guitar"
    assert class_prompts(["left-then-up", "down-then-right"], "an object moves {name}") == [
        "an object moves left, then up",
        "an object moves down, then right",
    ]


# ----- config ---------------------------------------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config(StanConfig, {"depht": 4})
    with pytest.raises(ConfigError):
        build_config(StanConfig, {"variant": "prior"})
    with pytest.raises(ConfigError):
        build_config(StanConfig, {"cross_frame": "lstm"})
    with pytest.raises(ConfigError):
        merge(StanConfig.tiny(), {"max_frames": 65})  # beyond the 64 temporal positions
    with pytest.raises(ConfigError):
        merge(StanConfig.tiny(), {"depth": 0})
    with pytest.raises(ConfigError):
        build(dataclasses.replace(StanConfig.tiny(), depth=3))  # the tiny CLIP has 2 vision blocks
    with pytest.raises(ConfigError):
        build(dataclasses.replace(StanConfig.tiny(), cross_frame="conv", conv_reduction=3))  # 32 % 3 != 0
    cfg = build_config(StanConfig, {"variant": "posterior", "cross_frame": "conv", "input": "blocks"})
    assert (cfg.variant, cfg.cross_frame, cfg.input, cfg.temperature, cfg.depth) == (
        "posterior",
        "conv",
        "blocks",
        0.01,
        4,
    )


# ----- feature cache consistency --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["stan", "posterior", "baseline"])
def test_blocks_mode_equals_pixels_mode_on_the_feature_stage_output(variant: str) -> None:
    pixels = make(input="pixels", variant=variant, cross_frame="conv", freeze_clip_visual=True).eval()
    if pixels.branch is not None:
        activate_cross_frame(pixels)
    blocks = make(input="blocks", variant=variant, cross_frame="conv", freeze_clip_visual=True).eval()
    missing, unexpected = blocks.load_state_dict(pixels.state_dict(), strict=False)
    assert missing == [] and unexpected and all(k.startswith("clip.model.visual.") for k in unexpected)

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8) for n in LENGTHS]  # uint8 RGB videos
    mask = prefix_mask()
    feature_cfg = ClipFeatureConfig(clip=StanConfig.tiny().clip, output="blocks", last_blocks=K)
    cached = encode_frames(pixels.clip, frames, batch_frames=5, cfg=feature_cfg)  # float16 (T_i, K, 1+N, W)
    assert cached[0].dtype == np.float16 and cached[0].shape == (LENGTHS[0], K, 1 + N, W)

    def padded(arrays: list[np.ndarray]) -> torch.Tensor:
        out = torch.zeros(B, T, *arrays[0].shape[1:])
        for b, a in enumerate(arrays):
            out[b, : len(a)] = torch.from_numpy(a.astype(np.float32))
        return out

    from models.common.clip import preprocess_frames

    with torch.no_grad():
        want = pixels.encode_video(padded([preprocess_frames(f, S).numpy() for f in frames]), mask)
        exact = [torch.stack(pixels.clip_levels(padded([preprocess_frames(f, S).numpy() for f in frames]), mask), 2)]
        got_exact = blocks.encode_video(exact[0], mask)  # float32 blocks: the same numbers
        got_cached = blocks.encode_video(padded(cached), mask)  # the feature stage's float16 blocks
    torch.testing.assert_close(got_exact, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cached, want, atol=2e-2, rtol=2e-2)
