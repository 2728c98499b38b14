"""The README's own command, as a new user types it: `make demo` (here at ``SIZE=tiny``) in a copy of the working tree
with the default relative run root, while a second `vlrepro reproduce` runs on the same host with another root.

Both must finish: each starts its own private local Ray (its own temporary folder, removed at exit) and neither
attaches to the other's. The copy uses this checkout's virtual environment (``VENV=…``, its install step assumed
done with ``-o``), so the test costs the two DAGs, not an install.

The two runs are subprocesses that mostly wait (servers, Ray start-up, one-thread jobs), so when the session includes
this test they are **started when collection finishes** (`start_early`, called from ``tests/conftest.py``) and run
beside the rest of the suite; the test itself, collected last, waits for them and checks what they left. Run alone,
it starts them itself. ``VLREPRO_TEST_DEMO_EARLY=0`` turns the early start off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.golden import check_golden, job_metrics

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the environment running the tests: make's own .venv under `make test`


def _working_tree(dest: Path) -> None:
    """Copy the files git would check out (tracked and new, not ignored), keeping their times."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout.decode()
        names = [n for n in listed.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # no git: everything but the usual untracked folders
        skip = {".git", ".venv", "runs", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and not skip & set(p.parts)]
    for name in names:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _ray_dirs(parent: Path) -> set[str]:
    return {p.name for p in parent.glob("ray-vlrepro-*")}


@dataclass
class DemoRuns:
    """The demo and the second run, started together, and the Ray folders seen while they ran."""

    base: Path  # the runs' folders and logs
    ray_parent: Path  # a short folder of its own under /tmp for both runs' Ray folders (socket paths ≤ 107 bytes)
    tree: Path
    other: Path
    env: dict[str, str]
    demo_argv: list[str]
    demo: subprocess.Popen[bytes]
    second: subprocess.Popen[bytes]
    seen: set[str] = field(default_factory=set)
    watcher: threading.Thread | None = None

    def watch(self) -> None:
        """Record the Ray folders of both runs while either runs (each must start a Ray of its own)."""
        while self.demo.poll() is None or self.second.poll() is None:
            self.seen |= _ray_dirs(self.ray_parent)
            time.sleep(1)

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (self.demo.poll() is None or self.second.poll() is None) and time.monotonic() < deadline:
            time.sleep(1)
        self.stop()
        if self.watcher is not None:
            self.watcher.join(timeout=5)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.ray_parent, ignore_errors=True)

    def stop(self) -> None:
        for proc in (self.demo, self.second):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()


#: the runs started when collection finished (`start_early`), if any
EARLY: DemoRuns | None = None


def available() -> bool:
    return shutil.which("make") is not None and (VENV / "bin" / "vlrepro").exists()


def start() -> DemoRuns:
    """Copy the tree, start `make demo SIZE=tiny` in the copy and, 5 s later, a second run with its own root."""
    base = Path(tempfile.mkdtemp(prefix="vlr-demo-"))
    ray_parent = Path(tempfile.mkdtemp(prefix="vlr-r-", dir="/tmp"))  # only these two runs' Ray folders land here
    tree, other = base / "clone", base / "other"
    tree.mkdir()
    other.mkdir()
    _working_tree(tree)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VLREPRO_RUN_ROOT", "PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(base / "prefect-home")  # one user's home, shared by both runs as it would be
    env["VLREPRO_RAY_TEMP_PARENT"] = str(ray_parent)
    demo_argv = ["make", "-o", str(VENV / ".installed"), "demo", "SIZE=tiny", f"VENV={VENV}"]
    with open(base / "demo.log", "wb") as demo_log, open(base / "other.log", "wb") as other_log:
        demo = subprocess.Popen(
            demo_argv, cwd=tree, env=env, stdout=demo_log, stderr=subprocess.STDOUT, start_new_session=True
        )
        time.sleep(5)  # the second run starts while the first one is setting up
        second_argv = [str(VENV / "bin" / "vlrepro"), "reproduce", "stan", "--size", "tiny", "--root", "runs", "--json"]
        second = subprocess.Popen(
            second_argv, cwd=other, env=env, stdout=other_log, stderr=subprocess.STDOUT, start_new_session=True
        )
    runs = DemoRuns(base, ray_parent, tree, other, env, demo_argv, demo, second)
    runs.watcher = threading.Thread(target=runs.watch, daemon=True)
    runs.watcher.start()
    return runs


def start_early() -> None:
    """Start the runs now (the session includes this test), so that they overlap the rest of the suite."""
    global EARLY
    if EARLY is None and available():
        EARLY = start()


def stop_early() -> None:
    """At the session's end: never leave the runs behind (the test did not run, or stopped before waiting)."""
    if EARLY is not None:
        EARLY.stop()
        EARLY.remove()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_make_demo_tiny_from_a_copy_with_the_relative_root_while_another_run_shares_the_host() -> None:
    if not available():
        pytest.skip("needs make and the project's virtual environment")
    runs = EARLY or start()
    try:
        _check_runs(runs)
    finally:
        runs.stop()
        runs.remove()


