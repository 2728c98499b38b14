"""The one job builder: one name format for every DAG, names that follow the config, and no other builder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.jobs import HASH_LENGTH, run_name, training_job
from models.config import config_hash

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"train": {"epochs": 2}, "model": {"width": 8}}


def test_name_format_and_identity() -> None:
    digest = config_hash(CONFIG, length=HASH_LENGTH)
    assert run_name("dcc", CONFIG, part="1B", data="mini-wtal-tiny-s0") == f"dcc-1B-mini-wtal-tiny-s0-{digest}"
    assert run_name("toy", CONFIG) == f"toy-{digest}"
    other = {"train": {"epochs": 3}, "model": {"width": 8}}
    assert run_name("dcc", other) != run_name("dcc", CONFIG)
    with pytest.raises(ValueError):
        run_name("../escape", CONFIG)


def test_training_job_fields(tmp_path: Path) -> None:
    root = str(tmp_path)
    job = training_job(
        paper="stan",
        recipe="stan",
        config=CONFIG,
        root=root,
        metric="t2v/R@1",
        part="posterior",
        data="mini-retrieval-tiny-s0",
        num_workers=2,
        tags={"vlrepro.variant": "posterior"},
    )
    assert job["run_name"] == f"stan-posterior-mini-retrieval-tiny-s0-{config_hash(CONFIG, length=HASH_LENGTH)}"
    assert (job["method"], job["num_workers"], job["tags"]) == ("stan", 2, {"vlrepro.variant": "posterior"})
    assert "after" not in job and "dataset_stage" not in job
    # the identity, not the config, names the job (the mini CLIP's path differs between roots, its pairs do not)
    a = training_job(paper="p", recipe="r", config={"path": "/a/x"}, root=root, metric="m", identity={"path": "x"})
    b = training_job(paper="p", recipe="r", config={"path": "/b/x"}, root=root, metric="m", identity={"path": "x"})
    assert a["run_name"] == b["run_name"] and a["config"] != b["config"]
    explicit = training_job(paper="p", recipe="r", config=CONFIG, root=root, metric="m", name="my-job", after=["x"])
    assert (explicit["run_name"], explicit["after"]) == ("my-job", ["x"])
    with pytest.raises(ValueError, match="absolute"):
        training_job(paper="p", recipe="r", config=CONFIG, root="runs", metric="m")
    with pytest.raises(TypeError):
        training_job(paper="p", recipe="r", config=CONFIG, root=root, metric="m", not_a_field=1)


def test_no_other_place_names_or_builds_a_job() -> None:
    """Run names and job dicts are made in infra/jobs.py only (flows, infra): no ``"run_name":`` literal, no
    ``run_name=f"…"``, no hand-formatted ``f"<paper>-…-{digest}"`` name."""
    pattern = re.compile(r"\brun_name\"?\s*[:=]\s*f\"|(?<![\w.])_digest\(|config_hash\(.*length=")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("flows", "infra")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != "jobs.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
