"""THUMOS14, ActivityNet 1.2, Charades-STA and ActivityNet Captions (grounding) adapters on fixtures the tests write
in each official layout (benchmark-formats §4-7): instances and queries per split, the quirks (ambiguous segments,
CliffDiving ⊂ Diving, the W-TAL test videos, CRLF, start ≥ end, clipping, ``v_`` prefixes) and ``data check``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipelines.datasets import activitynet12, anet_captions_grounding, charades_sta, thumos14
from pipelines.datasets.files import AnnotationNotFound, DatasetFileError
from pipelines.datasets.grounding import GroundingQuery
from pipelines.datasets.wtal import THUMOS14_CLASSES, UM_EXCLUDED_TEST, Instance
from tests.media import bad_inputs, encode

# ------------------------------------------------------------------------------------------------------ THUMOS14

VAL_DIR = "TH14_Temporal_annotations_validation/annotation"
TEST_DIR = "TH14_Temporal_Annotations_Test/annotations/annotation"
# official rows: two spaces after the name; the files not listed here exist and are empty
VAL_ROWS = {
    "BaseballPitch": "video_validation_0000051  67.5 75.9\nvideo_validation_0000051  10.2 14.6\n",
    "CliffDiving": "video_validation_0000052  5.0 8.0\r\n",  # CRLF
    "Diving": "video_validation_0000052  5.0 8.0\nvideo_validation_0000052  20.0 22.0\n",  # CliffDiving's twin given
    "Ambiguous": "video_validation_0000051  80.0 81.5\nvideo_validation_0000099  1.0 2.0\n",
}
TEST_ROWS = {
    "HighJump": "video_test_0000004  1.0 2.0\nvideo_test_0000270  3.0 5.0\n",
    "CliffDiving": "video_test_0000004  10.0 12.5\n",  # no Diving twin in Diving_test.txt: the rule adds it
    "TennisSwing": "video_test_0000007  0.5 9.0\n\nvideo_test_0000007  4.0 5.0\n",
    "Ambiguous": "video_test_0000004  0.2 1.1\n",
}
GT_JSON: dict[str, Any] = {  # BaSNet's gt.json: subset "train" for validation videos, string times, no duration
    "database": {
        "video_test_0000007": {
            "subset": "test",
            "annotations": [
                {"segment": ["0.5", "9.0"], "label": "TennisSwing"},
                {"segment": ["4.0", "5.0"], "label": "TennisSwing"},
            ],
        },
        "video_validation_0000051": {
            "subset": "train",
            "annotations": [
                {"segment": ["67.5", "75.9"], "label": "BaseballPitch"},
                {"segment": ["10.2", "14.6"], "label": "BaseballPitch"},
            ],
        },
        "video_validation_0000052": {
            "subset": "train",
            "annotations": [
                {"segment": ["5.0", "8.0"], "label": "CliffDiving"},
                {"segment": ["5.0", "8.0"], "label": "Diving"},
                {"segment": ["20.0", "22.0"], "label": "Diving"},
            ],
        },
        "video_test_0000004": {
            "subset": "test",
            "annotations": [
                {"segment": ["1.0", "2.0"], "label": "HighJump"},
                {"segment": ["10.0", "12.5"], "label": "CliffDiving"},
                {"segment": ["10.0", "12.5"], "label": "Diving"},
            ],
        },
    }
}


def write_thumos_official(root: Path) -> Path:
    for folder, suffix, rows in ((VAL_DIR, "_val.txt", VAL_ROWS), (TEST_DIR, "_test.txt", TEST_ROWS)):
        d = root / folder
        d.mkdir(parents=True)
        for cls in (*THUMOS14_CLASSES, "Ambiguous"):
            (d / f"{cls}{suffix}").write_bytes(rows.get(cls, "").encode())
    return root


def test_thumos14_official_folders(tmp_path: Path) -> None:
    ann = thumos14.read(write_thumos_official(tmp_path / "th14"))
    ds = ann.dataset
    assert ann.source == "official" and ds.classes == THUMOS14_CLASSES and len(ds.classes) == 20
    assert [v.video_id for v in ds.train] == ["video_validation_0000051", "video_validation_0000052"]
    assert [v.video_id for v in ds.test] == ["video_test_0000004", "video_test_0000007", "video_test_0000270"]
    v51 = ds.videos["video_validation_0000051"]
    assert v51.instances == (Instance(10.2, 14.6, "BaseballPitch"), Instance(67.5, 75.9, "BaseballPitch"))
    assert v51.ambiguous == ((80.0, 81.5),) and v51.subset == "validation"  # Ambiguous rows are not instances
    assert ds.videos["video_validation_0000052"].instances == (
        Instance(5.0, 8.0, "CliffDiving"),
        Instance(5.0, 8.0, "Diving"),  # the twin the file gives: not added again
        Instance(20.0, 22.0, "Diving"),
    )
    v4 = ds.videos["video_test_0000004"]
    assert v4.instances == (
        Instance(1.0, 2.0, "HighJump"),
        Instance(10.0, 12.5, "CliffDiving"),
        Instance(10.0, 12.5, "Diving"),  # added: CliffDiving ⊂ Diving
    )
    assert v4.ambiguous == ((0.2, 1.1),) and v4.labels == ("CliffDiving", "Diving", "HighJump")
    assert ann.diving_added == 1
    assert ann.ambiguous_only == {"validation": ["video_validation_0000099"], "test": []}
    assert "video_validation_0000099" not in ds.videos
    # the W-TAL repos' 210: without the three test videos
    wtal = thumos14.load(tmp_path / "th14", exclude=UM_EXCLUDED_TEST)
    assert [v.video_id for v in wtal.test] == ["video_test_0000004", "video_test_0000007"]
    # durations given: ends cut at the video end, segments starting at or after it dropped
    clipped = thumos14.load(tmp_path / "th14", durations={"video_test_0000007": 3.0})
    assert clipped.videos["video_test_0000007"].instances == (Instance(0.5, 3.0, "TennisSwing"),)
    assert clipped.videos["video_test_0000004"].instances == v4.instances  # no duration: unchanged


def test_thumos14_gt_json_matches_the_official_folders(tmp_path: Path) -> None:
    (tmp_path / "gt" / "dataset" / "THUMOS14").mkdir(parents=True)
    (tmp_path / "gt" / "dataset" / "THUMOS14" / "gt.json").write_text(json.dumps(GT_JSON))
    ann = thumos14.read(tmp_path / "gt")
    assert ann.source == "gt.json" and ann.diving_added == 0  # gt.json already repeats CliffDiving as Diving
    ds = ann.dataset
    assert [v.video_id for v in ds.train] == ["video_validation_0000051", "video_validation_0000052"]  # "train"
    assert ds.split_of("video_validation_0000051") == "train" and ds.videos["video_test_0000004"].duration is None
    official = thumos14.load(write_thumos_official(tmp_path / "th14"), exclude=UM_EXCLUDED_TEST)
    assert sorted(ds.videos) == sorted(official.videos)
    for vid, v in ds.videos.items():
        assert v.instances == official.videos[vid].instances and v.subset == official.videos[vid].subset
    # both present: the official folders win unless asked
    write_thumos_official(tmp_path / "gt")
    assert thumos14.read(tmp_path / "gt").source == "official"
    assert thumos14.read(tmp_path / "gt", source="gt.json").source == "gt.json"


def test_thumos14_errors_name_the_file(tmp_path: Path) -> None:
    root = write_thumos_official(tmp_path / "th14")
    (root / VAL_DIR / "Diving_val.txt").write_text("video_validation_0000052  5.0 8.0\nvideo_validation_0000052 x y\n")
    with pytest.raises(DatasetFileError, match=r"Diving_val\.txt:2: expected"):
        thumos14.load(root)
    (root / VAL_DIR / "Diving_val.txt").unlink()
    with pytest.raises(AnnotationNotFound, match=r"Diving_val\.txt not found .*1 of the 20"):
        thumos14.load(root)
    with pytest.raises(AnnotationNotFound, match=r"gt\.json"):
        thumos14.load(tmp_path / "th14" / TEST_DIR / "..", source="gt.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gt.json").write_text('{"database": {"video_test_0000001": {"subset": "test", "annotations"')
    with pytest.raises(DatasetFileError, match=r"gt\.json: not valid JSON"):
        thumos14.load(tmp_path / "bad")


def test_thumos14_check_counts_missing_unreadable_and_probed_ends(tmp_path: Path) -> None:
    root = write_thumos_official(tmp_path / "th14")
    videos = tmp_path / "videos"
    (videos / "TH14_test_set_mp4" / "more").mkdir(parents=True)
    encode(videos / "TH14_test_set_mp4" / "video_test_0000004.mp4")  # 3 s
    shutil.copy(videos / "TH14_test_set_mp4" / "video_test_0000004.mp4", videos / "video_test_0000007.mp4")
    truncated = bad_inputs(tmp_path / "bad")["truncated"][0]
    (videos / "validation").mkdir()
    shutil.copy(truncated, videos / "validation" / "video_validation_0000052.mp4")

    result = thumos14.check(root, videos, probe=False)
    val, test = result.splits
    assert (val.name, val.annotated, val.found, val.missing, val.unreadable) == (
        "validation",
        2,
        1,
        ["video_validation_0000051"],
        [],
    )
    assert (val.captions, val.expected, val.is_test) == (5, 200, False)
    assert (test.annotated, test.found, test.missing, test.captions, test.expected) == (
        3,
        2,
        ["video_test_0000270"],
        6,
        213,
    )
    assert test.is_test and not test.complete and not result.ok
    assert test.differences[0] == "the annotation gives 3 videos, the protocol 213 (-210)"
    assert "BaSNet" in test.source and result.files["Diving_test.txt"].endswith(f"{TEST_DIR}/Diving_test.txt")
    notes = "\n".join(result.notes)
    assert "validation: 1 Ambiguous segments" in notes and "video_validation_0000099" in notes
    assert "each of the 2 CliffDiving instances is also a Diving instance (1 Diving twins added)" in notes
    assert "leave out video_test_0000270" in notes
    json.dumps(result.to_json())

    probed = thumos14.check(root, videos, probe=True)
    assert probed.probed and probed.splits[0].unreadable == ["video_validation_0000052"]
    assert probed.splits[1].unreadable == []
    # 3 s videos: TennisSwing 0.5-9.0 cut; TennisSwing 4-5 and CliffDiving/Diving 10-12.5 start past the end
    assert probed.notes[-1] == (
        "probed durations of 2 videos: 1 instances end past their video (clip_to_duration cuts them), "
        "3 start at or after its end (dropped)"
    )


# ------------------------------------------------------------------------------------------------ ActivityNet 1.2

ANET12: dict[str, Any] = {
    "version": "VERSION 1.2",
    "taxonomy": [
        {"nodeId": 1, "nodeName": "Root", "parentId": None, "parentName": None},
        {"nodeId": 2, "nodeName": "Long jump", "parentId": 1, "parentName": "Root"},
        {"nodeId": 3, "nodeName": "Walking the dog", "parentId": 1, "parentName": "Root"},
        {"nodeId": 4, "nodeName": "Discus throw", "parentId": 1, "parentName": "Root"},
    ],
    "database": {
        "-01K1HxqPB8": {
            "duration": 120.5,
            "subset": "training",
            "resolution": "640x360",
            "url": "https://www.youtube.com/watch?v=-01K1HxqPB8",
            "annotations": [{"segment": [5.5, 60.25], "label": "Walking the dog"}],
        },
        "0AjYz-s4Rek": {
            "duration": 88.0,
            "subset": "validation",
            "resolution": "1280x720",
            "url": "https://www.youtube.com/watch?v=0AjYz-s4Rek",
            "annotations": [
                {"segment": [20.0, 95.0], "label": "Long jump"},  # ends past the duration
                {"segment": [1.0, 9.0], "label": "Long jump"},
            ],
        },
        "abcdefghijk": {
            "duration": 30.0,
            "subset": "validation",
            "resolution": "640x480",
            "url": "https://www.youtube.com/watch?v=abcdefghijk",
            "annotations": [{"segment": [31.0, 35.0], "label": "Discus throw"}],  # starts past the duration
        },
        "zzTestOnly01": {"duration": 50.0, "subset": "testing", "resolution": "", "url": "", "annotations": []},
    },
}


def test_activitynet12_load_prefixes_and_check(tmp_path: Path) -> None:
    root = tmp_path / "anet"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "activity_net.v1-2.min.json").write_text(json.dumps(ANET12))
    ds = activitynet12.load(root)
    assert ds.classes == ("Discus throw", "Long jump", "Walking the dog")
    assert [v.video_id for v in ds.train] == ["-01K1HxqPB8"]
    assert [v.video_id for v in ds.test] == ["0AjYz-s4Rek", "abcdefghijk"]
    assert ds.videos["0AjYz-s4Rek"].instances == (Instance(1.0, 9.0, "Long jump"), Instance(20.0, 95.0, "Long jump"))
    prefixed = activitynet12.load(root, video_prefix="v_")
    assert sorted(prefixed.videos) == ["v_-01K1HxqPB8", "v_0AjYz-s4Rek", "v_abcdefghijk", "v_zzTestOnly01"]
    assert activitynet12.file_names("0AjYz-s4Rek") == ("v_0AjYz-s4Rek", "0AjYz-s4Rek")
    assert activitynet12.file_names("v_0AjYz-s4Rek") == ("v_0AjYz-s4Rek", "0AjYz-s4Rek")

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "v_-01K1HxqPB8.mkv").write_bytes(b"x")  # the crawler's v_ name, a YouTube container
    (videos / "0AjYz-s4Rek.mp4").write_bytes(b"x")  # a bare id
    result = activitynet12.check(root, videos, probe=False)
    train, val = result.splits
    assert (train.name, train.annotated, train.found, train.captions, train.expected) == ("training", 1, 1, 1, 4819)
    assert (val.name, val.annotated, val.found, val.missing, val.captions, val.expected) == (
        "validation",
        2,
        1,
        ["abcdefghijk"],
        3,
        2383,
    )
    assert val.is_test and not train.is_test and not result.ok
    assert result.notes[0] == "activity_net.v1-2.min.json: VERSION 1.2; 3 classes (the protocol: 100)"
    assert "not used: 1 testing videos" in result.notes
    assert result.notes[-1] == (
        "segments past the video's duration: 1 end past it (clip_to_duration cuts them), 1 start at or after it "
        "(dropped)"
    )
    with pytest.raises(AnnotationNotFound, match=r"activity_net\.v1-2\.min\.json not found"):
        activitynet12.check(videos, None, probe=False)


# --------------------------------------------------------------------------------------------------- Charades-STA

CSV_HEADER = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions"]
CSV_HEADER += ["actions", "length"]


def write_charades_csv(path: Path, lengths: dict[str, str]) -> None:
    with open(path, "w", newline="") as fh:  # csv.writer: CRLF, minimal quoting (the official files, measured)
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        for vid, length in lengths.items():
            w.writerow([vid, "HR43", "Kitchen", "6", "7", "Yes", "A person, then a book.", "book", "", "", length])


def write_charades(root: Path) -> Path:
    (root / "Charades").mkdir(parents=True)
    (root / "sta").mkdir()
    (root / "sta" / "charades_sta_train.txt").write_bytes(
        b"AO8RW 0.0 6.9##a person is putting a book on a shelf.\r\n"
        b"AO8RW 2.4 35.0##person begins to play on a phone.\r\n"  # past the 33.67 s length: clipped
        b"Y6R7T 11.5 8.0##a person sits down.\r\n"  # start > end: dropped
        b"Y6R7T 40.0 45.0##a person stands up.\r\n"  # starts after the 30 s video: empty once clipped
    )
    (root / "sta" / "charades_sta_test.txt").write_text("ZZ9QX 1.0 5.0##someone opens a door.\n")
    write_charades_csv(root / "Charades" / "Charades_v1_train.csv", {"AO8RW": "33.67", "Y6R7T": "30.00"})
    write_charades_csv(root / "Charades" / "Charades_v1_test.csv", {"ZZ9QX": "20.00", "UNUSD": "9.00"})
    return root


def test_charades_sta_load_crlf_drops_and_clips(tmp_path: Path) -> None:
    queries = charades_sta.load(write_charades(tmp_path / "ch"))
    assert queries["train"] == [
        GroundingQuery("AO8RW", 0.0, 6.9, "a person is putting a book on a shelf", 33.67),
        GroundingQuery("AO8RW", 2.4, 33.67, "person begins to play on a phone", 33.67),
    ]
    assert queries["test"] == [GroundingQuery("ZZ9QX", 1.0, 5.0, "someone opens a door", 20.0)]


def test_charades_sta_check_and_errors(tmp_path: Path) -> None:
    root = write_charades(tmp_path / "ch")
    (root / "Charades_v1_480").mkdir()
    for vid in ("AO8RW", "Y6R7T"):
        (root / "Charades_v1_480" / f"{vid}.mp4").write_bytes(b"x")
    result = charades_sta.check(root, None, probe=False)
    train, test = result.splits
    assert (train.annotated, train.found, train.captions, train.expected, train.expected_captions) == (
        2,
        2,
        4,
        5338,
        12408,
    )
    assert (test.annotated, test.found, test.missing, test.captions, test.expected) == (1, 0, ["ZZ9QX"], 1, 1334)
    assert test.is_test and not result.ok and "2D-TAN" in test.source
    assert result.notes[0] == (
        "train: 2D-TAN keeps 2 of 4 queries (1 written with start ≥ end, 1 starting at or past the video length: "
        "dropped); 1 ends clipped to the length"
    )
    assert set(result.files) == {
        "charades_sta_train.txt",
        "charades_sta_test.txt",
        "Charades_v1_train.csv",
        "Charades_v1_test.csv",
    }

    (root / "sta" / "charades_sta_test.txt").write_text("ZZ9QX 1.0 5.0##ok.\nQQQQQ 1.0 2.0##not in the csv.\n")
    with pytest.raises(DatasetFileError, match=r"charades_sta_test\.txt:2: video 'QQQQQ' is not in"):
        charades_sta.load(root)
    (root / "sta" / "charades_sta_test.txt").write_text("ZZ9QX 1.0##no end.\n")
    with pytest.raises(DatasetFileError, match=r"charades_sta_test\.txt:1: expected"):
        charades_sta.load(root)
    (root / "Charades" / "Charades_v1_test.csv").unlink()
    with pytest.raises(AnnotationNotFound, match=r"Charades_v1_test\.csv not found"):
        charades_sta.check(root, None, probe=False)


# ----------------------------------------------------------------------------------- ActivityNet Captions grounding

ANET_CAPTIONS = {
    "train.json": {
        "v_QOlSCBRmfWY": {
            "duration": 82.73,
            "timestamps": [[0.83, 19.86], [17.37, 90], [30.0, 20.0], [5, 5]],
            "sentences": [" A young woman dances.", "  She keeps dancing.", "Reversed.", "Empty."],
        },
        "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[-1.5, 12.0]], "sentences": ["Clamped at zero."]},
    },
    "val_1.json": {
        "v_bXdq2zI1Ms0": {"duration": 73.1, "timestamps": [[0, 10.5]], "sentences": ["A man talks."]},
        "v_ogQozSI5V8U": {"duration": 20.0, "timestamps": [[25.0, 30.0]], "sentences": ["After the end."]},
    },
    "val_2.json": {"v_bXdq2zI1Ms0": {"duration": 73.1, "timestamps": [[3, 8]], "sentences": ["He waves."]}},
}


def test_anet_captions_grounding_load_and_check(tmp_path: Path) -> None:
    root = tmp_path / "captions"
    root.mkdir()
    for name, obj in ANET_CAPTIONS.items():
        (root / name).write_text(json.dumps(obj))  # exactly json.dumps, no final newline (measured)
    queries = anet_captions_grounding.load(root)
    assert queries["train"] == [
        GroundingQuery("v_QOlSCBRmfWY", 0.83, 19.86, "A young woman dances.", 82.73),
        GroundingQuery("v_QOlSCBRmfWY", 17.37, 82.73, "She keeps dancing.", 82.73),
        GroundingQuery("v_ehGHCYKzyZ8", 0.0, 12.0, "Clamped at zero.", 61.72),
    ]
    assert queries["val_1"] == [GroundingQuery("v_bXdq2zI1Ms0", 0.0, 10.5, "A man talks.", 73.1)]
    assert queries["val_2"] == [GroundingQuery("v_bXdq2zI1Ms0", 3.0, 8.0, "He waves.", 73.1)]

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "v_QOlSCBRmfWY.mp4").write_bytes(b"x")  # the official name
    (videos / "ehGHCYKzyZ8.webm").write_bytes(b"x")  # CLIP4Clip's bare rename
    (videos / "v_bXdq2zI1Ms0.mkv").write_bytes(b"x")
    result = anet_captions_grounding.check(root, videos, probe=False)
    train, val1, val2 = result.splits
    assert (train.annotated, train.found, train.captions, train.expected, train.expected_captions) == (
        2,
        2,
        5,
        10009,
        37421,
    )
    assert (val1.annotated, val1.found, val1.missing, val1.captions) == (2, 1, ["v_ogQozSI5V8U"], 2)
    assert (val2.name, val2.annotated, val2.found, val2.is_test, val1.is_test) == ("val_2", 1, 1, True, False)
    assert val2.expected_captions == 17031 and val2.captions == 1
    assert val2.differences[0] == "the annotation gives 1 videos, the protocol 4,885 (-4,884)"
    assert val2.differences[-1] == "1 captions, the protocol 17,031 (-17,030)"
    assert result.notes[0] == (
        "train: 2D-TAN keeps 3 of 5 queries (2 written with start ≥ end, 0 starting at or past the duration: "
        "dropped); 2 moments clamped to [0, duration]"
    )
    assert result.notes[1].startswith("val_1: 2D-TAN keeps 1 of 2 queries (0 written with start ≥ end, 1 starting")

    # 2D-TAN's renamed copies (val.json / test.json) are read when the official names are absent
    (root / "val_1.json").rename(root / "val.json")
    (root / "val_2.json").rename(root / "test.json")
    assert anet_captions_grounding.load(root)["val_2"] == queries["val_2"]
    (root / "test.json").unlink()
    with pytest.raises(DatasetFileError, match=r"val_2\.json \(2D-TAN: test\.json\) not found"):
        anet_captions_grounding.load(root)
