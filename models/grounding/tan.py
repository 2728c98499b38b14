"""2D-TAN (Zhang et al., "Learning 2D Temporal Adjacent Networks for Moment Localization with Natural Language",
AAAI 2020) as a head over precomputed clip features — LocVTP's downstream grounding model (paper-code-notes §4.3).

Official code: microsoft/VideoX `2D-TAN/lib/models/` (`frame_modules` FrameAvgPool, `prop_modules` PropMaxPool,
`fusion_modules` BaseFusion, `map_modules` MapConv + `get_padded_mask_and_weight`, `loss.py` bce_rescale_loss),
`lib/datasets/charades.py` (IoU map targets), `moment_localization/test.py` (proposal decoding), `core/eval.py`.

| 2D-TAN | here |
|---|---|
| FrameAvgPool: Conv1d(D, H, 1) + AvgPool(stride) | `frame`: Conv1d(D, H, 1); the recipe resamples to N clips |
| PropMaxPool: moment (i, j), i <= j, = max over clips i..j | `moment_map` (dense; "avg" option) |
| BaseFusion: LSTM(GloVe) → tex_linear; vis_conv; ``F.normalize(txt ⊙ map) · mask`` | `text`, `vis_conv`, same |
| MapConv: ReLU(conv) · 1/(#valid cells under the kernel), mask dilated per layer | `MapConv` |
| pred_layer Conv2d(H, 1, 1) · mask | `pred` |
| bce_rescale_loss: clamp((IoU − 0.5)/(1 − 0.5), 0, 1) targets, mean BCE on valid cells | `scaled_iou` |
| moment (i, j) ↦ (i·dur/N, (j+1)·dur/N) | `moment_bounds` |
| test: sort cells by score, NMS, top-n | `decode_moments`, `top_moments` (`models.common.segments.nms`) |

**Text path.** 2D-TAN encodes GloVe words with a 3-layer LSTM; LocVTP's experiments keep that and swap only the video
features. Here the query arrives as a precomputed sentence feature (B, Dq) from a frozen text tower — LocVTP's own
(`LocVTP.encode_text(tokens).sentence`) or CLIP's (`ClipBackbone.encode_text`) — computed once by the recipe; the head
learns only `tex_linear`. This keeps the head cheap on CPU and puts the comparison where the paper puts it: the clip
features.

Batch (a mapping): ``"clips"`` float (B, N, D) clip features; ``"clip_mask"`` bool (B, N), a prefix mask (clip j of
video b is real iff j < n_b; moments use n_b); ``"query"`` float (B, Dq) sentence features; ``"moments"`` float (B, 2)
ground-truth [start, end) seconds; ``"duration"`` float (B,) seconds. Ties in `decode_moments` keep the flat (i, j)
order (stable sort; 2D-TAN's reversed argsort breaks them the other way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.common.metrics.grounding import grounding_recall
from models.common.segments import Segments, nms, segment_iou
from models.grounding.config import GroundingHeadConfig

Batch = Mapping[str, Any]


# ----- the 2D moment map -------------------------------------------------------------------------------------------


def valid_lengths(clip_mask: torch.Tensor) -> torch.Tensor:
    """(B, N) prefix mask → (B,) number of real clips; raises for a non-prefix mask."""
    mask = clip_mask.bool()
    lengths = mask.sum(dim=1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("clip_mask must be a prefix mask (real clips first, padding after)")
    return lengths


def moment_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) real clips per video → (B, N, N) bool: cell (i, j) is a moment iff i <= j < n_b."""
    index = torch.arange(n, device=lengths.device)
    upper = index[:, None] <= index[None, :]  # (N, N)
    return upper[None] & (index[None, None, :] < lengths[:, None, None])  # (B, N, N)


def moment_bounds(lengths: torch.Tensor, duration: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N, N, 2) seconds of cell (i, j): ``(i·dur/n_b, (j+1)·dur/n_b)`` (2D-TAN; meaningful where i <= j < n_b)."""
    step = duration.to(torch.float64) / lengths.clamp(min=1).to(torch.float64)  # (B,) seconds per clip
    index = torch.arange(n, dtype=torch.float64, device=lengths.device)
    start = (index[None, :, None] * step[:, None, None]).expand(-1, n, n)  # (B, N, N): depends on i
    end = ((index[None, None, :] + 1) * step[:, None, None]).expand(-1, n, n)  # (B, N, N): depends on j
    return torch.stack([start, end], dim=-1)


def iou_map(bounds: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """(B, N, N, 2) cell bounds and (B, 2) ground truth → (B, N, N) temporal IoU (`segment_iou`)."""
    b, n = bounds.shape[:2]
    cells = bounds.detach().cpu().numpy().reshape(b, n * n, 2)
    gt = moments.detach().cpu().numpy().astype(np.float64).reshape(b, 2)
    ious = np.stack([segment_iou(cells[k], gt[k : k + 1])[:, 0] for k in range(b)]).reshape(b, n, n)
    return torch.from_numpy(ious)


def scaled_iou(iou: torch.Tensor, min_iou: float, max_iou: float) -> torch.Tensor:
    """2D-TAN's BCE targets: ``clamp((IoU − min_iou) / (max_iou − min_iou), 0, 1)``."""
    return ((iou - min_iou) / (max_iou - min_iou)).clamp(0.0, 1.0)


