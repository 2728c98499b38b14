"""Fault tolerance of the Ray Train wrapper, on real Ray workers (reliability notes §2.3 #16, #17, #19–#21).

Each `fit` costs ~25–100 s on 2 shared cores (the controller and every worker are new processes importing torch and
Ray), so there are two slow tests, each asserting a lot, sharing one local Ray instance; Ray Train's controller polls
faster and skips its preemption watcher and metrics actors (not exercised here) to save process start-ups. Metrics
are compared *exactly*, except the wall-clock ``train/seconds``. The fast tests at the end need no Ray.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch
from ray.train import WorkerGroupError

import infra.ray_train as ray_train
from infra.ray_train import FitResult, RunConflictError, RunSpec, ScalingSpec, TrainingError, fit
from models.engine.loop import fit_local
from tests.infra.toy_recipe import EpochLog, build

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "tests.infra.toy_recipe:build"
CONFIG: dict[str, Any] = {"epochs": 3}
TWO = ScalingSpec(num_workers=2, collective_timeout_s=60)  # a dead peer must not hang gloo for 30 min (#20)
ONE = ScalingSpec(num_workers=1, collective_timeout_s=60)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # notice a dead worker / finished run sooner
        mp.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        mp.setenv("RAY_TRAIN_METRICS_ENABLED", "0")
        started = not ray.is_initialized()
        if started:
            # Workers import the toy recipe as `tests.infra.toy_recipe`, wherever pytest was started from.
            pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(
                address="local",  # our own instance, even if another test session runs Ray on this host
                num_cpus=2,
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            )
        yield
        if started:
            ray.shutdown()


def deterministic(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if k != "train/seconds"} for epoch in history]


def model_state(result: FitResult) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(result.state_path, weights_only=True)
    return state


def assert_same_weights(a: FitResult, b: FitResult) -> None:
    sa, sb = model_state(a), model_state(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "weights differ"


@pytest.fixture(scope="module")
def local_reference() -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """`fit_local` in this process: the reference a 1-worker Ray run must reproduce exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray worker with 1 CPU runs torch single-threaded
    try:
        model, history = fit_local(build(CONFIG))
    finally:
        torch.set_num_threads(threads)
    return history, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_worker_resumes_bit_identically(ray_local, tmp_path):
    """Rank 1 is hard-killed mid-epoch; Ray restarts the group from the last epoch checkpoint: same run, bit for bit.

    Equal metrics alone would also pass if Ray restarted from scratch (the run is deterministic), which is what
    happened before the commit barrier in `_save_and_report`. So the test also pins *where* it resumed: the rank-0
    ``on_epoch`` log must hold every epoch once. That the RNG restore matters is shown by the negative control in
    `test_fit_equals_fit_local_and_same_name_resumes`, which goes through the same restore code.
    """
    t0 = time.monotonic()
    baseline = fit(RECIPE, CONFIG, TWO, RunSpec("baseline", str(tmp_path), max_failures=0))
    t1 = time.monotonic()

    marker = tmp_path / "killed.marker"
    epochs_log = tmp_path / "on_epoch.log"
    killed = fit(
        RECIPE,
        CONFIG,
        TWO,
        RunSpec("killed", str(tmp_path), max_failures=1),
        on_epoch=EpochLog(str(epochs_log)),
        # os._exit(1) on rank 1 in (0-based) epoch 1, after 2 of its 4 batches; rank 0 is inside an all_reduce.
        inject_failure={"rank": 1, "epoch": 1, "batch": 2, "marker": str(marker)},
    )
    t2 = time.monotonic()
    assert marker.exists(), "the failure was not injected"
    assert deterministic(killed.history) == deterministic(baseline.history)
    assert_same_weights(killed, baseline)
    assert killed.resumes == 1 and baseline.resumes == 0
    logged = [line.split() for line in epochs_log.read_text().splitlines()]
    assert [int(epoch) for epoch, _ in logged] == [1, 2, 3], "restarted from the wrong checkpoint"
    assert [float(loss) for _, loss in logged] == [e["train/loss"] for e in killed.history]
    assert sorted(p.name for p in (tmp_path / "killed").glob("epoch_*")) == ["epoch_0002", "epoch_0003"]  # keep 2
    # The ranks' RNG streams really differ, so restoring each rank's own state (not rank 0's) is what was tested.
    state = torch.load(Path(killed.checkpoint_path) / ray_train.STATE_FILE, weights_only=True)
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])
    print(f"\nbaseline {t1 - t0:.1f} s, killed + restarted {t2 - t1:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fit_equals_fit_local_and_same_name_resumes(ray_local, tmp_path, local_reference, monkeypatch):
    """One worker, crash in epoch 3 with ``max_failures=0`` (the driver sees the failure, as after losing the
    driver), then `fit` again with the same RunSpec.

    - the wrapper adds nothing: before and after the resume, every metric and weight equals `fit_local`;
    - the resume continues at epoch 3 from Ray's own run snapshot; every epoch appears once;
    - negative control: a copy of the crashed run directory (Ray's snapshot names checkpoints relative to it, so it
      is self-contained) resumed with ``restore_rng=False`` differs in epoch 3 — the comparison has teeth;
    - a finished run returns its stored result without starting Ray Train; a different spec under the name fails.
    """
    history, weights = local_reference
    run = RunSpec("resume-me", str(tmp_path), max_failures=0)
    marker = tmp_path / "crash.marker"
    crash_at = {"rank": 0, "epoch": 2, "batch": 1, "marker": str(marker), "how": "raise"}
    t0 = time.monotonic()
    with pytest.raises(TrainingError) as crash:
        fit(RECIPE, CONFIG, ONE, run, inject_failure=crash_at)
    t1 = time.monotonic()
    # The worker's own exception type and message, not only Ray's wrapper text.
    assert "rank 0: RuntimeError: injected failure on rank 0 at epoch 2 batch 1" in str(crash.value)
    assert crash.value.worker_failures.keys() == {0}
    run_dir = tmp_path / "resume-me"
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == ["epoch_0001", "epoch_0002"]
    partial = json.loads((run_dir / "epoch_0002" / ray_train.HISTORY_FILE).read_text())["history"]
    assert deterministic(partial) == deterministic(history[:2])
    shutil.copytree(run_dir, tmp_path / "no-rng-restore")

    epochs_log = tmp_path / "on_epoch.log"
    resumed = fit(RECIPE, CONFIG, ONE, run, on_epoch=EpochLog(str(epochs_log)))
    t2 = time.monotonic()
    assert [int(line.split()[0]) for line in epochs_log.read_text().splitlines()] == [3]  # only epoch 3 trained
    assert [e["epoch"] for e in resumed.history] == [1.0, 2.0, 3.0]
    assert deterministic(resumed.history) == deterministic(history)
    assert {e["train/threads"] for e in resumed.history} == {1.0}  # the 1-CPU reservation, not the host's cores
    saved = model_state(resumed)
    assert saved.keys() == weights.keys() and all(torch.equal(saved[k], weights[k]) for k in weights)
    assert "eval/mse" in resumed.metrics and resumed.metrics == resumed.history[-1]
    assert resumed.checkpoint_path == str(run_dir / "epoch_0003")
    # the workers' final evaluation travels with the final checkpoint, so the driver need not evaluate again
    assert resumed.report_path == str(run_dir / "epoch_0003" / ray_train.REPORT_FILE)
    assert ray_train.read_report(resumed) == ({"eval/mse": history[-1]["eval/mse"]}, {})
    assert (resumed.resumes, resumed.reused) == (1, False)

    control = fit(RECIPE, CONFIG, ONE, RunSpec("no-rng-restore", str(tmp_path), max_failures=0), restore_rng=False)
    t3 = time.monotonic()
    assert control.resumes == 1
    assert deterministic(control.history[:2]) == deterministic(history[:2])
    assert control.metrics["train/loss"] != history[-1]["train/loss"]
    assert control.metrics["eval/mse"] != history[-1]["eval/mse"]

    # Finished: the stored result comes back without starting Ray Train at all.
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished run must not start training")

    monkeypatch.setattr(ray_train, "TorchTrainer", no_training)
    t4 = time.monotonic()
    again = fit(RECIPE, CONFIG, ONE, run)
    assert time.monotonic() - t4 < 5
    assert again.reused and (again.history, again.checkpoint_path) == (resumed.history, resumed.checkpoint_path)
    assert again.report_path == resumed.report_path

    # Reusing the name for a different job is an error, not a silent resume of the old one.
    with pytest.raises(RunConflictError, match="resume-me"):
        fit(RECIPE, CONFIG | {"lr": 0.1}, ONE, run)
    with pytest.raises(RunConflictError):
        fit(RECIPE, CONFIG, TWO, run)
    print(f"\ncrash {t1 - t0:.1f} s, resume {t2 - t1:.1f} s, control {t3 - t2:.1f} s")


# ------------------------------------------------------------------------------------------------ fast, no Ray
def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)  # noqa: NPY002 - the legacy global generator is what the wrapper saves
    _ = (torch.rand(5), random.random(), np.random.rand())  # noqa: NPY002 - move every generator off its seed
    torch.save({"rng": ray_train._rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(4), random.random(), np.random.rand(3))  # noqa: NPY002
    ray_train._set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(4), random.random(), np.random.rand(3))  # noqa: NPY002
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


