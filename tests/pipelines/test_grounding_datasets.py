"""Charades-STA and ActivityNet Captions parsers on fixture files in the official formats: values, 2D-TAN's clamping
and dropping rules, errors that name the line, and write → read round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.datasets.grounding import (
    GroundingQuery,
    format_charades_sta,
    parse_activitynet_captions,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
    write_activitynet_captions,
    write_charades_sta,
)

# Official Charades-STA lines (trailing period, 1 decimal) plus the mini world's style (2 decimals, commas, no period).
CHARADES = """AO8RW 0.0 6.9##a person is putting a book on a shelf.
AO8RW 2.4 35.0##person begins to play on a phone.

Y6R7T 11.5 11.5##an empty moment.
mg-train-000003 4.25 10.50##the red circle moves left, then up
"""

ACTIVITYNET = {
    "v_QOlSCBRmfWY": {
        "duration": 82.73,
        "timestamps": [[0.83, 19.86], [17.37, 60.81], [56.26, 90.0], [30.0, 20.0]],
        "sentences": [
            "A young woman is seen standing in a room and leads into her dancing.",
            " The girl dances around the room while the camera captures her movements. ",
            "She continues dancing around the room and ends by laying on the floor.",
            "A reversed moment that 2D-TAN drops.",
        ],
        "url": "ignored extra field",
    },
    "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[-1.5, 12.0]], "sentences": ["Clamped at zero."]},
}


def test_charades_sta_values(tmp_path: Path) -> None:
    path = tmp_path / "charades_sta_test.txt"
    path.write_text(CHARADES)
    queries = read_charades_sta(path)
    assert queries == [
        GroundingQuery("AO8RW", 0.0, 6.9, "a person is putting a book on a shelf"),
        GroundingQuery("AO8RW", 2.4, 35.0, "person begins to play on a phone"),
        GroundingQuery("mg-train-000003", 4.25, 10.5, "the red circle moves left, then up"),
    ]  # the empty moment (start == end) is dropped, as 2D-TAN does


def test_charades_sta_durations_clamp_ends(tmp_path: Path) -> None:
    csv_path = tmp_path / "Charades_v1_test.csv"
    csv_path.write_text("id,subject,scene,length\nAO8RW,HR43,Kitchen,33.67\nY6R7T,HR43,Bedroom,30.0\n"
                        "mg-train-000003,x,y,32.0\n")  # fmt: skip
    durations = read_charades_durations(csv_path)
    assert durations == {"AO8RW": 33.67, "Y6R7T": 30.0, "mg-train-000003": 32.0}
    path = tmp_path / "charades_sta_test.txt"
    path.write_text(CHARADES)
    queries = read_charades_sta(path, durations)
    assert [(q.start, q.end, q.duration) for q in queries] == [
        (0.0, 6.9, 33.67),
        (2.4, 33.67, 33.67),
        (4.25, 10.5, 32.0),
    ]
    with pytest.raises(ValueError, match="no duration"):
        read_charades_sta(path, {"AO8RW": 33.67})


@pytest.mark.parametrize(
    "line", ["AO8RW 0.0 6.9 a person without separator", "AO8RW 0.0##too few fields", "AO8RW zero 6.9##bad number"]
)
def test_charades_sta_errors_name_the_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"AO8RW 0.0 6.9##fine.\n\n{line}\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3"):
        read_charades_sta(path)


def test_charades_sta_round_trip(tmp_path: Path) -> None:
    queries = [
        GroundingQuery("mg-test-000000", 1.25, 4.5, "the blue square moves up"),
        GroundingQuery("mg-test-000000", 6.0, 13.75, "the red circle moves left, then down"),
        GroundingQuery("mg-test-000001", 0.0, 2.0, "the green triangle moves right"),
    ]
    path = tmp_path / "out.txt"
    write_charades_sta(queries, path)
    assert path.read_text().splitlines()[0] == "mg-test-000000 1.25 4.50##the blue square moves up"
    assert read_charades_sta(path) == queries
    with pytest.raises(ValueError):
        format_charades_sta([GroundingQuery("a b", 0.0, 1.0, "space in the video id")])


def test_activitynet_captions_values(tmp_path: Path) -> None:
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps(ACTIVITYNET))
    queries = read_activitynet_captions(path)
    assert [(q.video, q.start, q.end, q.duration) for q in queries] == [
        ("v_QOlSCBRmfWY", 0.83, 19.86, 82.73),
        ("v_QOlSCBRmfWY", 17.37, 60.81, 82.73),
        ("v_QOlSCBRmfWY", 56.26, 82.73, 82.73),  # end clamped to the duration
        ("v_ehGHCYKzyZ8", 0.0, 12.0, 61.72),  # start clamped to 0
    ]  # the reversed [30, 20] moment is dropped
    assert queries[1].sentence == "The girl dances around the room while the camera captures her movements."


def test_activitynet_captions_errors() -> None:
    with pytest.raises(ValueError, match="2 timestamps but 1 sentences"):
        parse_activitynet_captions({"v": {"duration": 5.0, "timestamps": [[0, 1], [1, 2]], "sentences": ["one"]}})
    with pytest.raises(ValueError, match="needs 'duration'"):
        parse_activitynet_captions({"v": {"timestamps": [], "sentences": []}})


def test_activitynet_captions_round_trip(tmp_path: Path) -> None:
    queries = parse_activitynet_captions(ACTIVITYNET)
    path = tmp_path / "out.json"
    write_activitynet_captions(queries, path)
    assert read_activitynet_captions(path) == queries
    assert list(json.loads(path.read_text())) == ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]
    with pytest.raises(ValueError, match="no duration"):
        write_activitynet_captions([GroundingQuery("v", 0.0, 1.0, "no duration")], path)
