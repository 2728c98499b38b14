"""DCC model pieces on the tiny CLIP: pseudo-label rules on hand-made CAS, L_kd / L_fb / MIL against direct
implementations of the paper's equations, per-stage parameter isolation (frozen branch bit-identical, CLIP never
trained), gradients to every trainable parameter, prompt layout and length checks, padding and chunking invariance."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from models.common.clip import ClipConfig
from models.config import ConfigError, load, merge
from models.dcc import (
    DCC,
    BranchOutput,
    DCCConfig,
    DCCStage,
    PromptLengthError,
    build,
    stage_schedule,
)
from models.dcc.losses import fb_contrastive_loss, kd_loss, mil_bce, mil_ce, video_scores
from models.dcc.pseudo_labels import IGNORE, confident_labels, foreground_background
from models.engine.loop import TrainableModel
from models.engine.optim import build_optimizer, param_groups

CLASSES = ("red circle", "green triangle", "blue square")
B, T, D_IN, D_CLIP = 2, 12, 24, 32  # tiny config: I3D width 24, tiny CLIP embed 32
LENGTHS = (12, 9)


def mini_config() -> DCCConfig:
    """The DCC config of the mini-wtal experiment spec (its dcc job's ``model`` section)."""
    from recipes.spec import load_spec

    return load(DCCConfig, overrides=load_spec("dcc", "mini-wtal").base("dcc")["model"])


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(overrides: dict[str, object] | None = None, seed: int = 0) -> DCC:
    torch.manual_seed(seed)
    cfg = merge(DCCConfig.tiny(), overrides) if overrides else DCCConfig.tiny()
    return build(cfg, CLASSES)


def make_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = True
    return {
        "features": torch.randn(B, T, D_IN, generator=g),
        "clip": torch.randn(B, T, D_CLIP, generator=g),
        "mask": mask,
        "labels": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
    }


# Teacher CAS with confident foreground and background on both videos (probabilities of the C = 3 actions).
def teacher_probs() -> torch.Tensor:
    p = torch.full((B, T, 3), 0.02)
    p[0, 2:6, 0] = 0.9  # video 0 (label 0): foreground 2..5
    p[0, 6, 0] = 0.2  # uncertain
    p[1, 1:4, 1] = 0.8  # video 1 (labels 1, 2): foreground of class 1 at 1..3
    p[1, 5:8, 2] = 0.6  # class 2 at 5..7
    p[1, 4, 2] = 0.15  # uncertain
    p[1, 2, 2] = 0.2  # a foreground snippet (class 1) whose other label is uncertain: that entry is ignored
    return p


def fake_output(probs: torch.Tensor, dim: int) -> BranchOutput:
    # logits whose softmax over C + 1 reproduces `probs` in the action columns
    background = (1.0 - probs.sum(-1, keepdim=True)).clamp(min=1e-4)
    return BranchOutput(logits=torch.log(torch.cat([probs, background], dim=-1)), features=torch.zeros(B, T, dim))


# ----- pseudo-labels -----------------------------------------------------------------------------------------------


def test_confident_labels_on_a_hand_made_cas() -> None:
    probs = torch.tensor(
        [
            [
                [0.90, 0.90, 0.05],  # label 0 confident; class 1 is not a label → 0 despite 0.9
                [0.30, 0.00, 0.31],  # exactly δ_h is not > δ_h → −1; class 2 (label) above δ_h → 1
                [0.10, 0.50, 0.09],  # exactly δ_l is not < δ_l → −1; 0.09 < δ_l → 0
                [0.05, 0.20, 0.20],  # label 2 uncertain
            ]
        ]
    )
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    h = confident_labels(probs, labels, high=0.3, low=0.1, mask=mask)
    expected = torch.tensor([[[1, 0, 0], [-1, 0, 1], [-1, 0, 0], [IGNORE] * 3]])
    assert torch.equal(h, expected)
    h_unmasked = confident_labels(probs, labels, high=0.3, low=0.1)
    assert h_unmasked[0, 3].tolist() == [0, 0, -1]
    with pytest.raises(ValueError, match="low < high"):
        confident_labels(probs, labels, high=0.1, low=0.3)


def test_foreground_background_masks() -> None:
    h = torch.tensor(
        [
            [
                [1, 0, -1],  # a label confident → foreground (label 2 uncertain does not matter)
                [0, 0, 0],  # every label below δ_l → background
                [0, 0, -1],  # label 2 uncertain → neither
                [-1, 0, -1],  # neither
                [0, 0, 1],  # foreground of class 2
                [-1, -1, -1],  # padded
            ]
        ]
    )
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    fg, bg = foreground_background(h, labels, mask)
    assert fg.tolist() == [[True, False, False, False, True, False]]
    assert bg.tolist() == [[False, True, False, False, False, False]]
    # a video without labels is background wherever valid
    fg0, bg0 = foreground_background(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3), torch.ones(1, 3) > 0)
    assert not fg0.any() and bg0.all()


