"""The CLI's error contract: every failure of every command is one ``error: …`` line on stderr and, with ``--json``,
one JSON object with an ``error`` field as the last line of stdout; usage errors exit 2, signals 130/143, anything
else 1 — never a traceback. Most cases run `flows.cli.main` in this process (a subprocess per case would pay for the
imports again); the ones about signals and environments run the real command."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]
VLREPRO = [sys.executable, "-m", "flows"]

GT = {"database": {"v1": {"subset": "test", "annotations": [{"segment": [1.0, 3.0], "label": "jump"}]}}}
GOOD = {"label": "jump", "segment": [1.0, 3.0], "score": 0.9}


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`vlrepro ARGS` in this process: (exit code, stdout, stderr)."""
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_error(rc: int, out: str, err: str, code: int, needle: str) -> str:
    """Exit `code`, exactly one stderr line ``error: …`` containing `needle`, and (the callers pass --json) the
    same message as the ``error`` of the JSON object on stdout's last line. Returns the message."""
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    last = json.loads(out.strip().splitlines()[-1])
    assert last == {"error": lines[0][len("error: ") :]}
    return str(last["error"])


# ------------------------------------------------------------------------------------------------ eval detection


@pytest.mark.parametrize(
    ("results", "needle"),
    [
        ({"v1": [{"segment": [1, 3], "score": 0.5}]}, "results['v1'][0] has no 'label'"),
        ({"v1": [{"label": "jump", "score": 0.5}]}, "results['v1'][0] has no 'segment'"),
        ({"v1": [{"label": "jump", "segment": [1, 3]}]}, "results['v1'][0] has no 'score'"),
        ({"v1": {"label": "jump"}}, "results['v1'] must be a list of predictions, got object"),
        ({"v1": None}, "results['v1'] must be a list of predictions, got null"),
        ({"v1": [5]}, "results['v1'][0] must be an object with label/segment/score, got number"),
        ({"v1": [{**GOOD, "segment": [1, 2, 3]}]}, "segment must be [start, end] in seconds, got [1, 2, 3]"),
        ({"v1": [{**GOOD, "score": "high"}]}, "score must be a finite number, got 'high'"),
        ({"v1": [{**GOOD, "label": ["jump"]}]}, "label must be a string or an integer"),
        (None, "expected {'results': {video: [...]}}"),
    ],
)
def test_eval_detection_names_the_malformed_prediction(
    results: Any, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "pred.json").write_text(json.dumps({"results": results}))
    args = [
        "eval",
        "detection",
        "--ground-truth",
        str(tmp_path / "gt.json"),
        "--predictions",
        str(tmp_path / "pred.json"),
    ]
    message = assert_one_error(*cli([*args, "--json"], capsys), code=2, needle=needle)
    assert message.startswith("Invalid value for --predictions")


def test_eval_detection_names_the_malformed_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = {"database": {"v1": {"annotations": [{"label": "jump", "segment": [3.0, 1.0]}]}}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps({"results": {}}))
    args = [
        "eval",
        "detection",
        "--ground-truth",
        str(tmp_path / "gt.json"),
        "--predictions",
        str(tmp_path / "pred.json"),
    ]
    assert_one_error(
        *cli([*args, "--json"], capsys),
        code=2,
        needle="database['v1']['annotations'][0]: segment ends before it starts",
    )


