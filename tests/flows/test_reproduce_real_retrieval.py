"""The real-benchmark path of the retrieval DAG: ``vlrepro reproduce {clip4clip,stan,ucofia} --dataset msrvtt
--data-dir DIR --smoke`` on a fixture written here in MSR-VTT's official layout (`write_msrvtt`: ``msrvtt_data/`` +
``MSRVTT/videos/all/``), with one missing test video and one truncated training video.

The three papers run in one process on one run root (so they share the benchmark's ingest, as users' runs do), CLIP4Clip
through the CLI's own entry point (its ``--data-dir`` forwarding and ``--json``), STAN and UCoFiA through their flows.
Each asserts what a user reads off the result: finite metrics of every trained variant, the paper's numbers beside
ours (comparable: the run is on the paper's benchmark), the global batch and device count, the evaluated gallery
size and the ledger of the videos the run could not use (in the result, in the run root, on the MLflow summary run).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.media import encode, moving_square
from tests.pipelines.test_retrieval_benchmarks import write_msrvtt

#: 1k-A rows of the fixture: video9 has no file (missing), the others are on disk
TEST_ROWS = [("video8", "a cat plays with a ball"), ("video9", "a man sings"), ("video10", "a dog runs"),
             ("video11", "a car turns left")]  # fmt: skip
TRAIN = [f"video{i}" for i in range(8)]  # train-9k of `write_msrvtt`: video0..7; video3 is truncated
MISSING, TRUNCATED = "video9", "video3"


def write_fixture(base: Path) -> Path:
    """MSR-VTT's layout under `base`: the annotation files and 4-s 32×32 videos (4 frames at 1 fps), all different."""
    write_msrvtt(base, TEST_ROWS)
    videos = base / "MSRVTT" / "videos" / "all"
    for i, vid in enumerate([*TRAIN, "video8", "video10", "video11"]):
        if vid == TRUNCATED:  # moov at the end, cut in half: the header is gone (failed_probe)
            whole = encode(videos / "whole.mp4", moving_square(16, 32, 32, seed=i), fps=4, extra={"movflags": ""})
            (videos / f"{vid}.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
            whole.unlink()
        else:
            encode(videos / f"{vid}.mp4", moving_square(16, 32, 32, seed=i), fps=4)
    return base


def cli(argv: list[str]) -> tuple[int, str, str]:
    """`flows.cli.main` in this process: (exit code, stdout, stderr)."""
    from flows.cli import main

    previous = signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The three smoke DAGs on one root: (root, paper → result)."""
    import torch

    from flows.reproduce_stan import reproduce_stan
    from flows.reproduce_ucofia import reproduce_ucofia

    base = tmp_path_factory.mktemp("real")
    data = write_fixture(base / "download")
    root = base / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # one head of CLIP4Clip's four (each job costs ~15 s of Ray start-up on 2 cores): the others are the same path
        argv = [
            "reproduce",
            "clip4clip",
            "--dataset",
            "msrvtt",
            "--data-dir",
            str(data),
            "--smoke",
            "--variant",
            "meanP",
        ]
        rc, out, err = cli([*argv, "--root", str(root), "--json"])
        assert rc == 0, err[-3000:]
        results = {"clip4clip": json.loads(out.strip().splitlines()[-1])}
        for paper, flow in (("stan", reproduce_stan), ("ucofia", reproduce_ucofia)):
            results[paper] = flow(dataset="msrvtt", root=str(root), size="smoke", data_dir=str(data))
    finally:
        torch.set_num_threads(threads)
    return root, results


TRAINED = {"clip4clip": ["meanP"], "stan": ["stan"], "ucofia": ["ucofia"]}
HEADS = ["meanP", "seqLSTM", "seqTransf", "tightTransf"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_dags_train_evaluate_and_stand_beside_the_papers_numbers(
    smoke: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    _, results = smoke
    for paper, out in results.items():
        assert out["paper"] == paper and out["dataset"] == "msrvtt" and "mini_clip" not in out
        assert set(out["variants"]) == set(TRAINED[paper]), paper
        for variant, block in out["variants"].items():
            for direction in ("t2v", "v2t"):
                metrics = block["overall"][direction]
                assert set(metrics) == {"R@1", "R@5", "R@10", "MdR", "MnR"}, (paper, variant)
                assert all(math.isfinite(v) for v in metrics.values()), (paper, variant, metrics)
            # the scale of the run: smoke's global batch 4 on one CPU worker
            assert (block["global_batch"], block["devices"], block["device"]) == (4, 1, "cpu"), (paper, variant)
            assert block["model_version"] is not None  # registered as <paper>-msrvtt-smoke, never the paper's model
        rows = out["paper_vs_ours"]
        assert rows and all(r["comparable"] for r in rows), paper  # the run is on the paper's own benchmark
        for row in rows:
            if row["variant"] in TRAINED[paper]:
                ours = out["variants"][row["variant"]]["overall"]
                direction, metric = row["metric"].split("/")
                assert row["ours"] == pytest.approx(ours[direction][metric]), row
                assert row["delta"] == pytest.approx(round(row["ours"] - row["paper"], 2))
                assert (row["global_batch"], row["devices"]) == (4, 1)
            else:  # a variant this run did not train (CLIP4Clip's other heads, STAN's ViT-B/16 row)
                assert (row["ours"], row["delta"], row["global_batch"]) == (None, None, None), row
    assert any(r["variant"] == "stan-b16" for r in results["stan"]["paper_vs_ours"])
    assert [r["variant"] for r in results["clip4clip"]["paper_vs_ours"]] == HEADS
    # UCoFiA's Sinkhorn over the training-caption bank stands beside the raw scores
    assert results["ucofia"]["variants"]["ucofia"]["sinkhorn"] is True
    assert "no_sinkhorn" in results["ucofia"]["variants"]["ucofia"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_ledger_lists_the_missing_and_the_truncated_video_and_the_gallery_size(
    smoke: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    from infra.tracking import Tracker
    from pipelines import shards

    root, results = smoke
    frames = {out["frames_stage"] for out in results.values()}
    assert len(frames) == 1, frames  # one ingest, shared by the three papers (same fixture, same smoke frames)
    (stage,) = frames
    manifest = {r["key"]: r for r in shards.read_manifest(stage)}
    assert set(manifest) == {*TRAIN, "video8", "video10", "video11"}  # one row per found video; the missing has none
    assert manifest[TRUNCATED]["status"] == "failed_probe" and manifest["video8"]["split"] == "test-1k-A"
    assert all(out["features_stage"] is None for out in results.values())  # end to end from pixels: no features

    for out in results.values():
        ledger = out["ledger"]
        gallery = ledger["gallery"]
        assert gallery == {"split": "test-1k-A", "annotated": 4, "expected": 1000, "evaluated": 3, "queries": 3,
                           "complete": False}  # fmt: skip
        rows = {r["id"]: r for r in ledger["rows"]}
        assert set(rows) == {MISSING, TRUNCATED}
        assert rows[MISSING]["status"] == "not_found" and rows[MISSING]["split"] == "test-1k-A"
        assert "video9" in rows[MISSING]["reason"] and not rows[MISSING]["used"]
        assert rows[TRUNCATED]["status"] == "failed_probe" and rows[TRUNCATED]["split"] == "train-9k"
        assert rows[TRUNCATED]["reason"] and not rows[TRUNCATED]["used"]
        assert ledger["splits"]["train-9k"]["usable"] == 7 and ledger["counts"] == {"failed_probe": 1, "not_found": 1}
        # the ledger file in the run root, and the same ledger on the run's MLflow summary run
        on_disk = json.loads(Path(ledger["path"]).read_text())
        assert Path(ledger["path"]).is_relative_to(root) and on_disk["rows"] == ledger["rows"]
        tracker = Tracker.for_run_root(str(root))
        logged = {f.path for f in tracker.client.list_artifacts(out["summary_run_id"])}
        assert "ledger.json" in logged and "tables" in logged
        dest = root.parent / f"artifacts-{out['paper']}"
        dest.mkdir(exist_ok=True)
        path = tracker.client.download_artifacts(out["summary_run_id"], "ledger.json", str(dest))
        assert json.loads(Path(path).read_text())["gallery"] == gallery
        run = tracker.client.get_run(out["summary_run_id"])
        assert run.data.metrics["gallery/evaluated"] == 3 and run.data.tags["vlrepro.kind"] == "reproduction"


def test_print_config_shows_the_papers_config_without_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--print-config`` of a benchmark spec needs no ``--data-dir`` and creates nothing; ``--smoke`` is its tiny
    size; the paper's own config (ViT-B/32 OpenAI weights, 12 frames, 32 words, batch 128, lr 1e-4 with CLIP ×1e-3,
    5 epochs, 1k-A) otherwise."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(["reproduce", "clip4clip", "--dataset", "msrvtt", "--print-config", "--json"])
    assert rc == 0, err
    configs = json.loads(out.strip().splitlines()[-1])
    assert set(configs) == {f"clip4clip/{h}" for h in HEADS}  # every head of the paper's table; no mini CLIP job
    cfg = configs["clip4clip/seqTransf"]
    assert cfg["model"]["clip"] == {"arch": "ViT-B-32-quickgelu", "pretrained": "openai", "context_length": None,
                                    "cache_dir": None}  # fmt: skip
    assert (cfg["model"]["input"], cfg["model"]["max_frames"], cfg["model"]["max_words"]) == ("pixels", 12, 32)
    assert (cfg["train"]["batch_size"], cfg["train"]["epochs"], cfg["train"]["optim"]["lr"]) == (128, 5, 1e-4)
    assert cfg["model"]["clip_lr_scale"] == 1e-3 and cfg["model"]["head"] == "seqTransf"
    assert (cfg["data"]["train_split"], cfg["data"]["eval_split"], cfg["data"]["stage"]) == (
        "train-9k",
        "test-1k-A",
        "<frames stage>",
    )
    rc, out, err = cli(["reproduce", "stan", "--dataset", "msrvtt", "--smoke", "--print-config", "--json"])
    assert rc == 0, err
    stan = json.loads(out.strip().splitlines()[-1])["stan/stan"]
    assert stan["model"]["clip"]["arch"] == "vlrepro-tiny" and stan["model"]["max_frames"] == 4
    assert list(tmp_path.iterdir()) == []  # no run root, nothing else


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["reproduce", "ucofia", "--dataset", "msrvtt", "--smoke"], "give its folder (--data-dir DIR"),
        (["reproduce", "stan", "--data-dir", "."], "stan on mini-retrieval does not take --data-dir"),
        (
            ["reproduce", "clip4clip", "--dataset", "msrvtt", "--data-dir", ".", "--features", "."],
            "clip4clip on msrvtt does not take --features",
        ),
        (["reproduce", "clip4clip", "--dataset", "msrvtt", "--smoke", "--size", "paper"], "--smoke is --size smoke"),
    ],
)
def test_benchmark_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    rc, out, err = cli([*args, "--json"])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert needle in json.loads(out.strip().splitlines()[-1])["error"]
