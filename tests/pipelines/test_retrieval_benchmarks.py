"""Retrieval benchmark adapters on fixtures written here in each benchmark's official layout (benchmark-formats.md
§1-4): split sizes, caption grouping, the 1k-A single-sentence rule, the MSVD pickle guard, ``v_`` prefixes, DiDeMo's
file names, videos found by any extension in nested folders, and the per-split check against published counts.

The writers here are shared with tests/flows/test_data_check.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from pipelines.datasets import activitynet_captions, didemo, msrvtt, msvd, registry
from pipelines.datasets.check import DatasetCheck, SplitCheck
from pipelines.datasets.files import AmbiguousFile, AnnotationNotFound, DatasetFileError, FileIndex, VideoIndex
from pipelines.datasets.retrieval_benchmark import check_benchmark
from pipelines.ffmpeg import ffmpeg_binary, run_command

# -- tiny real videos --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Bytes of a 1-s 32×32 lavfi clip per container, and a truncated mp4 (moov at the end, cut in half)."""
    folder = tmp_path_factory.mktemp("media")
    return make_media(folder)


def make_media(folder: Path) -> dict[str, bytes]:
    src = folder / "clip.mp4"
    argv = [ffmpeg_binary(), "-hide_banner", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=4:duration=1"]
    res = run_command([*argv, "-pix_fmt", "yuv420p", str(src)], timeout=60)
    assert res.ok, res.stderr_tail
    out = {".mp4": src.read_bytes()}
    for ext in (".mkv", ".avi", ".mov"):  # the same stream remuxed: real containers, no second encode
        res = run_command([ffmpeg_binary(), "-v", "error", "-i", str(src), "-c", "copy", str(folder / f"c{ext}")], 60)
        assert res.ok, res.stderr_tail
        out[ext] = (folder / f"c{ext}").read_bytes()
    out["truncated"] = out[".mp4"][: len(out[".mp4"]) // 2]  # ffmpeg writes moov last: the header is cut off
    return out


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- official layouts --------------------------------------------------------------------------------------------------

MSRVTT_SPLIT = {
    **{f"video{i}": "train" for i in range(6)},
    "video6": "validate",
    **{f"video{i}": "test" for i in (7, 8, 9)},
}
JSFUSION = [("video9", "a man, on a stage, sings"), ("video8", "a cat plays with a ball")]  # rows not sorted by video


def write_msrvtt(root: Path, test_rows: list[tuple[str, str]] | None = None) -> Path:
    """``msrvtt_data/`` as in msrvtt_data.zip: 10 videos (6 train, 1 validate, 3 test), 3 captions each, sentences
    in an order that is not video order; 7k = train + validate, 9k = 7k + video7; 1k-A = video9, video8."""
    data = root / "msrvtt_data"
    data.mkdir(parents=True)
    videos = [
        {"category": 9, "url": f"https://www.youtube.com/watch?v=yt{i}", "video_id": vid, "start time": 1.0,
         "end time": 9.5, "split": split, "id": i}
        for i, (vid, split) in enumerate(MSRVTT_SPLIT.items())
    ]  # fmt: skip
    sentences = [
        {"caption": f"{vid} caption {k}", "video_id": vid, "sen_id": 0}
        for k in range(3)
        for vid in reversed(list(MSRVTT_SPLIT))
    ]
    for i, s in enumerate(sentences):
        s["sen_id"] = i
    (data / "MSRVTT_data.json").write_text(
        json.dumps({"info": {"year": 2016}, "videos": videos, "sentences": sentences})
    )
    seven = [f"video{i}" for i in range(7)]
    (data / "MSRVTT_train.7k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in seven))
    (data / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in [*seven, "video7"]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "vid_key", "video_id", "sentence"])
    for i, (vid, sentence) in enumerate(JSFUSION if test_rows is None else test_rows):
        writer.writerow([f"ret{i}", vid.replace("video", "msr"), vid, sentence])
    (data / "MSRVTT_JSFUSION_test.csv").write_text(buf.getvalue())
    return data


MSVD_CAPTIONS = {
    "-4wsuPCjDBc_5_15": [["a", "man", "slices", "bread"], ["someone", "cuts", "bread"]],
    "bQJQGoJF7_k_162_169": [["a", "dog", "runs"]],
    "abc_1_2": [["a", "cat", "sleeps"], ["the", "cat", "is", "asleep"], ["a", "sleeping", "cat"]],
    "xyz_3_4": [["a", "car", "drives"]],
    "unlisted_0_1": [["nobody", "lists", "this"]],
}


def write_msvd(root: Path) -> Path:
    """``msvd_data/`` as in msvd_data.zip: the pickle (protocol 2, as old preprocessing scripts wrote it) and the
    lists (train/val without the final newline, test with it); test lists an id that has no captions."""
    data = root / "msvd_data"
    data.mkdir(parents=True)
    (data / "raw-captions.pkl").write_bytes(pickle.dumps(MSVD_CAPTIONS, protocol=2))
    (data / "train_list.txt").write_text("-4wsuPCjDBc_5_15\nbQJQGoJF7_k_162_169")
    (data / "val_list.txt").write_text("abc_1_2")
    (data / "test_list.txt").write_text("xyz_3_4\nnocaption_9_9\n")
    return data


def didemo_moment(video: str, description: str, i: int) -> dict[str, object]:
    return {
        "num_segments": 6,
        "description": description,
        "dl_link": "https://www.flickr.com/video_download.gne?id=1",
        "times": [[1, 1], [1, 2], [1, 1], [0, 1]],
        "video": video,
        "annotation_id": i,
    }


DIDEMO = {
    "train": {"10@N00_1_aa.mov": ["the baby is first shown.", "a dog barks."], "11@N00_2_bb.3gp": ["a car."]},
    "val": {"12@N00_3_cc.m4v": ["people dance."]},
    "test": {
        "13@N00_4_dd.": ["a bare dot name.", "second moment."],
        "14@N00_5_ee.mp4": ["x."],
        "15@N00_6_ff.avi": ["u."],
    },
}
DIDEMO_LISTED = {"train": ["10@N00_1_aa.mov", "11@N00_2_bb.3gp"], "val": ["12@N00_3_cc.m4v"],
                 "test": ["13@N00_4_dd.", "14@N00_5_ee.mp4"]}  # fmt: skip


def write_didemo(root: Path) -> Path:
    """Single-line ``json.dumps`` lists without a final newline, moments of one video not contiguous; lists with
    full Flickr names (one with a bare final ``.``), sorted, final newline; 15@N00 is annotated but unlisted."""
    data = root / "didemo"
    data.mkdir(parents=True)
    for split, videos in DIDEMO.items():
        moments = [(v, d) for k in range(2) for v, ds in videos.items() for d in ds[k : k + 1]]
        (data / f"{split}_data.json").write_text(
            json.dumps([didemo_moment(v, d, i) for i, (v, d) in enumerate(moments)])
        )
        (data / f"{split}_list.txt").write_text("".join(f"{v}\n" for v in sorted(DIDEMO_LISTED[split])))
    return data


ANET = {
    "train.json": {
        "v_AAAAAAAAAAA": [" A young woman is seen.", "  The girl dances."],
        "v_BBBBBBBBBBB": ["A man runs."],
    },
    "val_1.json": {"v_CCCCCCCCCCC": [" People cook.", " They eat."], "v_D_DDDDDDDDD": ["A dog."], "v_EEEEEEEEEEE": []},
}


def write_activitynet(root: Path) -> Path:
    """``json.dumps`` objects keyed ``v_<11>`` (sentences with leading spaces, an int/float stamp mix, an empty
    entry); train_ids lists an id without captions, in another order; no val_ids.json."""
    data = root / "captions"
    data.mkdir(parents=True)
    for name, videos in ANET.items():
        obj = {v: {"duration": 82.73, "timestamps": [[0, 19.86]] * len(s), "sentences": s} for v, s in videos.items()}
        (data / name).write_text(json.dumps(obj))
    (data / "train_ids.json").write_text(json.dumps(["v_BBBBBBBBBBB", "v_ZZZZZZZZZZZ", "v_AAAAAAAAAAA"]))
    return data


# -- MSR-VTT -----------------------------------------------------------------------------------------------------------


def test_msrvtt_splits_and_caption_grouping(tmp_path):
    write_msrvtt(tmp_path)
    bench = msrvtt.load(tmp_path)
    sizes = {s.name: len(s.videos) for s in bench.splits}
    assert sizes == {"train-9k": 8, "train-7k": 7, "test-1k-A": 2, "train-full": 6, "val-full": 1, "test-full": 3}
    assert bench.test.name == "test-1k-A" and [s.name for s in bench.splits if s.is_test] == ["test-1k-A"]
    nine = bench.split("train-9k")
    assert nine.ids == [*(f"video{i}" for i in range(7)), "video7"]
    # every json caption of the video, in file order, grouped although the json interleaves videos
    assert nine.videos[0].captions == ("video0 caption 0", "video0 caption 1", "video0 caption 2")
    assert nine.n_sentences == 24 and nine.expected_videos == 9_000 and nine.expected_sentences == 180_000
    assert bench.split("val-full").ids == ["video6"] and bench.split("test-full").ids == ["video7", "video8", "video9"]
    assert set(bench.files) == {
        "MSRVTT_data.json",
        "MSRVTT_train.9k.csv",
        "MSRVTT_train.7k.csv",
        "MSRVTT_JSFUSION_test.csv",
    }


def test_msrvtt_1k_a_has_one_sentence_per_video_from_the_csv(tmp_path):
    write_msrvtt(tmp_path, [*JSFUSION, ("video8", "a second sentence for video8")])
    bench = msrvtt.load(tmp_path)
    test = bench.split("test-1k-A")
    # the csv's sentence (quoted, with commas), not the json's three captions; a repeated video keeps its first row
    assert [(v.video_id, v.captions) for v in test.videos] == [
        ("video9", ("a man, on a stage, sings",)),
        ("video8", ("a cat plays with a ball",)),
    ]
    assert test.n_queries == test.n_sentences == 2 and (test.expected_videos, test.expected_sentences) == (1000, 1000)
    assert any("1 rows repeat a video" in n for n in bench.notes)


def test_msrvtt_jsfusion_semicolon_resave_and_missing_optional_7k(tmp_path):
    data = write_msrvtt(tmp_path)
    (data / "MSRVTT_JSFUSION_test.csv").write_text("key;vid_key;video_id;sentence\nret0;msr8;video8;a cat\n")
    (data / "MSRVTT_train.7k.csv").unlink()
    bench = msrvtt.load(tmp_path)
    assert bench.split("test-1k-A").videos[0].captions == ("a cat",)
    assert "train-7k" not in [s.name for s in bench.splits]
    assert "MSRVTT_train.7k.csv not found: no train-7k split" in bench.notes


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr8,video8,a,b\n", "line 2 has 5 fields"),
        ("MSRVTT_JSFUSION_test.csv", "key,vid_key,vid,sentence\nret0,msr8,video8,a\n", "no column video_id"),
        ("MSRVTT_train.9k.csv", "", "empty file"),
        ("MSRVTT_data.json", '{"sentences": [{"video_id": "video0"}]}', "sentences[0] has no 'caption'"),
        ("MSRVTT_data.json", '{"videos": [', "not valid JSON"),
    ],
)
def test_msrvtt_malformed_files_are_one_line_errors_naming_the_file(tmp_path, name, content, needle):
    data = write_msrvtt(tmp_path)
    (data / name).write_text(content)
    with pytest.raises(DatasetFileError) as err:
        msrvtt.load(tmp_path)
    message = str(err.value)
    assert needle in message and str(data / name) in message and "\n" not in message


