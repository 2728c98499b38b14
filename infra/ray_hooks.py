"""Ray worker-process setup hooks. Imported by *every* Ray worker process at start, so this module imports nothing
heavy: importing torch here would load OpenMP before Ray sets the worker's ``OMP_NUM_THREADS`` from its CPU
reservation, and every worker would then run as many threads as the host has cores (measured: two 1-CPU training jobs
side by side on 2 cores ran 2.5× slower per step)."""

from __future__ import annotations

import logging
import os


def setup_local_worker() -> None:
    """Every worker of a private local Ray (`infra.ray_train.connect`):

    - pins ``RAY_ADDRESS`` to its own instance: helpers inside workers that look Ray up by auto-detection (Ray
      Train's state-API calls) would otherwise find every Ray on the host and fail with "Found multiple active Ray
      instances" while another run is up;
    - silences Ray Train's placement-group cleaner: without the dashboard (local Ray here) it has no state API to
      poll and logs "State API may be temporarily unavailable" every second of every job.
    """
    import ray  # already imported by the worker process that runs this hook

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    quiet_worker_logs()


def quiet_worker_logs() -> None:
    """Silence Ray Train's placement-group cleaner (see `setup_local_worker`)."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
