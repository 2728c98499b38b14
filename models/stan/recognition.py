"""STAN's video-recognition evaluation (paper §4.3, K400 / SSv2): class-name prompts, a trained prompt classifier,
top-k accuracy.

Two readings, both reported:

- **zero-shot**: every class name becomes a text prompt ("a video of {name}", as CLIP's Kinetics prompts), the video
  embedding is compared by cosine with each prompt's text embedding (`Stan.recognition_scores`);
- **trained** (the official recognition path, `configs/exp/stan/stan_hmdb51_b32_hf.py`: cross-entropy over
  ``(1/τ)·cos(video, class-name text)``): `fit_prompt_classifier` trains that loss on labelled videos, with the video
  embeddings of the retrieval model held fixed and the C class embeddings — initialised from the prompts' text
  embeddings — free (the official run fine-tunes the text tower, whose output for C fixed prompts is what moves).

Optionally a linear head is trained alongside retrieval (`StanConfig.num_classes`). Accuracy uses the retrieval ranks
with their pessimistic tie rule (`models.common.metrics.retrieval.ranks`): a class tied with the true one counts as
ranked above it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

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


def fit_prompt_classifier(
    videos: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    temperature: float,
    steps: int,
    lr: float,
) -> torch.Tensor:
    """Class embeddings (C, D), unit, trained with ``CE(cos(video, class) / τ)`` on fixed video embeddings.

    videos: (N, D) embeddings of labelled videos (normalised here); labels: (N,) class indices; classes: (C, D) the
    start (the prompts' text embeddings: step 0 is the zero-shot classifier). Full-batch Adam for `steps` steps at
    `lr`: deterministic for given inputs. Score videos with ``unit_videos @ result.T``.
    """
    if videos.ndim != 2 or classes.ndim != 2 or videos.shape[1] != classes.shape[1]:
        raise ValueError(
            f"expected videos (N, D) and classes (C, D), got {tuple(videos.shape)}, {tuple(classes.shape)}"
        )
    if labels.shape != videos.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match {videos.shape[0]} videos")
    if temperature <= 0 or steps < 0 or lr <= 0:
        raise ValueError(f"need temperature > 0, steps >= 0, lr > 0; got {temperature}, {steps}, {lr}")
    x = F.normalize(videos.detach().float(), dim=-1)
    y = labels.detach().long()
    weight = F.normalize(classes.detach().float(), dim=-1).clone().requires_grad_(True)
    optim = torch.optim.Adam([weight], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optim.zero_grad(set_to_none=True)
            loss = F.cross_entropy(x @ F.normalize(weight, dim=-1).T / temperature, y)
            loss.backward()
            optim.step()
    return F.normalize(weight.detach(), dim=-1)