def test_annotation_files_found_anywhere_and_duplicates(tmp_path):
    data = write_msrvtt(tmp_path / "deep" / "er")
    (tmp_path / "__MACOSX" / "msrvtt_data").mkdir(parents=True)  # macOS zip debris is not a second copy
    (tmp_path / "__MACOSX" / "msrvtt_data" / "MSRVTT_data.json").write_text("junk")
    assert msrvtt.load(tmp_path).files["MSRVTT_data.json"] == data / "MSRVTT_data.json"
    shutil.copy(data / "MSRVTT_data.json", tmp_path / "MSRVTT_data.json")  # byte-identical copy: not ambiguous
    assert msrvtt.load(tmp_path).files["MSRVTT_data.json"] == tmp_path / "MSRVTT_data.json"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "MSRVTT_data.json").write_text('{"sentences": []}')
    with pytest.raises(AmbiguousFile) as err:
        msrvtt.load(tmp_path)
    assert str(tmp_path / "MSRVTT_data.json") in str(err.value) and str(tmp_path / "other" / "MSRVTT_data.json") in str(
        err.value
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationNotFound, match=r"^MSRVTT_data.json not found under .*empty$"):
        msrvtt.load(tmp_path / "empty")
    shutil.copy(data / "MSRVTT_data.json", tmp_path / "other" / "MSRVTT_data.json")
    with pytest.raises(AnnotationNotFound, match=r"^MSRVTT_JSFUSION_test.csv not found under "):
        msrvtt.load(tmp_path / "other")


