"""A damaged Prefect cache under the run root is a miss that is recomputed with a warning, never a traceback nor a
replayed wrong result nor code run on the record's say-so; an unusable Prefect database is one ``error:`` line that
names the file and what to do (issue 15, item 10)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from pipelines import ingest as ing
from tests.media import encode, moving_square

ROOT = Path(__file__).resolve().parents[2]
N = 8  # clips, one shard each: one cache record per kind of damage


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for i in range(N):
        encode(folder / f"c{i}.mp4", moving_square(t=8, seed=i))
    return folder


def _ingest(src: Path, root: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    args = ["ingest", "--source", str(src), "--out", str(root), "--fps", "2", "--size", "32"]
    rc = main([*args, "--samples-per-shard", "1", "--json"])
    out, err = capfd.readouterr()
    return rc, json.loads(out.strip().splitlines()[-1]), err


def _logged(err: str, caplog: pytest.LogCaptureFixture) -> str:
    """What the run logged: Prefect's handler writes to stderr, or the records reach pytest's handler instead,
    depending on whether Prefect set its logging up before this test."""
    return "\n".join([err, *(f"{r.levelname} {r.getMessage()}" for r in caplog.records)])


def _records(root: Path) -> dict[int, tuple[Path, Path]]:
    """shard index → (cache-key file, result file) of the ingest's cached shard summaries."""
    out = {}
    for meta in sorted((root / ".prefect" / "cache-keys").iterdir()):
        result = root / ".prefect" / "results" / json.loads(meta.read_text())["storage_key"]
        out[json.loads(result.read_text())["index"]] = (meta, result)
    return out


@pytest.mark.usefixtures("prefect_harness")
def test_damaged_cache_records_are_misses_recomputed_with_a_warning(
    clips: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "runs"
    rc, first, _ = _ingest(clips, root, capfd)
    assert rc == 0 and first["shards_written"] == N
    records = _records(root)
    assert sorted(records) == list(range(N))

    marker, outside = tmp_path / "executed", tmp_path / "not-a-result.json"
    outside.write_text("precious, and not JSON")
    meta, result = records[0]
    result.write_bytes(result.read_bytes()[:20])  # truncated JSON
    meta, result = records[1]
    result.write_bytes(b"\x93\xa4\x00garbage\xff" * 10)  # garbage bytes
    meta, result = records[2]
    result.unlink()  # a cache key pointing at a missing result
    meta, result = records[3]
    meta.write_bytes(b"\x00\xffnot a record")  # a garbage cache-key file
    meta, result = records[4]
    # A record naming its own decoder: Prefect would call `subprocess.run` on the result's JSON object, whose keys
    # are an argv (this ran the command before the check).
    poisoned = json.loads(meta.read_text())
    poisoned["serializer"]["object_decoder"] = "subprocess.run"
    meta.write_text(json.dumps(poisoned))
    result.write_text(json.dumps({"/bin/sh": 0, "-c": 0, f"touch {marker}": 0}))
    meta, result = records[5]
    moved = json.loads(meta.read_text())
    moved["storage_key"] = str(outside)  # outside the results folder: dropped, and that file is never removed
    meta.write_text(json.dumps(moved))
    meta, result = records[6]
    result.write_text(records[7][1].read_text())  # valid JSON, but shard 7's summary
    meta, result = records[7]
    result.write_text(json.dumps({"__class__": "collections.OrderedDict", "data": {}}))  # a class Prefect would build

    recomputed: list[int] = []
    real = ing.ingest_shard
    monkeypatch.setattr(ing, "ingest_shard", lambda job, cfg: recomputed.append(job.index) or real(job, cfg))
    caplog.clear()
    rc, second, err = _ingest(clips, root, capfd)
    assert rc == 0 and second["ok"] and second["n_samples"] == N, err
    assert "Traceback" not in err and "error:" not in err, err
    assert sorted(recomputed) == list(range(N))  # every damaged record was a miss, and only a miss
    assert second["shards_skipped"] == N  # the shards themselves were intact: the tasks found them committed
    logged = _logged(err, caplog)
    warned = dict(re.findall(r"not reusing the cached result of (\w+): ([^\n]*)", logged))
    assert len(warned) == N - 1, logged  # shard 6's record is well formed: the flow itself refused the summary
    assert "shard 6: its cached summary is not one" in logged
    assert not marker.exists()
    assert outside.read_text() == "precious, and not JSON"
    reasons = "\n".join(warned.values())
    assert "decoding ({'object_decoder': 'subprocess.run'})" in reasons and "is outside" in reasons
    assert "'collections.OrderedDict'" in reasons and "JSONDecodeError" in reasons and "FileNotFoundError" in reasons

    # The recomputed records are sound: a third run replays all of them, with no warning.
    recomputed.clear()
    caplog.clear()
    rc, third, err = _ingest(clips, root, capfd)
    assert rc == 0 and third["n_samples"] == N and recomputed == []
    logged = _logged(err, caplog)
    assert "WARNING" not in logged and "Traceback" not in logged, logged
    assert sorted(_records(root)) == list(range(N))


def test_an_unusable_prefect_database_is_one_error_line_naming_it(clips: Path, tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir()
    db = home / "prefect.db"
    garbage = os.urandom(64 * 1024)
    db.write_bytes(garbage)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "20"}
    args = [sys.executable, "-m", "flows", "ingest", "--source", str(clips), "--out", str(tmp_path / "runs"), "--json"]
    for _ in range(2):  # and the same again: nothing was changed or half-created by the first try
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: the Prefect database "), proc.stderr
        assert str(db) in lines[0] and "PREFECT_HOME" in lines[0] and "move it aside" in lines[0]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"error": lines[0][len("error: ") :]}
        assert db.read_bytes() == garbage  # the user's file is left for them to look at
        assert not (tmp_path / "runs").exists()  # refused before any work


def test_the_database_check_accepts_sound_missing_and_busy_databases(tmp_path: Path) -> None:
    from prefect.settings import (
        PREFECT_API_DATABASE_CONNECTION_URL,
        PREFECT_API_URL,
        PREFECT_HOME,
        temporary_settings,
    )

    from infra.prefect_home import PrefectDatabaseError, check_prefect_database

    def check(db: Path) -> None:
        updates = {PREFECT_HOME: str(tmp_path), PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db}"}
        with temporary_settings(updates=updates, restore_defaults={PREFECT_API_URL}):
            check_prefect_database()

    check(tmp_path / "absent.db")
    sound = tmp_path / "sound.db"
    with sqlite3.connect(sound) as con:
        con.execute("CREATE TABLE t (x)")
    check(sound)
    busy = sqlite3.connect(sound, isolation_level=None)
    busy.execute("BEGIN EXCLUSIVE")  # another run writing it
    try:
        check(sound)
    finally:
        busy.close()
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(sound.read_bytes()[:50])
    with pytest.raises(PrefectDatabaseError, match=r"truncated\.db"):
        check(truncated)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(PrefectDatabaseError, match="is not a file"):
        check(tmp_path / "dir.db")