# ----- losses against direct implementations -------------------------------------------------------------------------


def fb_oracle(features: torch.Tensor, h: torch.Tensor, bg: torch.Tensor, labels: torch.Tensor, tau: float) -> list:
    """Direct loops over the paper's equation: per video, labelled class, anchor."""
    per_video = []
    for b in range(features.shape[0]):
        f = F.normalize(features[b], dim=-1)
        terms = []
        for c in range(labels.shape[1]):
            if labels[b, c] < 0.5:
                continue
            pos = [t for t in range(f.shape[0]) if h[b, t, c] == 1]
            neg = [t for t in range(f.shape[0]) if bg[b, t]]
            for i in pos:
                others = [m for m in pos if m != i]
                if not others or not neg:
                    continue
                num = sum(math.exp(float(f[i] @ f[m]) / tau) for m in others)
                den = num + sum(math.exp(float(f[i] @ f[j]) / tau) for j in neg)
                terms.append(-math.log(num / den))
        per_video.append(terms)
    return per_video


def test_fb_contrastive_loss_matches_a_direct_loop() -> None:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(B, T, 8, generator=g)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    h = confident_labels(teacher_probs(), labels, 0.3, 0.1, make_batch()["mask"])
    _, bg = foreground_background(h, labels, make_batch()["mask"])
    tau = 0.5  # a mild temperature keeps the oracle's plain exp sums in range
    per_video = fb_oracle(features, h, bg, labels, tau)
    flat = [t for v in per_video for t in v]
    assert len(flat) == 4 + 3 + 3  # anchors: video 0 class 0 (4), video 1 classes 1 and 2 (3 each)
    loss, anchors = fb_contrastive_loss(features, h, bg, labels, tau, "mean")
    assert anchors == len(flat)
    assert loss.item() == pytest.approx(sum(flat) / len(flat), rel=1e-5)
    loss_sum, _ = fb_contrastive_loss(features, h, bg, labels, tau, "sum")
    assert loss_sum.item() == pytest.approx(sum(sum(v) for v in per_video) / B, rel=1e-5)
    # no background → no anchors, a zero that is still part of the graph
    features.requires_grad_(True)
    zero, n = fb_contrastive_loss(features, h, torch.zeros_like(bg), labels, tau)
    assert n == 0 and zero.item() == 0.0 and zero.requires_grad


def test_fb_loss_is_low_when_foreground_clusters_apart_from_background() -> None:
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    h = torch.zeros(1, 6, 3, dtype=torch.long)
    h[0, :3, 0] = 1
    bg = torch.tensor([[False, False, False, True, True, True]])
    apart = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)[None]
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [0.1, 1.0]])[None]
    good, _ = fb_contrastive_loss(apart, h, bg, labels, 0.07)
    bad, _ = fb_contrastive_loss(mixed, h, bg, labels, 0.07)
    # apart: each anchor has 2 positives at cosine 1 and 3 negatives at cosine 0
    assert good.item() == pytest.approx(math.log1p(1.5 * math.exp(-1 / 0.07)), abs=1e-6)
    assert bad.item() > 0.5