def _check_runs(runs: DemoRuns) -> None:
    runs.wait(1100)
    demo_out = (runs.base / "demo.log").read_text(errors="replace")
    other_out = (runs.base / "other.log").read_text(errors="replace")
    assert runs.demo.returncode == 0, demo_out[-4000:]
    assert runs.second.returncode == 0, other_out[-4000:]
    for text in (demo_out, other_out):
        assert "multiple active Ray instances" not in text

    # each run started a Ray of its own, and removed its temporary folder at exit
    assert len(runs.seen) >= 2, runs.seen
    assert not _ray_dirs(runs.ray_parent), "a run left its Ray temporary folder behind"

    # the demo's relative root is the copy's runs/, and everything it recorded there is absolute
    root = runs.tree / "runs"
    records = list(root.glob("jobs/*.json"))
    assert len(records) == 7, [p.name for p in records]  # the mini CLIP and the six default heads
    for path in records:
        record = json.loads(path.read_text())
        assert record["model_dir"].startswith(str(root) + "/models/"), (path.name, record["model_dir"])
        assert Path(record["model_dir"], "model.pt").is_file()
    # the tiny size reached every job: the mini CLIP trained its 6 steps, each head one epoch
    (clip,) = [json.loads(p.read_text()) for p in root.glob("jobs/miniclip-*.json")]
    assert len(clip["history"]) == 1
    for path in root.glob("jobs/clip4clip-*.json"):
        assert len(json.loads(path.read_text())["history"]) == 1, path.name
    assert "clip4clip on mini-retrieval-tiny-s0" in demo_out
    _check_clip4clip_heads(root)

    check_golden("clip4clip-tiny", job_metrics(root))

    # the second run, on its own root in its own folder
    result = json.loads(other_out.strip().splitlines()[-1])
    assert result["paper"] == "stan" and result["root"] == str(runs.other / "runs")

    # the same command again reuses every stage and job: records untouched, no new MLflow run
    records_before = {p.name: p.read_bytes() for p in root.glob("jobs/*.json")}
    again = subprocess.run(runs.demo_argv, cwd=runs.tree, env=runs.env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in root.glob("jobs/*.json")} == records_before
    _check_clip4clip_heads(root)


def _check_clip4clip_heads(root: Path) -> None:
    """What the tiny CLIP4Clip DAG must leave: every head evaluated and registered, one MLflow run per job, and the
    tight head built on the text tower seqTransf trained (its prerequisite, trained first)."""
    import torch

    from infra.registry import Registry
    from infra.tracking import Tracker

    heads = {}
    for path in root.glob("jobs/clip4clip-*.json"):
        record = json.loads(path.read_text())
        job = json.loads(Path(record["model_dir"], "job.json").read_text())
        assert job["root"] == str(root)
        heads[job["tags"]["vlrepro.variant"]] = record
    assert sorted(heads) == sorted(
        ["meanP", "seqLSTM", "seqTransf", "tightTransf-seqText", "meanP-1frame", "seqTransf-1frame"]
    )
    for record in heads.values():
        for block in ("overall", "order"):
            for direction in ("t2v", "v2t"):
                m = record["report"][block][direction]
                assert set(m) >= {"R@1", "R@5", "R@10", "MdR", "MnR"}
                assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
        # tiny world: 48 test videos (2 colours x 2 shapes x 12 direction pairs)
        assert 1 <= record["report"]["overall"]["t2v"]["MnR"] <= 48
        assert record["registered"]["version"] in range(1, 7)
    tracker = Tracker.for_run_root(str(root))
    champion = Registry(tracker).champion("clip4clip")
    assert champion is not None and champion["metric_name"] == "t2v/R@1"
    assert Registry(tracker).champion("mini-clip") is not None
    assert len(tracker.client.search_runs([tracker.get_or_create_experiment("clip4clip")])) == 6

    seq_dir = Path(heads["seqTransf"]["model_dir"])
    tight_dir = Path(heads["tightTransf-seqText"]["model_dir"])
    tight_cfg = json.loads((tight_dir / "job.json").read_text())["config"]["model"]
    assert Path(tight_cfg["text_init"]) == seq_dir / "model.pt" and tight_cfg["freeze_text"] is True
    seq_state = torch.load(seq_dir / "model.pt", weights_only=True)
    tight_state = torch.load(tight_dir / "model.pt", weights_only=True)
    text_keys = [k for k in seq_state if k.startswith("clip.model.") and "visual" not in k and "logit" not in k]
    assert len(text_keys) > 10 and all(torch.equal(seq_state[k], tight_state[k]) for k in text_keys)
    mini_clip = torch.load(tight_cfg["clip"]["pretrained"], weights_only=True)  # what seqTransf started from
    assert not torch.equal(mini_clip["model.token_embedding.weight"], seq_state["clip.model.token_embedding.weight"])
