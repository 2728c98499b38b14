"""THUMOS14 / ActivityNet1.2 parsers on fixture files in the official formats, snippet mapping, result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.common.metrics.detection import THUMOS14_TIOU, detection_map
from models.common.segments import Segments
from pipelines.datasets.wtal import (
    THUMOS14_CLASSES,
    UM_EXCLUDED_TEST,
    Instance,
    load_activitynet12,
    load_mini_wtal,
    load_thumos14,
    read_predictions,
    results_from_segments,
    snippet_ground_truth,
    taxonomy_leaves,
    write_predictions,
)
from pipelines.sampling import seconds_to_snippet, snippet_seconds

THUMOS_GT: dict[str, Any] = {  # UM's gt.json layout: ActivityNet "database" without taxonomy
    "version": "THUMOS14",
    "database": {
        "video_validation_0000051": {
            "subset": "validation",
            "duration": 169.79,
            "annotations": [
                {"segment": ["72.8", "76.4"], "label": "CliffDiving"},
                {"segment": [10.2, 14.6], "label": "BaseballPitch"},
                {"segment": [30.0, 33.1], "label": "BaseballPitch"},
            ],
        },
        "video_test_0000004": {
            "subset": "test",
            "duration": 33.4,
            "annotations": [
                {"segment": [0.2, 1.1], "label": "Ambiguous"},
                {"segment": [1.0, 2.0], "label": "TennisSwing"},
            ],
        },
        "video_test_0000270": {"subset": "test", "annotations": [{"segment": [3.0, 5.0], "label": "Diving"}]},
        "video_test_0001292": {"subset": "test", "annotations": [{"segment": [0.3, 0.5], "label": "HighJump"}]},
    },
}

ANET_GT: dict[str, Any] = {  # activity_net.v1-2.min.json layout (ids without the "v_" of feature files)
    "version": "VERSION 1.2",
    "taxonomy": [
        {"nodeId": 1, "nodeName": "Root", "parentId": None, "parentName": None},
        {"nodeId": 2, "nodeName": "Sports", "parentId": 1, "parentName": "Root"},
        {"nodeId": 3, "nodeName": "Long jump", "parentId": 2, "parentName": "Sports"},
        {"nodeId": 4, "nodeName": "Pets", "parentId": 1, "parentName": "Root"},
        {"nodeId": 5, "nodeName": "Walking the dog", "parentId": 4, "parentName": "Pets"},
        {"nodeId": 6, "nodeName": "Grooming dog", "parentId": 4, "parentName": "Pets"},
    ],
    "database": {
        "-01K1HxqPB8": {
            "subset": "training",
            "duration": 120.5,
            "resolution": "640x360",
            "url": "https://www.youtube.com/watch?v=-01K1HxqPB8",
            "annotations": [{"segment": [5.5, 60.25], "label": "Walking the dog"}],
        },
        "0AjYz-s4Rek": {
            "subset": "validation",
            "duration": 88.0,
            "resolution": "1280x720",
            "url": "https://www.youtube.com/watch?v=0AjYz-s4Rek",
            "annotations": [
                {"segment": [1.0, 9.0], "label": "Long jump"},
                {"segment": [20.0, 31.5], "label": "Long jump"},
            ],
        },
        "zzTestOnly01": {"subset": "testing", "duration": 50.0, "resolution": "", "url": "", "annotations": []},
    },
}


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_thumos14_class_list_is_the_standard_twenty() -> None:
    assert len(THUMOS14_CLASSES) == 20 and list(THUMOS14_CLASSES) == sorted(THUMOS14_CLASSES)
    assert THUMOS14_CLASSES[0] == "BaseballPitch" and THUMOS14_CLASSES[6] == "CricketShot"
    assert THUMOS14_CLASSES[19] == "VolleyballSpiking"
    assert UM_EXCLUDED_TEST == ("video_test_0000270", "video_test_0001292", "video_test_0001496")


def test_thumos14_subsets_labels_ambiguous_and_exclusions(tmp_path: Path) -> None:
    path = write_json(tmp_path / "gt.json", THUMOS_GT)
    ds = load_thumos14(path)
    assert ds.classes == THUMOS14_CLASSES and ds.version == "THUMOS14"
    assert [v.video_id for v in ds.train] == ["video_validation_0000051"]
    assert [v.video_id for v in ds.test] == ["video_test_0000004", "video_test_0000270", "video_test_0001292"]
    v = ds.videos["video_validation_0000051"]
    assert v.instances[0] == Instance(10.2, 14.6, "BaseballPitch")  # sorted by start; string times parsed
    assert v.instances[-1] == Instance(72.8, 76.4, "CliffDiving")
    assert v.labels == ("BaseballPitch", "CliffDiving") and v.duration == 169.79
    assert np.flatnonzero(ds.video_labels("video_validation_0000051")).tolist() == [0, 4]
    t = ds.videos["video_test_0000004"]
    assert t.labels == ("TennisSwing",) and t.ambiguous == ((0.2, 1.1),)  # Ambiguous is not an instance
    assert ds.videos["video_test_0000270"].duration is None
    assert ds.split_of("video_validation_0000051") == "train" and ds.split_of("video_test_0000004") == "test"
    um = load_thumos14(path, exclude=UM_EXCLUDED_TEST)
    assert [v.video_id for v in um.test] == ["video_test_0000004"]
    db = um.database("test")
    assert db == {
        "video_test_0000004": {
            "subset": "test",
            "duration": 33.4,
            "annotations": [{"segment": [1.0, 2.0], "label": "TennisSwing"}],
        }
    }
    bad = json.loads(json.dumps(THUMOS_GT))
    bad["database"]["video_test_0000004"]["annotations"].append({"segment": [4, 5], "label": "Surfing"})
    with pytest.raises(ValueError, match="Surfing"):
        load_thumos14(write_json(tmp_path / "bad.json", bad))
    with pytest.raises(ValueError, match="database"):
        load_thumos14(write_json(tmp_path / "nodb.json", {"results": {}}))


def test_activitynet12_classes_from_labels_or_taxonomy(tmp_path: Path) -> None:
    path = write_json(tmp_path / "activity_net.v1-2.min.json", ANET_GT)
    ds = load_activitynet12(path)
    assert ds.classes == ("Long jump", "Walking the dog")  # the labels used, sorted
    assert taxonomy_leaves(ANET_GT["taxonomy"]) == ("Grooming dog", "Long jump", "Walking the dog")
    assert load_activitynet12(path, classes_from="taxonomy").classes == ("Grooming dog", "Long jump", "Walking the dog")
    assert [v.video_id for v in ds.train] == ["-01K1HxqPB8"] and [v.video_id for v in ds.test] == ["0AjYz-s4Rek"]
    assert ds.split_of("zzTestOnly01") == "" and ds.videos["zzTestOnly01"].labels == ()
    assert len(ds.videos["0AjYz-s4Rek"].instances) == 2
    prefixed = load_activitynet12(path, video_prefix="v_")
    assert sorted(prefixed.videos) == ["v_-01K1HxqPB8", "v_0AjYz-s4Rek", "v_zzTestOnly01"]
    assert prefixed.sample_meta()["v_0AjYz-s4Rek"] == {
        "split": "test",
        "subset": "validation",
        "duration": 88.0,
        "labels": ["Long jump"],
    }


def test_snippet_second_mapping_and_snippet_ground_truth(tmp_path: Path) -> None:
    assert snippet_seconds(np.arange(4)).tolist() == pytest.approx([0.0, 0.64, 1.28, 1.92])  # i·16/25
    assert seconds_to_snippet(np.array([0.0, 0.63, 0.64, 1.3])).tolist() == [0, 0, 1, 2]
    ds = load_thumos14(write_json(tmp_path / "gt.json", THUMOS_GT))
    # TennisSwing [1.0, 2.0]: rows round(1.5625) = 2 … round(3.125) = 3 (UM's rule, inclusive)
    gt = snippet_ground_truth(ds.videos["video_test_0000004"], 6, ds.classes)
    assert gt.shape == (6, 20)
    assert np.flatnonzero(gt[:, THUMOS14_CLASSES.index("TennisSwing")]).tolist() == [2, 3]
    assert gt.sum() == 2  # the Ambiguous segment marks nothing
    # HighJump [0.3, 0.5]: round(0.47) = 0 … round(0.78) = 1; clipped to a 1-snippet video
    short = snippet_ground_truth(ds.videos["video_test_0001292"], 1, ds.classes)
    assert short[:, THUMOS14_CLASSES.index("HighJump")].tolist() == [True]


def test_prediction_files_round_trip_and_evaluate(tmp_path: Path) -> None:
    ds = load_thumos14(write_json(tmp_path / "gt.json", THUMOS_GT), exclude=UM_EXCLUDED_TEST)
    tennis = THUMOS14_CLASSES.index("TennisSwing")
    segs = {
        "video_test_0000004": Segments.from_bounds(
            np.array([[1.0, 2.0], [5.0, 6.0]]), np.array([0.9, 0.2]), np.array([tennis, 0])
        )
    }
    results = results_from_segments(segs, ds.classes)
    assert results["video_test_0000004"][0] == {"label": "TennisSwing", "score": 0.9, "segment": [1.0, 2.0]}
    path = write_predictions(tmp_path / "out" / "results.json", results, external_data={"used": False, "details": ""})
    doc = json.loads(path.read_text())
    assert set(doc) == {"version", "results", "external_data"} and doc["external_data"]["used"] is False
    back = read_predictions(path)
    assert back == results
    report = detection_map(ds.database(), back, THUMOS14_TIOU, subset="test")
    assert report["average_mAP"] == pytest.approx(1.0)  # the TennisSwing hit; BaseballPitch FP is another class
    with pytest.raises(ValueError, match="lacks"):
        write_predictions(tmp_path / "x.json", {"v": [{"label": "A", "segment": [0, 1]}]})
    with pytest.raises(ValueError, match="ends before"):
        write_predictions(tmp_path / "x.json", {"v": [{"label": "A", "score": 1, "segment": [2, 1]}]})
    with pytest.raises(ValueError, match="results"):
        read_predictions(write_json(tmp_path / "gt_again.json", THUMOS_GT))


def test_mini_world_annotations_parse_with_thumos_subsets(tmp_path: Path) -> None:
    from pipelines.miniworld import wtal as mini

    plan = mini.build(0, "tiny")
    ds = load_mini_wtal(write_json(tmp_path / "annotations.json", plan.annotations))
    assert ds.classes == tuple(plan.annotations["classes"]) and len(ds.classes) == 3
    assert len(ds.train) == 3 and len(ds.test) == 2
    for vid, entry in plan.annotations["database"].items():
        assert list(ds.videos[vid].labels) == sorted(entry["labels"])
    assert {m["split"] for m in ds.sample_meta().values()} == {"train", "test"}
