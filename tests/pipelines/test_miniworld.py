"""Tests of the mini-world generator: determinism, the properties each paper's claim relies on, and idempotency.

Everything runs on ``size="tiny"`` worlds generated once per module (a few seconds each on 2 cores).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.decode import DecodeConfig, decode_video
from pipelines.miniworld import SIZES, WORLDS, grounding, image_text, make_world, retrieval, wtal
from pipelines.miniworld.encoding import batches
from pipelines.miniworld.image_text import cell_of
from pipelines.miniworld.render import render_frames
from pipelines.miniworld.vocab import CELLS, COLOURS, DIRECTIONS, SHAPES, TEMPORAL_WORDS, static_caption

KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def decode(path: Path, fps: float) -> np.ndarray:
    result = decode_video(path, DecodeConfig(fps=fps, short_side=64, crop=0))
    assert result.status == "ok", result.error
    assert result.frames is not None
    return result.frames  # (T, 64, 64, 3)


def bright_centroid(frame: np.ndarray) -> np.ndarray:
    """(x, y) centroid of the object: the background never exceeds ~60 in any channel, every colour reaches 200."""
    ys, xs = np.nonzero(frame.max(axis=2) > 120)
    assert len(xs) > 20, "object not found"
    return np.array([xs.mean(), ys.mean()])


def colour_centroid(frame: np.ndarray, colour: str) -> np.ndarray:
    dist = np.linalg.norm(frame.astype(np.float64) - np.asarray(COLOURS[colour], np.float64), axis=2)
    ys, xs = np.nonzero(dist < 70)
    assert len(xs) > 15, f"{colour} object not found"
    return np.array([xs.mean(), ys.mean()])


def motion_energy(frames: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames."""
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()) if len(frames) > 1 else 0.0


def directions_in(sentence: str) -> list[str]:
    return [w.strip(",") for w in sentence.split() if w.strip(",") in DIRECTIONS]


