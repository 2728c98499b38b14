"""DCC recipe on synthetic I3D / CLIP stages: snippet batches (shapes, masks, multi-hot labels, CLIP pooled per snippet,
deterministic window crops, equal steps per rank), ``init_from`` loading the previous stage's weights, evaluation of a
constructed perfect CAS (mAP 1 at every THUMOS and ActivityNet tIoU, pseudo-label mIoU 1, phase coverage), and one
trained stage whose exported ActivityNet prediction file scores like the recipe's own metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.common.metrics.detection import THUMOS14_TIOU, detection_map, thumos_summary
from models.dcc import DCC, DCCStage
from models.engine.loop import fit_local
from pipelines import shards
from pipelines.datasets.wtal import read_predictions
from recipes.dcc import build, evaluate_dcc, flatten_report

CLASSES = ["red circle", "green triangle", "blue square"]
D_I3D, D_CLIP, SNIPPET = 24, 32, 16  # DCCConfig.tiny(): I3D width 24, tiny CLIP embed 32
STEP = SNIPPET / 25.0  # seconds per snippet
WINDOW = 32  # DCCConfig.tiny().window
# (key, subset, snippets, instances as (first snippet, end snippet, class index))
VIDEOS: list[tuple[str, str, int, list[tuple[int, int, int]]]] = [
    ("v-train-0", "validation", 20, [(4, 12, 0)]),
    ("v-train-1", "validation", 40, [(3, 11, 1), (22, 34, 2)]),
    ("v-train-2", "validation", 12, [(3, 9, 2)]),
    ("v-train-3", "validation", 36, [(5, 15, 0), (20, 30, 0)]),
    ("v-train-4", "validation", 28, [(6, 14, 1)]),
    ("v-train-5", "validation", 40, [(10, 20, 2), (26, 36, 1)]),
    ("v-test-0", "test", 30, [(4, 12, 0), (18, 26, 1)]),
    ("v-test-1", "test", 24, [(6, 16, 2)]),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _phases(s: int, e: int) -> dict[str, list[float]]:
    """Mini-world phases on the snippet grid: context 2 snippets each side, run-up / follow-through 1 snippet."""
    cuts = {"context_before": (s - 2, s), "run_up": (s, s + 1), "core": (s + 1, e - 1), "follow_through": (e - 1, e)}
    cuts["context_after"] = (e, e + 2)
    return {name: [a * STEP, b * STEP] for name, (a, b) in cuts.items()}


def _write_stage(uri: str, arrays: dict[str, np.ndarray]) -> str:
    samples = [(k, {"npy": a, "json": {"key": k}}) for k, a in sorted(arrays.items())]
    rows = [{"key": k, "status": "ok", "error": "", "split": "", "label": ""} for k, _ in samples]
    shards.write_shard(uri, 0, samples, rows, {"n_samples": len(samples)})
    shards.commit_stage(uri, [{"n_samples": len(samples), "status_counts": {"ok": len(samples)}}])
    return uri


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Ground truth (mini-world format) + an I3D stage whose features encode (snippet index, video index) + a CLIP
    stage of per-frame features whose first channel is the frame index (so snippet pooling is checkable)."""
    folder = tmp_path_factory.mktemp("dcc")
    rng = np.random.default_rng(0)
    database: dict[str, Any] = {}
    i3d, clip = {}, {}
    for v, (key, subset, n, instances) in enumerate(VIDEOS):
        database[key] = {
            "subset": subset,
            "duration": n * STEP + 0.3,  # a partial trailing snippet, as real videos have
            "annotations": [
                {"segment": [s * STEP, e * STEP], "label": CLASSES[c], "phases": _phases(s, e)} for s, e, c in instances
            ],
            "distractors": [],
        }
        f = rng.normal(size=(n, D_I3D)).astype(np.float32)
        f[:, 0] = np.arange(n)
        f[:, 1] = v
        i3d[key] = f
        c = rng.normal(size=(n * SNIPPET + 7, D_CLIP)).astype(np.float32)  # 7 frames of a partial snippet
        c[:, 0] = np.arange(len(c))
        clip[key] = c
    gt = folder / "annotations.json"
    gt.write_text(json.dumps({"version": "test", "classes": CLASSES, "database": database}))
    return {
        "ground_truth": str(gt),
        "i3d": _write_stage(str(folder / "i3d"), i3d),
        "clip": _write_stage(str(folder / "clip"), clip),
    }


