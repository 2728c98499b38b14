"""LocVTP's video encoder f_v: CLIP's ViT as a divided space-time transformer (TimeSformer), one feature per clip.

Paper (seed review, METHODS §5): "ViT-B/16 with space-time attention (TimeSformer); spatial attention weights from
ImageNet-21k, temporal attention weights initialised to zero"; T clips of 16 frames each → ``v = {v^t}``, v^t ∈ R^D.
The official code uses C3D instead (paper-code-notes §4.2, issue #8) and is not followed. Here the spatial part is the
shared CLIP vision tower (`ClipBackbone`: `embed_patches`, `tokens_from_patches`, `vision_blocks`, `pool`), so no CLIP
code is copied, and TimeSformer's divided attention (Bertasius et al., ICML 2021, `timesformer/models/vit.py`
``Block`` with ``attention_type='divided_space_time'``) is added around it:

- every vision block is preceded by a **temporal attention sublayer** over the F frames of one clip, separately for
  each patch position (the CLS tokens do not take part, as in TimeSformer):
  ``x_patch ← x_patch + fc(MHA(LN(x_patch)))``; TimeSformer's ``load_pretrained`` copies the spatial attention and
  ``norm1`` of the same block into ``temporal_attn`` / ``temporal_norm1`` and zero-initialises ``temporal_fc`` —
  done here too (`TemporalAttention.from_block`), so the **sublayer is exactly zero at init**;
- a learned **time embedding** (F, W), zero-initialised like TimeSformer's ``time_embed``, is added to the patch
  tokens of frame f (after CLIP's ``ln_pre``, since `tokens_from_patches` applies it);
- each frame keeps its own CLS token through the (unchanged) CLIP spatial blocks; the **clip feature is the mean of
  the clip's F per-frame CLS embeddings** after CLIP's ``ln_post @ proj`` (TimeSformer averages its CLS copies over
  frames inside every block; with a CLIP start, averaging the projected per-frame CLS keeps the init equal to
  "per-frame CLIP, mean-pooled over the clip's frames", CLIP4Clip's meanP).

Hence at init the encoder is per-frame CLIP exactly (tested). Cost options (project, for 2 CPU cores):
`trainable_blocks` = k keeps CLIP's stem and first L−k blocks as a frozen per-frame prefix without temporal attention
(computed without autograd, or precomputed once: `frame_tokens`, the "tokens" input); the paper trains every block
(k = L, the default). Frames per clip: the paper feeds all 16 frames of a clip; `LocVTPConfig.frames_per_clip` may
take fewer, evenly spaced inside the 16-frame window (the recipe samples them), because 16 frames × 17 tokens per
clip is the dominant cost on 2 CPU cores.

Gradient note: with the output projection ``fc`` at zero, the temporal attention's own weights (LN, q/k/v, proj)
receive an exactly-zero gradient on the first step — they start learning once ``fc`` has moved (TimeSformer has the
same property).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.common.clip import ClipBackbone


class TemporalAttention(nn.Module):
    """Pre-LN self-attention along the frame axis with a zero-initialised output projection (TimeSformer's
    ``temporal_norm1`` → ``temporal_attn`` → ``temporal_fc``). `forward(x (M, F, W)) -> (M, F, W)` residual update."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} temporal heads")
        self.ln = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.fc = nn.Linear(width, width)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    @classmethod
    def from_block(cls, block: Any, heads: int) -> TemporalAttention:
        """A sublayer for CLIP vision block `block` (open_clip `ResidualAttentionBlock`): LN and attention weights
        copied from the block's spatial ones (TimeSformer ``load_pretrained``), ``fc`` zero."""
        width = int(block.ln_1.weight.shape[0])
        layer = cls(width, heads)
        layer.ln.load_state_dict(block.ln_1.state_dict())
        # q/k/v and output projection weights have the same shapes whatever the head count
        layer.attn.load_state_dict(block.attn.state_dict())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        out, _ = self.attn(h, h, h, need_weights=False)  # (M, F, W)
        return x + self.fc(out)


