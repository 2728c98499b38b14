"""Test-wide environment: offline, no telemetry, a throw-away PREFECT_HOME; set before any library import."""

from __future__ import annotations

import os
import tempfile
from typing import Any

_TMP_HOME = tempfile.mkdtemp(prefix="vlrepro-test-prefect-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["PREFECT_HOME"] = os.environ.get("VLREPRO_TEST_PREFECT_HOME", _TMP_HOME)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Ray Train's controller polls its workers every 2 s by default; each epoch's checkpoint commit and each run's end wait
# for a poll, so the suite's many short tiny-config epochs spent most of their wall time waiting on it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def pytest_collection_finish(session: Any) -> None:
    """`make demo`'s test mostly waits on subprocesses: start them now, beside the rest of the suite
    (`tests/test_demo.py`), when the session includes it."""
    wanted = any(item.nodeid.startswith("tests/test_demo.py::") for item in session.items)
    early = os.environ.get("VLREPRO_TEST_DEMO_EARLY", "1") == "1" and not session.config.option.collectonly
    if wanted and early:
        from tests import test_demo

        test_demo.start_early()


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    import sys

    demo = sys.modules.get("tests.test_demo")
    if demo is not None:
        demo.stop_early()
