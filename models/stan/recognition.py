"""STAN's video-recognition evaluation (paper §4.3, K400 / SSv2): class-name prompts and top-k accuracy.

The paper fine-tunes STAN for recognition; here the retrieval model is scored zero-shot style: every class name
becomes a text prompt ("a video of {name}", as CLIP's Kinetics prompts), the video embedding is compared by cosine
with each prompt's text embedding (`Stan.recognition_scores`), and optionally a linear head is trained alongside
(`StanConfig.num_classes`). Accuracy uses the retrieval ranks with their pessimistic tie rule
(`models.common.metrics.retrieval.ranks`): a class tied with the true one counts as ranked above it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.common.metrics.retrieval import ranks, recall_at_k_curve

DEFAULT_PROMPT = "a video of {name}"


def class_name(label: str) -> str:
    """Label → words: mini-world pair classes ``"left-then-up"`` → ``"left, then up"``; ``_`` and ``-`` → spaces
    (Kinetics-style ``"playing_guitar"`` → ``"playing guitar"``)."""
    return label.replace("-then-", ", then ").replace("_", " ").replace("-", " ")


def class_prompts(labels: Sequence[str], template: str = DEFAULT_PROMPT) -> list[str]:
    """One prompt per class: `template` with ``{name}`` = `class_name(label)` (``{label}`` = the raw label)."""
    return [template.format(name=class_name(label), label=label) for label in labels]


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": …, "top5": …}`` in percent from scores (V, C) and true class indices (V,); higher scores win, ties
    count against the true class."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (videos, classes), got shape {scores.shape}")
    r = ranks(scores, np.asarray(labels, dtype=np.int64))
    return {f"top{k}": v for k, v in zip(ks, recall_at_k_curve(r, ks))}
