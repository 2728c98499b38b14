"""CLI contracts: --help everywhere, --json is one JSON object on the last stdout line, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from flows.cli import app

VLREPRO = [sys.executable, "-m", "flows"]


def _all_command_paths() -> list[list[str]]:
    import typer.main

    paths: list[list[str]] = []

    def walk(cmd, prefix):
        paths.append(prefix)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VLREPRO, *args], capture_output=True, text=True, timeout=120, **kw)


def test_importing_the_cli_stays_light():
    """`vlrepro --help` must be instant: the package and every command module import only typer; heavy libraries
    are imported inside the commands."""
    heavy = ["torch", "prefect", "ray", "mlflow", "numpy", "pandas", "yaml", "fsspec", "psutil", "cv2"]
    code = f"import sys, flows.cli; print([m for m in {heavy!r} if m in sys.modules])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_command_tree_is_assembled_from_one_module_per_group():
    from flows import cli

    assert sorted(cli.GROUPS) == ["data", "eval", "train"] and sorted(cli.COMMANDS) == ["ingest", "reproduce", "serve"]
    assert {cli.GROUPS[g].registered_commands[0].callback.__module__ for g in cli.GROUPS} == {
        "flows.cli.data",
        "flows.cli.eval",
        "flows.cli.train",
    }


def test_help_on_every_command():
    paths = _all_command_paths()
    assert ["ingest"] in paths and ["data", "make"] in paths and ["eval", "retrieval"] in paths
    for path in paths:
        res = run([*path, "--help"])
        assert res.returncode == 0, (path, res.stderr)
        assert "Usage:" in res.stdout


def test_eval_retrieval_json_is_the_last_stdout_line(tmp_path):
    sim = np.eye(4) + 0.01 * np.arange(16).reshape(4, 4)
    sim[2, 2] = -1.0  # query 2 ranks its video last
    np.save(tmp_path / "s.npy", sim)
    res = run(["eval", "retrieval", "--similarity", str(tmp_path / "s.npy"), "--json"])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == {"t2v", "v2t"} and set(out["t2v"]) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    assert out["t2v"]["R@1"] == pytest.approx(75.0) and out["t2v"]["MnR"] == pytest.approx((1 + 1 + 4 + 1) / 4)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "--source", "/definitely/not/here"], "does not exist"),
        (["ingest", "--source", ".", "--mode", "sideways"], "not one of"),
        (["ingest", "--sourse", "."], "No such option"),
        (["eval", "retrieval", "--similarity", "/nope.npy"], "does not exist"),
        (["data", "make", "mini-nothing", "--out", "/tmp/x"], "unknown dataset"),
        (["reproduce", "clip4clip", "--cpus-per-worker", "0"], "positive number of CPUs"),
        (["reproduce", "clip4clip", "--parallel-jobs", "0"], "at least 1"),
        (["reproduce", "clip4clip", "--variant", "tightTransf", "--variant", "bigTransf"], "unknown ['bigTransf']"),
        (["reproduce", "dcc", "--variant", "full"], "has no variants"),
        (["reproduce", "stan", "--variant", "stan-convv"], "did you mean 'stan-conv'"),
        (["reproduce", "stann"], "did you mean 'stan'"),
        (["reproduce", "stan", "--dataset", "lsmdc"], "no spec for dataset 'lsmdc'"),
        (["reproduce", "clip4clip", "--ablations"], "has no ablation table"),
        (["reproduce", "dcc", "--size", "huge"], "unknown size 'huge'"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, needle):
    res = run(args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_json_errors_are_json_too(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"nope")
    res = run(["eval", "retrieval", "--similarity", str(tmp_path / "bad.npy"), "--json"])
    assert res.returncode == 2
    assert "error" in json.loads(res.stdout.strip().splitlines()[-1])


def test_ingest_without_prefect_reports_and_gates_on_failure_ratio(tmp_path):
    from tests.media import encode

    encode(tmp_path / "v" / "a.mp4")
    (tmp_path / "v" / "b.mp4").write_bytes(b"junk")
    base = [
        "ingest",
        "--source",
        str(tmp_path / "v"),
        "--out",
        str(tmp_path / "r"),
        "--fps",
        "4",
        "--size",
        "32",
        "--no-prefect",
        "--json",
    ]
    res = run(base)
    assert res.returncode == 1  # 50 % failed > default 5 %
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["status_counts"] == {"failed_probe": 1, "ok": 1} and out["ok"] is False
    message = "failure ratio 0.500 is above --max-failure-ratio 0.05"
    assert res.stderr.strip().splitlines() == [f"error: {message}"] and out["error"] == message
    res = run([*base, "--max-failure-ratio", "0.5"])
    assert res.returncode == 0 and json.loads(res.stdout.strip().splitlines()[-1])["shards_written"] == 0


@pytest.mark.timeout(240)
def test_sigterm_stops_a_run_like_ctrl_c_and_leaves_no_process(tmp_path):
    """`kill` on a running `reproduce` must not orphan the temporary Prefect server it started (Python's default
    SIGTERM exits without cleanup; seen on the dev machine: a killed demo's uvicorn kept running for 40 minutes)."""
    import os
    import signal
    import time

    import psutil

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own temporary server
    proc = subprocess.Popen(
        [*VLREPRO, "reproduce", "clip4clip", "--size", "tiny", "--root", str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def cmd(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""

    parent = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        for child in parent.children(recursive=True):
            seen.setdefault(child.pid, child)
        if any("prefect.server" in cmd(c) for c in seen.values()):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    assert any("prefect.server" in cmd(c) for c in seen.values()), "no temporary Prefect server seen"
    time.sleep(2)
    for child in parent.children(recursive=True):
        seen.setdefault(child.pid, child)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM, like a shell reports it
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM"
    _, alive = psutil.wait_procs(list(seen.values()), timeout=20)
    assert not alive, [cmd(p)[:120] for p in alive]
