"""CLIP4Clip's two patch stems ("linear projection of flattened patches", paper §3.1 and Fig. 2).

- `PatchEmbed2d`: CLIP's own `conv1` on each frame independently (official `linear_patch="2d"`).
- `PatchEmbed3d`: `Conv3d(3, W, (3, p, p), stride (1, p, p), padding (1, 0, 0), bias=False)` over the whole clip
  `(B, 3, T, H, W)`, so the tokens of frame t see frames t−1, t, t+1 (official `module_clip.py`, `visual.conv2`).
  Initialisation trick (official `modeling.py::from_pretrained`): the centre time slice is CLIP's `conv1` weight and the
  two outer slices are zero, so at initialisation it equals the 2D stem.

Both return the patch tokens of the *valid* frames only, `(M, N, W)` with M = number of True entries of the mask in
row-major (video, frame) order; the caller runs CLIP's blocks on those and scatters the result back. Padded frames are
zeroed before the 3D convolution, so they act exactly like the convolution's own temporal zero padding: a padded video
gives the same valid-frame tokens as its unpadded prefix (the official loader pads with zero frames, which is the same
thing for inputs it builds itself).
"""

from __future__ import annotations

import torch
from torch import nn

from models.common.clip import ClipBackbone


def _check_video(clip: ClipBackbone, video: torch.Tensor, mask: torch.Tensor) -> None:
    s = clip.image_size
    if video.ndim != 5 or tuple(video.shape[2:]) != (3, s, s):
        raise ValueError(f"{clip.arch} expects video (B, T, 3, {s}, {s}); got {tuple(video.shape)}")
    if mask.shape != video.shape[:2]:
        raise ValueError(f"video_mask {tuple(mask.shape)} does not match video frames {tuple(video.shape[:2])}")


class PatchEmbed2d(nn.Module):
    """CLIP's conv1 applied frame by frame; holds no parameters of its own (conv1 belongs to the backbone)."""

    def forward(self, clip: ClipBackbone, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """video (B, T, 3, S, S), mask (B, T) bool → patch tokens of the valid frames (M, N, W)."""
        _check_video(clip, video, mask)
        return clip.embed_patches(video[mask])  # (M, 3, S, S) → (M, N, W); padded frames never reach CLIP


class PatchEmbed3d(nn.Module):
    """The 3D stem, initialised from the backbone's conv1 (centre slice) so that it starts equal to `PatchEmbed2d`."""

    def __init__(self, clip: ClipBackbone, temporal_kernel: int = 3) -> None:
        super().__init__()
        if temporal_kernel % 2 != 1:
            raise ValueError(f"temporal_kernel must be odd (centred), got {temporal_kernel}")
        conv1 = clip.conv1
        if conv1.bias is not None:
            raise ValueError(f"{clip.arch}: conv1 has a bias; CLIP's ViT stem has none and the 3D stem copies that")
        p = clip.patch_size
        self.conv = nn.Conv3d(
            3,
            clip.vision_width,
            kernel_size=(temporal_kernel, p, p),
            stride=(1, p, p),
            padding=(temporal_kernel // 2, 0, 0),
            bias=False,
        )
        with torch.no_grad():
            # official "Initialization trick": zeros left and right of the copied 2D kernel
            self.conv.weight.zero_()
            self.conv.weight[:, :, temporal_kernel // 2].copy_(conv1.weight)  # (W, 3, p, p)

    def forward(self, clip: ClipBackbone, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """video (B, T, 3, S, S), mask (B, T) bool → patch tokens of the valid frames (M, N, W)."""
        _check_video(clip, video, mask)
        video = video.to(self.conv.weight.dtype)
        zero = torch.zeros((), dtype=video.dtype, device=video.device)
        video = torch.where(mask[:, :, None, None, None], video, zero)  # padded frames = temporal zero padding
        x = self.conv(video.transpose(1, 2))  # (B, 3, T, S, S) → (B, W, T, g, g)
        b, w, t = x.shape[:3]
        x = x.permute(0, 2, 3, 4, 1).reshape(b, t, -1, w)  # (B, T, N, W), patches row-major as in conv1
        return x[mask]  # (M, N, W)