def kd_oracle(log_probs: torch.Tensor, h: torch.Tensor, snippets: torch.Tensor) -> float:
    """(1/O) Σ_t Σ_c KL(h ‖ p) with Bernoulli KL, confident entries of the selected snippets only."""
    p = log_probs[..., :-1].exp()
    total, count = 0.0, 0
    for b, t in snippets.nonzero().tolist():
        count += 1
        for c in range(h.shape[2]):
            if h[b, t, c] == 1:
                total += -math.log(float(p[b, t, c]))
            elif h[b, t, c] == 0:
                total += -math.log(1.0 - float(p[b, t, c]))
    return total / count


def test_kd_loss_matches_the_equation_and_ignores_uncertain_snippets() -> None:
    batch = make_batch()
    labels = batch["labels"]
    h = confident_labels(teacher_probs(), labels, 0.3, 0.1, batch["mask"])
    fg, bg = foreground_background(h, labels, batch["mask"])
    snippets = fg | bg
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(B, T, 4, generator=g)
    loss = kd_loss(logits.log_softmax(-1), h, snippets)
    assert loss.item() == pytest.approx(kd_oracle(logits.log_softmax(-1), h, snippets), rel=1e-5)

    assert h[1, 2].tolist() == [0, 1, IGNORE] and bool(fg[1, 2])
    uncertain = (~snippets & batch["mask"]).nonzero().tolist()
    assert [0, 6] in uncertain and [1, 4] in uncertain
    changed = logits.clone()
    for b, t in uncertain:
        changed[b, t] = torch.tensor([9.0, -3.0, 5.0, 0.0])
    changed[0, 11] = 7.0 * torch.randn(4, generator=g)  # a confident background snippet: the loss must change
    assert kd_loss(changed.log_softmax(-1), h, snippets).item() != pytest.approx(loss.item())
    changed[0, 11] = logits[0, 11]
    assert kd_loss(changed.log_softmax(-1), h, snippets).item() == pytest.approx(loss.item(), abs=0)
    # padded snippets (video 1 from 9 on) are ignored too
    changed[1, 10] = torch.tensor([-5.0, 8.0, 1.0, 2.0])
    assert kd_loss(changed.log_softmax(-1), h, snippets).item() == pytest.approx(loss.item(), abs=0)
    # nothing selected → an attached zero
    empty = kd_loss(logits.requires_grad_(True).log_softmax(-1), h, torch.zeros_like(snippets))
    assert empty.item() == 0.0 and empty.requires_grad


def test_mil_losses_match_their_equations_with_per_video_k() -> None:
    batch = make_batch()
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(B, T, 4, generator=g)
    labels, mask = batch["labels"], batch["mask"]
    bce_terms, ce_terms = [], []
    for b, n in enumerate(LENGTHS):
        k = max(1, n // 8)
        z = logits[b, :n]
        p = z.softmax(-1)[:, :3]
        s = p.sort(dim=0, descending=True).values[:k].mean(0)
        bce_terms += [-(y * math.log(v) + (1 - y) * math.log(1 - v)) for y, v in zip(labels[b].tolist(), s.tolist())]
        v = z.sort(dim=0, descending=True).values[:k].mean(0).log_softmax(-1)
        target = torch.cat([labels[b], torch.ones(1)])
        ce_terms.append(float(-(target / target.sum() * v).sum()))
    assert mil_bce(logits, mask, labels, 8).item() == pytest.approx(sum(bce_terms) / len(bce_terms), rel=1e-5)
    assert mil_ce(logits, mask, labels, 8).item() == pytest.approx(sum(ce_terms) / B, rel=1e-5)
    # padding content never matters
    noisy = logits.clone()
    noisy[1, 9:] = 50.0
    assert mil_bce(noisy, mask, labels, 8).item() == pytest.approx(mil_bce(logits, mask, labels, 8).item(), abs=0)
    assert torch.equal(video_scores(noisy, mask, 8), video_scores(logits, mask, 8))


# ----- stages: what trains, what stays put ---------------------------------------------------------------------------


STAGE_OWNERS = {"warmup": "cbp.", "vlp_warmup": "vlp.", "B": "vlp.", "F": "cbp."}


def patched_teacher(model: DCC, stage: str) -> None:
    """Replace the teacher branch's outputs with `teacher_probs()`, so every step sees confident fg and bg."""
    if stage == "B":
        model.cbp_outputs = lambda batch: fake_output(teacher_probs(), 16)  # type: ignore[method-assign]
    elif stage == "F":
        model.vlp_outputs = lambda batch: fake_output(teacher_probs(), D_CLIP)  # type: ignore[method-assign]


@pytest.mark.parametrize("stage", ["warmup", "vlp_warmup", "B", "F"])
def test_each_stage_trains_exactly_its_parameters(stage: str) -> None:
    model = make()
    batch = make_batch()
    staged = DCCStage(model, stage)  # type: ignore[arg-type]
    assert isinstance(staged, TrainableModel)
    owner = STAGE_OWNERS[stage]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.stage_parameter_names(stage))  # type: ignore[arg-type]
    assert trainable and all(n.startswith(owner) and not n.startswith("vlp.clip.") for n in trainable)
    assert not any(p.requires_grad for p in model.vlp.clip.parameters())
    groups = param_groups(staged, 1e-4, 0.0, staged.lr_scales())
    assert {n.removeprefix("model.") for grp in groups for n in grp["names"]} == trainable

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(staged, model.cfg.optim, staged.lr_scales())
    patched_teacher(model, stage)
    staged.train()
    out = staged.training_step(batch)
    assert torch.isfinite(out["loss"]) and all(v.ndim == 0 for v in out.values())
    if stage in ("B", "F"):
        assert out["kd"].item() > 0 and out["fb"].item() > 0 and out["fb_anchors"].item() == 10
        # of 21 valid snippets: foreground 4 (video 0) + 6 (video 1), background 7 + 2, uncertain 1 + 1
        assert out["fg_fraction"].item() == pytest.approx(10 / 21)
        assert out["bg_fraction"].item() == pytest.approx(9 / 21)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    for name, param in model.named_parameters():
        if name in trainable:
            # every trainable parameter gets a gradient
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name  # CLIP and the frozen branch: no gradient at all
    optimizer.step()
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name  # bit-identical


