"""LocVTP recipes on synthetic stages (tiny CLIP): the clip samplers and the moment→clip map by hand, deterministic and
equal pre-training batches per rank drawn from sentence runs of training videos only, the prefix and clip-feature
stages (same keys, hashes, the baseline = per-frame CLIP), 2D-TAN's resampling against its code, and the grounding
evaluation on hand-made predictors."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.common.clip import ClipConfig, build_clip, preprocess_frames
from models.config import to_dict
from models.engine.loop import fit_local
from models.grounding import GroundingHeadConfig
from models.locvtp import LocVTPConfig
from models.locvtp import build as build_locvtp
from pipelines import shards
from pipelines.datasets.grounding import GroundingQuery, write_charades_sta
from pipelines.features.locvtp_clips import (
    LocVTPFeatureConfig,
    PrefixTokenConfig,
    clip_frame_indices,
    dense_clip_indices,
    extract_clips,
    extract_prefix,
    iter_features,
    moment_clips,
)
from recipes import RECIPES
from recipes import grounding as grounding_recipe
from recipes import locvtp as locvtp_recipe
from recipes.grounding import average_to_fixed_length
from recipes.locvtp import SEPARATOR, moment_retrieval, sentence_runs

FPS = 8.0
N, W, D = 4, 32, 32  # tiny CLIP: 2×2 patches, width 32, embed 32
COLOURS = ["red", "blue", "green", "white", "yellow"]
DIRS = ["left", "right", "up", "down"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**kw: Any) -> LocVTPConfig:
    """Tiny CLIP, 3 clips of 8 frames, 2 frames per clip (every 4th frame), the last vision block trainable."""
    base = dataclasses.replace(
        LocVTPConfig.tiny(), num_clips=3, clip_frames=8, frames_per_clip=2, trainable_blocks=1, input="tokens"
    )
    return dataclasses.replace(base, **kw)


# ----- a synthetic world: videos, their queries, a prefix-like stage ----------------------------------------------


def make_queries(n_videos: int, n_test: int) -> tuple[dict[str, dict[str, Any]], list[GroundingQuery]]:
    """Videos of 64–88 frames at 8 fps with 3–4 non-overlapping 1.5–2.5 s events, one sentence each."""
    rng = np.random.default_rng(0)
    videos, queries = {}, []
    for i in range(n_videos):
        split = "test" if i < n_test else "train"
        key = f"v-{split}-{i:03d}"
        n = 64 + 8 * int(rng.integers(0, 4))
        t = 0.5
        sentences = []
        for e in range(3 + i % 2):
            length = 1.5 + 0.5 * int(rng.integers(0, 3))
            if t + length > n / FPS:
                break
            sentence = f"{COLOURS[(i + e) % 5]} {DIRS[e % 4]}"  # short: 3 fit the tiny CLIP's 12 tokens
            queries.append(GroundingQuery(key, t, t + length, sentence))
            sentences.append(sentence)
            t += length + 0.25
        videos[key] = {"split": split, "n": n, "duration": n / FPS, "captions": sentences}
    return videos, queries


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """12 videos (4 test), query files, and a prefix stage whose token [0, 0] of stored frame i is its source index
    4i; shard 0 mixes test and training videos (as the mini world's frames stage does)."""
    root = tmp_path_factory.mktemp("locvtp")
    videos, queries = make_queries(12, 4)
    write_charades_sta([q for q in queries if q.video.startswith("v-train")], root / "train.txt")
    write_charades_sta([q for q in queries if q.video.startswith("v-test")], root / "test.txt")
    uri = str(root / "prefix")
    keys = sorted(videos)
    rng = np.random.default_rng(1)
    summaries = []
    for index, part in enumerate([keys[:6], keys[6:9], keys[9:]]):
        samples, rows = [], []
        for key in part:
            v = videos[key]
            arr = rng.normal(size=(-(-v["n"] // 4), 1 + N, W)).astype(np.float16)
            arr[:, 0, 0] = 4 * np.arange(len(arr))  # the source frame index, readable after sampling
            meta = {**v, "key": key, "fps": FPS, "frame_stride": 4, "n_source_frames": v["n"]}
            samples.append((key, {"npy": arr, "json": meta}))
            rows.append({"key": key, "status": "ok", "error": "", "split": v["split"], "duration": v["duration"]})
        shards.write_shard(uri, index, samples, rows, {"n_samples": len(samples)})
        summaries.append({"n_samples": len(samples), "status_counts": {"ok": len(samples)}})
    shards.commit_stage(uri, summaries)
    return {"root": root, "stage": uri, "videos": videos, "queries": queries}


def pretrain_config(world: dict[str, Any], **model: Any) -> dict[str, Any]:
    return {
        "data": {"stage": world["stage"], "train_queries": str(world["root"] / "train.txt"),
                 "test_queries": str(world["root"] / "test.txt"), "repeats_per_epoch": 2},
        "model": to_dict(tiny_model(**model)),
        "train": {"epochs": 1, "batch_size": 4, "seed": 3},
    }  # fmt: skip


# ----- samplers ----------------------------------------------------------------------------------------------------


def test_dense_clips_cover_the_video_on_the_frame_grid() -> None:
    # 40 frames, clips of 16 read every 4th frame: [0,16) [16,32) [32,48) — the last one clamps at frame 36
    assert dense_clip_indices(40, 16, 4).tolist() == [[0, 4, 8, 12], [16, 20, 24, 28], [32, 36, 36, 36]]
    assert dense_clip_indices(32, 16, 4).shape == (2, 4)
    assert dense_clip_indices(3, 16, 16).tolist() == [[0, 1, 2] + [2] * 13]


def test_training_clips_are_segment_windows_on_the_grid() -> None:
    # 64 frames in 4 segments of 16: centred windows start at 0, 16, 32, 48
    assert clip_frame_indices(64, 4, 16, 4).tolist() == [[s, s + 4, s + 8, s + 12] for s in (0, 16, 32, 48)]
    # a span starting at frame 5: windows at 5, 21, 37, 53, floored to the video's 4-grid
    assert clip_frame_indices(64, 4, 16, 4, first=5)[:, 0].tolist() == [4, 20, 36, 52]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        first, n = int(rng.integers(0, 40)), int(rng.integers(20, 200))
        idx = clip_frame_indices(n, 8, 16, 4, rng, first=first)
        assert idx.shape == (8, 4) and np.all(idx % 4 == 0)
        assert idx.min() >= (first // 4) * 4 and idx.max() <= first + n - 1
        assert np.all(np.diff(idx[:, 0]) >= 0)  # clips in temporal order


def test_moment_to_clip_mapping() -> None:
    # 2 s clips: centres at 1, 3, 5, ...
    assert moment_clips(2.25, 4.25, 8, 2.0).tolist() == [False, True] + [False] * 6
    assert np.flatnonzero(moment_clips(2.0, 8.0, 8, 2.0)).tolist() == [1, 2, 3]
    assert np.flatnonzero(moment_clips(0.5, 1.0, 8, 2.0)).tolist() == [0]  # no centre inside: best overlap
    assert np.flatnonzero(moment_clips(1.5, 2.5, 8, 2.0)).tolist() == [0]  # ties go to the first clip


def test_sentence_runs_are_consecutive_distinct_and_fit_the_token_budget() -> None:
    qs = [GroundingQuery("v", float(i), i + 0.5, f"the red circle moves left number {i}") for i in range(5)]
    for seed in range(10):
        runs = sentence_runs(qs, 3, 2, np.random.default_rng(seed), "vlrepro-tiny", 32)
        firsts = [qs.index(run[0]) for run in runs]
        assert len(set(firsts)) == 2 and all(run == qs[f : f + 3] for f, run in zip(firsts, runs, strict=True))
    # 4 runs of 3 among 5 queries: only 3 starts exist, so one repeats
    assert len(sentence_runs(qs, 3, 4, np.random.default_rng(0), "vlrepro-tiny", 32)) == 4
    # 16 tokens hold SOT + EOT + 14: one sentence (9 tokens) fits, two joined (17) do not
    assert [len(r) for r in sentence_runs(qs, 3, 1, np.random.default_rng(0), "vlrepro-tiny", 16)] == [1]


# ----- pre-training batches ----------------------------------------------------------------------------------------


def test_batches_are_deterministic_equal_per_rank_and_from_training_videos(world: dict[str, Any]) -> None:
    recipe = locvtp_recipe.build(pretrain_config(world))
    train_keys = {k for k, v in world["videos"].items() if v["split"] == "train"}
    assert recipe.steps_per_epoch(1) == 2 * 2 and recipe.steps_per_epoch(2) == 2 * 1  # passes × ⌊8 / 4⌋, ⌊3/2 shards⌋
    one = list(recipe.batches(0, 0, 1))
    again = list(recipe.batches(0, 0, 1))
    assert len(one) == recipe.steps_per_epoch(1)
    for a, b in zip(one, again, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["frames"], b["frames"]) and torch.equal(a["text"], b["text"])
    assert all(set(b["keys"]) <= train_keys and len(set(b["keys"])) == len(b["keys"]) for b in one)
    assert one[0]["frames"].shape == (4, 3, 2, 1 + N, W) and one[0]["text"].shape == (4, 12)
    assert bool(one[0]["clip_mask"].all())
    # replay from a data position = the tail of the full epoch (the engine's resume contract)
    tail = list(recipe.batches(0, 0, 1, start=3))
    assert len(tail) == 1 and torch.equal(tail[0]["frames"], one[3]["frames"])
    # another epoch draws other runs, offsets or order
    other = list(recipe.batches(1, 0, 1))
    assert any(not torch.equal(a["frames"], b["frames"]) for a, b in zip(one, other, strict=True))
    # two ranks: the same number of steps, half the batch each, different videos in a step
    ranks = [list(recipe.batches(0, r, 2)) for r in range(2)]
    assert [len(r) for r in ranks] == [2, 2]
    for a, b in zip(*ranks, strict=True):
        assert a["frames"].shape[0] == b["frames"].shape[0] == 2 and not set(a["keys"]) & set(b["keys"])


def test_an_example_is_a_sentence_run_and_clips_inside_its_span(world: dict[str, Any]) -> None:
    recipe = locvtp_recipe.build(pretrain_config(world))
    by_video = recipe.train_queries
    for key in sorted(by_video):
        arr = next(m["npy"] for k, m in shards.iter_stage(world["stage"]) if k == key)
        meta = {**world["videos"][key], "fps": FPS, "frame_stride": 4, "n_source_frames": world["videos"][key]["n"]}
        for seed in range(3):
            rng = np.random.default_rng(seed)
            (run,) = sentence_runs(by_video[key], 3, 1, rng, "vlrepro-tiny", 12)
            ex = recipe.example(arr, meta, run, rng)
            own = [q.sentence for q in by_video[key]]
            first = own.index(run[0].sentence)
            assert ex["text"].split(SEPARATOR) == own[first : first + 3]
            frames = ex["frames"][:, :, 0, 0].numpy()  # (T, F) source indices
            lo, hi = int(np.floor(run[0].start * FPS)) // 4 * 4, int(np.ceil(run[-1].end * FPS))
            assert frames.min() >= lo and frames.max() < hi and np.all(frames % 4 == 0)


def test_several_examples_per_video_share_a_batch(world: dict[str, Any]) -> None:
    cfg = pretrain_config(world)
    cfg["data"] |= {"examples_per_video": 2, "sentences": 1}
    recipe = locvtp_recipe.build(cfg)
    assert recipe.steps_per_epoch(1) == 2 * 4  # 2 videos per batch of 4: ⌊8 / 2⌋ steps per pass
    for batch in recipe.batches(0, 0, 1):
        keys = batch["keys"]
        assert len(keys) == 4 and keys[0] == keys[1] and keys[2] == keys[3] and keys[1] != keys[2]
        assert not torch.equal(batch["text"][0], batch["text"][1])  # two different moments of one video
    with pytest.raises(ValueError, match="multiple"):
        locvtp_recipe.build({**cfg, "data": {**cfg["data"], "examples_per_video": 3}})


def test_one_epoch_trains_and_evaluates_moment_retrieval(world: dict[str, Any]) -> None:
    assert RECIPES["locvtp"] == "recipes.locvtp:build"
    recipe = locvtp_recipe.build(pretrain_config(world))
    _, history = fit_local(recipe)
    metrics = history[-1]
    assert np.isfinite(metrics["train/loss"])
    for k in ("t2v/R@1", "v2t/R@1", "within/R@1", "t2v/MnR"):
        assert k in metrics and np.isfinite(metrics[k])
    n_test = sum(1 for q in world["queries"] if q.video.startswith("v-test"))
    assert 0 <= metrics["t2v/R@1"] <= 100 and 1 <= metrics["t2v/MnR"] <= n_test


def test_moment_retrieval_on_hand_made_features() -> None:
    e = np.eye(4, dtype=np.float32)
    clips = {"a": e[[0, 0, 1, 1]], "b": e[[2, 2, 3, 3]]}  # 2 s clips
    seconds = {"a": 2.0, "b": 2.0}
    qs = [GroundingQuery("a", 0.0, 4.0, "q0"), GroundingQuery("a", 4.0, 8.0, "q1"), GroundingQuery("b", 4.0, 8.0, "q3")]
    text = e[[0, 1, 3]]
    rep = moment_retrieval(clips, seconds, qs, text)
    assert rep["t2v"]["R@1"] == rep["v2t"]["R@1"] == rep["within"]["R@1"] == 100.0
    wrong = moment_retrieval(clips, seconds, qs, e[[1, 0, 2]])  # q0 ↔ q1 swapped, q3 points at b's first half
    assert wrong["t2v"]["R@1"] == 0.0 and wrong["within"]["R@1"] == pytest.approx(100 / 3)  # q3 is alone in its video


# ----- the feature stages ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A frames stage of 5 videos (32×32 uint8, 19–40 frames) in 2 shards, and a saved tiny CLIP."""
    root = tmp_path_factory.mktemp("frames")
    torch.manual_seed(0)
    weights = root / "clip.pt"
    torch.save(build_clip(ClipConfig(arch="vlrepro-tiny", pretrained=None, context_length=12)).state_dict(), weights)
    uri = str(root / "frames")
    rng = np.random.default_rng(2)
    videos = {}
    for index, keys in enumerate([["va", "vb", "vc"], ["vd", "ve"]]):
        samples, rows = [], []
        for j, key in enumerate(keys):
            n = 19 + 7 * (3 * index + j)
            frames = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            meta = {"split": "train" if key != "ve" else "test", "fps": FPS, "duration": n / FPS,
                    "captions": [f"the red circle moves {d}" for d in DIRS[: 1 + j]]}  # fmt: skip
            videos[key] = (frames, meta)
            samples.append((key, {"npy": frames, "json": meta}))
            rows.append({"key": key, "status": "ok", "error": "", "split": meta["split"]})
        shards.write_shard(uri, index, samples, rows, {"n_samples": len(samples)})
    shards.commit_stage(
        uri, [{"n_samples": 3, "status_counts": {"ok": 3}}, {"n_samples": 2, "status_counts": {"ok": 2}}]
    )
    return {"root": str(root / "runs"), "frames": uri, "weights": str(weights), "videos": videos}


def test_feature_stages_keep_keys_and_the_baseline_is_per_frame_clip(frames_world: dict[str, Any]) -> None:
    cfg = tiny_model(clip=ClipConfig(arch="vlrepro-tiny", pretrained=frames_world["weights"]), sentence="eot")
    prefix = extract_prefix(frames_world["frames"], frames_world["root"], "toy", PrefixTokenConfig(model=cfg))
    keys, arrays, _ = shards.load_stage(prefix["stage_uri"])
    assert keys == sorted(frames_world["videos"]) and prefix["frame_stride"] == 4
    assert "locvtp-prefix1" in prefix["stage_uri"]  # stem + the first of 2 blocks
    assert [a.shape for a in arrays] == [(-(-len(frames_world["videos"][k][0]) // 4), 1 + N, W) for k in keys]
    assert extract_prefix(frames_world["frames"], frames_world["root"], "toy", PrefixTokenConfig(model=cfg))[
        "shards_written"
    ] == 0  # fmt: skip

    base = extract_clips(prefix["stage_uri"], frames_world["root"], "toy", LocVTPFeatureConfig(model=cfg))
    clip = build_clip(ClipConfig(arch="vlrepro-tiny", pretrained=frames_world["weights"], context_length=12)).eval()
    seen = []
    for key, feats, text, meta in iter_features(base["stage_uri"]):
        seen.append(key)
        frames, source_meta = frames_world["videos"][key]
        idx = dense_clip_indices(len(frames), 8, 2)  # (C, 2)
        assert feats.shape == (len(idx), D) and meta["clip_seconds"] == 1.0
        with torch.no_grad():  # the oracle: mean of the clip's frames' CLIP embeddings, then unit norm
            per_frame = clip.encode_image(preprocess_frames(frames[idx.ravel()], 32)).view(len(idx), 2, D)
            expected = F.normalize(per_frame.mean(dim=1), dim=-1).numpy()
            sentences = F.normalize(clip.encode_text(clip.tokenize(source_meta["captions"])), dim=-1).numpy()
        assert np.allclose(feats, expected, atol=2e-2)  # float16 prefix tokens
        assert np.allclose(text, sentences, atol=1e-5) and text.shape == (len(source_meta["captions"]), D)
    assert seen == sorted(frames_world["videos"])

    # a LocVTP checkpoint is another stage; the same checkpoint again is the same one, untouched
    model = build_locvtp(cfg)
    with torch.no_grad():
        for layer in model.encoder.temporal:
            layer.fc.weight.normal_(std=0.5)
    ckpt = Path(frames_world["root"]) / "locvtp.pt"
    torch.save(model.state_dict(), ckpt)
    trained = LocVTPFeatureConfig(model=cfg, checkpoint=str(ckpt))
    out = extract_clips(prefix["stage_uri"], frames_world["root"], "toy", trained)
    assert out["stage_uri"] != base["stage_uri"] and out["n_samples"] == 5
    assert extract_clips(prefix["stage_uri"], frames_world["root"], "toy", trained)["shards_written"] == 0
    k0, f0, _, _ = next(iter_features(out["stage_uri"]))
    assert k0 == keys[0] and not np.allclose(f0, next(iter_features(base["stage_uri"]))[1], atol=1e-3)


# ----- grounding ---------------------------------------------------------------------------------------------------


def tan_average_to_fixed_length(visual_input: torch.Tensor, num_sample_clips: int) -> torch.Tensor:
    """2D-TAN `lib/datasets/__init__.py::average_to_fixed_length`, transcribed."""
    num_clips = visual_input.shape[0]
    idxs = torch.arange(0, num_sample_clips + 1, 1.0) / num_sample_clips * num_clips
    idxs = torch.min(torch.round(idxs).long(), torch.tensor(num_clips - 1))
    new_visual_input = []
    for i in range(num_sample_clips):
        s_idx, e_idx = idxs[i].item(), idxs[i + 1].item()
        if s_idx < e_idx:
            new_visual_input.append(torch.mean(visual_input[s_idx:e_idx], dim=0))
        else:
            new_visual_input.append(visual_input[s_idx])
    return torch.stack(new_visual_input, dim=0)


@pytest.mark.parametrize(("c", "n"), [(20, 16), (16, 16), (7, 16), (33, 8), (1, 4)])
def test_average_to_fixed_length_matches_2d_tan(c: int, n: int) -> None:
    x = np.random.default_rng(c).normal(size=(c, 5)).astype(np.float32)
    assert np.allclose(average_to_fixed_length(x, n), tan_average_to_fixed_length(torch.from_numpy(x), n).numpy())


@pytest.fixture(scope="module")
def clip_stage(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A clip-feature stage for the synthetic videos: 1 s clips, random unit features, one sentence vector each."""
    uri = str(tmp_path_factory.mktemp("clips") / "locvtp-clips")
    rng = np.random.default_rng(5)
    samples, rows = [], []
    for key, v in sorted(world["videos"].items()):
        feats = rng.normal(size=(v["n"] // 8, D)).astype(np.float32)
        text = rng.normal(size=(len(v["captions"]), D)).astype(np.float32)
        meta = {**v, "fps": FPS, "clip_seconds": 1.0}
        samples.append((key, {"npy": feats / np.linalg.norm(feats, axis=1, keepdims=True), "text.npy": text,
                              "json": meta}))  # fmt: skip
        rows.append({"key": key, "status": "ok", "error": "", "split": v["split"]})
    shards.write_shard(uri, 0, samples, rows, {"n_samples": len(samples)})
    shards.commit_stage(uri, [{"n_samples": len(samples), "status_counts": {"ok": len(samples)}}])
    return uri


def grounding_config(world: dict[str, Any], stage: str) -> dict[str, Any]:
    return {
        "data": {"stage": stage, "train_queries": str(world["root"] / "train.txt"),
                 "test_queries": str(world["root"] / "test.txt"), "eval_batch": 3},
        "model": to_dict(GroundingHeadConfig.tiny()),
        "train": {"epochs": 2, "batch_size": 4, "seed": 1},
    }  # fmt: skip


class Predictor(nn.Module):
    """A hand-made head: proposes the ground-truth moment shifted by `shift` seconds (0 = perfect)."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.cfg = GroundingHeadConfig.tiny()
        self.shift = shift

    def candidates(self, batch: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        gt = batch["moments"].numpy().astype(np.float64)
        return [(gt[i : i + 1] + self.shift, np.ones(1)) for i in range(len(gt))]


def test_grounding_evaluation_of_hand_made_predictors(world: dict[str, Any], clip_stage: str) -> None:
    assert RECIPES["grounding"] == "recipes.grounding:build"
    recipe = grounding_recipe.build(grounding_config(world, clip_stage))
    test = recipe.splits["test"]
    assert [q.video for q in test.queries] == [q.video for q in world["queries"] if q.video.startswith("v-test")]
    perfect = recipe.evaluate(Predictor())
    assert set(perfect) == {f"R@{n},IoU@{m}" for n in (1, 5) for m in ("0.3", "0.5", "0.7")}
    assert all(v == 100.0 for v in perfect.values())
    # shifted by a third of each moment? use a fixed 0.75 s: IoU = (L − 0.75) / (L + 0.75) for L ∈ {1.5, 2, 2.5}
    lengths = test.moments[:, 1] - test.moments[:, 0]
    iou = (lengths - 0.75) / (lengths + 0.75)
    shifted = recipe.evaluate(Predictor(0.75))
    for m in (0.3, 0.5, 0.7):
        assert shifted[f"R@1,IoU@{m}"] == pytest.approx(100 * float(np.mean(iou > m)))


def test_grounding_batches_and_a_short_training(world: dict[str, Any], clip_stage: str) -> None:
    recipe = grounding_recipe.build(grounding_config(world, clip_stage))
    train = recipe.splits["train"]
    n = len(train.queries)
    assert recipe.steps_per_epoch(1) == recipe.steps_per_epoch(2) == n // 4
    one = list(recipe.batches(0, 0, 1))
    assert all(torch.equal(a["clips"], b["clips"]) for a, b in zip(one, recipe.batches(0, 0, 1), strict=True))
    assert one[0]["clips"].shape == (4, 8, D) and one[0]["query"].shape == (4, D)
    halves = [list(recipe.batches(0, r, 2)) for r in range(2)]
    for full, a, b in zip(one, *halves, strict=True):  # rank r holds its half of the same global batch
        assert torch.equal(torch.cat([a["moments"], b["moments"]]), full["moments"])
    _, history = fit_local(recipe)
    assert np.isfinite(history[-1]["train/loss"])
    assert all(0 <= history[-1][f"R@{k},IoU@{m}"] <= 100 for k in (1, 5) for m in ("0.3", "0.5", "0.7"))