class SpaceTimeEncoder(nn.Module):
    """The new parts of f_v — one `TemporalAttention` per *trainable* CLIP vision block and the time embedding — and
    the clip forward that interleaves them with CLIP's blocks.

    `trainable_blocks` k (None = all, the paper): the CLIP stem and the first L−k vision blocks form a frozen,
    per-frame **prefix** (no temporal attention, run without autograd); the last k blocks get temporal attention.
    `frame_tokens` computes the prefix, so a recipe may precompute it once ("tokens" input) instead of paying for it
    every step. The time embedding is added to the patch tokens entering the first trainable block.

    The CLIP backbone is passed to every call rather than stored, so its parameters live under the model's ``clip.``
    prefix only (one lr multiplier for all of CLIP).
    """

    def __init__(
        self, clip: ClipBackbone, frames_per_clip: int, heads: int | None = None, trainable_blocks: int | None = None
    ) -> None:
        super().__init__()
        layers = clip.vision_layers
        k = layers if trainable_blocks is None else trainable_blocks
        if not 1 <= k <= layers:
            raise ValueError(f"trainable_blocks={trainable_blocks} must lie in [1, {layers}] for {clip.arch}")
        self.first_trainable = layers - k
        self.frames_per_clip = frames_per_clip
        heads = heads or clip.vision_heads
        self.temporal = nn.ModuleList(
            TemporalAttention.from_block(block, heads) for block in clip.vision_blocks[self.first_trainable :]
        )
        self.time_embed = nn.Parameter(torch.zeros(frames_per_clip, clip.vision_width))  # TimeSformer: zeros
        self._batch_first = bool(getattr(clip.visual.transformer, "batch_first", False))

    def frozen_prefix_parameters(self, clip: ClipBackbone) -> list[nn.Parameter]:
        """CLIP parameters the prefix uses (stem + the first L−k blocks): frozen whenever the prefix is frozen."""
        if self.first_trainable == 0:
            return []
        blocks = clip.vision_blocks[: self.first_trainable]
        return self.stem_parameters(clip) + [p for block in blocks for p in block.parameters()]

    @staticmethod
    def stem_parameters(clip: ClipBackbone) -> list[nn.Parameter]:
        """conv1, class and position embeddings, ln_pre: what `tokens_from_patches(embed_patches(·))` uses."""
        return [
            *clip.conv1.parameters(),
            clip.class_embedding,
            clip.vision_positional_embedding,
            *clip.visual.ln_pre.parameters(),
        ]

    def frame_tokens(self, clip: ClipBackbone, frames: torch.Tensor) -> torch.Tensor:
        """Frames `(..., 3, S, S)` → tokens entering the first trainable block `(..., 1+N, W)`: CLIP's stem and its
        first L−k blocks, per frame (the "tokens" input of `LocVTPConfig`). Differentiable only when k = L."""
        lead = frames.shape[:-3]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.first_trainable == 0):
            x = clip.tokens_from_patches(clip.embed_patches(frames.reshape(-1, *frames.shape[-3:])))  # (·, 1+N, W)
            for block in clip.vision_blocks[: self.first_trainable]:
                x = self._spatial(block, x)
        return x.view(*lead, *x.shape[1:])

    def forward(self, clip: ClipBackbone, frames: torch.Tensor) -> torch.Tensor:
        """`frames (M, F, 3, S, S)` CLIP-normalised, F <= frames_per_clip → clip features `(M, D)` (unnormalised)."""
        if frames.ndim != 5:
            raise ValueError(f"expected clips of frames (M, F, 3, S, S), got {tuple(frames.shape)}")
        return self.forward_tokens(clip, self.frame_tokens(clip, frames))

    def forward_tokens(self, clip: ClipBackbone, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens (M, F, 1+N, W)` from `frame_tokens` → clip features `(M, D)` (unnormalised): the mean over the
        clip's frames of the per-frame CLS after ``ln_post @ proj``."""
        if tokens.ndim != 4 or tokens.shape[-2:] != (clip.n_patches + 1, clip.vision_width):
            raise ValueError(
                f"expected frame tokens (M, F, {clip.n_patches + 1}, {clip.vision_width}), got {tuple(tokens.shape)}"
            )
        m, f, _, w = tokens.shape
        n = clip.n_patches
        if f > self.frames_per_clip:
            raise ValueError(f"{f} frames per clip exceed frames_per_clip={self.frames_per_clip}")
        x = tokens.to(self.time_embed.dtype)
        patches = x[:, :, 1:] + self.time_embed[:f, None, :]  # (M, F, N, W): frame f's time embedding
        x = torch.cat([x[:, :, :1], patches], dim=2)  # (M, F, 1+N, W)
        blocks = clip.vision_blocks[self.first_trainable :]
        for temporal, block in zip(self.temporal, blocks):
            patches = x[:, :, 1:].transpose(1, 2).reshape(m * n, f, w)  # (M·N, F, W): one sequence per patch position
            patches = temporal(patches).view(m, n, f, w).transpose(1, 2)  # (M, F, N, W)
            x = torch.cat([x[:, :, :1], patches], dim=2).flatten(0, 1)  # (M·F, 1+N, W)
            x = self._spatial(block, x).view(m, f, 1 + n, w)  # CLIP's block: attention within each frame, then MLP
        return clip.pool(x.flatten(0, 1)).view(m, f, -1).mean(dim=1)  # (M·F, D) → (M, D)

    def _spatial(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # open_clip stacks are batch-first in recent releases, sequence-first in older ones (see models.common.clip)
        if self._batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)
