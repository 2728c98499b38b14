"""The STAN branch: K spatial-temporal layers beside the CLIP visual tower (Liu et al., CVPR 2023, §3.2–3.3).

Paper → code (official `farewellthree/STAN`, `mmaction/models/backbones/clip_stan_hf.py`; paper-code-notes §2.2):

| paper | official | here |
|---|---|---|
| STAN input, layer 0 (Eq. 3–4) | `input_ini` | `StanBranch.embed` |
| STAN input, layer k > 0 (Eq. 5–6) | `forword_timeModule`: `x = x2 + x1` | `StanBranch.forward` (sum) |
| cross-frame module, self-attention (§3.3) | `CLIPLayer_AttnTime` | `CrossFrameAttention` |
| cross-frame module, 3D convolution (§3.3) | `CLIPLayer_ConvTime` (not in the repo) | `CrossFrameConv` |
| intra-frame module (§3.3), init from CLIP | `CLIPLayer_Spatial`, `init_weights` | `IntraFrame` |

The branch state is kept un-flattened: a video CLS `(B, W)` and patch tokens `(B, T, N, W)` (the official code packs
both into `[CLS ; (l t) patches]`; the order of a set of tokens changes nothing here). Padded frames (mask False)
never influence valid ones: means over frames are masked, temporal attention masks padded keys, and the temporal
convolution sees zeros at padded frames (= its own zero padding for a prefix mask).

Where the paper and the official code differ, the paper is implemented unless noted:
- layer k > 0 input: the paper (Eq. 5–6) mixes the previous STAN output and the CLIP level with learnable weights;
  the official code *sums* them, and so does this module (METHODS §2 asks for the sum);
- both cross-frame modules end in a zero-initialised projection, so at initialisation each is an exact identity on
  its input (the attention one as in the official code; the conv one by the same rule, see `CrossFrameConv`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from open_clip.transformer import LayerNorm
from torch import nn

from models.common.clip import ClipBackbone
from models.common.temporal import masked_mean
from models.config import ConfigError
from models.stan.config import StanConfig


class DropPath(nn.Module):
    """Stochastic depth (official mmcv `DropPath`): in training, zero whole rows (dim 0) of a residual update with
    probability `p` and scale the kept rows by 1/(1−p); the identity in eval mode or when p = 0."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path rate must lie in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        rows = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (R, 1, …)
        return x * rows / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
    """Self-attention on batch-first `x (R, S, W)` whatever the module's layout; `key_padding (R, S)` True = ignore."""
    if attn.batch_first:
        return attn(x, x, x, key_padding_mask=key_padding, need_weights=False)[0]
    y = x.transpose(0, 1)  # (S, R, W) for sequence-first modules (older open_clip stacks)
    return attn(y, y, y, key_padding_mask=key_padding, need_weights=False)[0].transpose(0, 1)


# ----- cross-frame (temporal) modules ---------------------------------------------------------------------------------


