"""What ``vlrepro data check`` reports for one downloaded benchmark: per split, annotated / found / missing /
unreadable videos and captions, beside the protocol's published counts.

Every dataset adapter (the retrieval benchmarks, THUMOS14, ActivityNet 1.2, Charades-STA) returns a `DatasetCheck`
from ``check(data_dir, video_dir, probe)``; the CLI only formats it. Pure data: no I/O here.

A split is *complete* when every annotated video is found and readable and, where the protocol publishes a number of
videos, that many are usable. ``data check`` exits 1 when a test split (``is_test``) is not complete: the evaluated
gallery would differ from the paper's.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SplitCheck:
    """One split of one dataset, as found on disk.

    ``annotated``: videos the annotation files give the split; ``found``: those whose video file exists;
    ``missing`` / ``unreadable``: their ids, all of them (found but the probe cannot read them; empty unless probed);
    ``captions``: the split's sentences; ``expected``: the number of videos the protocol publishes for the split
    (None when it publishes none), from ``source``; ``is_test``: the split the papers evaluate on.
    ``queries``: the protocol's text queries when they are not the sentences (a paragraph per video; 1k-A's one
    sentence per video is both); ``expected_captions``: the published number of sentences.
    """

    name: str
    annotated: int
    found: int
    missing: list[str]
    unreadable: list[str]
    captions: int
    expected: int | None
    source: str
    is_test: bool
    queries: int | None = None
    expected_captions: int | None = None

    @property
    def usable(self) -> int:
        """Videos found and not known to be unreadable."""
        return self.found - len(self.unreadable)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unreadable and (self.expected is None or self.usable == self.expected)

    @property
    def differences(self) -> list[str]:
        """Each way the split differs from the protocol's published counts, as a sentence."""
        out: list[str] = []
        if self.expected is not None:
            if self.annotated != self.expected:
                out.append(
                    f"the annotation gives {self.annotated:,} videos, the protocol {self.expected:,} "
                    f"({self.annotated - self.expected:+,})"
                )
            if self.usable != self.expected and (self.usable != self.annotated or self.annotated == self.expected):
                out.append(
                    f"{self.usable:,} usable videos (found and readable), the protocol {self.expected:,} "
                    f"({self.usable - self.expected:+,})"
                )
        elif self.usable != self.annotated:
            out.append(f"{self.usable:,} of {self.annotated:,} annotated videos usable")
        if self.expected_captions is not None and self.captions != self.expected_captions:
            out.append(
                f"{self.captions:,} captions, the protocol {self.expected_captions:,} "
                f"({self.captions - self.expected_captions:+,})"
            )
        return out

    def to_json(self, max_ids: int | None = None) -> dict[str, Any]:
        """The fields, ``usable``, ``complete`` and ``differences``; with `max_ids`, the id lists are cut to their first
        `max_ids` (``n_missing`` / ``n_unreadable`` always give the full counts)."""
        return {
            "name": self.name,
            "is_test": self.is_test,
            "annotated": self.annotated,
            "found": self.found,
            "usable": self.usable,
            "n_missing": len(self.missing),
            "missing": self.missing[:max_ids] if max_ids is not None else list(self.missing),
            "n_unreadable": len(self.unreadable),
            "unreadable": self.unreadable[:max_ids] if max_ids is not None else list(self.unreadable),
            "captions": self.captions,
            "queries": self.queries,
            "expected": self.expected,
            "expected_captions": self.expected_captions,
            "source": self.source,
            "complete": self.complete,
            "differences": self.differences,
        }


@dataclass
class DatasetCheck:
    """Every split of one dataset; ``notes``: what is not per split (files used, protocol remarks, annotation
    problems the loaders tolerate)."""

    dataset: str
    data_dir: str
    splits: list[SplitCheck]
    notes: list[str]
    video_dir: str | None = None
    probed: bool = False
    files: dict[str, str] = field(default_factory=dict)  # official file name → where it was found

    @property
    def ok(self) -> bool:
        """False when a test split is not complete: ``data check`` exits 1."""
        return all(s.complete for s in self.splits if s.is_test)

    @property
    def incomplete_tests(self) -> list[str]:
        return [s.name for s in self.splits if s.is_test and not s.complete]

    def to_json(self, max_ids: int | None = None) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "video_dir": self.video_dir,
            "probed": self.probed,
            "ok": self.ok,
            "incomplete_tests": self.incomplete_tests,
            "files": dict(self.files),
            "splits": [s.to_json(max_ids) for s in self.splits],
            "notes": list(self.notes),
        }


def split_check(
    name: str, ids: Sequence[str], found: Container[str], unreadable: Container[str], **fields: Any
) -> SplitCheck:
    """A split's check from its annotated `ids` and which of them were `found` / probed `unreadable`; `fields` are the
    other `SplitCheck` fields (captions, expected, source, is_test, …)."""
    return SplitCheck(
        name=name,
        annotated=len(ids),
        found=sum(v in found for v in ids),
        missing=[v for v in ids if v not in found],
        unreadable=[v for v in ids if v in unreadable],
        **fields,
    )