def _max_pool_moments(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N) → (B, H, N, N) with cell (i, j) = max over clips i..j (2D-TAN PropMaxPool), 0 below the diagonal."""
    b, h, n = x.shape
    out = x.new_zeros(b, h, n, n)
    window = x  # (B, H, N−k): max over clips i..i+k
    index = torch.arange(n, device=x.device)
    for k in range(n):
        out[:, :, index[: n - k], index[k:]] = window
        if k + 1 < n:
            window = torch.maximum(window[:, :, :-1], x[:, :, k + 1 :])
    return out


def _avg_pool_moments(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N) → (B, H, N, N) with cell (i, j) = mean over clips i..j, 0 below the diagonal."""
    n = x.shape[2]
    csum = F.pad(x.cumsum(dim=2), (1, 0))  # (B, H, N+1): csum[k] = Σ_{<k}
    index = torch.arange(n, device=x.device)
    length = (index[None, :] - index[:, None] + 1).clamp(min=1).to(x.dtype)  # (N, N): j − i + 1
    sums = csum[:, :, None, 1:] - csum[:, :, :-1, None]  # (B, H, N, N): Σ_{i..j}
    upper = (index[:, None] <= index[None, :]).to(x.dtype)
    return sums / length * upper


MOMENT_POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max": _max_pool_moments,
    "avg": _avg_pool_moments,
}


class MapConv(nn.Module):
    """2D-TAN MapConv: ``x ← ReLU(conv(x)) · w`` per layer, where w = 1/(number of valid cells under the kernel)
    (0 outside the dilated valid region) and the valid region grows with each layer (`get_padded_mask_and_weight`)."""

    def __init__(self, hidden: int, layers: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList(nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, H, N, N); mask: (B, 1, N, N) float {0, 1}."""
        valid = mask
        ones = torch.ones(1, 1, self.kernel, self.kernel, dtype=mask.dtype, device=mask.device)
        for conv in self.convs:
            x = F.relu(conv(x))
            count = torch.round(F.conv2d(valid, ones, padding=self.kernel // 2))  # (B, 1, N, N) valid cells in reach
            weight = torch.where(count > 0, 1.0 / count.clamp(min=1.0), torch.zeros_like(count))
            valid = (count > 0).to(valid.dtype)
            x = x * weight
        return x


# ----- the head ----------------------------------------------------------------------------------------------------


class GroundingHead(nn.Module):
    """2D-TAN over precomputed clip and sentence features; implements the engine's `TrainableModel`.

    Build it with `build(cfg, clip_dim, query_dim)`.
    """

    def __init__(self, cfg: GroundingHeadConfig, clip_dim: int, query_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.frame = nn.Conv1d(clip_dim, h, 1)
        self.text = nn.Linear(query_dim, h)
        self.vis_conv = nn.Conv2d(h, h, 1)
        self.map_conv = MapConv(h, cfg.map_layers, cfg.map_kernel)
        self.pred = nn.Conv2d(h, 1, 1)
        self._pool = MOMENT_POOLS[cfg.pooling]

    def forward(
        self, clips: torch.Tensor, clip_mask: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, N, N), moment mask (B, N, N) bool); logits are 0 outside the mask (2D-TAN ``pred · mask``)."""
        lengths = valid_lengths(clip_mask)
        n = clips.shape[1]
        if self.cfg.normalize_clips:
            clips = F.normalize(clips, dim=-1)
        clips = clips * clip_mask[:, :, None].to(clips.dtype)  # padded clips contribute nothing
        mask = moment_mask(lengths, n)  # (B, N, N)
        mask_f = mask[:, None].to(clips.dtype)  # (B, 1, N, N)
        frames = self.frame(clips.transpose(1, 2))  # (B, H, N)
        moments = self._pool(frames) * mask_f  # (B, H, N, N)
        txt = self.text(query)[:, :, None, None]  # (B, H, 1, 1)
        fused = F.normalize(txt * self.vis_conv(moments), dim=1) * mask_f  # BaseFusion
        logits = self.pred(self.map_conv(fused, mask_f))[:, 0] * mask.to(clips.dtype)  # (B, N, N)
        return logits, mask

    def scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmoid scores (B, N, N), moment mask (B, N, N)) for a batch (no "moments" needed)."""
        logits, mask = self(batch["clips"], batch["clip_mask"], batch["query"])
        return torch.sigmoid(logits) * mask, mask

    # ----- training (engine `TrainableModel`) -----------------------------------------------------------------------

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": scaled-IoU BCE averaged over the valid cells of the batch (2D-TAN bce_rescale_loss)}."""
        logits, mask = self(batch["clips"], batch["clip_mask"], batch["query"])
        lengths = valid_lengths(batch["clip_mask"])
        bounds = moment_bounds(lengths, torch.as_tensor(batch["duration"]), logits.shape[1])
        targets = scaled_iou(iou_map(bounds, torch.as_tensor(batch["moments"])), self.cfg.min_iou, self.cfg.max_iou)
        targets = targets.to(device=logits.device, dtype=logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits[mask], targets[mask])
        return {"loss": loss}

    def lr_scales(self) -> dict[str, float]:
        """Every parameter is new: ×1 (2D-TAN: Adam, one lr)."""
        return {}

    def after_step(self) -> None:
        """Nothing to clamp."""

    # ----- inference -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def candidates(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, every valid moment and its score, best first: [(moments (K, 2) seconds, scores (K,))]."""
        scores, _ = self.scores(batch)
        lengths = valid_lengths(batch["clip_mask"]).tolist()
        durations = torch.as_tensor(batch["duration"]).tolist()
        return [decode_moments(scores[k].cpu().numpy(), lengths[k], durations[k]) for k in range(len(lengths))]

    def predict(self, batch: Batch) -> list[Segments]:
        """Per query, the top-n moments after NMS (`cfg.nms_threshold`, `cfg.top_n`), best first."""
        return [top_moments(m, s, self.cfg.nms_threshold, self.cfg.top_n) for m, s in self.candidates(batch)]


