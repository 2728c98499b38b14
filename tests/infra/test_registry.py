"""infra.registry: idempotent registration, conditional ``@champion`` promotion, downloads by alias and version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.registry import Registry
from infra.tracking import Tracker
from tests.infra.test_tracking import make_run_root


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("infra.settings._settings", None)
    monkeypatch.chdir(tmp_path)  # anything written to the CWD would show up next to runs/
    return Registry(Tracker.for_run_root(str(make_run_root(tmp_path / "runs"))))


def trained(registry: Registry, tmp_path: Path, key: str, weights: str) -> tuple[str, Path]:
    """A finished training run and its checkpoint folder (state dict stand-in + config JSON)."""
    tracker = registry.tracker
    run_id = tracker.start_or_resume("mini-clip", key, key, {"width": 8, "key": key})
    tracker.finish(run_id)
    folder = tmp_path / "ckpt" / key
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.pt").write_text(weights)
    (folder / "sub" / "config.json").write_text(json.dumps({"key": key}))
    return run_id, folder


def register(registry: Registry, tmp_path: Path, key: str, metric: float, higher: bool = True) -> dict:
    run_id, folder = trained(registry, tmp_path, key, weights=f"weights of {key}")
    return registry.register("mini-clip", run_id, folder, "t2v_R@1", metric, run_key=key, higher_is_better=higher)


def test_champion_moves_only_to_strictly_better_versions(registry: Registry, tmp_path: Path) -> None:
    r1 = register(registry, tmp_path, "job-1", 50.0)
    assert r1 == {"name": "mini-clip", "version": 1, "promoted": True, "champion_version": 1, "metric": 50.0}
    r2 = register(registry, tmp_path, "job-2", 40.0)
    assert r2 == {"name": "mini-clip", "version": 2, "promoted": False, "champion_version": 1, "metric": 40.0}
    r_tie = register(registry, tmp_path, "job-tie", 50.0)
    assert (r_tie["version"], r_tie["champion_version"]) == (3, 1)  # a tie does not move the alias
    r4 = register(registry, tmp_path, "job-4", 60.0)
    assert (r4["version"], r4["promoted"], r4["champion_version"]) == (4, True, 4)
    champion = registry.champion("mini-clip")
    assert champion is not None
    assert (champion["version"], champion["metric"], champion["run_key"]) == (4, 60.0, "job-4")
    assert champion["run_id"] == registry.tracker.find_runs("mini-clip", "job-4")[0].info.run_id
    assert register(registry, tmp_path, "job-nan", float("nan"))["champion_version"] == 4


def test_lower_is_better_metric(registry: Registry, tmp_path: Path) -> None:
    assert register(registry, tmp_path, "a", 0.5, higher=False)["champion_version"] == 1
    assert register(registry, tmp_path, "b", 0.7, higher=False)["champion_version"] == 1
    assert register(registry, tmp_path, "c", 0.3, higher=False)["champion_version"] == 3
    with pytest.raises(ValueError, match="ranks versions by"):  # one direction per registered model
        register(registry, tmp_path, "d", 0.1, higher=True)


def test_registering_the_same_run_key_twice_is_idempotent(registry: Registry, tmp_path: Path) -> None:
    run_id, folder = trained(registry, tmp_path, "job-1", weights="w1")
    first = registry.register("mini-clip", run_id, folder, "t2v_R@1", 50.0, run_key="job-1", description="first")
    second = registry.register("mini-clip", run_id, folder, "t2v_R@1", 50.0, run_key="job-1", description="first")
    assert first == second == {"name": "mini-clip", "version": 1, "promoted": True, "champion_version": 1, "metric": 50}
    versions = registry.client.search_model_versions("name = 'mini-clip'")
    assert [v.version for v in versions] == [1]
    assert versions[0].description == "first"
    artifacts = registry._remote_files(run_id, "model")
    assert artifacts == {"weights.pt": 2, "sub/config.json": len(json.dumps({"key": "job-1"}))}


def test_download_returns_the_champion_files(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "job-1", 50.0)
    register(registry, tmp_path, "job-2", 70.0)
    register(registry, tmp_path, "job-3", 60.0)
    dst = tmp_path / "downloads" / "champion"
    path = registry.download("models:/mini-clip@champion", dst)
    assert path == dst
    assert (path / "weights.pt").read_text() == "weights of job-2"
    assert json.loads((path / "sub" / "config.json").read_text()) == {"key": "job-2"}
    # by version, into the same folder: replaced whole, not merged
    (dst / "stale.txt").write_text("from an older download")
    path = registry.download("models:/mini-clip/1", dst)
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) == ["sub", "sub/config.json", "weights.pt"]
    assert (path / "weights.pt").read_text() == "weights of job-1"
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["champion"]  # no staging left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "downloads", "runs"]  # nothing in the CWD
    with pytest.raises(ValueError, match="models:/"):
        registry.download("runs:/abc/model", dst)


def test_no_champion_before_the_first_registration(registry: Registry, tmp_path: Path) -> None:
    assert registry.champion("mini-clip") is None
    register(registry, tmp_path, "job-1", 1.0)
    assert registry.champion("unknown-model") is None
