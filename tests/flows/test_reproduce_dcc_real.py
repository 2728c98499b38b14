"""The DCC DAG on a real benchmark's layout: a THUMOS14 download written by the test (the official per-class
annotation folders, Ambiguous files, 25 fps videos, one of them missing and one truncated) through ``--smoke``, then
the same benchmark from released per-video I3D files (UM's ``features/{train,test}/{rgb,flow}/<id>.npy``) exported
from the first run's computed features: the imported stage equals the computed one, and with it the CBP branch's
results."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.datasets.wtal import THUMOS14_CLASSES
from pipelines.ffmpeg import ffmpeg_binary, run_command

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

VAL = "TH14_Temporal_annotations_validation/annotation"
TEST = "TH14_Temporal_Annotations_Test/annotations/annotation"
#: class → (validation rows, test rows) "video  start end" (two spaces after the name, as the official files)
ROWS = {
    "BaseballPitch": (
        ["video_validation_0000051  0.4 1.6", "video_validation_0000053  1.0 2.2"],
        ["video_test_0000004  0.5 1.8", "video_test_0000007  0.2 1.0"],
    ),
    "CleanAndJerk": (
        ["video_validation_0000052  0.8 2.4", "video_validation_0000054  0.1 1.0"],
        ["video_test_0000005  1.0 2.6"],
    ),
    "HighJump": (["video_validation_0000053  2.3 2.9"], ["video_test_0000006  0.3 2.0", "video_test_0000004  2.2 2.8"]),
}
AMBIGUOUS = {"val": ["video_validation_0000051  2.0 2.5"], "test": ["video_test_0000005  0.2 0.6"]}
MISSING = "video_test_0000007"  # annotated, no video file
TRUNCATED = "video_validation_0000054"  # moov atom at the end, cut in half: the decoder cannot probe it


def _lavfi(path: Path, seconds: float, seed: int, faststart: bool = True) -> None:
    """A 25 fps 64×48 test pattern (moving content for TV-L1), `seconds` long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [ffmpeg_binary(), "-hide_banner", "-v", "error", "-y", "-f", "lavfi"]
    argv += ["-i", f"testsrc2=size=64x48:rate=25:duration={seconds}", "-vf", f"hue=h={seed * 40}"]
    argv += ["-c:v", "libx264", "-pix_fmt", "yuv420p", *(["-movflags", "+faststart"] if faststart else []), str(path)]
    res = run_command(argv, timeout=60)
    assert res.ok, res.stderr_tail


