"""infra.settings / infra.tracking / infra.plots against a real SQLite MLflow store under a temporary run root.

Creating a fresh tracking DB runs every MLflow migration (~3.5 s on 2 cores), so one DB is migrated per session and
copied into each test's run root (~0.1 s; the pattern of fmind/mlops-python-package PR #129, notes §2.4 #23).
"""

from __future__ import annotations

import functools
import os
import pickle
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

import infra.settings
from infra.plots import rank_histogram_figure, recall_curve_figure
from infra.settings import Settings, get_settings
from infra.tracking import (
    CONFIG_DIGEST_TAG,
    RUN_KEY_TAG,
    ConfigMismatchError,
    EpochLogger,
    RunTerminated,
    Tracker,
    artifact_root,
    config_digest,
    epoch_logger,
    flatten_config,
    manifest_digest,
    migrate_tracking_db,
    mlflow_key,
    run_guard,
    tracking_uri,
)

CONFIG = {"model": {"width": 64, "heads": 4, "pool": "mean"}, "train": {"lr": 1e-3, "epochs": 3}, "seed": 0}
MANIFEST = [
    {"key": "vid-002", "status": "ok", "n_frames": 8, "error": None},
    {"key": "vid-001", "status": "ok", "n_frames": 8, "error": None},
    {"key": "vid-003", "status": "failed_decode", "n_frames": 0, "error": "moov atom not found"},
]


@functools.cache
def migrated_db_template() -> Path:
    """One freshly migrated tracking DB per test session (shared with test_registry)."""
    folder = Path(tempfile.mkdtemp(prefix="vlrepro-mlflow-template-"))
    migrate_tracking_db(f"sqlite:///{folder / 'mlflow.db'}")
    return folder / "mlflow.db"


