"""THUMOS14 and ActivityNet1.2 for weakly-supervised temporal action localization: ground truth, classes, results.

Formats (METHODS §6; paper-code-notes §5.3, §7.6):

- Ground truth: the ActivityNet JSON ``{"version", "taxonomy", "database": {video_id: {"subset", "duration",
  "annotations": [{"segment": [start_s, end_s], "label": name}]}}}``; THUMOS14's W-TAL ``gt.json`` (UM, CO2-Net) is
  the same structure without ``taxonomy``. Segments are seconds.
- Splits: **THUMOS14** trains on its 200 ``"validation"`` videos and tests on the 213 ``"test"`` videos (20 classes);
  UM drops three test videos (`UM_EXCLUDED_TEST`, ``split_test.txt`` → 210), an option here. The BaSNet/UM
  ``gt.json`` names the validation subset ``"train"`` (benchmark-formats §5, measured) and ActionFormer's
  ``thumos14.json`` ``"Validation"``/``"Test"``: `load_thumos14` maps them onto the protocol's names
  (`THUMOS14_SUBSETS`). **ActivityNet1.2**
  trains on ``"training"`` and evaluates on ``"validation"`` (100 classes; ``"testing"`` has no labels).
  `Protocol` names the two subsets; the mini world (`pipelines.miniworld.wtal`) uses THUMOS's naming.
- Classes: THUMOS14's 20 names are the standard list (`THUMOS14_CLASSES`, UM ``config.class_dict`` order =
  alphabetical). ActivityNet1.2's 100 are **derived from the file** (the sorted labels of its annotations, or the
  leaves of its ``taxonomy``) instead of a hard-coded list. THUMOS ``"Ambiguous"`` segments (CO2-Net filters
  predictions overlapping them) are kept apart from the instances.
- Predictions: the ActivityNet result file ``{"version", "results": {video_id: [{"label", "score", "segment"}]},
  "external_data": {"used", "details"}}`` — the ``results`` mapping is what
  `models.common.metrics.detection.detection_map` takes.

Snippet↔second mapping: snippet i of a 25 fps video starts at ``i·16/25`` s (`pipelines.sampling.snippet_seconds`,
`seconds_to_snippet`); `snippet_ground_truth` marks snippets the way UM's ``thumos_features.py`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.common.segments import Segments

# UM `config.class_dict` / W-TALC `classlist` order (alphabetical).
THUMOS14_CLASSES: tuple[str, ...] = (
    "BaseballPitch",
    "BasketballDunk",
    "Billiards",
    "CleanAndJerk",
    "CliffDiving",
    "CricketBowling",
    "CricketShot",
    "Diving",
    "FrisbeeCatch",
    "GolfSwing",
    "HammerThrow",
    "HighJump",
    "JavelinThrow",
    "LongJump",
    "PoleVault",
    "Shotput",
    "SoccerPenalty",
    "TennisSwing",
    "ThrowDiscus",
    "VolleyballSpiking",
)
# Test videos UM leaves out of dataset/THUMOS14/split_test.txt (213 → 210; paper-code-notes §5.3).
UM_EXCLUDED_TEST: tuple[str, ...] = ("video_test_0000270", "video_test_0001292", "video_test_0001496")
# subset names of the THUMOS14 ground-truth files (lower-cased) → the protocol's: BaSNet/UM gt.json says "train" for
# the validation videos, ActionFormer's thumos14.json "Validation" / "Test" (benchmark-formats §5)
THUMOS14_SUBSETS: Mapping[str, str] = {"train": "validation", "validation": "validation", "test": "test"}
AMBIGUOUS = "Ambiguous"


@dataclass(frozen=True)
class Protocol:
    """Which ground-truth subsets a W-TAL benchmark trains and evaluates on."""

    name: str
    train_subset: str
    test_subset: str


THUMOS14 = Protocol("thumos14", train_subset="validation", test_subset="test")
ACTIVITYNET12 = Protocol("activitynet1.2", train_subset="training", test_subset="validation")
MINI_WTAL = Protocol("mini-wtal", train_subset="validation", test_subset="test")


@dataclass(frozen=True)
class Instance:
    """One labelled action: seconds, half-open ``[start, end)`` (`models.common.segments` convention)."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    subset: str
    duration: float | None  # seconds; None when the file does not give it (some THUMOS gt.json copies)
    instances: tuple[Instance, ...]
    ambiguous: tuple[tuple[float, float], ...] = ()  # THUMOS "Ambiguous" segments, not instances

    @property
    def labels(self) -> tuple[str, ...]:
        """Video-level labels (the weak supervision): the sorted distinct instance labels."""
        return tuple(sorted({i.label for i in self.instances}))