def write_thumos14(folder: Path, videos: bool = True) -> Path:
    """THUMOS14 as downloaded: all 20 class files per subset (3 annotated), Ambiguous files, and (`videos`) the
    videos in the official folder names, 3 s each, one missing and one truncated."""
    for sub, suffix, index in ((VAL, "_val.txt", 0), (TEST, "_test.txt", 1)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for cls in THUMOS14_CLASSES:
            rows = ROWS.get(cls, ([], []))[index]
            (folder / sub / f"{cls}{suffix}").write_text("".join(r + "\n" for r in rows))
        (folder / sub / f"Ambiguous{suffix}").write_text("".join(r + "\n" for r in AMBIGUOUS[suffix[1:-4]]))
    if videos:
        ids = sorted({r.split()[0] for rows in ROWS.values() for part in rows for r in part} - {MISSING})
        for i, vid in enumerate(ids):
            where = "videos/validation" if "validation" in vid else "videos/TH14_test_set_mp4"
            path = folder / where / f"{vid}.mp4"
            _lavfi(path, 3.0, i, faststart=vid != TRUNCATED)
            if vid == TRUNCATED:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return folder


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    from flows.reproduce_dcc import reproduce_dcc

    base = tmp_path_factory.mktemp("dcc-thumos14")
    data = write_thumos14(base / "THUMOS14")
    out = reproduce_dcc(dataset="thumos14", root=str(base / "runs"), size="smoke", data_dir=str(data))
    yield base, out


@pytest.mark.timeout(600)
def test_smoke_dag_on_a_thumos14_download_reports_metrics_and_the_ledger(computed: tuple[Path, dict[str, Any]]) -> None:
    _, out = computed
    assert out["dataset"] == "thumos14" and out["variant"] == "full"
    assert [s["stage"] for s in out["steps"]] == ["warmup", "B", "F"]
    res = out["results"]
    assert set(res["thumos"]) == {f"mAP@0.{i}" for i in range(1, 8)} | {"AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)"}
    assert all(_finite(v) and 0.0 <= v <= 1.0 for v in [*res["thumos"].values(), *res["anet"].values()])
    # scored on every annotated test video (the missing one's instance is a miss), the Ambiguous segment read
    scored = res["scored"]
    assert (scored["test_subset"], scored["test_videos"], scored["ambiguous_segments"]) == ("test", 4, 1)
    assert scored["predicted_videos"] <= 3  # the missing video has no prediction
    ledger = out["ledger"]
    rows = {r["id"]: r for r in ledger["rows"]}
    assert set(rows) == {MISSING, TRUNCATED}
    assert rows[MISSING]["status"] == "not_found" and not rows[MISSING]["used"]
    assert rows[TRUNCATED]["status"] == "failed_probe" and not rows[TRUNCATED]["used"]
    assert ledger["splits"]["validation"] | {"source": ""} == {
        "role": "train",
        "annotated": 4,
        "found": 4,
        "expected": 200,
        "instances": 5,
        "usable": 3,
        "source": "",
    }
    assert ledger["evaluated"]["with_features"] == 3 and ledger["evaluated"]["scored_on"] == 4
    assert not ledger["evaluated"]["complete"]  # 3 of the protocol's 210
    # the paper's numbers beside ours, in percent, compared on THUMOS14 only
    vs = {r["metric"]: r for r in out["paper_vs_ours"]}
    thumos = vs["cbp/AVG(0.3:0.7)"]
    assert thumos["comparable"] and thumos["paper"] == 40.8
    assert thumos["ours"] == pytest.approx(100 * res["thumos"]["AVG(0.3:0.7)"])
    assert set(vs) == {"cbp/AVG(0.3:0.7)"}  # the spec carries THUMOS14's number only
    assert out["model_version"] == 1 and Path(res["predictions"]).is_file()


@pytest.mark.timeout(600)
def test_released_features_equal_computed_ones_and_give_the_same_cbp(computed: tuple[Path, dict[str, Any]]) -> None:
    """UM's released layout exported from the computed stage, imported by video id (no videos: the CBP branch
    alone), equals the computed stage array for array; the warm-up trained on it scores the same."""
    from flows.reproduce_dcc import reproduce_dcc
    from pipelines import shards

    base, first = computed
    keys, arrays, metas = shards.load_stage(first["i3d_stage"])
    half = arrays[0].shape[1] // 2
    released = base / "UM" / "features"
    for key, array, meta in zip(keys, arrays, metas):
        split = "train" if meta["split"] == "train" else "test"
        for stream, part in (("rgb", array[:, :half]), ("flow", array[:, half:])):
            (released / split / stream).mkdir(parents=True, exist_ok=True)
            np.save(released / split / stream / f"{key}.npy", part)
    data = write_thumos14(base / "annotations-only", videos=False)
    root = str(base / "runs")
    with pytest.raises(ValueError, match=r"VLP branch needs the videos. frames.*variant=cbp_only"):
        reproduce_dcc(dataset="thumos14", root=root, size="smoke", data_dir=str(data), features=str(released))
    out = reproduce_dcc(
        dataset="thumos14",
        root=root,
        size="smoke",
        data_dir=str(data),
        features=str(released.parent),
        overrides={"dcc.model.stages.variant": "cbp_only"},
    )
    keys2, arrays2, _ = shards.load_stage(out["i3d_stage"])
    assert out["i3d_stage"] != first["i3d_stage"] and keys2 == keys
    assert all(np.array_equal(a, b) for a, b in zip(arrays, arrays2))
    assert out["frames_stage"] is None and out["clip_features_stage"] is None and out["variant"] == "cbp_only"
    assert [s["stage"] for s in out["steps"]] == ["warmup"] and out["model_version"] is None  # not registered
    rows = {r["id"]: r["status"] for r in out["ledger"]["rows"]}
    assert rows == {MISSING: "no_features", TRUNCATED: "no_features"}  # neither had computed features to export
    first_warmup = _step_metrics(first["root"], first["steps"][0])
    assert {k: v for k, v in _step_metrics(root, out["steps"][0]).items() if k.startswith("cbp/")} == pytest.approx(
        {k: v for k, v in first_warmup.items() if k.startswith("cbp/")}, rel=1e-5, abs=1e-6
    )
    assert all(r["ours"] is None for r in out["paper_vs_ours"])  # CBP alone is not DCC


def _step_metrics(root: str, step: dict[str, Any]) -> dict[str, float]:
    """A step job's final metrics, from its job record."""
    import json

    from infra.training_job import job_record_path

    record = json.loads(Path(job_record_path(root, step["run_name"])).read_text())
    return {k: float(v) for k, v in record["metrics"].items() if isinstance(v, int | float)}
