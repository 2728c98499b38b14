"""Temporal transformer over per-frame features, its CLIP-text initialisation, and masked mean pooling.

- `TemporalTransformer`: CLIP-style residual attention blocks (pre-LN, multi-head attention, QuickGELU MLP ×4 —
  open_clip's `ResidualAttentionBlock`, the block CLIP4Clip's `TransformerClip` copies) over frames, with learned
  frame positions and a key-padding mask. CLIP4Clip seqTransf (`modeling.py`: 4 layers, width 512, 8 heads), UCoFiA's
  video feature (the same seqTransf) and DCC's VLP branch (Efficient-Prompt `TemporalModelling`, 2 layers) use it.
- `init_from_clip_text`: CLIP4Clip's seqTransf init — blocks from CLIP text blocks 0..n−1 and frame positions from
  the text positional embedding (`transformer.resblocks.*` → `transformerClip.*`, `frame_position_embeddings`).
- `masked_mean`: meanP's mean over valid frames (CLIP4Clip `_mean_pooling_for_similarity_visual`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock
from torch import nn

if TYPE_CHECKING:
    from models.common.clip import ClipBackbone


class TemporalTransformer(nn.Module):
    """`forward(x (B, T, W), mask (B, T) bool, True = valid) -> (B, T, W)`; no outer residual (callers add it:
    CLIP4Clip returns ``out + x``). Padded frames never influence valid ones."""

    def __init__(self, width: int, layers: int, heads: int, max_positions: int = 64) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.width = width
        self.heads = heads
        # learned frame positions; 64 covers CLIP4Clip's 64-frame ActivityNet/DiDeMo setting and STAN's ≤ 64 frames
        self.positional_embedding = nn.Parameter(torch.empty(max_positions, width))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, act_layer=QuickGELU, norm_layer=LayerNorm, batch_first=True)
            for _ in range(layers)
        )
        self.init_parameters()

    @property
    def max_positions(self) -> int:
        return int(self.positional_embedding.shape[0])

    def init_parameters(self) -> None:
        # open_clip TextTransformer.init_parameters (OpenAI CLIP's init); DCC inits temporal positions N(0, 0.01)
        nn.init.normal_(self.positional_embedding, std=0.01)
        n_layers = max(len(self.blocks), 1)
        proj_std = (self.width**-0.5) * ((2 * n_layers) ** -0.5)
        block: Any  # open_clip's ResidualAttentionBlock, untyped
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=self.width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if t > self.max_positions:
            raise ValueError(f"{t} frames exceed max_positions={self.max_positions}")
        if mask.shape != (b, t):
            raise ValueError(f"mask {tuple(mask.shape)} does not match frames {(b, t)}")
        x = x + self.positional_embedding[:t].to(x.dtype)  # (B, T, W)
        # open_clip's block exposes only `attn_mask`, so the key-padding mask becomes an additive (B·heads, T, T) bias.
        # A finite minimum (CLIP4Clip adds -1e6) keeps rows of all-padded videos finite instead of NaN.
        blocked = torch.zeros(b, 1, t, dtype=x.dtype, device=x.device)
        blocked.masked_fill_(~mask.bool()[:, None, :], torch.finfo(x.dtype).min)  # (B, 1, T) over keys
        bias = blocked.expand(b, t, t).repeat_interleave(self.heads, dim=0)  # (B·heads, T, T), batch-major
        for block in self.blocks:
            x = block(x, attn_mask=bias)
        return x


def init_from_clip_text(temporal: TemporalTransformer, backbone: ClipBackbone, n_layers: int | None = None) -> None:
    """Copy CLIP text blocks 0..n_layers−1 and the first rows of the text positional embedding into `temporal`.

    CLIP4Clip's seqTransf init (`modeling.py::from_pretrained`). `n_layers` defaults to all of `temporal`'s blocks.
    Position rows copied: min(max_positions, text context); rows beyond the text context keep their init.
    """
    if temporal.width != backbone.text_width:
        raise ValueError(
            f"cannot initialise a width-{temporal.width} temporal transformer from the width-{backbone.text_width} "
            f"CLIP text tower of {backbone.arch}; use width={backbone.text_width} or skip the init"
        )
    n = len(temporal.blocks) if n_layers is None else n_layers
    if not 0 <= n <= min(len(temporal.blocks), backbone.text_layers):
        raise ValueError(
            f"n_layers={n}: the temporal transformer has {len(temporal.blocks)} blocks and the CLIP text tower of "
            f"{backbone.arch} has {backbone.text_layers}"
        )
    with torch.no_grad():
        for i in range(n):
            try:
                temporal.blocks[i].load_state_dict(backbone.text_blocks[i].state_dict())
            except RuntimeError as exc:
                raise ValueError(
                    f"CLIP text block {i} of {backbone.arch} does not fit a temporal block: {exc}"
                ) from exc
        text_pos = backbone.text_positional_embedding
        rows = min(temporal.max_positions, text_pos.shape[0])
        temporal.positional_embedding[:rows].copy_(text_pos[:rows])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x (B, T, D)` over positions where `mask (B, T)` is True → `(B, D)`; all-masked rows give zeros.

    Padded positions are excluded by selection, not multiplication, so NaN or inf in padding cannot leak.
    """
    valid = mask.bool()[..., None]  # (B, T, 1)
    total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)  # (B, D)
    count = valid.sum(dim=1).clamp(min=1).to(x.dtype)  # (B, 1)
    return total / count