@dataclass(frozen=True)
class WTALDataset:
    """A parsed ground-truth file: its classes (index order), videos by id, and the split protocol."""

    protocol: Protocol
    classes: tuple[str, ...]
    videos: Mapping[str, VideoRecord] = field(repr=False)
    version: str = ""

    @property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def subset(self, name: str) -> list[VideoRecord]:
        """Videos of one ground-truth subset, sorted by id."""
        return [v for _, v in sorted(self.videos.items()) if v.subset == name]

    @property
    def train(self) -> list[VideoRecord]:
        return self.subset(self.protocol.train_subset)

    @property
    def test(self) -> list[VideoRecord]:
        return self.subset(self.protocol.test_subset)

    def split_of(self, video_id: str) -> Literal["train", "test", ""]:
        """ "train" / "test" under the protocol ("" for other subsets, e.g. ActivityNet's "testing")."""
        subset = self.videos[video_id].subset
        if subset == self.protocol.train_subset:
            return "train"
        if subset == self.protocol.test_subset:
            return "test"
        return ""

    def video_labels(self, video_id: str) -> np.ndarray:
        """(C,) float32 multi-hot video-level label vector in `classes` order."""
        out = np.zeros(len(self.classes), dtype=np.float32)
        index = self.class_index
        for label in self.videos[video_id].labels:
            out[index[label]] = 1.0
        return out

    def database(self, subset: str | None = None) -> dict[str, dict[str, Any]]:
        """The ActivityNet ``database`` mapping (input of `detection_map`), optionally one subset only."""
        return {
            vid: {
                "subset": v.subset,
                "duration": v.duration,
                "annotations": [{"segment": [i.start, i.end], "label": i.label} for i in v.instances],
            }
            for vid, v in sorted(self.videos.items())
            if subset is None or v.subset == subset
        }

    def sample_meta(self) -> dict[str, dict[str, Any]]:
        """Per-video metadata for feature stages (`pipelines.features.i3d.import_features(meta=...)`)."""
        return {
            vid: {"split": self.split_of(vid), "subset": v.subset, "duration": v.duration, "labels": list(v.labels)}
            for vid, v in sorted(self.videos.items())
        }


# ------------------------------------------------------------------------------------------------ ground truth


