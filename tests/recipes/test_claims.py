"""Claims judged outside noise (`recipes.evaluation.claims`): the specs' checks, the verdict of each check on
synthetic reports whose answer is known, the per-query ranks the retrieval reports carry, and pooling seeds from a
run root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.common.metrics.bootstrap import chance_recall
from models.common.metrics.retrieval import BLOCK_RANKS, recall_metrics
from pipelines.datasets.retrieval_data import EvalSet, flatten, report
from recipes.evaluation.claims import (
    ROW_KEYS,
    evaluate_claims,
    group_verdicts,
    pool_runs,
    query_ranks,
    reports_of,
)
from recipes.spec import ClaimCheck, SpecError, _spec_from, load_spec

Q, G = 40, 20  # test captions (2 per video) and videos


def _report(t2v: Any, v2t: Any, **blocks: tuple[Any, Any]) -> dict[str, Any]:
    """A report holding only per-query ranks: overall, and other blocks (name → (t2v, v2t))."""
    return {
        "ranks": {"t2v": np.asarray(t2v), "v2t": np.asarray(v2t)},
        BLOCK_RANKS: {name: {"t2v": np.asarray(a), "v2t": np.asarray(b)} for name, (a, b) in blocks.items()},
    }


def _ranks(hit_fraction: float, n: int, seed: int) -> np.ndarray:
    """n ranks, a `hit_fraction` of them 0 (R@1 hits), the rest 1..9, shuffled."""
    rng = np.random.default_rng(seed)
    out = rng.integers(1, 10, size=n)
    out[rng.permutation(n)[: round(hit_fraction * n)]] = 0
    return out


def test_the_retrieval_specs_check_every_claim() -> None:
    for paper in ("clip4clip", "stan", "ucofia"):
        spec = load_spec(paper, "mini-retrieval")
        assert spec.claims and set(spec.checks) == set(spec.claims), paper
        for group, checks in spec.checks.items():
            assert checks or group in spec.unchecked, (paper, group)  # no check: the spec says why
            for check in checks:
                assert check.better in spec.variants and (check.chance or check.worse in spec.variants)
    stan = load_spec("stan", "mini-retrieval")
    assert [c.describe() for c in stan.checks["branch"]] == [
        "stan > posterior on overall t2v R@1",
        "posterior > baseline on overall t2v R@1",
        "stan > baseline on overall t2v R@1",
    ]
    ucofia = load_spec("ucofia", "mini-retrieval")
    assert ucofia.checks["sinkhorn"][0] == ClaimCheck(better="ucofia", worse="ucofia", worse_block="no_sinkhorn")
    clip4clip = load_spec("clip4clip", "mini-retrieval")
    heads = clip4clip.checks["heads"]
    assert ClaimCheck(better="seqTransf", worse="meanP", block="order") in heads
    assert {c.better for c in heads if c.chance} == set(clip4clip.variants)  # every head against chance


BASE = {"paper": "p", "dataset": "d", "jobs": {"p": {"recipe": "p"}}, "sizes": {"tiny": {}}, "metric": "m"}


def test_claims_keep_their_prose_and_bad_checks_are_errors() -> None:
    spec = _spec_from({**BASE, "variants": {"a": {}, "b": {}}, "claims": {"old": "a > b, prose only"}}, "x")
    assert (spec.claims, spec.checks) == ({"old": "a > b, prose only"}, {})
    for bad in (
        {"better": "a", "worse": "b", "chance": True},  # both a rival and chance
        {"better": "a"},  # neither
        {"better": "a", "worse": "c"},  # not a variant
        {"better": "a", "worse": "b", "metric": "MdR"},  # not a mean over queries
        {"better": "a", "worse": "b", "direction": "t2t"},
        {"better": "a", "worse": "a"},  # itself on the same block
        {"better": "a", "worse": "b", "against": "x"},  # unknown key
    ):
        claims = {"g": {"text": "a > b", "checks": [bad]}}
        with pytest.raises(SpecError):
            _spec_from({**BASE, "variants": {"a": {}, "b": {}}, "claims": claims}, "x")


def test_verdicts_on_reports_with_known_answers() -> None:
    spec = load_spec("ucofia", "mini-retrieval")
    full = [
        _report(_ranks(0.6, Q, s), _ranks(0.6, G, s), no_sinkhorn=(_ranks(0.2, Q, s), _ranks(0.2, G, s)))
        for s in range(3)
    ]
    reports = {
        "ucofia": full,
        "video-sentence": [_report(_ranks(0.1, Q, 10 + s), _ranks(0.1, G, 10 + s)) for s in range(3)],  # far worse
        "sentence-frame": [_report(np.zeros(Q, int), np.zeros(G, int))],  # better on every query: refuted
        "mean-pool": full,  # the same models: within noise
    }  # patch-word and softmax were not trained
    rows = evaluate_claims(spec, reports, n_boot=500)
    by = {r["check"]: r for r in rows}
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    assert by["ucofia > video-sentence on overall t2v R@1"]["reproduced"] is True
    levels = by["ucofia > sentence-frame on overall t2v R@1"]
    assert levels["reproduced"] is False and levels["ci"][1] < 0 and levels["seeds"] == 1
    assert (levels["better_mean"], levels["worse_mean"], levels["mean_diff"]) == (60.0, 100.0, -40.0)
    assert levels["better_sd"] == 0.0 and levels["worse_sd"] is None  # one seed: no spread
    same = by["ucofia > mean-pool on overall t2v R@1"]
    assert same["reproduced"] == "within noise" and same["mean_diff"] == 0.0 and same["ci"][0] < 0 < same["ci"][1]
    skipped = by["ucofia > patch-word on overall t2v R@1"]
    assert skipped["reproduced"] is None and skipped["skipped"] == "patch-word was not trained in this run"
    sinkhorn = by["ucofia > ucofia[no_sinkhorn] on overall t2v R@1"]
    assert (sinkhorn["reproduced"], sinkhorn["mean_diff"], sinkhorn["seeds"], sinkhorn["queries"]) == (True, 40.0, 3, Q)
    diagnostic = [r for r in rows if r["group"] == "levels (one model)"]
    assert (
        len(diagnostic) == 1 and diagnostic[0]["check"] is None and diagnostic[0]["skipped"].startswith("not checked")
    )
    assert group_verdicts(rows) == {
        "levels": False,
        "aggregation": "within noise",
        "sinkhorn": True,
        "levels (one model)": None,
    }
    assert evaluate_claims(spec, reports, n_boot=500) == rows  # deterministic


def test_chance_and_subset_checks() -> None:
    spec = load_spec("clip4clip", "mini-retrieval")
    order = np.array([0, 5] * 6), np.array([0, 1] * 3)  # the order subset: 12 captions, 6 videos
    reports = {
        "meanP": [_report(_ranks(0.05, Q, 1), _ranks(0.05, G, 1), order=(np.full(12, 3), np.full(6, 3)))],
        "seqTransf": [_report(_ranks(0.5, Q, 2), _ranks(0.5, G, 2), order=order)],
    }
    by = {r["check"]: r for r in evaluate_claims(spec, reports, n_boot=500)}
    chance = by["seqTransf > chance on overall t2v R@1"]
    assert chance["worse_mean"] == pytest.approx(round(chance_recall(G, 1), 3))  # 1 in 20 videos
    assert chance["reproduced"] is True and chance["mean_diff"] == pytest.approx(50.0 - 5.0)
    assert by["seqTransf > meanP on order t2v R@1"]["mean_diff"] == 50.0
    assert by["seqTransf > meanP on order v2t R@1"]["queries"] == 6
    missing = by["tightTransf-seqText > meanP on order t2v R@1"]
    assert missing["skipped"] == "tightTransf-seqText was not trained in this run"
    no_ranks = evaluate_claims(spec, {"meanP": [{"overall": {}}], "meanP-1frame": reports["meanP"]}, n_boot=50)
    frames = next(r for r in no_ranks if r["check"] == "meanP > meanP-1frame on overall t2v R@1")
    assert frames["skipped"] == "meanP's report has no per-query ranks for overall/t2v"


def test_a_retrieval_report_carries_the_ranks_behind_its_metrics() -> None:
    rng = np.random.default_rng(0)
    keys = [f"v{i}" for i in range(8)]
    caption_video = np.repeat(np.arange(8), 2)  # (16,)
    sim = rng.normal(size=(16, 8))
    ev = EvalSet(keys, [np.zeros(1)] * 8, [f"c{i}" for i in range(16)], caption_video)
    rep = report(sim, ev, {"order": ["v1", "v2", "v5"], "tiny": ["v3"]})
    for block in ("overall", "order"):
        for direction in ("t2v", "v2t"):
            ranks = query_ranks(rep, block, direction)
            assert ranks is not None and recall_metrics(ranks) == rep[block][direction]
    assert len(query_ranks(rep, "order", "t2v")) == 6 and len(query_ranks(rep, "order", "v2t")) == 3  # type: ignore[arg-type]
    assert query_ranks(rep, "tiny", "t2v") is None  # a subset of one video is not scored
    assert not any("ranks" in k for k in flatten(rep))  # the rank arrays are no metrics


def _job(
    root: Path, name: str, variant: str, config: dict[str, Any], ranks: list[int], paper: str = "clip4clip"
) -> None:
    """A finished job on `root` as `infra.training_job.run_job` leaves it: record, job.json, checkpoint report."""
    model_dir, checkpoint = root / "models" / name, root / "ray" / name / "checkpoint_000001"
    model_dir.mkdir(parents=True)
    checkpoint.mkdir(parents=True)
    (model_dir / "job.json").write_text(json.dumps({"config": config, "tags": {"vlrepro.variant": variant}}))
    report = {"overall": {}, "ranks": {"t2v": ranks, "v2t": ranks}}
    (checkpoint / "report.json").write_text(json.dumps({"metrics": {}, "report": report}))
    record = {"run_name": name, "paper": paper, "model_dir": str(model_dir), "checkpoint": str(checkpoint)}
    (root / "jobs").mkdir(exist_ok=True)
    (root / "jobs" / f"{name}.json").write_text(json.dumps({**record, "report": {"overall": {}}}))


def test_pool_runs_finds_the_other_seeds_of_each_job(tmp_path: Path) -> None:
    spec = load_spec("clip4clip", "mini-retrieval")

    def config(seed: int, lr: float = 0.002, text_init: str = "") -> dict[str, Any]:
        return {"train": {"seed": seed, "optim": {"lr": lr}}, "model": {"head": "h", "text_init": text_init}}

    _job(tmp_path, "meanP-s42", "meanP", config(42), [0, 1])
    _job(tmp_path, "meanP-s1", "meanP", config(1), [1, 1])
    _job(tmp_path, "meanP-s2", "meanP", config(2), [0, 0])
    _job(tmp_path, "meanP-lr", "meanP", config(1, lr=0.01), [0, 0])  # another config: not a seed of it
    _job(tmp_path, "meanP-stan", "meanP", config(3), [0, 0], paper="stan")  # another paper
    _job(tmp_path, "seqTransf-s42", "seqTransf", config(42), [0, 0])
    # tightTransf-seqText starts from the seqTransf model of its own seed (extra.needs): that path differs too
    _job(tmp_path, "tight-s42", "tightTransf-seqText", config(42, text_init="/m/seqTransf-s42"), [0, 0])
    _job(tmp_path, "tight-s1", "tightTransf-seqText", config(1, text_init="/m/seqTransf-s1"), [0, 0])
    (tmp_path / "jobs" / "meanP-s3.stale-1.json").write_text("{}")  # a set-aside record is no job
    runs = pool_runs(
        str(tmp_path), spec, {"meanP": "meanP-s42", "seqTransf": "seqTransf-s42", "tightTransf-seqText": "tight-s42"}
    )
    assert runs == {
        "meanP": ["meanP-s42", "meanP-s1", "meanP-s2"],
        "seqTransf": ["seqTransf-s42"],
        "tightTransf-seqText": ["tight-s42", "tight-s1"],
    }
    reports = reports_of(str(tmp_path), runs)
    assert [r["ranks"]["t2v"] for r in reports["meanP"]] == [[0, 1], [1, 1], [0, 0]]  # from the checkpoints