def read_sources(root: Path) -> list[dict[str, str]]:
    with (root / "sources.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def retrieval_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("mr") / "mini-retrieval"
    summary = make_world(
        "mini-retrieval", out, seed=0, size="tiny", workers=2, progress=lambda d, t: calls.append((d, t))
    )
    return out, summary, calls


@pytest.fixture(scope="module")
def wtal_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("mw") / "mini-wtal"
    return out, make_world("mini-wtal", out, seed=0, size="tiny", workers=2)


@pytest.fixture(scope="module")
def grounding_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("mg") / "mini-grounding"
    return out, make_world("mini-grounding", out, seed=0, size="tiny", workers=2)


# ---------------------------------------------------------------------------------------------------------- API


def test_unknown_name_or_size_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mini-retrieval, mini-wtal, mini-grounding"):
        make_world("mini-nope", tmp_path / "x", size="tiny")
    with pytest.raises(ValueError, match="tiny, small, medium"):
        make_world("mini-wtal", tmp_path / "x", size="huge")
    assert set(WORLDS) == {"mini-retrieval", "mini-wtal", "mini-grounding"} and SIZES == ("tiny", "small", "medium")


@pytest.mark.parametrize("fixture", ["retrieval_world", "wtal_world", "grounding_world"])
def test_layout_keys_and_sources(fixture: str, request: pytest.FixtureRequest) -> None:
    out, summary = request.getfixturevalue(fixture)[:2]
    rows = read_sources(out)
    assert list(rows[0]) == ["key", "path", "split", "label", "captions"]
    assert len(rows) == summary["n_videos"] == summary["n_train"] + summary["n_test"]
    assert sum(r["split"] == "train" for r in rows) == summary["n_train"] > 0
    assert {r["split"] for r in rows} == {"train", "test"}
    assert len({r["key"] for r in rows}) == len(rows)
    for r in rows:
        assert KEY.match(r["key"]), r["key"]
        assert r["path"] == f"videos/{r['key']}.mp4" and (out / r["path"]).is_file()
        assert isinstance(json.loads(r["captions"]), list)
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(f"{r['key']}.mp4" for r in rows)  # no partials
    world = json.loads((out / "world.json").read_text())
    assert world["rules"] and world["counts"]["videos"] == len(rows)
    assert summary["cached"] is False and Path(summary["sources_csv"]) == (out / "sources.csv").resolve()
    json.dumps(summary)  # JSON-able


def test_progress_reaches_total(retrieval_world: tuple[Path, dict[str, Any], list[tuple[int, int]]]) -> None:
    _, summary, calls = retrieval_world
    assert calls[-1] == (summary["n_videos"], summary["n_videos"])
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(calls) >= 3


# -------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_world_for_any_worker_count(
    retrieval_world: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    out = retrieval_world[0]
    again = tmp_path / "again"
    make_world("mini-retrieval", again, seed=0, size="tiny", workers=1)
    for name in ("annotations.json", "sources.csv"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    a, b = np.load(out / "image_text.npz"), np.load(again / "image_text.npz")
    for field in ("images", "captions", "split"):
        np.testing.assert_array_equal(a[field], b[field])
    keys = [r["key"] for r in read_sources(out)]
    assert [sha(out / "videos" / f"{k}.mp4") for k in keys] == [sha(again / "videos" / f"{k}.mp4") for k in keys]
    for key in (keys[0], keys[-1]):
        np.testing.assert_array_equal(
            decode(out / "videos" / f"{key}.mp4", 8), decode(again / "videos" / f"{key}.mp4", 8)
        )


@pytest.mark.parametrize("name", list(WORLDS))
def test_different_seed_gives_a_different_world(name: str) -> None:
    a, b, a2 = WORLDS[name](0, "tiny"), WORLDS[name](1, "tiny"), WORLDS[name](0, "tiny")
    assert json.dumps(a.annotations) == json.dumps(a2.annotations)
    assert json.dumps(a.annotations) != json.dumps(b.annotations)
    assert not np.array_equal(render_frames(a.jobs[-1]), render_frames(b.jobs[-1]))
    np.testing.assert_array_equal(render_frames(a.jobs[-1]), render_frames(a2.jobs[-1]))
    ia, ib = (
        image_text.build_image_text(a.image_text_kind, 0, "tiny"),
        image_text.build_image_text(a.image_text_kind, 1, "tiny"),
    )
    assert not np.array_equal(ia["images"], ib["images"])


def test_batches_depend_on_the_plan_only() -> None:
    jobs = retrieval.build(0, "small").jobs
    groups = batches(jobs)
    assert [j.key for g in groups for j in g] == [j.key for j in jobs]
    assert [len(g) for g in groups] == [48] * 4 + [24] + [48] * 36  # 216 intra-only test clips, then 1728 train clips
    for g in groups:
        assert len({(j.fps, j.intra_only) for j in g}) == 1
    for g in batches(wtal.build(0, "small").jobs):
        assert sum(j.n_frames for j in g) <= 2400 or len(g) == 1


# ---------------------------------------------------------------------------------------------------- retrieval


def test_retrieval_frame_counts(retrieval_world: tuple[Path, Any, Any]) -> None:
    out = retrieval_world[0]
    for key in ("mr-test-000000", "mr-train-000005"):
        assert decode(out / "videos" / f"{key}.mp4", 8).shape == (24, 64, 64, 3)
        assert decode(out / "videos" / f"{key}.mp4", 4).shape == (12, 64, 64, 3)


def test_retrieval_annotations(retrieval_world: tuple[Path, Any, Any]) -> None:
    out = retrieval_world[0]
    ann = json.loads((out / "annotations.json").read_text())
    assert len(ann["classes"]) == 12 and "left-then-up" in ann["classes"]
    videos = ann["videos"]
    test = [v for v in videos if v["split"] == "test"]
    combos = {(v["colour"], v["shape"], tuple(v["directions"])) for v in test}
    assert len(test) == len(combos) == 2 * 2 * 12  # tiny: every combination once
    assert len(videos) - len(test) == 2 * len(test)  # tiny: 2 train clips per combination
    for v in videos:
        assert len(set(v["captions"])) == 2 and v["label"] == "-".join([v["directions"][0], "then", v["directions"][1]])
        for cap in v["captions"]:
            assert directions_in(cap) == v["directions"] and f"{v['colour']} {v['shape']}" in cap
    by_key = {v["key"]: v for v in videos}
    assert len(ann["order_pairs"]) == len(test) // 2
    for pair in ann["order_pairs"]:
        a, b = by_key[pair["a"]], by_key[pair["b"]]
        assert a["twin"] == b["key"] and b["twin"] == a["key"] and a["directions"] == b["directions"][::-1]
        assert (a["colour"], a["shape"]) == (b["colour"], b["shape"])
        reversal = DIRECTIONS[a["directions"][0]] == tuple(-c for c in DIRECTIONS[a["directions"][1]])
        assert pair["provable"] == reversal and pair["kind"] == ("reversal" if reversal else "turn")
    assert sum(p["provable"] for p in ann["order_pairs"]) == 2 * 2 * 2


def _sorted_frames(frames: np.ndarray) -> list[bytes]:
    return sorted(f.tobytes() for f in frames)


def test_reversal_twins_have_identical_frame_multisets_and_turn_twins_do_not(
    retrieval_world: tuple[Path, Any, Any],
) -> None:
    out = retrieval_world[0]
    pairs = json.loads((out / "annotations.json").read_text())["order_pairs"]
    reversal = [p for p in pairs if p["provable"]]
    turns = [p for p in pairs if not p["provable"]][:4]
    for p in reversal:
        a4, b4 = decode(out / "videos" / f"{p['a']}.mp4", 4), decode(out / "videos" / f"{p['b']}.mp4", 4)
        assert _sorted_frames(a4) == _sorted_frames(b4)  # same multiset of decoded frames at 4 fps
        np.testing.assert_array_equal(a4.astype(np.float64).mean(0), b4.astype(np.float64).mean(0))
        assert not np.array_equal(a4, b4)  # but a different order
    p = reversal[0]  # at the native 8 fps one clip is the other shifted by 12 frames
    a8, b8 = decode(out / "videos" / f"{p['a']}.mp4", 8), decode(out / "videos" / f"{p['b']}.mp4", 8)
    np.testing.assert_array_equal(np.roll(a8, -12, axis=0), b8)
    for p in turns:
        a4, b4 = decode(out / "videos" / f"{p['a']}.mp4", 4), decode(out / "videos" / f"{p['b']}.mp4", 4)
        assert _sorted_frames(a4) != _sorted_frames(b4)
        assert np.abs(a4.astype(np.float64).mean(0) - b4.astype(np.float64).mean(0)).max() > 5
        np.testing.assert_array_equal(a4[0], b4[0])  # same background and start


def test_retrieval_object_moves_as_captioned(retrieval_world: tuple[Path, Any, Any]) -> None:
    out = retrieval_world[0]
    videos = json.loads((out / "annotations.json").read_text())["videos"]
    for v in videos[::9]:
        first, second = directions_in(v["captions"][0])
        frames = decode(out / "videos" / f"{v['key']}.mp4", 8)
        c0, c12, c23 = bright_centroid(frames[0]), bright_centroid(frames[12]), bright_centroid(frames[23])
        np.testing.assert_allclose(c12 - c0, 24 * np.asarray(DIRECTIONS[first]), atol=1.5)
        np.testing.assert_allclose(c23 - c12, 22 * np.asarray(DIRECTIONS[second]), atol=1.5)


# --------------------------------------------------------------------------------------------------------- wtal


def test_wtal_annotations_are_consistent(wtal_world: tuple[Path, Any]) -> None:
    out, _ = wtal_world
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["classes"] == [t["nodeName"] for t in ann["taxonomy"]] and len(ann["classes"]) == 3
    rows = {r["key"]: r for r in read_sources(out)}
    assert set(ann["database"]) == set(rows)
    for key, v in ann["database"].items():
        assert v["subset"] == {"train": "validation", "test": "test"}[rows[key]["split"]] and v["fps"] == 25
        assert json.loads(rows[key]["label"]) == v["labels"] and 1 <= len(v["labels"]) <= 2
        assert {a["label"] for a in v["annotations"]} == set(v["labels"]) and len(v["annotations"]) == 2
        spans = []
        for a in v["annotations"]:
            ph = a["phases"]
            names = ["context_before", "run_up", "core", "follow_through", "context_after"]
            bounds = [ph[n] for n in names]
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(4)) and all(s < e for s, e in bounds)
            assert a["segment"] == [ph["run_up"][0], ph["follow_through"][1]]
            spans.append(ph["context_before"][0:1] + ph["context_after"][1:])
        for d in v["distractors"]:
            assert d["label"] in ann["classes"] and d["label"] not in v["labels"]
            spans.append(d["segment"])
        spans.sort()
        assert spans[0][0] > 0 and spans[-1][1] < v["duration"]
        assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1))  # never overlapping
        for t in [x for a in v["annotations"] for x in a["segment"]]:
            assert abs(t * 25 - round(t * 25)) < 1e-6  # on the 25 fps grid