def test_teacher_runs_in_eval_mode_and_gets_no_gradient() -> None:
    model = make({"cbp.dropout": 0.5})
    batch = make_batch()
    staged = DCCStage(model, "B")
    staged.train()
    # the CBP teacher has dropout 0.5: two B steps agree only if it runs in eval mode (VLP has no dropout)
    first = staged.training_step(batch)
    second = staged.training_step(batch)
    assert first["loss"].item() == second["loss"].item()
    assert model.cbp.training and model.vlp.training and not model.vlp.clip.training
    # requires_grad left on everywhere: the step itself still keeps gradients away from the teacher
    for p in model.cbp.parameters():
        p.requires_grad_(True)
    model.b_step(batch)["loss"].backward()
    assert all(p.grad is None for p in model.cbp.parameters())


def test_step_mil_term_is_optional() -> None:
    model = make({"distill.mil_weight": 0.5})
    batch = make_batch()
    patched_teacher(model, "F")
    out = model.f_step(batch)
    assert out["loss"].item() == pytest.approx(
        out["kd"].item() + 0.05 * out["fb"].item() + 0.5 * out["mil"].item(), rel=1e-5
    )
    assert "mil" not in make().f_step(batch)  # default: pseudo-labels only after the warm-up (review)


def test_role_restricted_distillation_uses_only_background_in_b() -> None:
    batch = make_batch()
    full = make()
    role = make({"distill.kd_snippets": "role"})
    patched_teacher(full, "B")
    patched_teacher(role, "B")
    out_role = role.b_step(batch)
    student = role.vlp_outputs(batch)
    h = confident_labels(teacher_probs(), batch["labels"], 0.3, 0.1, batch["mask"])
    _, bg = foreground_background(h, batch["labels"], batch["mask"])
    assert out_role["kd"].item() == pytest.approx(kd_oracle(student.log_probs.detach(), h, bg), rel=1e-5)
    assert full.b_step(batch)["kd"].item() != pytest.approx(out_role["kd"].item())


# ----- VLP branch: prompts -----------------------------------------------------------------------------------------


