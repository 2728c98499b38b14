"""`storage.resolve_root`: the run root is made absolute once, at the edge, whatever its spelling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines import storage


def test_relative_roots_become_absolute_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    want = str(tmp_path / "runs")
    for spelling in ("runs", "./runs", "runs/", "./runs/../runs", f"file://{tmp_path}/runs", want + "/"):
        assert storage.resolve_root(spelling) == want, spelling
    assert storage.resolve_root(Path("runs")) == want


def test_home_is_expanded_and_resolution_is_idempotent(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    once = storage.resolve_root("~/runs")
    assert once == str(tmp_path / "runs")
    assert storage.resolve_root(once) == once
    assert storage.is_resolved_root(once)


def test_uris_keep_their_scheme_and_lose_the_trailing_slash() -> None:
    assert storage.resolve_root("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.is_resolved_root("s3://bucket/runs")


def test_relative_and_empty_roots() -> None:
    assert not storage.is_resolved_root("runs")
    assert not storage.is_resolved_root("file://runs")
    assert storage.is_resolved_root(os.path.abspath("runs"))
    with pytest.raises(ValueError, match="empty"):
        storage.resolve_root("  ")
