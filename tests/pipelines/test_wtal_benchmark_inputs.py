"""What the DCC DAG reads of a W-TAL benchmark download, fast: the ground truth and sources it writes
(`pipelines.datasets.wtal_sources.prepare`), released feature files found by video id in each W-TAL layout
(`pipelines.features.i3d.find_released`), and THUMOS14's official Ambiguous rule in the detection mAP."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models.common.metrics.detection import average_precision, detection_map
from pipelines import shards
from pipelines.datasets.activitynet12 import file_names as anet_names
from pipelines.datasets.wtal import THUMOS14_CLASSES, load_thumos14
from pipelines.datasets.wtal_sources import prepare, wtal_ledger
from pipelines.features.i3d import find_released, import_released


def test_a_false_positive_on_an_ambiguous_segment_is_dropped_a_true_positive_kept() -> None:
    gt = [("v", 10.0, 20.0)]
    preds = [("v", 30.0, 34.0, 0.9), ("v", 10.0, 20.0, 0.8), ("v", 50.0, 52.0, 0.7)]
    plain = average_precision(gt, preds, [0.5])
    assert plain[0] == pytest.approx(0.5)  # the FP ranked first halves the precision at the only recall point
    dropped = average_precision(gt, preds, [0.5], ambiguous={"v": [(33.0, 40.0)]})
    assert dropped[0] == pytest.approx(1.0)  # the kit: "overlapping detections will be removed from the FP list"
    touching = average_precision(gt, preds, [0.5], ambiguous={"v": [(34.0, 40.0)]})
    assert touching[0] == pytest.approx(0.5)  # sharing only an end point is no overlap
    kept = average_precision(gt, preds[1:2], [0.5], ambiguous={"v": [(15.0, 16.0)]})
    assert kept[0] == pytest.approx(1.0)  # a TP overlapping one stays a TP
    db = {"v": {"subset": "test", "annotations": [{"segment": [10.0, 20.0], "label": "A"}]}}
    results = {"v": [{"label": "A", "score": s, "segment": [a, b]} for _, a, b, s in preds]}
    assert detection_map(db, results, [0.5], ambiguous={"v": [(33.0, 40.0)]})["mAP"] == pytest.approx([1.0])
    assert detection_map(db, results, [0.5])["mAP"] == pytest.approx([0.5])


def _thumos14(folder: Path) -> Path:
    """The official folders: a HighJump validation video (its file present), a CliffDiving test video (no file) with
    an Ambiguous segment; the other class files empty."""
    official = {
        ("TH14_Temporal_annotations_validation/annotation", "_val.txt"): {
            "HighJump": "video_validation_0000051  1.0 2.0"
        },
        ("TH14_Temporal_Annotations_Test/annotations/annotation", "_test.txt"): {
            "CliffDiving": "video_test_0000004  0.5 1.5",
            "Ambiguous": "video_test_0000004  3.0 4.0",
        },
    }
    for (sub, suffix), rows in official.items():
        (folder / sub).mkdir(parents=True)
        for cls in (*THUMOS14_CLASSES, "Ambiguous"):
            (folder / sub / f"{cls}{suffix}").write_text(rows[cls] + "\n" if cls in rows else "")
    (folder / "videos").mkdir()
    (folder / "videos" / "video_validation_0000051.mp4").write_bytes(b"not decoded here")
    return folder


def test_prepare_writes_the_ground_truth_and_the_sources_of_the_videos_found(tmp_path: Path) -> None:
    data = _thumos14(tmp_path / "THUMOS14")
    out = prepare("thumos14", data, None, tmp_path / "run")
    gt = load_thumos14(out["ground_truth"])
    assert gt.videos["video_test_0000004"].ambiguous == ((3.0, 4.0),)  # kept for the official Ambiguous rule
    assert gt.videos["video_test_0000004"].labels == ("CliffDiving", "Diving")  # the adapter's CliffDiving twin
    assert out["ground_truth_format"] == "thumos14" and out["found"] == {"train": 1, "test": 0}
    with open(out["sources_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["key"], r["split"]) for r in rows] == [("video_validation_0000051", "train")]
    assert [(r["id"], r["status"]) for r in out["ledger"]] == [("video_test_0000004", "not_found")]
    again = prepare("thumos14", data, None, tmp_path / "run")
    assert again["ground_truth"] == out["ground_truth"]  # named by its content: a rerun finds the same file
    assert out["meta"]["video_test_0000004"] | {"duration": None} == {
        "split": "test",
        "subset": "test",
        "labels": ["CliffDiving", "Diving"],
        "duration": None,
        "video_id": "video_test_0000004",
    }
    # released features, no videos needed: every annotated video is a row of the imported stage
    feats = tmp_path / "features" / "train" / "rgb"
    feats.mkdir(parents=True)
    np.save(feats / "video_validation_0000051.npy", np.ones((3, 4), np.float32))
    (tmp_path / "features" / "train" / "flow").mkdir()
    np.save(tmp_path / "features" / "train" / "flow" / "video_validation_0000051.npy", np.zeros((3, 4), np.float32))
    bare = prepare("thumos14", data, None, tmp_path / "run", with_videos=False)
    stage = import_released(tmp_path / "features", str(tmp_path / "run"), "t14", bare["meta"], feature_dim=8)
    manifest = shards.read_manifest(stage["stage_uri"])
    assert {r["key"]: r["status"] for r in manifest} == {
        "video_test_0000004": "failed",
        "video_validation_0000051": "ok",
    }
    ledger = wtal_ledger(bare, manifest, features_dir=str(tmp_path / "features"))
    assert [(r["id"], r["status"]) for r in ledger["rows"]] == [("video_test_0000004", "no_features")]
    assert ledger["evaluated"]["with_features"] == 0 and ledger["splits"]["validation"]["usable"] == 1
    wrong = import_released(tmp_path / "features", str(tmp_path / "run"), "t14", bare["meta"], feature_dim=2048)
    assert (
        "2048" in {r["key"]: r["error"] for r in shards.read_manifest(wrong["stage_uri"])}["video_validation_0000051"]
    )


def test_released_files_are_found_by_id_in_each_w_tal_layout(tmp_path: Path) -> None:
    def save(path: Path, d: int = 4) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros((2, d), np.float32))

    save(tmp_path / "UM/features/test/rgb/video_test_0000004.npy")  # UM / BaSNet: stream folders
    save(tmp_path / "UM/features/test/flow/video_test_0000004.npy")
    save(tmp_path / "vf/v_abcdefghijk_rgb.npy")  # video_features: suffixes, ActivityNet's v_ name
    save(tmp_path / "vf/v_abcdefghijk_flow.npy")
    save(tmp_path / "joint/video_test_0000005.npy", 8)  # one (T, 2048)-style file
    save(tmp_path / "UM/features/test/rgb/video_test_0000006.npy")  # RGB only
    ids = ["video_test_0000004", "v_abcdefghijk", "video_test_0000005", "video_test_0000006", "video_test_0000007"]
    found, missing = find_released(tmp_path, ids, lambda v: anet_names(v) if v.startswith("v_") else (v,))
    assert {k: (f.layout, f.flow is not None) for k, f in found.items()} == {
        "video_test_0000004": ("folders", True),
        "v_abcdefghijk": ("suffix", True),
        "video_test_0000005": ("joint", False),
    }
    um = found["video_test_0000004"]
    assert um.rgb.parent.name == "rgb" and um.flow is not None and um.flow.parent.name == "flow"
    assert missing["video_test_0000006"].startswith("only the rgb features")
    assert missing["video_test_0000007"].startswith("no released feature file")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_released(tmp_path / "nowhere", ids)