def test_prompt_layout_and_eot_position() -> None:
    model = make()
    prompts = model.vlp.prompts
    clip = model.vlp.clip
    tokens = clip.tokenize([*CLASSES, "background"])
    assert torch.equal(prompts.tokens, tokens)
    frozen = clip.token_embedding(tokens)
    embeds, eot = prompts(frozen)
    assert embeds.shape == (4, 16, 32)  # 3 classes + background, tiny context 16, text width 32
    for c, n in enumerate(prompts.name_lengths):  # name tokens: 2, 2, 2, 1
        assert torch.equal(embeds[c, 0], frozen[c, 0])  # SOT
        assert torch.equal(embeds[c, 1:4], prompts.prefix)
        assert torch.equal(embeds[c, 4 : 4 + n], frozen[c, 1 : 1 + n])  # class-name tokens
        assert torch.equal(embeds[c, 4 + n : 7 + n], prompts.postfix)
        assert int(eot[c]) == 7 + n and torch.equal(embeds[c, 7 + n], frozen[c, 1 + n])  # EOT
    assert prompts.name_lengths == [2, 2, 2, 1]


def test_prompt_vectors_drive_the_text_features() -> None:
    model = make()
    vlp = model.vlp
    text = vlp.text_features()
    assert text.shape == (4, 32)
    (text.square().sum()).backward()
    assert vlp.prompts.prefix.grad is not None and vlp.prompts.prefix.grad.abs().sum() > 0
    assert vlp.prompts.postfix.grad is not None and vlp.prompts.postfix.grad.abs().sum() > 0
    assert all(p.grad is None for p in vlp.clip.parameters())
    with torch.no_grad():  # a random direction: a constant shift of every channel would vanish in the LayerNorms
        vlp.prompts.postfix.add_(
            0.5 * torch.randn(vlp.prompts.postfix.shape, generator=torch.Generator().manual_seed(0))
        )
    assert not torch.allclose(vlp.text_features(), text, atol=1e-4)
    # the class name matters: different names, different features
    assert not torch.allclose(text[0], text[1], atol=1e-4)


def test_loading_a_checkpoint_restores_the_text_features() -> None:
    # token embeddings are looked up from the loaded CLIP at each call, never cached from the CLIP of build time
    source, target = make(seed=0), make(seed=1)
    assert not torch.allclose(source.vlp.text_features(), target.vlp.text_features())
    target.load_state_dict(source.state_dict())
    assert torch.equal(source.vlp.text_features(), target.vlp.text_features())


def test_prompt_length_is_validated_against_the_text_context() -> None:
    with pytest.raises(PromptLengthError, match="exceed the CLIP text context of 16"):
        make({"vlp.prefix_length": 7, "vlp.postfix_length": 6})  # 1 + 7 + 2 + 6 + 1 = 17 > 16
    make({"vlp.prefix_length": 6, "vlp.postfix_length": 6})  # 16 fits exactly


def test_mini_config_fits_the_mini_clip_and_the_paper_prompts_do_not() -> None:
    cfg = mini_config()
    assert cfg.vlp.clip.arch == "vlrepro-mini" and cfg.window <= cfg.vlp.max_snippets
    names = ["red circle", "green triangle", "blue square", "yellow circle", "purple triangle"]
    cfg = dataclasses.replace(cfg, vlp=dataclasses.replace(cfg.vlp, layers=1))  # build cost only
    model = build(cfg, names)
    assert model.vlp.prompts.tokens.shape == (6, 32) and model.vlp.text_features().shape == (6, 128)
    paper = dataclasses.replace(cfg.vlp, prefix_length=16, postfix_length=16)
    with pytest.raises(PromptLengthError, match="at most 28 together"):
        build(dataclasses.replace(cfg, vlp=paper), names)


# ----- branches: padding, chunking, config --------------------------------------------------------------------------