def test_eval_detection_reports_what_it_did_not_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reversed segment and a label absent from the ground truth are counted and named, never scored silently."""
    results = {"v1": [GOOD, {**GOOD, "segment": [3.0, 1.0]}, {**GOOD, "label": "swim"}, {**GOOD, "label": "swim"}]}
    # the UTF-8 BOM some editors write is read like any JSON
    (tmp_path / "gt.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(GT).encode())
    (tmp_path / "pred.json").write_text(json.dumps({"results": results}))
    args = [
        "eval",
        "detection",
        "--ground-truth",
        str(tmp_path / "gt.json"),
        "--predictions",
        str(tmp_path / "pred.json"),
    ]
    rc, out, err = cli([*args, "--tiou", "0.5", "--json"], capsys)
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {
        "tiou": [0.5],
        "mAP": [1.0],  # the one well-formed, known-label prediction is a TP; the reversed one is not a FP either
        "average_mAP": 1.0,
        "n_ignored_predictions": 3,
        "ignored_predictions": {"label_not_in_ground_truth": 2, "end_before_start": 1},
    }
    assert err.strip() == "warning: 3 predictions not scored (2 label not in ground truth, 1 end before start)"


# ------------------------------------------------------------------------------------------------ eval retrieval


def _npz(path: Path) -> None:
    with path.open("wb") as fh:  # an archive under a .npy name (np.savez would append .npz to a path)
        np.savez(fh, sim=np.eye(3))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _nan(path: Path) -> None:
    sim = np.eye(3)
    sim[1, 2] = np.nan
    np.save(path, sim)


def _truncated(path: Path) -> None:
    np.save(path, np.eye(3))
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    ("write", "needle"),
    [
        (_npz, "is an .npz archive; save the matrix alone with numpy.save (.npy)"),
        (_empty, "is not a readable .npy array"),  # was `error: aborted`, exit 130 (click's EOFError handling)
        (_truncated, "is not a readable .npy array"),
        (_nan, "expected finite numbers (no NaN or inf)"),
    ],
)
def test_eval_retrieval_refuses_unreadable_matrices(
    write: Any, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sim.npy"
    write(path)
    message = assert_one_error(
        *cli(["eval", "retrieval", "--similarity", str(path), "--json"], capsys), code=2, needle=needle
    )
    assert message.startswith("Invalid value for --similarity")


# ------------------------------------------------------------------------------------------------ ingest


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--fps", "inf"], "fps must be a finite number, got inf"),
        (["--fps", "nan"], "fps must be a finite number, got nan"),
        (["--timeout", "-5"], "timeout_s must be > 0"),
        (["--samples-per-shard", "0"], "'--samples-per-shard'"),
        (["--max-frames", "-1"], "max_frames must be between 0"),
        (["--max-duration", "nan"], "max_duration_s must be a finite number"),
    ],
)
def test_ingest_refuses_bad_numbers_as_usage_errors(
    flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ingest", "--source", str(tmp_path), "--out", str(tmp_path / "runs"), "--no-prefect", *flags, "--json"]
    message = assert_one_error(*cli(args, capsys), code=2, needle=needle)
    assert flags[0] in message  # the hint names the option, not only the config field
    assert not (tmp_path / "runs").exists()


def test_ingest_max_frames_reaches_the_decode_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.media import encode

    encode(tmp_path / "v" / "a.mp4")
    args = ["ingest", "--source", str(tmp_path / "v"), "--out", str(tmp_path / "r"), "--fps", "4", "--size", "32"]
    stages = []
    for extra in ([], ["--max-frames", "2"]):
        rc, out, err = cli([*args, *extra, "--no-prefect", "--json"], capsys)
        assert rc == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result["status_counts"] == {"ok": 1} and "error" not in result
        stages.append(result["stage_uri"])
    assert stages[0] != stages[1]  # a frame limit changes the samples, so it is part of the stage's config hash


def test_ingest_csv_with_an_oversized_field_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Python's csv module refuses fields over 128 KiB with `_csv.Error`, which escaped as a traceback."""
    csv_path = tmp_path / "videos.csv"
    csv_path.write_text("path,caption\na.mp4," + "x" * 200_000 + "\n")
    args = ["ingest", "--source", str(csv_path), "--out", str(tmp_path / "runs"), "--no-prefect", "--json"]
    message = assert_one_error(*cli(args, capsys), code=1, needle="csv.Error: field larger than field limit")
    assert message.endswith("(VLREPRO_DEBUG=1 shows the traceback)")


