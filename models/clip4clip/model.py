"""CLIP4Clip: "An Empirical Study of CLIP for End to End Video Clip Retrieval" (Luo et al., Neurocomputing 2022).

Official code: ArrowLuo/CLIP4Clip — `modules/modeling.py` (CLIP4Clip, similarity calculators, init trick),
`modules/module_clip.py` (CLIP, 3D patch stem), `modules/module_cross.py` (cross encoder), `modules/until_module.py`
(CrossEn, AllGather), `main_task_retrieval.py` (freezing, optimiser groups, logit-scale clamp). Working spec:
METHODS §1, paper-code-notes §1.

| paper piece | here |
|---|---|
| §3.1 video encoder: CLIP ViT per frame, CLS after `ln_post @ proj` | `Clip4Clip.encode_frames` (`ClipBackbone`) |
| §3.1 2D / 3D linear patch embedding | `patch_embed.PatchEmbed2d` / `PatchEmbed3d` (`PATCH_STEMS`) |
| §3.2 text encoder: CLIP text transformer, EOT feature | `ClipBackbone.encode_text` |
| §3.3 similarity calculators (meanP, seqLSTM, seqTransf, tightTransf) | `heads.HEADS` |
| §3.4 loss: symmetric cross entropy (Eq. 9–11), global batch | `symmetric_infonce(head.training_logits)` |
| §4.1 CLIP at lr × 1e-3, logit scale clamped at ln 100 | `lr_scales`, `after_step` |
| "frozen CLIP" baseline over precomputed frame features (project) | `input="features"` |

Variants are chosen in `build` (dicts `PATCH_STEMS`, `FRAME_INPUTS`, `heads.HEADS`); `forward` never branches on a
string. The model never talks to torch.distributed: the loose heads' `ContrastiveLoss` does the gathering.

Batch (a mapping): ``"video"`` float (B, T, 3, S, S) CLIP-normalised frames (`input="pixels"`) or (B, T, D) CLIP frame
CLS features (`input="features"`); ``"video_mask"`` bool (B, T), True = real frame; ``"text"`` long (B, L) tokens from
`tokenize` (L <= max_words).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.clip4clip.config import Clip4ClipConfig
from models.clip4clip.heads import HEADS, SimilarityHead
from models.clip4clip.patch_embed import PatchEmbed2d, PatchEmbed3d
from models.common.clip import ClipBackbone, build_clip
from models.common.losses import symmetric_infonce
from models.config import ConfigError

Batch = Mapping[str, Any]

PATCH_STEMS: dict[str, Callable[[ClipBackbone], nn.Module]] = {
    "2d": lambda clip: PatchEmbed2d(),
    "3d": PatchEmbed3d,
}

# Open_clip parameter names (relative to `ClipBackbone.model`) that are not part of the text tower.
_NON_TEXT_PREFIXES = ("visual.", "logit_scale", "logit_bias")


class Clip4Clip(nn.Module):
    """CLIP4Clip retrieval model; implements the engine's `TrainableModel` protocol. Build it with `build(cfg)`.

    Attributes: `clip` (the backbone; every parameter under the prefix ``clip.`` trains at lr × `clip_lr_scale`),
    `patch_embed` (the pixel stem, None in features mode), `head` (the similarity calculator).

    Parameters that exist but never train (`requires_grad=False`): CLIP's own `logit_scale` (the head's loss owns the
    scale, initialised from it), CLIP's `conv1` in 3D mode (the Conv3d replaces it), and whatever `freeze_text` /
    `freeze_clip_embeddings` select. In features mode the visual tower is removed from the backbone altogether.
    """

    _encode_frames: Callable[[Clip4Clip, torch.Tensor, torch.Tensor], torch.Tensor]

    def __init__(
        self, cfg: Clip4ClipConfig, clip: ClipBackbone, head: SimilarityHead, patch_embed: nn.Module | None
    ) -> None:
        super().__init__()
        if (patch_embed is None) != (cfg.input == "features"):
            raise ValueError("a patch stem is needed exactly in input='pixels' mode")
        self.cfg = cfg
        self.embed_dim = clip.embed_dim  # read before the visual tower (which holds `proj`) may go
        if cfg.input == "features":
            # frozen-CLIP mode: frame features arrive precomputed, so the visual tower neither exists nor trains
            delattr(clip.model, "visual")
        self.clip = clip
        self.patch_embed = patch_embed
        self.head = head
        self._encode_frames = FRAME_INPUTS[cfg.input]
        self._freeze()

    # ----- construction helpers --------------------------------------------------------------------------------------

    def _freeze(self) -> None:
        cfg = self.cfg
        frozen: list[nn.Parameter] = [self.clip.logit_scale]  # superseded by `head.loss.logit_scale`
        named = dict(self.clip.model.named_parameters())
        if cfg.input == "pixels" and cfg.patch == "3d":
            frozen += list(self.clip.conv1.parameters())  # unused: PatchEmbed3d replaces it
        if cfg.freeze_clip_embeddings:
            # official main_task_retrieval.py freezing with --freeze_layer_num 0 (see the config field's comment)
            frozen += [self.clip.text_positional_embedding]
            frozen += [p for name, p in named.items() if name.endswith("token_embedding.weight")]
            if cfg.input == "pixels":
                frozen += list(self.clip.conv1.parameters())
                frozen += [self.clip.class_embedding, self.clip.vision_positional_embedding]
                frozen += list(self.clip.visual.ln_pre.parameters())
        if cfg.freeze_text:
            frozen += [p for name, p in named.items() if not name.startswith(_NON_TEXT_PREFIXES)]
        for param in frozen:
            param.requires_grad_(False)

    # ----- encoders --------------------------------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Captions → tokens (B, max_words) int64: ``[SOT] words [EOT] 0 …`` (official `max_words` truncation)."""
        return self.clip.tokenize(texts)

    def encode_frames(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frame features (B, T, D): CLIP CLS after `ln_post @ proj` per frame; zeros at padded frames in pixels mode.

        video: (B, T, 3, S, S) normalised pixels or (B, T, D) features (per `input`); mask: (B, T), True = real frame.
        """
        if mask.shape != video.shape[:2]:
            raise ValueError(f"video_mask {tuple(mask.shape)} does not match video {tuple(video.shape[:2])}")
        if video.shape[1] > self.cfg.max_frames:
            raise ValueError(f"{video.shape[1]} frames exceed max_frames={self.cfg.max_frames}")
        return self._encode_frames(self, video, mask.bool())

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) → EOT text features (B, D), unnormalised."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.max_words:
            raise ValueError(f"expected tokens (B, L <= {self.cfg.max_words}), got {tuple(tokens.shape)}")
        return self.clip.encode_text(tokens)

    # ----- evaluation API ---------------------------------------------------------------------------------------------

    def encode_text_for_eval(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (Q, L) → text representation, row i for caption i (concatenate batches along dim 0)."""
        return self.head.text_repr(self.encode_text(tokens))

    def encode_video_for_eval(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Video (G, T, …) and mask (G, T) → video representation, row i for video i (concatenate along dim 0).

        Loose heads: the unit meanP vector (G, D). tightTransf: frame features with the mask as last channel
        (G, T, D + 1). Treat it as opaque and pass it to `similarity`.
        """
        mask = mask.bool()
        return self.head.video_repr(self.encode_frames(video, mask), mask)

    def similarity(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        """(Q, G) retrieval scores: cosine for loose heads (the training logits / exp(logit_scale)), pair scores for
        tightTransf (equal to its training logits). Deterministic in eval mode; chunk Q and G freely."""
        return self.head.similarity(text_repr, video_repr)

    # ----- training (engine `TrainableModel`) -----------------------------------------------------------------------

    def forward(self, batch: Batch) -> torch.Tensor:
        """Training logits (B', B'), rows = texts, columns = videos, positives on the diagonal. Loose heads: the global
        batch (B' = world·B) scaled by exp(logit_scale); tightTransf: the local batch's pair scores (B' = B)."""
        mask = batch["video_mask"].bool()
        text = self.head.text_repr(self.encode_text(batch["text"]))
        video = self.head.video_repr(self.encode_frames(batch["video"], mask), mask)
        return self.head.training_logits(text, video)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": symmetric cross entropy, average of t2v and v2t (official CrossEn, paper Eq. 9–11), + logs}."""
        loss = symmetric_infonce(self(batch), reduction="mean")
        return {"loss": loss, **self.head.log_scalars()}

    def lr_scales(self) -> dict[str, float]:
        """Parameter-name prefix → lr multiplier. CLIP, the 3D stem and the logit scale train at lr × clip_lr_scale:
        official `prep_optimizer` gives `coef_lr` to every name containing "clip." — which includes
        `clip.visual.conv2` (the 3D stem) and `clip.logit_scale`. Heads train at the base lr."""
        s = self.cfg.clip_lr_scale
        return {"clip.": s, "patch_embed.": s, "head.loss.logit_scale": s}

    def after_step(self) -> None:
        """Clamp the loose heads' logit scale at ln 100 (official main_task_retrieval.py after `optimizer.step()`)."""
        self.head.after_step()


# ----- frame inputs (chosen by `cfg.input`) ---------------------------------------------------------------------------


def _frames_from_pixels(model: Clip4Clip, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """video (B, T, 3, S, S), mask (B, T) → (B, T, D); only valid frames run through CLIP's blocks."""
    assert model.patch_embed is not None  # guaranteed by Clip4Clip.__init__
    clip = model.clip
    b, t = mask.shape
    patches = model.patch_embed(clip, video, mask)  # (M, N, W), M = valid frames
    out = patches.new_zeros(b, t, model.embed_dim)  # (B, T, D)
    if patches.shape[0] == 0:
        return out
    hidden, _ = clip.forward_blocks(clip.tokens_from_patches(patches))  # (M, 1+N, W)
    return out.index_put((mask,), clip.pool(hidden))  # (B, T, D), CLS → ln_post → proj


def _frames_from_features(model: Clip4Clip, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Precomputed frame features (B, T, D) from the same CLIP (e.g. `pipelines` CLIP extraction) pass through."""
    if video.ndim != 3 or video.shape[-1] != model.embed_dim:
        raise ValueError(f"input='features' expects frame features (B, T, {model.embed_dim}); got {tuple(video.shape)}")
    return video


FRAME_INPUTS: dict[str, Callable[[Clip4Clip, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "pixels": _frames_from_pixels,
    "features": _frames_from_features,
}


def build(cfg: Clip4ClipConfig) -> Clip4Clip:
    """Build CLIP4Clip for `cfg`: the backbone (with its weights), the patch stem, the similarity head.

    Raises:
        ConfigError: a combination that needs the backbone to detect (e.g. `temporal_init="clip_text"` when the
            embed dim differs from the text width).
    """
    clip = build_clip(cfg.clip_config)
    if cfg.text_init:
        load_text_tower(clip, cfg.text_init)
    embed_dim = clip.embed_dim
    patch_embed = PATCH_STEMS[cfg.patch](clip) if cfg.input == "pixels" else None
    head = HEADS[cfg.head].from_config(cfg, clip, embed_dim)
    return Clip4Clip(cfg, clip, head, patch_embed)


def load_text_tower(clip: ClipBackbone, path: str) -> None:
    """Replace `clip`'s text tower with the one in a CLIP4Clip state dict at `path` (`Clip4ClipConfig.text_init`).

    Raises:
        ConfigError: the file is missing or not a state dict, or it lacks a text parameter of `clip` or holds one of
            another shape (a checkpoint of another CLIP architecture).
    """
    if not Path(path).is_file():
        raise ConfigError(f"text_init={path!r}: no such file (the model.pt of a finished CLIP4Clip job)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConfigError(f"text_init={path!r} is not a state dict")
    own = {
        name: tensor
        for name, tensor in clip.model.state_dict().items()
        if not name.startswith(_NON_TEXT_PREFIXES) and name != "attn_mask"
    }
    theirs = {name: state.get(f"clip.model.{name}") for name in own}
    missing = sorted(name for name, tensor in theirs.items() if tensor is None)
    wrong = sorted(n for n, t in theirs.items() if t is not None and tuple(t.shape) != tuple(own[n].shape))
    if missing or wrong:
        raise ConfigError(
            f"text_init={path!r} does not hold this CLIP's text tower ({clip.arch}): "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, other shapes {wrong[:3]}"
        )
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(theirs[name])