def test_bad_specs_fail_on_the_driver_before_anything_is_written(tmp_path, monkeypatch):
    def must_not_start(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray must not be reached")

    monkeypatch.setattr(ray_train, "connect", must_not_start)
    run = RunSpec("r", str(tmp_path))
    with pytest.raises(ValueError, match="must look like"):
        fit("tests.infra.toy_recipe.build", CONFIG, ONE, run)
    with pytest.raises(ValueError, match="not a callable"):
        fit("tests.infra.toy_recipe:missing", CONFIG, ONE, run)
    with pytest.raises(TypeError, match="JSON"):
        fit(RECIPE, {"epochs": {1, 2}}, ONE, run)
    with pytest.raises(ValueError, match="num_workers"):
        fit(RECIPE, CONFIG, ScalingSpec(num_workers=0), run)  # local mode would ignore FailureConfig (#19)
    with pytest.raises(ValueError, match="path component"):
        fit(RECIPE, CONFIG, ONE, RunSpec("a/b", str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_worker_errors_name_the_rank_and_the_original_exception():
    ray_error = WorkerGroupError("[Rank 1 Error Snippet]: ...", {1: ValueError("rank 1 got 3 batches, expected 4")})
    error = ray_train._readable_error("job", ray_error)
    assert str(error) == "training run 'job' failed: rank 1: ValueError: rank 1 got 3 batches, expected 4"
    assert error.worker_failures == {1: "ValueError: rank 1 got 3 batches, expected 4"}