# -- MSVD --------------------------------------------------------------------------------------------------------------


def test_msvd_splits_captions_and_ids_with_dashes_and_underscores(tmp_path):
    write_msvd(tmp_path)
    bench = msvd.load(tmp_path)
    assert [(s.name, s.ids) for s in bench.splits] == [
        ("train", ["-4wsuPCjDBc_5_15", "bQJQGoJF7_k_162_169"]),  # no final newline: the last id is whole
        ("val", ["abc_1_2"]),
        ("test", ["xyz_3_4"]),
    ]
    assert bench.split("train").videos[0].captions == ("a man slices bread", "someone cuts bread")
    assert bench.split("val").n_sentences == 3 and bench.test.name == "test" and bench.test.expected_videos == 670
    assert any("1 ids of test_list.txt have no captions" in n and "nocaption_9_9" in n for n in bench.notes)


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does: call os.system when loaded
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", ["system", "eval", "ordereddict"])
def test_msvd_unpickler_refuses_anything_but_builtin_containers_and_strings(tmp_path, payload):
    data = write_msvd(tmp_path)
    marker = tmp_path / "PWNED"
    evil = {"system": _RunsShell(marker), "eval": _Evals(), "ordereddict": __import__("collections").OrderedDict()}
    (data / "raw-captions.pkl").write_bytes(pickle.dumps({"abc_1_2": [["a"]], "x": [evil[payload]]}, protocol=2))
    if payload == "system":  # the file is live: a plain pickle.load runs the command
        pickle.loads((data / "raw-captions.pkl").read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(msvd.UnsafePickleError) as err:
        msvd.load(tmp_path)
    assert not marker.exists()
    message = str(err.value)
    named = {"system": "posix.system", "eval": "__builtin__.eval", "ordereddict": "collections.OrderedDict"}[payload]
    assert message.startswith(str(data / "raw-captions.pkl")) and named in message and "nothing was executed" in message


def test_msvd_malformed_pickles(tmp_path):
    data = write_msvd(tmp_path)
    for obj, needle in [([1, 2], "expected a dict"), ({"a": [[1, 2]]}, "neither a token list nor a string")]:
        (data / "raw-captions.pkl").write_bytes(pickle.dumps(obj))
        with pytest.raises(DatasetFileError, match=needle):
            msvd.load(tmp_path)
    (data / "raw-captions.pkl").write_bytes(b"\x80\x02}q\x00(X")  # cut short
    with pytest.raises(DatasetFileError, match="not a readable pickle"):
        msvd.load(tmp_path)
    (data / "raw-captions.pkl").write_bytes(pickle.dumps({"abc_1_2": ["A cat sleeps. "]}, protocol=0))  # strings kept
    assert msvd.load(tmp_path).split("val").videos[0].captions == ("A cat sleeps.",)


# -- DiDeMo ------------------------------------------------------------------------------------------------------------


def test_didemo_paragraphs_lists_and_unlisted_videos(tmp_path):
    write_didemo(tmp_path)
    bench = didemo.load(tmp_path)
    assert bench.protocol == "paragraph"
    assert {s.name: s.ids for s in bench.splits} == DIDEMO_LISTED
    first = bench.split("train").videos[0]
    # one query: the video's descriptions joined in file order (CLIP4Clip), although the json interleaves videos
    assert first.captions == ("the baby is first shown. a dog barks.",)
    assert first.sentences == ("the baby is first shown.", "a dog barks.")
    test = bench.split("test")
    assert test.n_queries == 2 and test.n_sentences == 3 and test.expected_videos == 1_004 and test.is_test
    assert "test: 1 videos of test_data.json are not in test_list.txt: dropped (CLIP4Clip)" in bench.notes
    assert didemo.file_names("13@N00_4_dd.") == ("13@N00_4_dd.", "13@N00_4_dd")
    assert didemo.file_names("noext") == ("noext",)


def test_didemo_without_lists_uses_every_annotated_video(tmp_path):
    data = write_didemo(tmp_path)
    (data / "test_list.txt").unlink()
    bench = didemo.load(tmp_path)
    assert bench.split("test").ids == list(DIDEMO["test"])
    assert any(n.startswith("test_list.txt not found") for n in bench.notes)


# -- ActivityNet Captions ----------------------------------------------------------------------------------------------


def test_activitynet_v_prefix_paragraphs_and_id_lists(tmp_path):
    write_activitynet(tmp_path)
    bench = activitynet_captions.load(tmp_path)
    train, val = bench.split("train"), bench.split("val_1")
    assert train.ids == ["BBBBBBBBBBB", "AAAAAAAAAAA"]  # train_ids.json order; the id without captions skipped
    assert val.ids == ["CCCCCCCCCCC", "D_DDDDDDDDD"]  # no val_ids.json: the json's videos that have sentences
    a = train.videos[1]
    assert a.captions == ("A young woman is seen. The girl dances.",) and a.sentences[1] == "The girl dances."
    assert a.file_names == ("v_AAAAAAAAAAA", "AAAAAAAAAAA")
    assert val.is_test and val.role == "test" and (val.expected_videos, val.expected_sentences) == (4_917, 17_505)
    assert any("1 ids of train_ids.json have no captions" in n and "ZZZZZZZZZZZ" in n for n in bench.notes)
    assert activitynet_captions.bare_id("v_x") == "x" and activitynet_captions.bare_id("x") == "x"


# -- videos and the check ----------------------------------------------------------------------------------------------


def test_videos_found_by_any_extension_in_nested_folders(tmp_path):
    for rel in [
        "a/b/video1.MP4",
        "video2.webm",
        "x/video2.mp4",  # two files for one id: .mp4 preferred (CLIP4Clip: .mp4, then .webm)
        "c/d/e/v_AAAAAAAAAAA.mkv",
        "BBBBBBBBBBB.mov",
        "f/13@N00_4_dd.",  # DiDeMo's bare final dot: matched by the exact name
        "f/14@N00_5_ee.mp4.avi",
        "g/11@N00_2_bb.mp4",  # re-encoded DiDeMo video: the name without its extension
        ".hidden/video3.mp4",
        "video4.txt",
    ]:
        put(tmp_path / rel, b"x")
    videos = VideoIndex.of(tmp_path)
    found = {n: videos.find(names).path for n, names in {
        "video1": ("video1",), "video2": ("video2",), "anet-a": ("v_AAAAAAAAAAA", "AAAAAAAAAAA"),
        "anet-b": ("v_BBBBBBBBBBB", "BBBBBBBBBBB"), "dot": didemo.file_names("13@N00_4_dd."),
        "appended": didemo.file_names("14@N00_5_ee.mp4"), "stem": didemo.file_names("11@N00_2_bb.3gp"),
        "hidden": ("video3",), "text": ("video4",),
    }.items()}  # fmt: skip
    assert found == {
        "video1": tmp_path / "a/b/video1.MP4",
        "video2": tmp_path / "x/video2.mp4",
        "anet-a": tmp_path / "c/d/e/v_AAAAAAAAAAA.mkv",
        "anet-b": tmp_path / "BBBBBBBBBBB.mov",
        "dot": tmp_path / "f/13@N00_4_dd.",
        "appended": tmp_path / "f/14@N00_5_ee.mp4.avi",
        "stem": tmp_path / "g/11@N00_2_bb.mp4",
        "hidden": None,
        "text": None,
    }
    assert videos.find(("video2",)).candidates == 2


def write_msrvtt_videos(root: Path, media: dict[str, bytes]) -> None:
    """MSRVTT/videos/all: video0-7 and video9 (video8 missing: a 1k-A video); video9 truncated; video5 as .avi,
    video3 as .mkv in a nested folder."""
    all_ = root / "MSRVTT" / "videos" / "all"
    for i in (0, 1, 2, 4, 6, 7):
        put(all_ / f"video{i}.mp4", media[".mp4"])
    put(all_ / "sub" / "video3.mkv", media[".mkv"])
    put(all_ / "video5.avi", media[".avi"])
    put(all_ / "video9.mp4", media["truncated"])


def test_check_lists_missing_and_unreadable_and_compares_with_published_counts(tmp_path, media):
    write_msrvtt(tmp_path)
    write_msrvtt_videos(tmp_path, media)
    report = check_benchmark(msrvtt.load, tmp_path, None, probe=True)
    by = {s.name: s for s in report.splits}
    test = by["test-1k-A"]
    assert (test.annotated, test.found, test.missing, test.unreadable, test.captions) == (
        2,
        1,
        ["video8"],
        ["video9"],
        2,
    )
    assert not test.complete and not report.ok and report.incomplete_tests == ["test-1k-A"]
    assert test.differences == [
        "the annotation gives 2 videos, the protocol 1,000 (-998)",
        "0 usable videos (found and readable), the protocol 1,000 (-1,000)",
        "2 captions, the protocol 1,000 (-998)",
    ]
    nine = by["train-9k"]
    assert (nine.found, nine.missing, nine.unreadable, nine.usable) == (8, [], [], 8)
    assert "24 captions, the protocol 180,000 (-179,976)" in nine.differences
    assert by["test-full"].missing == ["video8"] and not by["test-full"].is_test
    out = report.to_json(max_ids=1)
    assert out["ok"] is False and out["probed"] is True
    assert json.loads(json.dumps(out)) == out  # plain JSON
    # without the probe, the truncated file counts as found
    unprobed = check_benchmark(msrvtt.load, tmp_path, None, probe=False)
    assert {s.name: s.unreadable for s in unprobed.splits}["test-1k-A"] == []


def test_check_with_a_separate_video_dir_and_every_container(tmp_path, media):
    data = write_msvd(tmp_path / "data")
    clips = tmp_path / "clips" / "YouTubeClips"
    put(clips / "-4wsuPCjDBc_5_15.avi", media[".avi"])
    put(clips / "bQJQGoJF7_k_162_169.mov", media[".mov"])
    put(clips / "abc_1_2.mkv", media[".mkv"])
    put(clips / "xyz_3_4.avi", media[".mp4"])
    put(data / "xyz_3_4.avi", b"")  # under --data-dir, ignored when --video-dir is given
    report = msvd.check(tmp_path / "data", tmp_path / "clips", True)
    assert [(s.name, s.found, s.missing, s.unreadable) for s in report.splits] == [
        ("train", 2, [], []),
        ("val", 1, [], []),
        ("test", 1, [], []),
    ]
    assert report.video_dir == str(tmp_path / "clips") and report.files["raw-captions.pkl"] == str(
        data / "raw-captions.pkl"
    )
    # the test split is complete in itself but has 1 video of the published 670: not ok
    assert not report.ok and report.splits[2].differences == ["the annotation gives 1 videos, the protocol 670 (-669)"]


def test_dataset_check_contract_fields():
    """The fields the localization adapters fill (pipelines/datasets/check.py is their contract)."""
    split = SplitCheck("test", 3, 2, ["c"], [], 9, 3, "somewhere", True)
    report = DatasetCheck("thumos14", "/d", [split], ["a note"])
    assert not split.complete and split.usable == 2 and not report.ok
    out = report.to_json()
    assert out["splits"][0]["missing"] == ["c"] and out["splits"][0]["n_missing"] == 1 and out["notes"] == ["a note"]
    assert SplitCheck("test", 3, 3, [], [], 9, None, "", True).complete


def test_registry_names_and_lazy_localization_adapters():
    assert registry.canonical("MSR-VTT") == "msrvtt" and registry.canonical("charades_sta") == "charades-sta"
    assert registry.checker("msrvtt") is msrvtt.check and registry.checker("ActivityNet Captions") is (
        activitynet_captions.check
    )
    with pytest.raises(registry.UnknownDataset, match="unknown dataset 'kinetics'; choose one of msrvtt, msvd"):
        registry.canonical("kinetics")
    assert set(registry.available()) >= {"msrvtt", "msvd", "didemo", "activitynet-captions"}
    for name in ("thumos14", "activitynet12", "charades-sta"):  # present or not, never a crash
        if name in registry.available():
            assert callable(registry.checker(name))
        else:
            with pytest.raises(registry.UnknownDataset, match="has no adapter in this version"):
                registry.checker(name)


def test_file_index_skips_hidden_and_follows_links_once(tmp_path):
    put(tmp_path / "a" / "x.txt", b"1")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    (tmp_path / ".git").mkdir()
    put(tmp_path / ".git" / "x.txt", b"2")
    assert FileIndex(tmp_path).by_name["x.txt"] == [tmp_path / "a" / "x.txt"]
