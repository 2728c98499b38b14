"""A private local Ray listens on loopback only (issue: local Ray listened on all interfaces — GCS, raylet and
workers on ``::``, the autoscaler monitor on ``0.0.0.0`` — because Ray swaps ``127.0.0.1`` for the host's IP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Started in a child process: `connect()` here would leave a Ray instance in the test session for other tests.
SCRIPT = """
import json, os, psutil, ray
from ray._private import ray_constants
from infra.ray_train import connect

connect()

@ray.remote
def pid():  # a task, so that at least one worker process (with its own gRPC server) is up
    return os.getpid()

ray.get(pid.remote())
me = psutil.Process()


def listens(p):  # a short-lived helper may exit between listing and reading its sockets
    try:
        return [f"{p.name()} {c.laddr.ip}" for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError):
        return []


listening = sorted({entry for p in [me, *me.children(recursive=True)] for entry in listens(p)})
print(json.dumps({"listening": listening, "cluster_constant_restored": ray_constants.ENABLE_RAY_CLUSTER}))
ray.shutdown()
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.mark.timeout(120)
def test_local_ray_listens_on_loopback_only() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private instance, not one set here
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=110, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    names = {entry.split(" ", 1)[0] for entry in out["listening"]}
    assert {"gcs_server", "raylet"} <= names, out  # the check saw Ray's servers, not an empty list
    exposed = [entry for entry in out["listening"] if entry.split(" ", 1)[1] not in LOOPBACK]
    assert exposed == []
    assert out["cluster_constant_restored"] is True  # joining a real cluster later still resolves the routable IP
