"""UCoFiA (Wang et al., "Unified Coarse-to-Fine Alignment for Video-Text Retrieval", ICCV 2023).

Paper ↔ code map (official `train/modules/modeling_ucofia.py::_loose_similarity`; METHODS §3; paper-code-notes §3):

| paper | official | here |
|---|---|---|
| frame feature f (CLS of CLIP) | `visual_output_original`, `use_original_clip_for_frame_features=True` | `frames` |
| video feature v (seqTransf + residual, meanP) | `transformerClip` + `frame_position_embeddings` | `VideoEncoder` |
| sentence s (EOT), words w (all positions) | `encode_text(return_hidden=True)` | `encode_text_for_eval` |
| patch selection, ``[CLS ; 3 patches]`` per frame | `VisualTokenSelection` | `selection.PatchSelector` |
| video–sentence ``S_vs = ℓ (ŝ W_g)(v̂ W_g')ᵀ`` | `global_mat_weight`, `global_mat_weight_1` | `VideoSentence` |
| sentence–frame ``S_sf = ℓ ISA_f(ŝ·f̂)`` | `frame_logit_weight` | `SentenceFrame` |
| patch–word Bi-ISA over ``M = (ŵ W_l)(p W_l')ᵀ`` | `local_mat_weight(1)`, `word/pixel_mat_weight(2)` | `PatchWord` |
| ``S = (S_vs + S_sf + S_pw)/3``, symmetric CE | `CrossEn(S) + CrossEn(Sᵀ)` halved | `training_step` |
| SK-norm per level at test | `eval_t2v/main_ucofia.py::sinkhorn_knopp` | `sinkhorn_fuse` |

Decisions and departures from the official code (each documented where it is implemented):
- **Padding is masked** everywhere: words after EOT (the official code aggregates all 32 positions incl. padding;
  SOT and EOT stay in, they are real tokens of the CLIP text transformer), padded frames in the frame ISA, the
  seqTransf attention and the mean, and the patch tokens of padded frames. Masked positions leave every softmax
  (`aggregation`), so junk there cannot change a score.
- Patch selection is **deterministic at evaluation** (plain top-K); the official selector stays stochastic.
- The perturbed top-K backward is Berthet et al.'s full Jacobian estimate; the official one keeps its diagonal.
- The official eval model drops ``W_l'`` (`local_mat_weight1`) though training learns it; here training and
  evaluation score with the same formula, so `similarity` equals the training logits in eval mode.
- Only the weights the official training uses exist (it also allocates `word_logit_weight`, `frame_mat_weight`,
  `frame_mat_weight2`, `word_mat_weight_for_pixel`, which never receive a gradient).
- The video encoder is built from `models.common.temporal` rather than CLIP4Clip's `SeqTransfHead`: that head owns a
  `ContrastiveLoss` (and logit scale) of its own, whereas UCoFiA shares CLIP's ``ℓ`` between two levels and must not
  carry a seqTransf (or a scale) when the ablation drops the levels that use them.

Representations (the evaluation API, concatenable along dim 0 by `pipelines.datasets.retrieval_data._cat`):
text ``{"sentence": (Q, D) unit, "words": (Q, L, D) unit, "word_mask": (Q, L)}`` and video ``{"video": (G, D) unit,
"frames": (G, T, D) unit, "frame_mask": (G, T), "patches": (G, T·(1+K), D) unnormalised (official), "patch_mask"}`` —
each only with the keys the configured levels read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.common.clip import ClipBackbone, build_clip
from models.common.distributed import all_gather_with_grad
from models.common.losses import CLIP4CLIP_MAX_LOGIT_SCALE, symmetric_infonce
from models.common.sinkhorn import sinkhorn_normalize
from models.common.temporal import TemporalTransformer, init_from_clip_text, masked_mean
from models.config import ConfigError
from models.ucofia.aggregation import AGGREGATIONS, BiAggregation
from models.ucofia.config import UCoFiAConfig
from models.ucofia.selection import PatchSelector

Batch = Mapping[str, Any]
Repr = dict[str, torch.Tensor]


class VideoEncoder(nn.Module):
    """CLIP4Clip seqTransf: ``f' = Transformer(f + P) + f`` → L2 per frame → masked mean → L2 (notes §3.2)."""

    def __init__(self, temporal: TemporalTransformer) -> None:
        super().__init__()
        self.temporal = temporal

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames (B, T, D) raw CLS features, mask (B, T) → unit video vectors (B, D)."""
        x = F.normalize(self.temporal(frames, mask) + frames, dim=-1)  # (B, T, D); official residual + norm
        return F.normalize(masked_mean(x, mask), dim=-1)


# ----- the three alignment levels -------------------------------------------------------------------------------------


class Level(nn.Module):
    """One alignment level: ``forward(text repr, video repr) -> (Q, G)`` before the logit scale.

    `scaled` says whether the model multiplies it by ``ℓ = exp(logit_scale)`` (official: S_vs and S_sf are, S_pw not).
    `text_keys` / `video_keys` name the representation entries it reads.
    """

    scaled: bool = True
    text_keys: tuple[str, ...] = ()
    video_keys: tuple[str, ...] = ()

    def forward(self, text: Repr, video: Repr) -> torch.Tensor:
        raise NotImplementedError


class VideoSentence(Level):
    """``(ŝ W_g)(v̂ W_g')ᵀ``, both weights identity-initialised (official `global_mat_weight`, `_1`)."""

    text_keys = ("sentence",)
    video_keys = ("video",)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.text_weight = nn.Parameter(torch.eye(dim))  # W_g
        self.video_weight = nn.Parameter(torch.eye(dim))  # W_g'

    def forward(self, text: Repr, video: Repr) -> torch.Tensor:
        return (text["sentence"] @ self.text_weight) @ (video["video"] @ self.video_weight).T  # (Q, G)


class SentenceFrame(Level):
    """``Agg_frames(ŝ · f̂)`` over the valid frames (official `frame_logit_weight`, T×T)."""

    text_keys = ("sentence",)
    video_keys = ("frames", "frame_mask")

    def __init__(self, aggregation: str, n_frames: int, tau: float) -> None:
        super().__init__()
        self.aggregate = AGGREGATIONS[aggregation](n_frames, tau)

    def forward(self, text: Repr, video: Repr) -> torch.Tensor:
        sims = torch.einsum("qd,gtd->qgt", text["sentence"], video["frames"])  # (Q, G, T)
        return self.aggregate(sims, video["frame_mask"][None])  # (Q, G)


class PatchWord(Level):
    """Bi-ISA over ``M = (ŵ W_l)(p W_l')ᵀ``, scored in blocks of at most `pair_chunk_size` (text, video) pairs."""

    scaled = False
    text_keys = ("words", "word_mask")
    video_keys = ("patches", "patch_mask")

    def __init__(self, dim: int, aggregation: str, n_words: int, n_patches: int, tau: float, chunk: int) -> None:
        super().__init__()
        self.word_weight = nn.Parameter(torch.eye(dim))  # W_l (official `local_mat_weight`)
        self.patch_weight = nn.Parameter(torch.eye(dim))  # W_l' (official `local_mat_weight1`, train version)
        self.aggregate = BiAggregation(aggregation, n_words, n_patches, tau)
        self.chunk = chunk

    def forward(self, text: Repr, video: Repr) -> torch.Tensor:
        words = text["words"] @ self.word_weight  # (Q, L, D)
        patches = video["patches"] @ self.patch_weight  # (G, P, D)
        word_mask, patch_mask = text["word_mask"], video["patch_mask"]
        q, g = words.shape[0], patches.shape[0]
        cols = max(1, min(g, self.chunk))
        rows = max(1, self.chunk // cols)
        out_rows = []
        for r in range(0, q, rows):
            # trailing positions masked in every row of the block change nothing (aggregation module docstring):
            # dropping them shrinks the (q, g, L, P) tensor ~3× for short captions padded to 32 words
            n_words = _valid_extent(word_mask[r : r + rows])
            w, wm = words[r : r + rows, :n_words], word_mask[r : r + rows, :n_words]
            out_cols = []
            for c in range(0, g, cols):
                n_patches = _valid_extent(patch_mask[c : c + cols])
                p, pm = patches[c : c + cols, :n_patches], patch_mask[c : c + cols, :n_patches]
                m = torch.einsum("qld,gpd->qglp", w, p)  # (q, g, L', P')
                out_cols.append(self.aggregate(m, wm, pm))  # (q, g)
            out_rows.append(torch.cat(out_cols, dim=1))
        if not out_rows:
            return words.new_zeros(q, g)
        return torch.cat(out_rows, dim=0)  # (Q, G)


def _valid_extent(mask: torch.Tensor) -> int:
    """1 + the last position (dim 1) valid in any row of `mask (rows, n)`; at least 1 so shapes stay non-empty."""
    valid = mask.any(dim=0).nonzero()  # (k, 1)
    return max(1, int(valid[-1, 0]) + 1) if valid.numel() else 1


LEVEL_BUILDERS: dict[str, Callable[[UCoFiAConfig, int], Level]] = {
    "video_sentence": lambda cfg, dim: VideoSentence(dim),
    "sentence_frame": lambda cfg, dim: SentenceFrame(cfg.aggregation, cfg.max_frames, cfg.tau),
    "patch_word": lambda cfg, dim: PatchWord(
        dim, cfg.aggregation, cfg.max_words, cfg.max_frames * cfg.tokens_per_frame, cfg.tau, cfg.pair_chunk_size
    ),
}


# ----- the model ------------------------------------------------------------------------------------------------------


class UCoFiA(nn.Module):
    """UCoFiA retrieval model; implements the engine's `TrainableModel` protocol. Build it with `build(cfg)`.

    Attributes: `clip` (backbone; everything under ``clip.`` trains at lr × `clip_lr_scale`, including CLIP's
    `logit_scale`, which is UCoFiA's ℓ as in the official code), `video_encoder` (None unless video–sentence is used),
    `selector` (None unless patch–word is used), `levels` (ModuleDict of the configured levels, in config order).
    In "tokens" mode the visual tower is removed from the backbone.
    """

    def __init__(
        self,
        cfg: UCoFiAConfig,
        clip: ClipBackbone,
        video_encoder: VideoEncoder | None,
        selector: PatchSelector | None,
        levels: Mapping[str, Level],
    ) -> None:
        super().__init__()
        if list(levels) != list(cfg.levels):
            raise ValueError(f"levels {list(levels)} differ from the config's {list(cfg.levels)}")
        self.cfg = cfg
        self.embed_dim = clip.embed_dim  # read before the visual tower (which holds `proj`) may go
        self.n_patches = clip.n_patches
        if cfg.input == "tokens":
            delattr(clip.model, "visual")  # frozen-CLIP mode: tokens arrive precomputed
        self.clip = clip
        self.video_encoder = video_encoder
        self.selector = selector
        self.levels = nn.ModuleDict(dict(levels))
        self._frame_tokens = FRAME_INPUTS[cfg.input]
        level_list = list(levels.values())
        self._text_keys = {k for lvl in level_list for k in lvl.text_keys}
        self._video_keys = {k for lvl in level_list for k in lvl.video_keys}
        self._scaled = any(lvl.scaled for lvl in level_list)
        # ℓ is unused when only the (unscaled) patch–word level remains: freeze it so no parameter goes without gradient
        self.clip.logit_scale.requires_grad_(self._scaled)

    # ----- encoders ---------------------------------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Captions → tokens (B, max_words) int64: ``[SOT] words [EOT] 0 …``."""
        return self.clip.tokenize(texts)

    def encode_text_for_eval(self, tokens: torch.Tensor) -> Repr:
        """Tokens (Q, L) → ``{"sentence": (Q, D), "words": (Q, L, D), "word_mask": (Q, L)}`` (unit vectors; words and
        mask only when patch–word is used). One text forward: the sentence is the EOT row of the word features."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.max_words:
            raise ValueError(f"expected tokens (B, L <= {self.cfg.max_words}), got {tuple(tokens.shape)}")
        words, mask = self.clip.encode_words(tokens)  # (Q, L, D), (Q, L): True on SOT..EOT
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        out = {"sentence": F.normalize(words[rows, self.clip.eot_index(tokens)], dim=-1)}  # (Q, D)
        if "words" in self._text_keys:
            out["words"] = F.normalize(words, dim=-1)  # (Q, L, D); padding rows are junk, masked downstream
            out["word_mask"] = mask
        return out

    def frame_tokens(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 1+N, D) projected CLS + patch tokens per frame (zeros at padded frames in pixels mode).

        video: (B, T, 3, S, S) normalised pixels or (B, T, 1+N, D) tokens (per `input`); mask: (B, T), True = real.
        """
        if mask.shape != video.shape[:2]:
            raise ValueError(f"video_mask {tuple(mask.shape)} does not match video {tuple(video.shape[:2])}")
        if video.shape[1] > self.cfg.max_frames:
            raise ValueError(f"{video.shape[1]} frames exceed max_frames={self.cfg.max_frames}")
        return self._frame_tokens(self, video, mask.bool())

    def encode_video_for_eval(self, video: torch.Tensor, mask: torch.Tensor) -> Repr:
        """Video (G, T, …) and mask (G, T) → the video representation (module docstring), only the keys in use."""
        mask = mask.bool()
        tokens = self.frame_tokens(video, mask)  # (G, T, 1+N, D)
        cls = tokens[:, :, 0]  # (G, T, D)
        out: Repr = {}
        if self.video_encoder is not None:
            out["video"] = self.video_encoder(cls, mask)  # (G, D)
        if "frames" in self._video_keys:
            out["frames"] = F.normalize(cls, dim=-1)  # (G, T, D), original CLIP frame features
            out["frame_mask"] = mask
        if self.selector is not None:
            g, t = mask.shape
            per_frame = self.cfg.tokens_per_frame
            chosen = self.selector(tokens[mask])  # (M, 1+K, D), valid frames only
            patches = chosen.new_zeros(g, t, per_frame, chosen.shape[-1]).index_put((mask,), chosen)
            out["patches"] = patches.reshape(g, t * per_frame, -1)  # (G, T·(1+K), D), frame-major as official
            out["patch_mask"] = mask.repeat_interleave(per_frame, dim=1)  # (G, T·(1+K))
        return out

    # ----- scoring ----------------------------------------------------------------------------------------------------

    def logit_scale(self) -> torch.Tensor:
        """ℓ = exp(CLIP's logit_scale)."""
        return self.clip.logit_scale.exp()

    def similarity_levels(self, text: Repr, video: Repr) -> dict[str, torch.Tensor]:
        """Each configured level's (Q, G) scores as they enter the training logits (S_vs, S_sf scaled by ℓ; S_pw not).
        Deterministic in eval mode; chunk Q and G freely."""
        scale = self.logit_scale()
        return {
            name: scale * level(text, video) if level.scaled else level(text, video)
            for name, level in self.levels.items()
        }

    def similarity(self, text: Repr, video: Repr) -> torch.Tensor:
        """(Q, G) = mean of the configured levels (the training logits' formula), without test-time normalisation."""
        return torch.stack(list(self.similarity_levels(text, video).values())).mean(dim=0)

    # ----- training (engine `TrainableModel`) -------------------------------------------------------------------------

    def forward(self, batch: Batch) -> torch.Tensor:
        """Training logits (B', B'), rows = texts, columns = videos, positives on the diagonal; B' = world·B when
        `gather_global` (every feature gathered, official `allgather`), else the local B."""
        text = self.encode_text_for_eval(batch["text"])
        video = self.encode_video_for_eval(batch["video"], batch["video_mask"])
        if self.cfg.gather_global:
            text, video = _gather(text), _gather(video)
        return self.similarity(text, video)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": symmetric cross entropy averaged over both directions (official CrossEn, halved), "logit_scale"}."""
        loss = symmetric_infonce(self(batch), reduction="mean")
        return {"loss": loss, "logit_scale": self.logit_scale().detach()}

    def lr_scales(self) -> dict[str, float]:
        """CLIP (incl. its logit scale, official `clip.logit_scale`) at lr × clip_lr_scale (official `coef_lr`);
        the video encoder, selector and level weights at the base lr."""
        return {"clip.": self.cfg.clip_lr_scale}

    @torch.no_grad()
    def after_step(self) -> None:
        """Clamp ℓ at ln 100 (CLIP4Clip's loop, kept by the official code)."""
        self.clip.logit_scale.clamp_(max=CLIP4CLIP_MAX_LOGIT_SCALE)


def _gather(rep: Repr) -> Repr:
    out = {}
    for key, x in rep.items():
        # masks travel as uint8 (collective backends differ on bool); floats keep their gradient slice
        out[key] = all_gather_with_grad(x.to(torch.uint8)).bool() if x.dtype == torch.bool else all_gather_with_grad(x)
    return out


# ----- frame inputs (chosen by `cfg.input`) ---------------------------------------------------------------------------


def _tokens_from_pixels(model: UCoFiA, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """video (B, T, 3, S, S) → (B, T, 1+N, D); only valid frames run through CLIP (`ln_post @ proj` on every token)."""
    clip = model.clip
    b, t = mask.shape
    out = video.new_zeros(b, t, 1 + model.n_patches, model.embed_dim)  # (B, T, 1+N, D)
    frames = video[mask]  # (M, 3, S, S)
    if frames.shape[0] == 0:
        return out
    hidden, _ = clip.forward_blocks(clip.tokens_from_patches(clip.embed_patches(frames)))  # (M, 1+N, W)
    return out.index_put((mask,), clip.pool_tokens(hidden).to(out.dtype))


def _tokens_from_tokens(model: UCoFiA, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Precomputed tokens (B, T, 1+N, D) from the same CLIP (`clip_frames` output="tokens", float16 on disk)."""
    if video.ndim != 4 or video.shape[-2:] != (1 + model.n_patches, model.embed_dim):
        raise ValueError(
            f"input='tokens' expects (B, T, {1 + model.n_patches}, {model.embed_dim}); got {tuple(video.shape)}"
        )
    return video.float()


FRAME_INPUTS: dict[str, Callable[[UCoFiA, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "pixels": _tokens_from_pixels,
    "tokens": _tokens_from_tokens,
}


# ----- test-time Sinkhorn normalisation -------------------------------------------------------------------------------


def sinkhorn_fuse(
    test_levels: Mapping[str, torch.Tensor],
    bank_levels: Mapping[str, torch.Tensor] | None,
    n_iters: int = 4,
    bank: str = "text",
) -> torch.Tensor:
    """UCoFiA SK-norm: per level add the Sinkhorn prior from a bank of *training* queries, then average the levels.

    test_levels: level → (Q test captions, G test videos). bank_levels: the same levels scored with the bank,
    bank="text": (M training captions, G test videos) → a per-video prior added to the columns (t2v, official
    eval_t2v); bank="video": (Q test captions, M training videos) → a per-caption prior from the transposed
    construction added to the rows (v2t, official eval_v2t). None = no normalisation (plain mean of the levels).
    The prior never reads the test queries' own similarities. Returns (Q, G) float32.
    """
    fused = []
    for name, test in test_levels.items():
        test = test.float()
        if bank_levels is not None:
            ref = bank_levels[name]
            if bank == "text":
                test = sinkhorn_normalize(test, ref, n_iters)  # (Q, G) + prior over G
            elif bank == "video":
                test = sinkhorn_normalize(test.T, ref.T, n_iters).T  # (G, Q) + prior over Q, back to (Q, G)
            else:
                raise ValueError(f"bank must be 'text' or 'video', got {bank!r}")
        fused.append(test)
    return torch.stack(fused).mean(dim=0)


# ----- builder --------------------------------------------------------------------------------------------------------


def build(cfg: UCoFiAConfig) -> UCoFiA:
    """Build UCoFiA for `cfg`: the backbone (with its weights), the video encoder, the selector and the levels.

    Raises:
        ConfigError: a combination only the backbone can reveal (`temporal_init="clip_text"` with embed dim ≠ text
            width, more top-K patches than the architecture has).
    """
    clip = build_clip(cfg.clip_config)
    dim = clip.embed_dim
    if cfg.topk > clip.n_patches:
        raise ConfigError(f"topk={cfg.topk} exceeds the {clip.n_patches} patches per frame of {clip.arch}")
    if cfg.init_logit_scale is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(cfg.init_logit_scale)
    video_encoder = None
    if "video_sentence" in cfg.levels:
        heads = cfg.temporal_heads if cfg.temporal_heads is not None else clip.text_heads
        temporal = TemporalTransformer(dim, cfg.temporal_layers, heads, max_positions=cfg.max_frames)
        if cfg.temporal_init == "clip_text":
            if dim != clip.text_width:
                raise ConfigError(
                    f"temporal_init='clip_text' copies width-{clip.text_width} CLIP text blocks into a width-{dim} "
                    f"seqTransf ({clip.arch}); set temporal_init='random'"
                )
            init_from_clip_text(temporal, clip, n_layers=min(cfg.temporal_layers, clip.text_layers))
        video_encoder = VideoEncoder(temporal)
    selector = None
    if "patch_word" in cfg.levels:
        selector = PatchSelector(dim, cfg.topk, cfg.topk_samples, cfg.topk_sigma)
    levels: dict[str, Level] = {name: LEVEL_BUILDERS[name](cfg, dim) for name in cfg.levels}
    return UCoFiA(cfg, clip, video_encoder, selector, levels)