def test_branches_ignore_padding_and_chunk_long_videos() -> None:
    model = make().eval()
    batch = make_batch()
    n = LENGTHS[1]
    alone = {k: v[1:2, :n] for k, v in batch.items() if k != "labels"}
    for branch in ("cbp_outputs", "vlp_outputs"):
        padded = getattr(model, branch)(batch)
        single = getattr(model, branch)(alone)
        assert torch.allclose(padded.logits[1, :n], single.logits[0], atol=1e-5), branch
    # CBP: a video longer than max_snippets runs in chunks, each equal to its own forward
    long_model = make({"cbp.max_snippets": 5}).eval()
    full = long_model.cbp_outputs(batch).features
    x = torch.where(batch["mask"][..., None], batch["features"], 0.0)
    emb = torch.relu(long_model.cbp.embed(x.transpose(1, 2))).transpose(1, 2)
    part = long_model.cbp.transformer(emb[:, 5:10], batch["mask"][:, 5:10])
    assert torch.allclose(full[:, 5:10], part, atol=1e-6)
    assert "positional_embedding" not in dict(long_model.cbp.named_parameters())
    assert not any("positional_embedding" in k for k in long_model.cbp.state_dict() if k.startswith("transformer."))


def test_band_limited_attention_keeps_the_cas_local() -> None:
    batch = make_batch()
    changed = dict(batch, features=batch["features"].clone())
    changed["features"][0, 10] += 3.0
    # receptive field: kernel-3 embedding (±1) + 2 layers × window 1 (±2) → snippet 10 reaches 7..11 (T = 12)
    banded = make({"cbp.attention_window": 1}).eval()
    diff = (banded.cbp_outputs(changed).logits - banded.cbp_outputs(batch).logits).abs().amax(-1)  # (B, T)
    assert torch.all(diff[0, :7] == 0) and torch.all(diff[0, 7:] > 0) and torch.all(diff[1] == 0)
    global_ = make().eval()
    diff = (global_.cbp_outputs(changed).logits - global_.cbp_outputs(batch).logits).abs().amax(-1)
    assert torch.all(diff[0] > 0)  # global attention: every snippet sees the change
    wide = make({"cbp.attention_window": T}).eval()  # a band wider than the video = global attention
    assert torch.allclose(wide.cbp_outputs(batch).logits, global_.cbp_outputs(batch).logits, atol=1e-6)


def test_localization_inputs_are_branch_probabilities_and_topk_scores() -> None:
    model = make()
    batch = make_batch()
    probs, scores = model.localization_inputs(batch, "cbp")
    assert model.training  # restored
    expected = model.eval().cbp_outputs(batch).probs
    assert torch.allclose(probs[0], expected[0]) and torch.all(probs[1, 9:] == 0)
    k = max(1, 9 // 8)
    assert torch.allclose(scores[1], expected[1, :9].topk(k, dim=0).values.mean(0))
    vlp_probs, _ = model.localization_inputs(batch, "vlp")
    assert vlp_probs.shape == (B, T, 3) and not torch.allclose(vlp_probs, probs)


def test_config_checks_and_schedules() -> None:
    with pytest.raises(ConfigError, match="must be <"):
        merge(DCCConfig.tiny(), {"distill.low": 0.5})
    with pytest.raises(ConfigError, match=r"exceeds vlp\.max_snippets"):
        merge(DCCConfig.tiny(), {"window": 33})
    with pytest.raises(ConfigError, match="unknown config key"):
        merge(DCCConfig.tiny(), {"distill.delta_h": 0.3})
    paper = DCCConfig()
    assert (paper.distill.high, paper.distill.low, paper.distill.fb_weight, paper.distill.fb_temperature) == (
        0.3,
        0.1,
        0.05,
        0.07,
    )
    assert (paper.inference.class_threshold, paper.inference.loc_thresholds, paper.optim.lr) == (0.85, (0.45,), 1e-4)
    assert (paper.vlp.prefix_length, paper.vlp.postfix_length, paper.vlp.layers, paper.window) == (16, 16, 2, 1000)
    assert paper.vlp.clip == ClipConfig(arch="ViT-B-16-quickgelu", pretrained="openai")
    assert paper.cbp.attention_window is None and mini_config().cbp.attention_window
    assert stage_schedule("full", 2) == ("warmup", "B", "F", "B", "F")
    assert stage_schedule("only_b", 2) == ("warmup", "B", "B")
    assert stage_schedule("only_f", 1) == ("warmup", "F")
    assert stage_schedule("cbp_only", 3) == ("warmup",)
    with pytest.raises(ValueError, match="unknown variant"):
        stage_schedule("both")
    with pytest.raises(ValueError, match="unknown stage"):
        DCCStage(make(), "G")  # type: ignore[arg-type]