def taxonomy_leaves(taxonomy: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Sorted names of the taxonomy nodes that are nobody's parent (ActivityNet's action classes)."""
    parents = {node.get("parentId") for node in taxonomy}
    return tuple(sorted(str(n["nodeName"]) for n in taxonomy if n.get("nodeId") not in parents))


def parse_database(
    obj: Mapping[str, Any],
    protocol: Protocol,
    classes: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    video_prefix: str = "",
    subset_aliases: Mapping[str, str] | None = None,
) -> WTALDataset:
    """Parse an ActivityNet-style ground-truth object.

    classes: the class list in index order; None = the sorted distinct labels of all annotations. A label outside
    `classes` raises ``ValueError`` (except THUMOS "Ambiguous"). exclude: video ids to drop (e.g.
    `UM_EXCLUDED_TEST`). video_prefix: prepended to every id (ActivityNet files omit the ``v_`` of feature names).
    subset_aliases: lower-cased subset name → the name kept (e.g. `THUMOS14_SUBSETS`); others are kept as written.
    """
    database = obj.get("database")
    if not isinstance(database, Mapping):
        raise ValueError("ground truth has no 'database' mapping (expected the ActivityNet JSON format)")
    skip = set(exclude)
    videos: dict[str, VideoRecord] = {}
    for raw_id, entry in database.items():
        if raw_id in skip or video_prefix + raw_id in skip:
            continue
        if "subset" not in entry:
            raise ValueError(f"video {raw_id!r} has no 'subset'")
        instances, ambiguous = [], []
        for ann in entry.get("annotations", []):
            start, end = (float(t) for t in ann["segment"])
            if end < start:
                raise ValueError(f"video {raw_id!r}: segment {ann['segment']} ends before it starts")
            if ann["label"] == AMBIGUOUS:
                ambiguous.append((start, end))
            else:
                instances.append(Instance(start, end, str(ann["label"])))
        duration = entry.get("duration")
        vid = video_prefix + str(raw_id)
        subset = str(entry["subset"])
        if subset_aliases is not None:
            subset = subset_aliases.get(subset.lower(), subset)
        videos[vid] = VideoRecord(
            video_id=vid,
            subset=subset,
            duration=None if duration is None else float(duration),
            instances=tuple(sorted(instances, key=lambda i: (i.start, i.end, i.label))),
            ambiguous=tuple(sorted(ambiguous)),
        )
    labels = {i.label for v in videos.values() for i in v.instances}
    class_list = tuple(classes) if classes is not None else tuple(sorted(labels))
    unknown = sorted(labels - set(class_list))
    if unknown:
        raise ValueError(f"labels not in the class list: {unknown[:10]} ({len(unknown)} in all)")
    return WTALDataset(protocol, class_list, videos, str(obj.get("version", "")))


def _read_json(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def load_thumos14(
    path: str | Path, exclude: Iterable[str] = (), classes: Sequence[str] = THUMOS14_CLASSES
) -> WTALDataset:
    """THUMOS14 ``gt.json``: train = "validation" (the file's "train"), test = "test"; pass
    ``exclude=UM_EXCLUDED_TEST`` for UM's 210."""
    return parse_database(_read_json(path), THUMOS14, classes, exclude, subset_aliases=THUMOS14_SUBSETS)


def load_activitynet12(
    path: str | Path, classes_from: Literal["labels", "taxonomy"] = "labels", video_prefix: str = ""
) -> WTALDataset:
    """ActivityNet1.2 ``activity_net.v1-2.min.json``: train = "training", test = "validation".

    classes_from: "labels" = the sorted distinct annotation labels (100 in v1.2); "taxonomy" = the taxonomy's leaves.
    """
    obj = _read_json(path)
    classes = taxonomy_leaves(obj.get("taxonomy", [])) if classes_from == "taxonomy" else None
    if classes_from == "taxonomy" and not classes:
        raise ValueError(f"{path} has no taxonomy to take classes from")
    return parse_database(obj, ACTIVITYNET12, classes, video_prefix=video_prefix)


def load_mini_wtal(path: str | Path) -> WTALDataset:
    """The mini world's ``annotations.json`` (ActivityNet format with a ``classes`` list, THUMOS subset names)."""
    obj = _read_json(path)
    return parse_database(obj, MINI_WTAL, obj.get("classes"))


def clip_to_duration(ds: WTALDataset, durations: Mapping[str, float] | None = None) -> tuple[WTALDataset, int, int]:
    """Segments clamped to ``[0, duration]`` (the video's own, or `durations[video]` where given; videos with neither
    are unchanged), the rule 2D-TAN applies to grounding moments (`pipelines.datasets.grounding`): an instance ending
    past the video end is cut there, one left empty (it starts at or after the end) is dropped. Ambiguous segments
    follow the same rule. Returns (dataset, instances clipped, instances dropped)."""
    clipped = dropped = 0
    videos: dict[str, VideoRecord] = {}
    for vid, v in ds.videos.items():
        duration = durations.get(vid, v.duration) if durations is not None else v.duration
        if duration is None:
            videos[vid] = v
            continue
        instances = []
        for inst in v.instances:
            start, end = max(inst.start, 0.0), min(inst.end, duration)
            if not start < end:
                dropped += 1
                continue
            clipped += (start, end) != (inst.start, inst.end)
            instances.append(Instance(start, end, inst.label))
        ambiguous = tuple((max(a, 0.0), min(b, duration)) for a, b in v.ambiguous if max(a, 0.0) < min(b, duration))
        videos[vid] = VideoRecord(vid, v.subset, duration, tuple(instances), ambiguous)
    return WTALDataset(ds.protocol, ds.classes, videos, ds.version), clipped, dropped


# ---------------------------------------------------------------------------------------------------- snippets


def snippet_ground_truth(
    record: VideoRecord, n_snippets: int, classes: Sequence[str], snippet: int = 16, fps: float = 25.0
) -> np.ndarray:
    """(n_snippets, C) bool: snippets inside each instance of class c, UM's rule (``thumos_features.get_label``):
    rows ``round(start·fps/snippet)`` to ``round(end·fps/snippet)`` **inclusive**, clipped to the video."""
    out = np.zeros((n_snippets, len(classes)), dtype=bool)
    index = {c: i for i, c in enumerate(classes)}
    factor = fps / snippet
    for inst in record.instances:
        a, b = round(inst.start * factor), round(inst.end * factor)
        out[max(a, 0) : min(b + 1, n_snippets), index[inst.label]] = True
    return out


# ------------------------------------------------------------------------------------------------- predictions


def results_from_segments(per_video: Mapping[str, Segments], classes: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``{video: Segments}`` (integer labels) → the ActivityNet ``results`` mapping (class names)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for vid, segs in per_video.items():
        out[vid] = [
            {"label": classes[int(c)], "score": float(s), "segment": [float(a), float(b)]}
            for a, b, s, c in zip(segs.start, segs.end, segs.score, segs.label)
        ]
    return out


def _check_results(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for vid, preds in results.items():
        rows = []
        for p in preds:
            if not {"label", "score", "segment"} <= set(p):
                raise ValueError(f"prediction for {vid!r} lacks label/score/segment: {p}")
            start, end = (float(t) for t in p["segment"])
            if end < start:
                raise ValueError(f"prediction for {vid!r}: segment {p['segment']} ends before it starts")
            rows.append({"label": str(p["label"]), "score": float(p["score"]), "segment": [start, end]})
        out[str(vid)] = rows
    return out


def write_predictions(
    path: str | Path,
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    version: str = "VERSION 1.3",
    external_data: Mapping[str, Any] | None = None,
) -> Path:
    """Write an ActivityNet detection result file (the toolkit's ``version`` string defaults to its own)."""
    doc = {
        "version": version,
        "results": _check_results(results),
        "external_data": dict(external_data or {"used": True, "details": "I3D features pre-trained on Kinetics-400"}),
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
    return p


def read_predictions(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The ``results`` mapping of an ActivityNet detection result file (validated, floats)."""
    doc = _read_json(path)
    if "results" not in doc:
        raise ValueError(f"{path} has no 'results' (not an ActivityNet detection result file)")
    return _check_results(doc["results"])