def config(world: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "data": {"i3d_stage": world["i3d"], "clip_stage": world["clip"], "ground_truth": world["ground_truth"]},
        "model": {
            "cbp": {"input_dim": D_I3D, "width": 16, "layers": 2, "heads": 2, "dropout": 0.5, "max_snippets": 64},
            "vlp": {"clip": {"arch": "vlrepro-tiny", "pretrained": None}, "layers": 2, "heads": 2,
                    "max_snippets": 32, "prefix_length": 3, "postfix_length": 3},
            "window": WINDOW,
            "stages": {"warmup_epochs": 1, "step_epochs": 1, "batch_size": 2},
        },
        **extra,
    }  # fmt: skip


# ----- batches -------------------------------------------------------------------------------------------------------


def test_snippet_batches_have_the_model_format_with_pooled_clip_and_multi_hot_labels(world: dict[str, str]) -> None:
    recipe = build(config(world, stage="B"))
    assert recipe.steps_per_epoch(1) == 3  # 6 training videos, batch 2
    labels_of = {key: {c for _, _, c in inst} for key, _, _, inst in VIDEOS}
    n_of = {key: n for key, _, n, _ in VIDEOS}
    seen = []
    for batch in recipe.batches(epoch=0, rank=0, world_size=1):
        b, t = batch["mask"].shape
        assert b == 2 and t <= WINDOW
        assert batch["features"].shape == (b, t, D_I3D) and batch["features"].dtype == torch.float32
        assert batch["clip"].shape == (b, t, D_CLIP) and batch["mask"].dtype == torch.bool
        assert batch["labels"].shape == (b, len(CLASSES))
        for i in range(b):
            key = VIDEOS[int(batch["features"][i, 0, 1])][0]
            seen.append(key)
            length = int(batch["mask"][i].sum())
            assert length == min(n_of[key], WINDOW) and bool(batch["mask"][i, :length].all())
            assert set(np.flatnonzero(batch["labels"][i].numpy()).tolist()) == labels_of[key]
            first = int(batch["features"][i, 0, 0])  # the crop's first snippet
            assert 0 <= first <= n_of[key] - length
            assert batch["features"][i, :length, 0].tolist() == list(range(first, first + length))  # consecutive
            # CLIP pooled over each snippet's 16 frames: frame index mean = 16·s + 7.5
            expected = [SNIPPET * s + 7.5 for s in range(first, first + length)]
            assert batch["clip"][i, :length, 0].tolist() == pytest.approx(expected)
            assert not batch["features"][i, length:].any() and not batch["clip"][i, length:].any()  # zero padding
    assert sorted(seen) == sorted(k for k, s, _, _ in VIDEOS if s == "validation")  # one pass, every video once
    warmup = next(iter(build(config(world, stage="warmup")).batches(0, 0, 1)))
    assert "clip" not in warmup  # the CBP warm-up does not read CLIP features


def test_window_crops_are_deterministic_and_every_rank_gets_the_same_number_of_batches(world: dict[str, str]) -> None:
    cfg = config(world, stage="F")
    cfg["model"]["stages"]["batch_size"] = 2
    cfg["data"]["repeats_per_epoch"] = 2
    recipe = build(cfg)

    def firsts(epoch: int, rank: int, world_size: int, start: int = 0) -> list[list[tuple[int, int]]]:
        return [
            [(int(b["features"][i, 0, 1]), int(b["features"][i, 0, 0])) for i in range(len(b["mask"]))]
            for b in build(cfg).batches(epoch, rank, world_size, start)
        ]

    assert firsts(3, 0, 1) == firsts(3, 0, 1)  # a fresh recipe replays the same videos and crops
    assert firsts(3, 0, 1) != firsts(4, 0, 1)  # another epoch, another order / crops
    assert firsts(3, 0, 1, start=2) == firsts(3, 0, 1)[2:]  # resuming at a data position replays the rest
    assert recipe.steps_per_epoch(1) == 6  # 2 passes × 3 batches
    assert recipe.steps_per_epoch(2) == 6  # 2 passes × (3 videos per rank // 1 per rank)
    per_rank = [firsts(0, r, 2) for r in range(2)]
    assert [len(p) for p in per_rank] == [6, 6]
    for p in range(2):  # within a pass the ranks split the training videos
        videos = [v for r in range(2) for batch in per_rank[r][3 * p : 3 * p + 3] for v, _ in batch]
        assert sorted(videos) == list(range(6))


# ----- init_from ------------------------------------------------------------------------------------------------------