def test_wtal_motion_is_in_the_core_not_in_the_context(wtal_world: tuple[Path, Any]) -> None:
    out, _ = wtal_world
    database = json.loads((out / "annotations.json").read_text())["database"]
    for key, v in database.items():
        frames = decode(out / "videos" / f"{key}.mp4", 25)
        assert len(frames) == round(v["duration"] * 25)

        def energy(span: list[float], trim: int = 0, frames: np.ndarray = frames) -> float:
            s, e = round(span[0] * 25) + trim, round(span[1] * 25) - trim
            return motion_energy(frames[s:e])

        for a in v["annotations"]:
            ph = a["phases"]
            core = energy(ph["core"])
            still = max(energy(ph["context_before"], trim=5), energy(ph["context_after"], trim=5))
            assert core > 0.3 and core > 5 * still, (key, a["label"], core, still)
            assert core > energy(ph["run_up"]) and core > energy(ph["follow_through"])
        for d in v["distractors"]:
            assert energy(d["segment"], trim=5) < 0.1


def test_wtal_distractors_are_still_appearances() -> None:
    plan = wtal.build(0, "small")
    distractors = [(k, d) for k, v in plan.annotations["database"].items() for d in v["distractors"]]
    assert len(distractors) >= 4
    jobs = {j.key: j for j in plan.jobs}
    for key, d in distractors[:3]:
        s, e = round(d["segment"][0] * 25), round(d["segment"][1] * 25)
        frames = render_frames(jobs[key])[s + 5 : e - 5]
        assert motion_energy(frames) == 0.0 and frames.max() > 200  # present and perfectly still