class CrossFrameAttention(nn.Module):
    """Self-attention along time for each spatial position (paper §3.3 "self-attention based"; official
    `CLIPLayer_AttnTime`): ``patches += Linear(DropPath(MHA(LN(patches[:, :, j]))))`` for each patch j; the video
    CLS passes through. The last Linear is zero-initialised (official `constant_init(temporal_fc, 0, bias=0)`), so
    the module starts as an exact identity. The attention itself is randomly initialised (official: a fresh HF
    `CLIPAttention`; here PyTorch's `nn.MultiheadAttention` init)."""

    def __init__(self, width: int, heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"cross-frame attention: width {width} is not divisible by {heads} heads")
        self.ln = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.drop_path = DropPath(drop_path)
        self.proj = nn.Linear(width, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """patches (B, T, N, W), mask (B, T) bool → (B, T, N, W)."""
        b, t, n, w = patches.shape
        x = patches.permute(0, 2, 1, 3).reshape(b * n, t, w)  # (B·N, T, W): one time sequence per position
        padded = (~mask).repeat_interleave(n, dim=0)  # (B·N, T), batch-major like x
        y = self.proj(self.drop_path(_self_attention(self.attn, self.ln(x), padded)))  # (B·N, T, W)
        return patches + y.reshape(b, n, t, w).permute(0, 2, 1, 3)


class CrossFrameConv(nn.Module):
    """3D-convolution cross-frame module (paper §3.3 "convolution based"): the patch tokens form a cube
    ``(T, H, W)`` and ``patches += Up(DropPath(Conv3d_(3,1,1)(Down(patches))))``.

    No official code exists (`CLIPLayer_ConvTime` is referenced but not defined in the release; an older in-house
    version found publicly is a plain full-width 3×3×3 Conv3d followed by a zero-initialised Linear). Choices:
    - Down / Up are the paper's point-wise (1×1×1) convolutions, written as Linear layers over channels, with the
      reduction ``r = cfg.conv_reduction`` (2, after ST-Adapter's 768 → 384 bottleneck; the paper gives no value);
    - the temporal convolution has kernel (3, 1, 1) and zero padding 1 in time (paper); padded frames are zeroed
      before it, so they act exactly like that padding;
    - Up is zero-initialised (as the attention variant's last Linear), so the module starts as an exact identity;
      drop-path sits before Up, mirroring the attention variant's `DropPath → temporal_fc` order.
    """

    def __init__(self, width: int, grid: int, reduction: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        if width % reduction:
            raise ConfigError(f"conv cross-frame module: width {width} is not divisible by reduction {reduction}")
        hidden = width // reduction
        self.grid = grid
        self.down = nn.Linear(width, hidden)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.drop_path = DropPath(drop_path)
        self.up = nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """patches (B, T, N, W), mask (B, T) bool → (B, T, N, W)."""
        b, t, n, _ = patches.shape
        if n != self.grid * self.grid:
            raise ValueError(f"expected {self.grid}×{self.grid} patches, got {n}")
        h = self.down(patches)  # (B, T, N, C)
        h = torch.where(mask[:, :, None, None], h, torch.zeros((), dtype=h.dtype, device=h.device))
        c = h.shape[-1]
        cube = h.permute(0, 3, 1, 2).reshape(b, c, t, self.grid, self.grid)  # (B, C, T, H, W)
        h = self.conv(cube).reshape(b, c, t, n).permute(0, 2, 3, 1)  # (B, T, N, C)
        return patches + self.up(self.drop_path(h))


class NoCrossFrame(nn.Module):
    """Table 6 "w/o cross-frame module": the patch tokens pass unchanged."""

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return patches


CrossFrameFactory = Callable[[StanConfig, ClipBackbone, float], nn.Module]

CROSS_FRAME: dict[str, CrossFrameFactory] = {
    "attention": lambda cfg, clip, rate: CrossFrameAttention(
        clip.vision_width, cfg.cross_frame_heads or clip.vision_heads, rate
    ),
    "conv": lambda cfg, clip, rate: CrossFrameConv(clip.vision_width, clip.grid, cfg.conv_reduction, rate),
    "none": lambda cfg, clip, rate: NoCrossFrame(),
}


# ----- intra-frame (spatial) module -----------------------------------------------------------------------------------


class IntraFrame(nn.Module):
    """Per-frame self-attention + MLP with a *copy* of a CLIP block (paper §3.3; official `CLIPLayer_Spatial`).

    The video CLS is replicated into every frame and prepended to that frame's patches; the block's attention runs
    per frame; the per-frame CLS updates are averaged over (valid) frames into the new video CLS; then the block's MLP
    with its residual. Drop-path on the attention update only (official). With one frame this is exactly the CLIP
    block. `block` is an open_clip `ResidualAttentionBlock`; it is deep-copied, so training it leaves CLIP unchanged.
    """

    def __init__(self, block: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.block: Any = copy.deepcopy(block)  # open_clip's block is untyped
        self.drop_path = DropPath(drop_path)

    def forward(
        self, cls: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cls (B, W), patches (B, T, N, W), mask (B, T) bool → (cls (B, W), patches (B, T, N, W))."""
        blk = self.block
        b, t, n, w = patches.shape
        x = torch.cat([cls[:, None, None, :].expand(b, t, 1, w), patches], dim=2)  # (B, T, 1+N, W)
        x = x.reshape(b * t, 1 + n, w)  # (B·T, 1+N, W): one CLIP sequence per frame
        update = self.drop_path(blk.ls_1(_self_attention(blk.attn, blk.ln_1(x), None)))
        update = update.reshape(b, t, 1 + n, w)
        cls = cls + masked_mean(update[:, :, 0], mask)  # (B, W): the frames' CLS updates, averaged
        patches = patches + update[:, :, 1:]
        cls = cls + blk.ls_2(blk.mlp(blk.ln_2(cls)))
        patches = patches + blk.ls_2(blk.mlp(blk.ln_2(patches)))
        return cls, patches


class StanLayer(nn.Module):
    """One STAN layer: cross-frame module on the patch tokens, then the intra-frame module (paper Fig. 2)."""

    def __init__(self, cross_frame: nn.Module, intra_frame: IntraFrame) -> None:
        super().__init__()
        self.cross_frame = cross_frame
        self.intra_frame = intra_frame

    def forward(
        self, cls: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.intra_frame(cls, self.cross_frame(patches, mask), mask)


# ----- the branch -----------------------------------------------------------------------------------------------------


class StanBranch(nn.Module):
    """K STAN layers and the learnable temporal embedding. Build with `StanBranch.from_clip`.

    `forward(levels, mask, class_embedding, positional_embedding)` takes the CLIP block outputs that feed the branch,
    each `(B, T, 1+N, W)` (frame CLS first), and returns the final video CLS `(B, W)`. Layer 0 builds its input from
    ``levels[0]`` (`embed`); layer k > 0 adds ``levels[k]`` re-laid as ``[mean_t(frame CLS) ; patches]`` when it
    exists. The full model passes the last K blocks (multi-level); the posterior ablation passes the final block
    only, so its later layers see no CLIP level.
    """

    def __init__(self, layers: Sequence[StanLayer], width: int, temporal_positions: int, std: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # official `STAN_time_embed = nn.Embedding(64, D)`; init std: see `StanConfig.temporal_embedding_std`
        self.temporal_embedding = nn.Parameter(torch.empty(temporal_positions, width))
        nn.init.normal_(self.temporal_embedding, std=std)

    @classmethod
    def from_clip(cls, cfg: StanConfig, clip: ClipBackbone) -> StanBranch:
        """Layer k: the `cfg.cross_frame` module and a copy of CLIP block L−K+k (official `init_weights`)."""
        n_blocks = clip.vision_layers
        if cfg.depth > n_blocks:
            raise ConfigError(f"depth={cfg.depth} exceeds the {n_blocks} vision blocks of {clip.arch}")
        first = n_blocks - cfg.depth
        layers = [
            StanLayer(CROSS_FRAME[cfg.cross_frame](cfg, clip, rate), IntraFrame(clip.vision_blocks[first + k], rate))
            for k, rate in enumerate(cfg.drop_path_rates)
        ]
        return cls(layers, clip.vision_width, cfg.temporal_positions, cfg.temporal_embedding_std)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def embed(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        class_embedding: torch.Tensor,
        positional_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 input (paper Eq. 3–4, official `input_ini`) from a CLIP block output `tokens (B, T, 1+N, W)`.

        video CLS = ½·(mean over valid frames of the frame CLS + class_embedding + pos[0]);
        patch (t, j) = token + pos[1 + j] (CLIP's spatial position, again) + temporal_embedding[t].
        """
        t = tokens.shape[1]
        if t > self.temporal_embedding.shape[0]:
            raise ValueError(f"{t} frames exceed the {self.temporal_embedding.shape[0]} temporal positions")
        pos = positional_embedding.to(tokens.dtype)  # (1+N, W)
        cls = 0.5 * (masked_mean(tokens[:, :, 0], mask) + class_embedding.to(tokens.dtype) + pos[0])  # (B, W)
        time = self.temporal_embedding[:t].to(tokens.dtype)  # (T, W)
        patches = tokens[:, :, 1:] + pos[None, None, 1:] + time[None, :, None, :]  # (B, T, N, W)
        return cls, patches

    def forward(
        self,
        levels: Sequence[torch.Tensor],
        mask: torch.Tensor,
        class_embedding: torch.Tensor,
        positional_embedding: torch.Tensor,
    ) -> torch.Tensor:
        if not 1 <= len(levels) <= self.depth:
            raise ValueError(f"the branch takes 1..{self.depth} CLIP levels, got {len(levels)}")
        cls, patches = self.embed(levels[0], mask, class_embedding, positional_embedding)
        for k, layer in enumerate(self.layers):
            if 0 < k < len(levels):
                # official `x = x2 + x1`: the CLIP level re-laid as [mean_t(frame CLS) ; patches], summed
                cls = cls + masked_mean(levels[k][:, :, 0], mask)
                patches = patches + levels[k][:, :, 1:]
            cls, patches = layer(cls, patches, mask)
        return cls