def test_init_from_loads_the_previous_stage_weights(world: dict[str, str], tmp_path: Path) -> None:
    previous = build(config(world, stage="warmup")).build_model()
    with torch.no_grad():
        for p in previous.parameters():
            p.add_(torch.randn_like(p))  # weights no fresh init can produce
    path = tmp_path / "model.pt"
    torch.save(previous.state_dict(), path)

    step = build(config(world, stage="B", init_from=str(path))).build_model()
    assert isinstance(step, DCCStage) and step.stage == "B"
    saved = previous.state_dict()
    assert step.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in step.state_dict().items())
    trainable = {n for n, p in step.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.vlp.prompts.", "model.vlp.temporal.")) for n in trainable)
    fresh = build(config(world, stage="B")).build_model().state_dict()
    assert not torch.equal(fresh["model.cbp.classifier.weight"], saved["model.cbp.classifier.weight"])


# ----- evaluation -----------------------------------------------------------------------------------------------------


def _fake_cas(model: DCC, truth: dict[str, list[tuple[int, int, int]]], shrink: int = 0) -> None:
    """Make `model.localization_inputs` return a CAS of 0.95 on ground-truth snippets (shrunk by `shrink` snippets at
    each end) of the labelled class, 0 elsewhere; video scores 0.95 for labels, 0.02 otherwise."""
    by_length = {n: key for key, _, n, _ in VIDEOS if key in truth}

    def fake(batch: dict[str, torch.Tensor], branch: str = "cbp") -> tuple[torch.Tensor, torch.Tensor]:
        t = batch["features"].shape[1]
        probs = torch.zeros(1, t, len(CLASSES))
        scores = torch.full((1, len(CLASSES)), 0.02)
        for s, e, c in truth[by_length[t]]:
            probs[0, s + shrink : e - shrink, c] = 0.95
            scores[0, c] = 0.95
        return probs, scores

    model.localization_inputs = fake  # type: ignore[method-assign]


def test_a_perfect_cas_scores_map_one_and_a_core_only_cas_loses_the_high_tious(world: dict[str, str]) -> None:
    recipe = build(config(world, stage="F"))
    model = recipe.build_model().model
    truth = {key: inst for key, subset, _, inst in VIDEOS if subset == "test"}
    _fake_cas(model, truth)
    report = evaluate_dcc(model, recipe.data)
    metrics = flatten_report(report)
    for branch in ("cbp", "vlp", "fused"):
        thumos = report["branches"][branch]["thumos"]
        assert set(thumos) == {f"mAP@{t:.1f}" for t in THUMOS14_TIOU} | {"AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)"}
        assert all(v == pytest.approx(1.0) for v in thumos.values())
        assert report["branches"][branch]["anet"]["average_mAP"] == pytest.approx(1.0)
        assert metrics[f"{branch}/pseudo/miou"] == pytest.approx(1.0)
        assert metrics[f"{branch}/phase/core/fg"] == 1.0 and metrics[f"{branch}/phase/edges/fg"] == 1.0
        assert metrics[f"{branch}/phase/context/fg"] == 0.0 and metrics[f"{branch}/phase/context/bg"] == 1.0
    assert report["predictions"]["cbp"]["v-test-1"][0]["segment"] == pytest.approx([6 * STEP, 16 * STEP])
    assert len(report["timeline"]["videos"]) == 2

    # the "incomplete" CAS of the paper's CBP: only the core (one snippet short at each end)
    _fake_cas(model, truth, shrink=1)
    shrunk = flatten_report(evaluate_dcc(model, recipe.data))
    assert shrunk["cbp/mAP@0.1"] == pytest.approx(1.0)  # still found: tIoU 6/8 and 8/10 ≥ 0.1 … 0.7
    assert shrunk["cbp/anet/mAP@0.85"] == 0.0  # but no instance reaches tIoU 0.85
    assert shrunk["cbp/phase/edges/fg"] == 0.0 and shrunk["cbp/phase/core/fg"] == 1.0
    assert shrunk["cbp/pseudo/miou"] < 1.0


def test_one_trained_stage_exports_prediction_files_that_score_like_its_metrics(
    world: dict[str, str], tmp_path: Path
) -> None:
    recipe = build(config(world, stage="warmup"))
    model, history = fit_local(recipe)
    assert len(history) == 1 and np.isfinite(history[0]["train/loss"])
    metrics = recipe.evaluate(model)
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if "/mAP@" in k or "AVG" in k or "pseudo" in k)
    recipe.export(model, tmp_path)
    gt = json.loads(Path(world["ground_truth"]).read_text())["database"]
    for branch in ("cbp", "vlp", "fused"):
        results = read_predictions(tmp_path / f"predictions_{branch}.json")
        assert set(results) == {"v-test-0", "v-test-1"}
        scored = thumos_summary(detection_map(gt, results, THUMOS14_TIOU, subset="test", classes=CLASSES))
        for key, value in scored.items():
            assert value == pytest.approx(metrics[f"{branch}/{key}"], abs=1e-12)
    timeline = json.loads((tmp_path / "timeline.json").read_text())
    video = timeline["videos"][0]
    assert video["key"] == "v-test-0" and video["labels"] == ["red circle", "green triangle"]
    assert len(video["cas"]["cbp"]) == 2 and len(video["cas"]["cbp"][0]) == 30  # labels × snippets