# ---------------------------------------------------------------------------------------------------- grounding


def test_grounding_queries_and_charades_files(grounding_world: tuple[Path, Any]) -> None:
    out, _ = grounding_world
    videos = json.loads((out / "annotations.json").read_text())["videos"]
    lines = {s: (out / f"charades_sta_{s}.txt").read_text().splitlines() for s in ("train", "test")}
    for split in ("train", "test"):
        expected = [
            f"{v['key']} {q['start']:.2f} {q['end']:.2f}##{q['sentence']}"
            for v in videos
            if v["split"] == split
            for q in v["queries"]
        ]
        assert lines[split] == expected and expected
    for v in videos:
        qs = sorted(v["queries"], key=lambda q: q["start"])
        assert 3 <= len(qs) <= 6
        assert qs[0]["start"] >= 1.0 and qs[-1]["end"] <= v["duration"] - 1.0
        for q, nxt in itertools.pairwise(qs):
            assert q["end"] + 1.0 <= nxt["start"]  # non-overlapping, idle gaps of at least 1 s
        for q in qs:
            assert 2.0 <= q["end"] - q["start"] <= 8.0 and q["start"] * 4 == int(q["start"] * 4)
            assert directions_in(q["sentence"]) == q["directions"] and f"{q['colour']} {q['shape']}" in q["sentence"]
        assert len({q["sentence"] for q in qs}) == len(qs)