def test_ingest_reads_a_csv_with_a_utf8_bom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.media import encode

    encode(tmp_path / "a.mp4")
    (tmp_path / "videos.csv").write_bytes(b"\xef\xbb\xbfpath,caption\na.mp4,a person jumps\n")
    args = ["ingest", "--source", str(tmp_path / "videos.csv"), "--out", str(tmp_path / "r"), "--fps", "4"]
    rc, out, err = cli([*args, "--size", "32", "--no-prefect", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status_counts"] == {"ok": 1}


def test_ingest_to_s3_without_credentials_is_one_line(tmp_path: Path) -> None:
    from tests.media import encode

    encode(tmp_path / "v" / "a.mp4")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # no credentials anywhere, and no instance-metadata lookup (it would wait on the network)
    env |= {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/no",
    }
    args = ["ingest", "--source", str(tmp_path / "v"), "--out", "s3://vlrepro-test-no-such-bucket/runs"]
    res = subprocess.run(
        [*VLREPRO, *args, "--size", "32", "--no-prefect", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert_one_error(res.returncode, res.stdout, res.stderr, code=1, needle="NoCredentialsError: Unable to locate")


# ------------------------------------------------------------------------------------------------ reproduce, train


def test_reproduce_set_without_equals_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["reproduce", "stan", "--size", "tiny", "--print-config", "--set", "noequals", "--json"]
    assert_one_error(*cli(args, capsys), code=2, needle="override 'noequals' must look like key=value")


def test_reproduce_checks_every_set_key_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue item 11: an unknown key fails before data generation, Ray and training — nothing is created."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    args = ["reproduce", "stan", "--size", "tiny", "--root", str(root), "--set", "train.epocs=3", "--json"]
    assert_one_error(*cli(args, capsys), code=2, needle="did you mean 'train.epochs'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("recipe", "needle"),
    [
        ("recipes.clip4clip:build", "unknown recipe 'recipes.clip4clip:build' (import paths are not accepted"),
        ("os:system", "unknown recipe 'os:system' (import paths are not accepted"),
        ("clip4clp", "did you mean 'clip4clip'"),
    ],
)
def test_train_run_accepts_registered_recipes_only(
    recipe: str, needle: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import infra.ray_train

    imported: list[str] = []
    monkeypatch.setattr(infra.ray_train, "load_recipe_fn", lambda path: imported.append(path))
    assert_one_error(*cli(["train", "run", "--recipe", recipe, "--json"], capsys), code=2, needle=needle)
    assert imported == []  # refused before anything is imported or called


# ------------------------------------------------------------------------------------------------ any other failure


def _raise(exc: BaseException) -> Any:
    def report(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return report


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        # what a corrupt Prefect database/cache raises: not one of the "expected" types, still one line
        (
            sqlite3.DatabaseError("file is not a database"),
            1,
            "DatabaseError: file is not a database (VLREPRO_DEBUG=1 shows the traceback)",
        ),
        (KeyError("label"), 1, "KeyError: 'label' (VLREPRO_DEBUG=1 shows the traceback)"),
        (ValueError("bad value\nsecond line"), 1, "ValueError: bad value"),
        (EOFError(), 1, "EOFError (VLREPRO_DEBUG=1 shows the traceback)"),  # not "aborted", not 130
        (KeyboardInterrupt(), 130, "stopped by SIGINT"),
        (SystemExit(143), 143, "stopped by SIGTERM"),  # infra.tracking.RunTerminated during `train run`
        (SystemExit(3), 3, "exited with status 3"),
    ],
)
def test_every_exception_is_one_line_and_json(
    exc: BaseException, code: int, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import models.common.metrics.retrieval

    np.save(tmp_path / "s.npy", np.eye(3))
    monkeypatch.setattr(models.common.metrics.retrieval, "retrieval_report", _raise(exc))
    message = assert_one_error(
        *cli(["eval", "retrieval", "--similarity", str(tmp_path / "s.npy"), "--json"], capsys), code=code, needle=line
    )
    assert message == line


def test_sigterm_in_process_is_one_line_and_143(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import models.common.metrics.retrieval

    def killed(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # main's handler turns it into KeyboardInterrupt here
        raise AssertionError("SIGTERM did not interrupt")

    np.save(tmp_path / "s.npy", np.eye(3))
    monkeypatch.setattr(models.common.metrics.retrieval, "retrieval_report", killed)
    before = signal.getsignal(signal.SIGTERM)
    args = ["eval", "retrieval", "--similarity", str(tmp_path / "s.npy"), "--json"]
    assert_one_error(*cli(args, capsys), code=143, needle="stopped by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is before  # main puts the previous handler back


def test_sigterm_on_a_running_command_prints_the_error(tmp_path: Path) -> None:
    """A real process: SIGTERM used to end a command with exit 130 and nothing on stderr or stdout. The command reads
    its matrix from a FIFO nobody writes to, so it is deterministically still running when the signal comes."""
    import time

    fifo = tmp_path / "sim.npy"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [*VLREPRO, "eval", "retrieval", "--similarity", str(fifo), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    writer = -1
    deadline = time.monotonic() + 60
    while writer < 0 and time.monotonic() < deadline and proc.poll() is None:
        try:  # succeeds once the command has opened the FIFO for reading: it now waits for data inside np.load
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.05)
    try:
        assert writer >= 0 and proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if writer >= 0:
            os.close(writer)
    assert_one_error(proc.returncode, out, err, code=143, needle="stopped by SIGTERM")