def make_run_root(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_db_template(), path / "mlflow.db")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No tracking-related env vars, and a settings cache that is re-read (and restored after the test)."""
    for var in ("MLFLOW_TRACKING_URI", "VLREPRO_RUN_ROOT", "RAY_ADDRESS", "PREFECT_API_URL", "VLREPRO_CPUS_PER_WORKER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(infra.settings, "_settings", None)
    return monkeypatch


@pytest.fixture
def tracker(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Tracker:
    return Tracker.for_run_root(str(make_run_root(tmp_path / "runs")))


def run_status(tracker: Tracker, run_id: str) -> str:
    return str(tracker.client.get_run(run_id).info.status)


# -- settings and where things go --------------------------------------------------------------------------------------


def test_settings_read_the_environment_once_and_reload(clean_env: pytest.MonkeyPatch) -> None:
    assert get_settings() == Settings(run_root="runs")
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    clean_env.setenv("VLREPRO_RUN_ROOT", "s3://bucket/runs")
    assert get_settings().mlflow_tracking_uri is None  # cached: read once per process
    settings = get_settings(reload=True)
    assert settings.mlflow_tracking_uri == "http://mlflow.internal:5000"
    assert settings.run_root == "s3://bucket/runs"
    assert tracking_uri("/anywhere") == "http://mlflow.internal:5000"
    assert artifact_root("/anywhere") is None  # the server decides where artefacts go
    with pytest.raises(AttributeError):
        settings.run_root = "x"  # type: ignore[misc]


def test_cpus_per_worker_setting_reaches_the_ray_scaling(clean_env: pytest.MonkeyPatch) -> None:
    from infra.ray_train import ScalingSpec

    assert get_settings(reload=True).cpus_per_worker == 1.0
    clean_env.setenv("VLREPRO_CPUS_PER_WORKER", "2")
    cpus = get_settings(reload=True).cpus_per_worker
    assert cpus == 2.0
    assert ScalingSpec(cpus_per_worker=cpus).to_ray().resources_per_worker == {"CPU": 2.0}
    for bad in ("0", "-1", "two"):
        clean_env.setenv("VLREPRO_CPUS_PER_WORKER", bad)
        with pytest.raises(ValueError, match="VLREPRO_CPUS_PER_WORKER"):
            get_settings(reload=True)


def test_parallel_jobs_share_the_cpus_per_worker(clean_env: pytest.MonkeyPatch) -> None:
    assert get_settings(reload=True).parallel_jobs == 1
    clean_env.setenv("VLREPRO_CPUS_PER_WORKER", "2")
    clean_env.setenv("VLREPRO_PARALLEL_JOBS", "2")
    s = get_settings(reload=True)
    assert s.parallel_jobs == 2
    # a lone job keeps every CPU; jobs started together split them, never below one CPU each
    assert [s.job_cpus(n) for n in (1, 2, 5)] == [2.0, 1.0, 1.0]
    assert Settings(cpus_per_worker=8, parallel_jobs=3).job_cpus(5) == 2.0
    assert Settings(cpus_per_worker=1, parallel_jobs=4).job_cpus(4) == 1.0
    assert Settings(cpus_per_worker=2.5, parallel_jobs=1).job_cpus(5) == 2.5
    for bad in ("0", "-2", "1.5", "two"):
        clean_env.setenv("VLREPRO_PARALLEL_JOBS", bad)
        with pytest.raises(ValueError, match="VLREPRO_PARALLEL_JOBS"):
            get_settings(reload=True)


def test_empty_env_var_means_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MLFLOW_TRACKING_URI", "  ")
    assert get_settings(reload=True).mlflow_tracking_uri is None


def test_embedded_default_keeps_db_and_artifacts_under_the_run_root(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    clean_env.chdir(cwd)
    root = make_run_root(tmp_path / "runs")
    assert tracking_uri(str(root)) == f"sqlite:///{root.resolve()}/mlflow.db"
    assert artifact_root(str(root)) == (root.resolve() / "mlartifacts").as_uri()

    tracker = Tracker.for_run_root(str(root))
    run_id = tracker.start_or_resume("paper", "job-1", "job 1", CONFIG)
    tracker.log_metrics(run_id, {"loss": 1.0}, step=0)
    tracker.log_dict(run_id, CONFIG, "config.json")
    tracker.log_figure(run_id, recall_curve_figure({"t2v": np.array([0, 1])}), "plots/recall.png")
    tracker.log_dataset(run_id, MANIFEST, source=str(root / "ds"), name="train", context="training")
    tracker.finish(run_id)

    run_dir = root / "mlartifacts" / "paper" / run_id / "artifacts"
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()) == [
        "config.json",
        "plots/recall.png",
    ]
    assert (run_dir / "plots" / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(cwd.iterdir()) == []  # no ./mlruns, no ./mlflow.db


def test_remote_run_root_keeps_the_db_local_and_artifacts_remote(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    clean_env.setenv("HOME", str(tmp_path))
    uri = tracking_uri("s3://bucket/runs")
    assert uri == f"sqlite:///{tmp_path}/.vlrepro/mlflow/s3_bucket_runs/mlflow.db"  # object stores hold no DB file
    assert artifact_root("s3://bucket/runs") == "s3://bucket/runs/mlartifacts"


def test_migration_is_idempotent_and_reports_time(tmp_path: Path) -> None:
    root = make_run_root(tmp_path / "runs")
    before = (root / "mlflow.db").read_bytes()
    seconds = migrate_tracking_db(f"sqlite:///{root / 'mlflow.db'}")
    assert seconds < 3.0  # an up-to-date DB only has its revision checked
    assert (root / "mlflow.db").read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == ["mlflow.db", "mlflow.db.lock"]  # no backup: nothing upgraded
    assert migrate_tracking_db("http://mlflow.internal:5000") == 0.0


# -- params and keys ---------------------------------------------------------------------------------------------------


def test_flatten_config_dotted_keys_and_limits() -> None:
    flat = flatten_config(
        {
            "a": {"b": 1, "c": [1, 2], "d": None, "e": True, "f": {}},
            "s": "text",
            "long": "x" * 7000,
            "long2": "y" * 7000,
        }
    )
    assert flat["a.b"] == "1"
    assert flat["a.c"] == "[1, 2]"
    assert flat["a.d"] == "null"
    assert flat["a.e"] == "true"
    assert flat["a.f"] == "{}"
    assert flat["s"] == "text"
    assert len(flat["long"]) == 6000 and flat["long"].startswith("xxx")
    assert flat["long"][-30:] != flat["long2"][-30:]
    assert mlflow_key("t2v/R@1") == "t2v/R_at_1"
    with pytest.raises(ValueError, match="collide"):
        flatten_config({"R@1": 1, "R_at_1": 2})


def test_many_params_are_logged_in_batches(tracker: Tracker) -> None:
    config = {"layer": {f"p{i:03d}": i for i in range(250)}}  # MLflow takes at most 100 params per batch
    run_id = tracker.start_or_resume("paper", "many", "many", config)
    params = tracker.client.get_run(run_id).data.params
    assert len(params) == 250 and params["layer.p249"] == "249"


# -- one run per job, across restarts ----------------------------------------------------------------------------------


def test_start_or_resume_keeps_one_run_across_restarts(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    root = str(make_run_root(tmp_path / "runs"))
    first = Tracker.for_run_root(root)
    run_id = first.start_or_resume("clip4clip", "clip4clip-abc123", "clip4clip msrvtt", CONFIG, tags={"git": "1"})
    first.log_metrics(run_id, {"loss": 2.0}, step=0)
    first.log_metrics(run_id, {"loss": 1.5}, step=1)
    first.finish(run_id, "KILLED")  # the job died after step 1

    second = Tracker.for_run_root(root)  # a new process: new client, new store
    again = second.start_or_resume("clip4clip", "clip4clip-abc123", "clip4clip msrvtt", CONFIG, tags={"git": "2"})
    assert again == run_id
    assert run_status(second, run_id) == "RUNNING"
    second.log_metrics(run_id, {"loss": 1.4}, step=1)  # replayed step from the last checkpoint
    second.log_metrics(run_id, {"loss": 1.0}, step=2)
    second.finish(run_id)

    runs = second.find_runs("clip4clip", "clip4clip-abc123")
    assert [r.info.run_id for r in runs] == [run_id]
    run = second.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RUN_KEY_TAG] == "clip4clip-abc123" and run.data.tags["git"] == "2"
    assert run.data.params["model.width"] == "64" and run.data.params["train.lr"] == "0.001"
    assert second.metric_history(run_id, "loss") == {0: 2.0, 1: 1.4, 2: 1.0}  # no gaps, latest value per step
    raw = second.client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in raw) == [(0, 2.0), (1, 1.4), (1, 1.5), (2, 1.0)]  # MLflow keeps both
    assert run.data.metrics["loss"] == 1.0


def test_resume_with_a_different_config_is_a_clear_error(tracker: Tracker) -> None:
    run_id = tracker.start_or_resume("paper", "job", "job", CONFIG)
    changed = {**CONFIG, "train": {"lr": 1e-4, "epochs": 3}}
    with pytest.raises(ConfigMismatchError, match=r"different config.*changed: train\.lr"):
        tracker.start_or_resume("paper", "job", "job", changed)
    with pytest.raises(ConfigMismatchError, match=r"added: extra"):
        tracker.start_or_resume("paper", "job", "job", {**CONFIG, "extra": 1})
    assert tracker.client.get_run(run_id).data.params["train.lr"] == "0.001"
    assert tracker.start_or_resume("paper", "job", "job", CONFIG) == run_id  # the original config still resumes


def test_resume_completes_params_of_an_interrupted_first_log(tracker: Tracker) -> None:
    from mlflow.entities import Param

    flat = flatten_config(CONFIG)
    # a run created by a process that died after logging its first param batch
    experiment_id = tracker.get_or_create_experiment("paper")
    tags = {RUN_KEY_TAG: "partial", CONFIG_DIGEST_TAG: config_digest(flat)}
    run = tracker.client.create_run(experiment_id, tags=tags)
    tracker.client.log_batch(run.info.run_id, params=[Param("seed", "0")])
    assert tracker.start_or_resume("paper", "partial", "partial", CONFIG) == run.info.run_id
    assert tracker.client.get_run(run.info.run_id).data.params == flat


def test_metrics_with_at_signs_and_history(tracker: Tracker) -> None:
    run_id = tracker.start_or_resume("paper", "eval", "eval", CONFIG)
    for step, r1 in enumerate([10.0, 20.0, 35.5]):
        tracker.log_metrics(run_id, {"t2v/R@1": r1, "loss": 1.0 / (step + 1)}, step=step)
    assert tracker.metric_history(run_id, "t2v/R@1") == {0: 10.0, 1: 20.0, 2: 35.5}
    assert [m.value for m in tracker.client.get_metric_history(run_id, "t2v/R_at_1")] == [10.0, 20.0, 35.5]


def test_epoch_logger_is_picklable_and_logs(tracker: Tracker) -> None:
    run_id = tracker.start_or_resume("paper", "ray", "ray", CONFIG)
    callback = epoch_logger(tracker.uri, run_id)
    blob = pickle.dumps(callback)
    assert len(blob) < 500  # only the URI and the run id travel to the worker
    restored = pickle.loads(blob)
    assert isinstance(restored, EpochLogger) and restored == callback
    restored({"train/loss": 0.7}, 0)
    restored({"train/loss": 0.5}, 1)
    assert tracker.metric_history(run_id, "train/loss") == {0: 0.7, 1: 0.5}


# -- datasets ----------------------------------------------------------------------------------------------------------


def test_dataset_input_is_readable_with_the_manifest_digest(tracker: Tracker) -> None:
    run_id = tracker.start_or_resume("paper", "data", "data", CONFIG)
    source = "s3://bucket/runs/msrvtt/decode/0123abcd"
    digest = tracker.log_dataset(run_id, MANIFEST, source=source, name="msrvtt-train", context="training")
    assert digest == manifest_digest(list(reversed(MANIFEST)))  # order of rows does not matter
    assert tracker.log_dataset(run_id, MANIFEST, source=source, name="msrvtt-train", context="training") == digest
    assert tracker.datasets(run_id) == [
        {
            "name": "msrvtt-train",
            "digest": digest,
            "source": source,
            "source_type": "s3",
            "context": "training",
            "num_rows": 3,
        }
    ]
    flipped = [dict(MANIFEST[0]), *MANIFEST[1:]]
    flipped[0]["status"] = "timeout"
    assert manifest_digest(flipped) != digest
    with pytest.raises(ValueError, match="status"):
        manifest_digest([{"key": "a"}])


# -- plots -------------------------------------------------------------------------------------------------------------


def test_recall_curve_plots_recall_at_k_of_the_ranks() -> None:
    t2v = np.array([0, 0, 1, 4, 9])  # 0-based ranks of the ground truth
    v2t = np.array([0, 2, 2, 3, 3])
    fig = recall_curve_figure({"t2v": t2v, "v2t": v2t})
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["t2v", "v2t"]
    np.testing.assert_array_equal(lines[0].get_xdata(), np.arange(1, 11))  # K = 1 .. max rank + 1
    np.testing.assert_allclose(lines[0].get_ydata(), [40, 60, 60, 60, 80, 80, 80, 80, 80, 100])
    np.testing.assert_allclose(lines[1].get_ydata(), [20, 20, 60, 100, 100, 100, 100, 100, 100, 100])
    fig = recall_curve_figure({"t2v": t2v}, ks=[1, 5, 10])
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [40, 80, 100])


def test_rank_histogram_counts_one_based_ranks() -> None:
    fig = rank_histogram_figure({"t2v": np.array([0, 0, 1, 4, 9]), "v2t": np.array([0, 2])}, max_rank=5)
    t2v_bars = [p.get_height() for p in fig.axes[0].patches]
    assert t2v_bars == [2, 1, 0, 0, 2]  # ranks 1,1,2,5 and 10 (clipped into the last bin)
    assert [p.get_x() + p.get_width() / 2 for p in fig.axes[0].patches] == [1, 2, 3, 4, 5]
    assert [p.get_height() for p in fig.axes[1].patches] == [1, 0, 1, 0, 0]
    with pytest.raises(ValueError):
        recall_curve_figure({"t2v": np.array([])})


# -- crash hygiene -----------------------------------------------------------------------------------------------------


def test_run_guard_marks_failed_killed_and_finished(tracker: Tracker) -> None:
    ids = [tracker.start_or_resume("paper", f"guard-{i}", "g", CONFIG) for i in range(4)]
    with run_guard(tracker, ids[0]):
        pass
    with pytest.raises(RuntimeError), run_guard(tracker, ids[1]):
        raise RuntimeError("loss is NaN")
    with pytest.raises(KeyboardInterrupt), run_guard(tracker, ids[2]):
        raise KeyboardInterrupt
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunTerminated) as info, run_guard(tracker, ids[3]):
        assert signal.getsignal(signal.SIGTERM) is not before  # our handler is in place before we signal ourselves
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert [run_status(tracker, i) for i in ids] == ["FINISHED", "FAILED", "KILLED", "KILLED"]