def test_grounding_queried_object_moves_during_its_moment_only(grounding_world: tuple[Path, Any]) -> None:
    out, _ = grounding_world
    videos = json.loads((out / "annotations.json").read_text())["videos"]
    for v in videos:
        frames = decode(out / "videos" / f"{v['key']}.mp4", 8)
        assert len(frames) == round(v["duration"] * 8)
        for q in v["queries"]:
            s, e = round(q["start"] * 8), round(q["end"] * 8)
            pos = [colour_centroid(frames[t], q["colour"]) for t in (s - 6, s - 1, (s + e) // 2, e - 1, e + 4)]
            assert np.abs(pos[1] - pos[0]).max() < 0.5  # still just before the moment
            assert np.abs(pos[4] - pos[3]).max() < 1.0  # and still right after it
            if len(q["directions"]) == 1:
                travel = (pos[3] - pos[1]) @ np.asarray(DIRECTIONS[q["directions"][0]])
                assert travel >= 10, (v["key"], q)
            else:  # first half along A, second half along B
                assert (pos[2] - pos[1]) @ np.asarray(DIRECTIONS[q["directions"][0]]) >= 4, (v["key"], q)
                assert (pos[3] - pos[2]) @ np.asarray(DIRECTIONS[q["directions"][1]]) >= 4, (v["key"], q)


# --------------------------------------------------------------------------------------------------- image-text


@pytest.mark.parametrize("fixture", ["retrieval_world", "wtal_world", "grounding_world"])
def test_image_text_set(fixture: str, request: pytest.FixtureRequest) -> None:
    out = request.getfixturevalue(fixture)[0]
    data = np.load(out / "image_text.npz", allow_pickle=False)
    images, captions, split = data["images"], data["captions"], data["split"]
    assert images.dtype == np.uint8 and images.shape == (600, 64, 64, 3)
    assert (split == "train").sum() == 400 and (split == "test").sum() == 200
    for cap in captions:
        assert not TEMPORAL_WORDS & set(cap.replace(",", " ").split()), cap
    every = {static_caption([(c, s, cell)]) for c in COLOURS for s in SHAPES for cell in range(len(CELLS))}
    assert every <= set(captions[split == "train"]) and every <= set(captions[split == "test"])
    singles = [i for i, cap in enumerate(captions) if cap.count(" at the ") == 1]
    cells = {CELLS[i]: i for i in range(len(CELLS))}
    for i in singles[:100]:  # the position word is the cell the object's centre lies in
        x, y = bright_centroid(images[i])
        assert cell_of(x, y) == cells[captions[i].split(" at the ")[1]], captions[i]


# -------------------------------------------------------------------------------------------------- idempotency


def test_cached_mismatch_force_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "g"
    first = make_world("mini-grounding", out, seed=0, size="tiny", workers=1)
    again = make_world("mini-grounding", out, seed=0, size="tiny", workers=1)
    assert again["cached"] is True and {k: v for k, v in again.items() if k != "cached"} == {
        k: v for k, v in first.items() if k != "cached"
    }
    with pytest.raises(FileExistsError, match="different mini world"):
        make_world("mini-grounding", out, seed=1, size="tiny")
    with pytest.raises(FileExistsError):
        make_world("mini-wtal", out, seed=0, size="tiny")
    reference = {p.name: sha(p) for p in (out / "videos").iterdir()}

    # A crash after some videos: no world.json, a pending marker, one video missing, a half-written partial.
    (out / "world.json").unlink()
    (out / ".generating.json").write_text(
        json.dumps({"name": "mini-grounding", "seed": 0, "size": "tiny", "version": "1"})
    )
    (out / "videos" / "mg-test-000001.mp4").unlink()
    (out / "videos" / ".mg-test-000001.partial.mp4").write_bytes(b"garbage")
    resumed = make_world("mini-grounding", out, seed=0, size="tiny", workers=1)
    assert resumed["cached"] is False and not (out / ".generating.json").exists()
    assert {p.name: sha(p) for p in (out / "videos").iterdir()} == reference

    (out / "videos" / "mg-train-000002.mp4").unlink()  # damage after the commit: noticed and repaired
    repaired = make_world("mini-grounding", out, seed=0, size="tiny", workers=1)
    assert repaired["cached"] is False
    assert {p.name: sha(p) for p in (out / "videos").iterdir()} == reference

    forced = make_world("mini-grounding", out, seed=1, size="tiny", workers=1, force=True)
    assert forced["cached"] is False and forced["seed"] == 1
    assert json.loads((out / "world.json").read_text())["seed"] == 1
    assert {p.name: sha(p) for p in (out / "videos").iterdir()} != reference


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_world("mini-wtal", tmp_path, size="tiny")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_small_plan_sizes() -> None:
    # The builders alone (no encoding) at size small: the counts the README promises.
    assert (
        len(retrieval.build(0, "small").jobs),
        len(wtal.build(0, "small").jobs),
        len(grounding.build(0, "small").jobs),
    ) == (
        1728 + 216,
        16 + 8,
        96 + 32,
    )
