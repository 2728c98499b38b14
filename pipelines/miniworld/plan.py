"""What a dataset builder hands to `world.make_world`: the video jobs plus every annotation, decided up front.

A builder (`retrieval.build`, `wtal.build`, `grounding.build`) is a pure function of (seed, size): it draws every
random choice in the parent process from one seeded generator, in a fixed order, and records per-video background
seeds in the jobs. Only rendering and encoding run in worker processes, which is why the dataset is identical for
any number of workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.miniworld.render import VideoJob

SIZES: tuple[str, ...] = ("tiny", "small", "medium")


@dataclass
class WorldPlan:
    """A whole dataset before anything is written."""

    jobs: list[VideoJob]
    sources: list[dict[str, str]]  # sources.csv rows: key, path, split, label, captions
    annotations: dict[str, Any]  # annotations.json
    rules: dict[str, Any]  # world.json["rules"]: the generative rules in words and numbers
    image_text_kind: str  # which extra images the image–caption set gets ("retrieval", "wtal", "grounding")
    extra_files: dict[str, str] = field(default_factory=dict)  # more text files, name -> content


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, stream): datasets and the image–caption set never share draws."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


def draw_seed(rng: np.random.Generator) -> int:
    """A background seed for one video."""
    return int(rng.integers(0, 2**31 - 1))


def source_row(key: str, split: str, label: str | list[str], captions: list[str]) -> dict[str, str]:
    """One sources.csv row; a list label (multi-label) and the captions are stored as JSON lists."""
    return {
        "key": key,
        "path": f"videos/{key}.mp4",
        "split": split,
        "label": label if isinstance(label, str) else json.dumps(label),
        "captions": json.dumps(captions),
    }


def check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
