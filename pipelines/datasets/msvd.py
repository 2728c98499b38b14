"""MSVD as CLIP4Clip reads it (benchmark-formats.md §2; ArrowLuo/CLIP4Clip@508ffa3de39b
dataloaders/dataloader_msvd_retrieval.py).

Files (``msvd_data.zip``; videos ``YouTubeClips/<youtube id>_<start>_<end>.avi``):

- ``raw-captions.pkl``: a pickle of ``{video_id: [[token, ...], ...]}``; a caption is its tokens joined by spaces.
  A pickle can run any code when loaded, so it is read by `safe_load_captions`, which admits only builtin containers
  and strings: a global of any other kind (``os.system``, a class, …) stops the load before it is called;
- ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt``: one id per line (collaborative-experts' split:
  1,200 / 100 / 670; train and val lack the final newline). CLIP4Clip asserts every listed id has captions; here a
  listed id without captions is left out and noted. Multi-caption: every caption of a video is a query.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path
from typing import Any

from pipelines.datasets.check import DatasetCheck
from pipelines.datasets.files import DatasetFileError, FileIndex, read_lines
from pipelines.datasets.retrieval_benchmark import (
    RetrievalBenchmark,
    RetrievalSplit,
    RetrievalVideo,
    Role,
    check_benchmark,
)

DATASET = "msvd"
CAPTIONS = "raw-captions.pkl"
LISTS: dict[Role, str] = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
#: split → videos (collaborative-experts' lists)
PUBLISHED = {"train": 1_200, "val": 100, "test": 670}
_SOURCE = (
    "{name}: collaborative-experts' MSVD split, 1,200 / 100 / 670 videos (albanie/collaborative-experts@7eb3b9d362ee "
    "misc/datasets/msvd/, measured; ArrowLuo/CLIP4Clip@508ffa3de39b README.md L41-44)"
)

#: the only globals a captions pickle may name (protocol 0-1 pickles and Python 2 name containers by global)
_SAFE_GLOBALS = frozenset(
    (module, name)
    for module in ("builtins", "__builtin__")
    for name in ("dict", "list", "tuple", "set", "frozenset", "str", "unicode")
)


class UnsafePickleError(DatasetFileError):
    """The pickle names something other than a builtin container or string."""


class _ContainersOnly(pickle.Unpickler):
    """An unpickler whose `find_class` admits builtin containers and strings only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return getattr(builtins, "str" if name == "unicode" else name)
        raise UnsafePickleError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"persistent id {pid!r}")


def safe_load_captions(path: Path) -> dict[str, list[str]]:
    """``raw-captions.pkl`` → video id → captions (token lists joined by spaces; a caption stored as one string is
    kept). Nothing in the file is called: any global but a builtin container or string is refused."""
    try:
        with open(path, "rb") as fh:
            obj = _ContainersOnly(fh, encoding="utf-8").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(
            f"{path}: refused to load: the pickle refers to {exc}; a captions pickle may hold only builtin "
            "containers and strings (nothing was executed)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise DatasetFileError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DatasetFileError(f"{path}: expected a dict video_id -> captions, found {type(obj).__name__}")
    out: dict[str, list[str]] = {}
    for vid, caps in obj.items():
        if not isinstance(vid, str) or not isinstance(caps, list | tuple):
            raise DatasetFileError(f"{path}: entry {vid!r} is not video_id -> list of captions")
        sentences = []
        for cap in caps:
            if isinstance(cap, str):
                sentences.append(cap.strip())
            elif isinstance(cap, list | tuple) and all(isinstance(tok, str) for tok in cap):
                sentences.append(" ".join(cap))
            else:
                raise DatasetFileError(f"{path}: a caption of {vid!r} is neither a token list nor a string")
        out[vid] = sentences
    return out


def load(data_dir: Path, index: FileIndex | None = None) -> RetrievalBenchmark:
    files = index or FileIndex(data_dir)
    captions_path = files.find(CAPTIONS)
    lists = {split: files.find(name) for split, name in LISTS.items()}
    assert captions_path is not None
    captions = safe_load_captions(captions_path)
    notes: list[str] = []
    splits = []
    for split, path in lists.items():
        assert path is not None
        ids = list(dict.fromkeys(read_lines(path)))
        uncaptioned = [v for v in ids if not captions.get(v)]
        if uncaptioned:
            notes.append(
                f"{split}: {len(uncaptioned)} ids of {path.name} have no captions in {CAPTIONS} and are left out "
                f"(first: {', '.join(uncaptioned[:5])})"
            )
        videos = tuple(RetrievalVideo(v, tuple(captions[v]), tuple(captions[v]), (v,)) for v in ids if captions.get(v))
        splits.append(
            RetrievalSplit(
                split, split, videos, PUBLISHED[split], None, _SOURCE.format(name=path.name), is_test=split == "test"
            )
        )
    found = {CAPTIONS: captions_path, **{LISTS[s]: p for s, p in lists.items() if p is not None}}
    return RetrievalBenchmark(DATASET, "multi-caption", tuple(splits), found, tuple(notes), Path(data_dir))


def check(data_dir: Path, video_dir: Path | None, probe: bool) -> DatasetCheck:
    return check_benchmark(load, data_dir, video_dir, probe)
