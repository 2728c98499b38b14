"""A finished job's record is trusted only while the model it names is there; job roots are absolute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.training_job import TrainingJob, finished_job, job_record_path


def _record(root: Path, run: str, model_dir: str) -> Path:
    path = Path(job_record_path(str(root), run))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_name": run, "model_dir": model_dir, "metrics": {"m": 1.0}}))
    return path


def test_a_record_is_returned_while_its_model_exists(tmp_path: Path) -> None:
    model = tmp_path / "models" / "job-a"
    model.mkdir(parents=True)
    (model / "model.pt").write_bytes(b"w")
    _record(tmp_path, "job-a", str(model))
    assert finished_job(str(tmp_path), "job-a") == {"run_name": "job-a", "model_dir": str(model), "metrics": {"m": 1.0}}


@pytest.mark.parametrize("case", ["model deleted", "relative model_dir", "garbage"])
def test_a_stale_record_is_set_aside_and_the_job_counts_as_unfinished(tmp_path: Path, case: str) -> None:
    model = tmp_path / "models" / "job-b"
    model.mkdir(parents=True)
    if case == "model deleted":
        path = _record(tmp_path, "job-b", str(model))  # no model.pt
    elif case == "relative model_dir":
        (model / "model.pt").write_bytes(b"w")
        path = _record(tmp_path, "job-b", "runs/models/job-b")  # what a relative root used to record
    else:
        path = _record(tmp_path, "job-b", str(model))
        path.write_text("{not json")
    assert finished_job(str(tmp_path), "job-b") is None
    assert not path.exists(), "the stale record must not be found again"
    assert (path.parent / "job-b.stale-1.json").exists(), "kept for inspection under a name no reader takes"


def test_a_job_refuses_a_relative_root() -> None:
    kwargs = {"paper": "p", "method": "m", "recipe": "r", "config": {}, "run_name": "j"}
    with pytest.raises(ValueError, match="absolute"):
        TrainingJob(root="runs", **kwargs)  # type: ignore[arg-type]
    assert TrainingJob(root="s3://bucket/runs", **kwargs).root == "s3://bucket/runs"  # type: ignore[arg-type]