def decode_moments(scores: np.ndarray, n_valid: int, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """A score map (N, N) → (moments (K, 2), scores (K,)) over the cells i <= j < n_valid, sorted by descending score
    (stable), moment (i, j) = ``(i·dur/n, (j+1)·dur/n)`` with n = n_valid (2D-TAN `get_proposal_results`)."""
    i, j = np.triu_indices(n_valid)  # row-major: (0,0), (0,1), …
    cell_scores = np.asarray(scores, dtype=np.float64)[i, j]
    order = np.argsort(-cell_scores, kind="stable")
    step = duration / n_valid
    moments = np.stack([i * step, (j + 1) * step], axis=1)[order]  # (K, 2)
    return moments, cell_scores[order]


def top_moments(moments: np.ndarray, scores: np.ndarray, nms_threshold: float, top_n: int) -> Segments:
    """Greedy NMS (`models.common.segments.nms`, suppress IoU > threshold) then the first `top_n` survivors."""
    kept = nms(Segments.from_bounds(moments, score=scores), nms_threshold, class_agnostic=True)
    return kept.take(np.arange(min(top_n, len(kept))))


def evaluate(
    head: GroundingHead,
    batches: Iterable[Batch],
    ns: Sequence[int] = (1, 5),
    ious: Sequence[float] = (0.3, 0.5, 0.7),
) -> dict[str, float]:
    """``R@n,IoU@m`` (percent) of `head` over evaluation batches (each with "moments"), NMS at
    `cfg.nms_threshold` (`models.common.metrics.grounding.grounding_recall`, 2D-TAN protocol)."""
    was_training = head.training
    head.eval()
    moments: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    gt: list[np.ndarray] = []
    for batch in batches:
        for m, s in head.candidates(batch):
            moments.append(m)
            scores.append(s)
        gt.append(torch.as_tensor(batch["moments"]).detach().cpu().numpy().reshape(-1, 2))
    head.train(was_training)
    return grounding_recall(moments, scores, np.concatenate(gt), ns, ious, head.cfg.nms_threshold)


def build(cfg: GroundingHeadConfig, clip_dim: int, query_dim: int) -> GroundingHead:
    """The head for clip features of width `clip_dim` and sentence features of width `query_dim`."""
    return GroundingHead(cfg, clip_dim, query_dim)
