"""DCC's CBP branch (classification-based pre-training): I3D snippet features → transformer → CAS over C + 1 classes.

Paper (review, METHODS §4): a transformer backbone (multi-head self-attention, layer norm, MLP) fine-tuned on frozen
two-stream I3D features ``F_i3d (T, 2048)`` produces frame-level action probabilities ``P^cb (T, C)``, pooled by top-k
into video scores and warmed up with the MIL loss. No official code (paper-code-notes §5.1); the pieces around the
transformer follow the W-TAL code the paper builds on (§5.3):

- embedding: ``Conv1d(2048 → width, kernel 3, zero padding) + ReLU`` (UM ``CAS_Module.conv``; CO2-Net's embedding);
- transformer: `TemporalTransformer`'s blocks (CLIP-style pre-LN MHSA + LN + QuickGELU MLP, key-padding mask), without
  learned positions by default (see `CBPConfig.positional_embedding`), with optional band-limited attention
  (`CBPConfig.attention_window`);
- classifier: dropout 0.7 then a per-snippet linear layer to C + 1 logits, background last (UM ``classifier``
  Conv1d k = 1, CO2-Net: C + 1 with the background appended).

Band-limited attention (project). On a synthetic check (24 videos of 32 snippets, one action of 10 snippets each,
600 warm-up steps), a 2-layer global-attention CBP reached video accuracy 1.0 while predicting the label class on
every snippet (label probability at ground-truth background: median 0.98; fg/bg pseudo-label mIoU 0.16), because
attention hands each snippet the video's class. A conv-only CBP (0 layers) gave mIoU 0.89; the same 2 layers with
attention limited to ±2 / ±4 / ±8 snippets gave 0.87 / 0.77 / 0.56. `TemporalTransformer` has no attention-mask
argument, so `banded_transformer` runs its blocks with a band + key-padding bias (the same bias construction).

``P^cb`` = softmax over the C + 1 classes, action columns (project: the background column lets every action
probability be low on a background snippet, which DCC's δ_l = 0.1 background pseudo-labels need; UM's
``cas_softmax`` is the same softmax over C + 1). The snippet features ``f`` for ``L_fb`` are the transformer outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models.common.temporal import TemporalTransformer
from models.dcc.config import CBPConfig


@dataclass(frozen=True)
class BranchOutput:
    """One branch's per-snippet outputs.

    logits: (B, T, C + 1) class logits, background last; features: (B, T, D) snippet features for ``L_fb``.
    """

    logits: torch.Tensor
    features: torch.Tensor

    @property
    def log_probs(self) -> torch.Tensor:
        """(B, T, C + 1) log-softmax over actions and background."""
        return self.logits.log_softmax(dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        """(B, T, C) action probabilities ``P`` (softmax over C + 1, background column dropped)."""
        return self.logits.softmax(dim=-1)[..., :-1]


def run_in_chunks(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor, max_len: int
) -> torch.Tensor:
    """Apply a (B, T, ·) → (B, T, ·) module to consecutive chunks of at most `max_len` snippets and concatenate.

    For sequences longer than a learned position table (whole test videos); windows of the training length pass
    through in one piece.
    """
    if x.shape[1] <= max_len:
        return fn(x, mask)
    parts = [fn(x[:, s : s + max_len], mask[:, s : s + max_len]) for s in range(0, x.shape[1], max_len)]
    return torch.cat(parts, dim=1)


def banded_transformer(
    temporal: TemporalTransformer, x: torch.Tensor, mask: torch.Tensor, window: int | None
) -> torch.Tensor:
    """`TemporalTransformer.forward` where snippet i may attend only to valid snippets j with |i − j| <= `window`.

    x: (B, T, W); mask: (B, T) bool, True = valid. ``window=None`` is the plain (global) forward.
    """
    if window is None:
        return temporal(x, mask)
    b, t, _ = x.shape
    x = x + temporal.positional_embedding[:t].to(x.dtype)  # (B, T, W)
    idx = torch.arange(t, device=x.device)
    far = (idx[None, :] - idx[:, None]).abs() > window  # (T, T) query × key
    blocked = ~mask.bool()[:, None, :] | far[None]  # (B, T, T)
    bias = torch.zeros(b, t, t, dtype=x.dtype, device=x.device).masked_fill_(blocked, torch.finfo(x.dtype).min)
    bias = bias.repeat_interleave(temporal.heads, dim=0)  # (B·heads, T, T), batch-major like TemporalTransformer
    for block in temporal.blocks:
        x = block(x, attn_mask=bias)
    return x


class CBPBranch(nn.Module):
    """`forward(features (B, T, input_dim), mask (B, T) bool) -> BranchOutput` over C + 1 classes."""

    def __init__(self, cfg: CBPConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.embed = nn.Conv1d(cfg.input_dim, cfg.width, cfg.embed_kernel, padding=cfg.embed_kernel // 2)
        self.transformer = TemporalTransformer(cfg.width, cfg.layers, cfg.heads, max_positions=cfg.max_snippets)
        if not cfg.positional_embedding:
            # a frozen all-zero table (a non-persistent buffer: no parameter, nothing in checkpoints)
            rows = self.transformer.max_positions
            del self.transformer.positional_embedding
            self.transformer.register_buffer("positional_embedding", torch.zeros(rows, cfg.width), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.width, num_classes + 1)

    def _transform(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return banded_transformer(self.transformer, x, mask, self.cfg.attention_window)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> BranchOutput:
        if features.ndim != 3 or features.shape[-1] != self.cfg.input_dim:
            raise ValueError(f"CBP expects features (B, T, {self.cfg.input_dim}); got {tuple(features.shape)}")
        if mask.shape != features.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match features {tuple(features.shape[:2])}")
        mask = mask.bool()
        # zero padded snippets first: the kernel-3 embedding then sees exactly the zero padding of a lone video
        x = torch.where(mask[..., None], features, torch.zeros((), dtype=features.dtype, device=features.device))
        x = torch.relu(self.embed(x.transpose(1, 2))).transpose(1, 2)  # (B, T, W)
        f = run_in_chunks(self._transform, x, mask, self.cfg.max_snippets)  # (B, T, W)
        return BranchOutput(logits=self.classifier(self.dropout(f)), features=f)
