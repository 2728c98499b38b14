"""Host settings: parsed once from the environment, with defaults a laptop can run and errors that name the variable."""

from __future__ import annotations

import pytest

from infra.settings import DEFAULT_RUN_ROOT, Settings


def test_defaults_from_an_empty_environment() -> None:
    s = Settings.from_env({})
    assert (s.run_root, s.ray_address, s.mlflow_tracking_uri) == (DEFAULT_RUN_ROOT, None, None)
    assert (s.cpus_per_worker, s.parallel_jobs, s.ray_object_store_mb) == (1.0, 1, 512)
    assert (s.ray_temp_parent, s.ray_train_poll_s) == ("/tmp", 0.2)


def test_values_and_empty_means_unset() -> None:
    s = Settings.from_env({"VLREPRO_RAY_TRAIN_POLL_S": "0.5", "RAY_ADDRESS": "  ", "VLREPRO_PARALLEL_JOBS": "2"})
    assert (s.ray_train_poll_s, s.ray_address, s.parallel_jobs) == (0.5, None, 2)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("VLREPRO_RAY_TRAIN_POLL_S", "0", "positive number of seconds"),
        ("VLREPRO_RAY_TRAIN_POLL_S", "fast", "positive number of seconds"),
        ("VLREPRO_CPUS_PER_WORKER", "-1", "positive number of CPUs"),
        ("VLREPRO_PARALLEL_JOBS", "1.5", "positive whole number"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"{name}=.*{message}"):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("cpus", "parallel", "jobs", "want"), [(2, 2, 3, 1.0), (2, 2, 1, 2.0), (4, 2, 2, 2.0), (1, 1, 5, 1.0)]
)
def test_job_cpus_share(cpus: float, parallel: int, jobs: int, want: float) -> None:
    assert Settings(cpus_per_worker=cpus, parallel_jobs=parallel).job_cpus(jobs) == want
