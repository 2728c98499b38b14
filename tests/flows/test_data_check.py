"""``vlrepro data check``: exit codes 0 / 1 / 2, the JSON report (missing and unreadable ids, the difference from the
published counts) and the one-line errors, on fixtures in the official layouts (called in-process through
`flows.cli.main`, the same entry point as the ``vlrepro`` script)."""

from __future__ import annotations

import json

import pytest

from flows.cli import main
from tests.pipelines.test_retrieval_benchmarks import (
    make_media,
    put,
    write_activitynet,
    write_msrvtt,
    write_msrvtt_videos,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return make_media(tmp_path_factory.mktemp("media"))


def check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["data", "check", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_complete_1k_a_exits_0(tmp_path, capsys):
    rows = [(f"video{7010 + i}", f"sentence {i}") for i in range(1000)]
    write_msrvtt(tmp_path, rows)
    for vid, _ in rows:  # existence only: --no-probe
        put(tmp_path / "MSRVTT" / "videos" / "all" / f"{vid}.mp4", b"")
    rc, out, err = check(["msrvtt", "--data-dir", str(tmp_path), "--no-probe", "--json"], capsys)
    assert rc == 0, err
    assert err == ""
    report = last_json(out)
    assert report["ok"] is True and report["probed"] is False and report["incomplete_tests"] == []
    test = next(s for s in report["splits"] if s["name"] == "test-1k-A")
    assert (test["annotated"], test["found"], test["usable"], test["n_missing"], test["captions"]) == (
        1000,
        1000,
        1000,
        0,
        1000,
    )
    assert test["expected"] == 1000 and test["complete"] and test["differences"] == [] and "JSFUSION" in test["source"]
    # the training splits' videos are absent: reported, but only an incomplete test split fails the check
    nine = next(s for s in report["splits"] if s["name"] == "train-9k")
    assert nine["n_missing"] == 8 and nine["missing"][:2] == ["video0", "video1"] and not nine["complete"]


def test_missing_and_unreadable_test_videos_exit_1(tmp_path, capsys, media):
    write_msrvtt(tmp_path)
    write_msrvtt_videos(tmp_path, media)  # video8 missing, video9 truncated
    rc, out, err = check(["msrvtt", "--data-dir", str(tmp_path), "--json"], capsys)
    assert rc == 1
    report = last_json(out)
    test = next(s for s in report["splits"] if s["name"] == "test-1k-A")
    assert (test["missing"], test["n_missing"], test["unreadable"], test["n_unreadable"]) == (
        ["video8"],
        1,
        ["video9"],
        1,
    )
    assert test["differences"][:2] == [
        "the annotation gives 2 videos, the protocol 1,000 (-998)",
        "0 usable videos (found and readable), the protocol 1,000 (-1,000)",
    ]
    message = (
        "msrvtt: incomplete test split test-1k-A (1 missing, 1 unreadable; 0 usable of 2 annotated, 1,000 published)"
    )
    assert report["error"] == message and err.strip().splitlines() == [f"error: {message}"]
    assert report["files"]["MSRVTT_data.json"] == str(tmp_path / "msrvtt_data" / "MSRVTT_data.json")


def test_human_report_names_the_ids_and_the_differences(tmp_path, capsys, media):
    write_msrvtt(tmp_path)
    write_msrvtt_videos(tmp_path, media)
    rc, out, _ = check(["MSR-VTT", "--data-dir", str(tmp_path)], capsys)
    assert rc == 1
    assert "      missing: video8" in out and "      unreadable: video9" in out
    assert "differs: 0 usable videos (found and readable), the protocol 1,000 (-1,000)" in out
    assert out.strip().splitlines()[-1].startswith("not ok: msrvtt: incomplete test split test-1k-A")


def test_video_dir_override_and_v_prefixes(tmp_path, capsys):
    data = write_activitynet(tmp_path / "data")
    put(tmp_path / "data" / "v_CCCCCCCCCCC.mp4", b"")  # under --data-dir: not looked at with --video-dir
    put(tmp_path / "videos" / "val" / "v_CCCCCCCCCCC.mkv", b"")
    put(tmp_path / "videos" / "D_DDDDDDDDD.webm", b"")  # renamed without the prefix, CLIP4Clip-style
    args = ["activitynet-captions", "--data-dir", str(data), "--video-dir", str(tmp_path / "videos"), "--no-probe"]
    rc, out, _ = check([*args, "--json"], capsys)
    val = next(s for s in last_json(out)["splits"] if s["name"] == "val_1")
    assert (val["annotated"], val["found"], val["missing"], val["captions"], val["queries"]) == (2, 2, [], 3, 2)
    assert rc == 1 and "4,917 published" in last_json(out)["error"]  # a 2-video val_1 is not the protocol's


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["kinetics", "--data-dir", "."], "unknown dataset 'kinetics'; choose one of msrvtt"),
        (["msrvtt", "--data-dir", "/definitely/not/here"], "does not exist"),
        (["msrvtt"], "Missing option '--data-dir'"),
        (["msrvtt", "--data-dir", "{empty}"], "MSRVTT_data.json not found under"),
        (["msrvtt", "--data-dir", "{twice}"], "two different MSRVTT_data.json under"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    for sub in ("a", "b"):
        (tmp_path / "twice" / sub).mkdir(parents=True)
        (tmp_path / "twice" / sub / "MSRVTT_data.json").write_text(json.dumps({"sentences": [], "x": sub}))
    argv = [a.format(empty=tmp_path / "empty", twice=tmp_path / "twice") for a in argv]
    rc, out, err = check([*argv, "--json"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert needle in last_json(out)["error"]


def test_malformed_annotation_exits_1_naming_the_file(tmp_path, capsys):
    data = write_msrvtt(tmp_path)
    (data / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr8,video8\n")
    rc, out, err = check(["msrvtt", "--data-dir", str(tmp_path), "--json"], capsys)
    message = f"{data / 'MSRVTT_JSFUSION_test.csv'}: line 2 has 3 fields, the header 4 (key,vid_key,video_id,sentence)"
    assert rc == 1 and err.strip().splitlines() == [f"error: {message}"] and last_json(out) == {"error": message}


def test_localization_names_resolve_or_say_they_are_not_here(tmp_path, capsys):
    from pipelines.datasets import registry

    rc, out, err = check(["thumos14", "--data-dir", str(tmp_path), "--no-probe", "--json"], capsys)
    if "thumos14" not in registry.available():
        assert rc == 2 and "dataset 'thumos14' has no adapter in this version" in err
    else:  # the adapter exists: whatever it reports, the contract holds
        assert rc in (0, 1, 2) and isinstance(last_json(out), dict)
