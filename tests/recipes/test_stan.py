"""STAN recipe on a synthetic `clip-blocks` stage: segment sampler, labels in batches, one training epoch, retrieval +
recognition evaluation, and the mini config loads strictly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from models.config import load
from models.engine.loop import fit_local
from pipelines import shards
from recipes.stan import StanRecipeConfig, build

K, N, W = 2, 4, 32  # tiny CLIP: 2 vision blocks, 2×2 patches, width 32
CLASSES = ["left-then-up", "up-then-left", "down-then-right"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """8 training + 6 test videos of 6 frames; frame f of every block output is filled with f (sampler checks)."""
    uri = str(tmp_path_factory.mktemp("stan") / "clip-blocks2")
    rng = np.random.default_rng(0)
    samples, rows = [], []
    for i in range(14):
        split = "train" if i < 8 else "test"
        label = CLASSES[i % 3]
        arr = rng.normal(size=(6, K, 1 + N, W)).astype(np.float16)
        arr[:, :, 0, 0] = np.arange(6)[:, None]  # the frame index, readable after sampling
        key = f"v{i:03d}"
        a, b = label.split("-then-")
        meta = {"split": split, "label": label, "captions": [f"it moves {a}, then {b}", f"{a} first, {b} after"]}
        samples.append((key, {"npy": arr, "json": meta}))
        rows.append({"key": key, "status": "ok", "error": "", "split": split, "label": label})
    shards.write_shard(uri, 0, samples, rows, {"n_samples": len(samples)})
    shards.commit_stage(uri, [{"n_samples": len(samples), "status_counts": {"ok": len(samples)}}])
    return uri


def config(stage: str, **model: Any) -> dict[str, Any]:
    return {
        "data": {"stage": stage, "eval_batch": 4},
        "model": {"clip": {"arch": "vlrepro-tiny", "pretrained": None}, "input": "blocks", "depth": K,
                  "max_frames": 4, "max_words": 16, **model},
        "train": {"epochs": 1, "batch_size": 4, "optim": {"lr": 1e-4}},
        "recognition": {"prompt": "it moves {name}"},
    }  # fmt: skip


def test_segment_sampler_takes_middles_at_test_and_one_frame_per_segment_in_training(stage: str) -> None:
    recipe = build(config(stage))
    arr = np.zeros((8, K, 1 + N, W), dtype=np.float16)
    arr[:, :, 0, 0] = np.arange(8)[:, None]
    video, mask = recipe.data.video_tensor([arr])
    assert video.shape == (1, 4, K, 1 + N, W) and bool(mask.all())
    assert video[0, :, 0, 0, 0].tolist() == [1, 3, 5, 7]  # middles of [0,2), [2,4), [4,6), [6,8)
    for seed in range(5):
        picked = recipe.data.video_tensor([arr], np.random.default_rng(seed))[0][0, :, 0, 0, 0].tolist()
        assert all(2 * s <= f < 2 * s + 2 for s, f in enumerate(picked))


def test_one_epoch_trains_and_evaluates_retrieval_and_recognition(stage: str) -> None:
    recipe = build(config(stage, num_classes=3))
    assert recipe.classes == sorted(CLASSES)
    assert recipe.steps_per_epoch(1) == 2
    batches = list(recipe.batches(0, 0, 1))
    assert len(batches) == 2
    for batch in batches:
        assert batch["video"].shape == (4, 4, K, 1 + N, W)
        assert [recipe.classes[i] for i in batch["label"].tolist()] == [recipe.labels[k] for k in batch["keys"]]
    _, history = fit_local(recipe)
    metrics = history[-1]
    assert np.isfinite(metrics["train/loss"]) and "train/recognition_loss" in metrics
    keys = ("t2v/R@1", "v2t/R@1", "recognition/top1", "recognition/top5", "recognition_linear/top1")
    for key in (*keys, "recognition_trained/top1", "chance/overall/tied"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["recognition/top5"] == metrics["recognition_trained/top5"] == 100.0  # 3 classes: always in the top 5
    assert metrics["chance/overall/random"] == pytest.approx(100 / 6)
    assert metrics["chance/overall/motion_blind"] == 100 / 3
    # the training driver reads the full report: rank arrays for plots, "overall" for summaries
    assert {"overall", "ranks", "recognition", "recognition_trained", "recognition_linear"} <= set(recipe.last_report)
    assert recipe.last_report["recognition"]["top1"] == metrics["recognition/top1"]


def test_recognition_matches_a_direct_computation(stage: str) -> None:
    recipe = build(config(stage))
    torch.manual_seed(0)
    model = recipe.build_model().eval()
    got = recipe.evaluate(model)
    ev = recipe.data.eval_set()
    with torch.no_grad():
        prompts = model.tokenize([f"it moves {c.replace('-then-', ', then ')}" for c in recipe.classes])
        classes = model.encode_text_for_eval(prompts)
        video = model.encode_video_for_eval(*recipe.data.video_tensor(ev.videos))
        pred = (video @ classes.T).argmax(dim=1).numpy()
    truth = np.array([recipe.classes.index(recipe.labels[k]) for k in ev.keys])
    assert got["recognition/top1"] == pytest.approx(100.0 * np.mean(pred == truth))


def test_chance_levels_name_each_blocks_floor_and_count_exact_ties(stage: str) -> None:
    """`chance`: random = 100 / clips, motion-blind = 100 / labels among the block's clips, tied = % of t2v queries
    whose clip scores like another clip of the block up to rounding (exact ties the pessimistic rule counts against
    the true clip)."""
    cfg = config(stage)
    cfg["data"]["subsets"] = {"pair": ["v008", "v009"], "one": ["v010"]}
    recipe = build(cfg)
    ev = recipe.data.eval_set()
    assert ev.keys == [f"v{i:03d}" for i in range(8, 14)] and len(ev.captions) == 12
    sim = np.eye(6)[ev.caption_video] + 0.01 * np.arange(6)  # every caption's own clip first, no tie
    assert recipe.chance(sim, ev)["overall"] == {"random": pytest.approx(100 / 6), "tied": 0.0, "motion_blind": 100 / 3}
    sim[:, 1] = sim[:, 0]  # v008 and v009 become the same clip for every caption: their 4 captions tie
    sim[:, 3] = sim[:, 2] + 1e-7  # v010 and v011: equal up to float32 rounding, which counts as a tie too
    got = recipe.chance(sim, ev)
    assert got["overall"]["tied"] == pytest.approx(100 * 8 / 12)
    assert got["pair"] == {"random": 50.0, "tied": 100.0, "motion_blind": 50.0}  # labels up-then-left ≠ down-then-right
    assert "one" not in got  # one clip: no retrieval block, no chance level


def test_mini_config_loads_strictly() -> None:
    from recipes.spec import load_spec

    spec = load_spec("stan", "mini-retrieval")
    cfg = load(StanRecipeConfig, overrides=spec.base("stan"))
    assert cfg.model.input == "blocks" and cfg.model.freeze_text and cfg.recognition.train_steps > 0
    # every row of the paper's table starts from the motion-aware tower (CLIP4Clip's seqTransf); the
    # *-miniclip-text rows train the mini CLIP's own
    needs = spec.extra["needs"]
    assert {v for v in spec.variants if not v.endswith("-miniclip-text")} == set(needs)
    assert all(base == ["clip4clip/seqTransf", "model.text_init"] for base in needs.values())
    assert all(spec.variants[v]["model.freeze_text"] is False for v in spec.variants if v.endswith("-miniclip-text"))
    with pytest.raises(ValueError):
        build({"model": {"variant": "nope"}})
