"""CLIP4Clip's similarity calculators (paper §3.3, Fig. 3; official `modules/modeling.py`, `module_cross.py`).

| paper | official `--sim_header` (modules) | class |
|---|---|---|
| parameter-free type, mean pooling | `meanP` (`_loose_similarity`) | `MeanPHead` |
| sequential type, LSTM | `seqLSTM` (`lstm_visual`) | `SeqLSTMHead` |
| sequential type, Transformer Encoder | `seqTransf` (`transformerClip`, frame positions) | `SeqTransfHead` |
| tight type, Transformer Encoder | `tightTransf` (`cross`, `similarity_dense`) | `TightTransfHead` |

Every head maps encoder outputs to *representations* and those to a similarity matrix, in two steps so the
evaluation can encode the gallery once and score it in chunks:

- ``text_repr(text (B, D)) -> Tensor`` and ``video_repr(frames (B, T, D), mask (B, T)) -> Tensor``: row i belongs to
  sample i; representations of several batches concatenate along dim 0;
- ``similarity(text_repr (Q, ·), video_repr (G, ·)) -> (Q, G)``: the retrieval score;
- ``training_logits(text_repr, video_repr) -> (B', B')``: what the symmetric InfoNCE sees.

Loose heads (meanP / seqLSTM / seqTransf) encode independently: the video representation is meanP pooling (L2 per
frame → masked mean → L2) of the contextualised frames, the text one the L2-normalised EOT feature, `similarity` is
the cosine and the training logits are ``exp(logit_scale) ·`` cosine over the **global** batch (`ContrastiveLoss`
gathers across ranks). The tight head scores every (text, video) pair with a cross encoder; its training logits are
the local (B, B) pair scores, not gathered across ranks — as in the official code, where `_cross_similarity` runs on
the local batch and only loose heads call `allgather`; gathering frames for B_global² pair passes would cost
O(world²) more compute per rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

from models.clip4clip.config import Clip4ClipConfig
from models.common.clip import ClipBackbone
from models.common.losses import ContrastiveLoss
from models.common.temporal import TemporalTransformer, init_from_clip_text, masked_mean
from models.config import ConfigError


class SimilarityHead(nn.Module):
    """Interface of a similarity calculator; see the module docstring for the contract."""

    @classmethod
    def from_config(cls, cfg: Clip4ClipConfig, clip: ClipBackbone, embed_dim: int) -> SimilarityHead:
        """Build the head for `cfg`; `clip` is read for initialisation only (never stored: it belongs to the model)."""
        raise NotImplementedError

    def text_repr(self, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def video_repr(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def similarity(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_logits(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser step."""

    def log_scalars(self) -> dict[str, torch.Tensor]:
        """Extra detached scalars for the training log."""
        return {}


def _cross_heads(cfg: Clip4ClipConfig, clip: ClipBackbone) -> int:
    return cfg.cross_heads if cfg.cross_heads is not None else clip.text_heads


def _init_from_text(transformer: TemporalTransformer, cfg: Clip4ClipConfig, clip: ClipBackbone) -> None:
    """Official "initialization trick": copy CLIP text blocks 0..cross_layers−1 (as many as exist) and positions."""
    if cfg.temporal_init == "random":
        return
    if transformer.width != clip.text_width:
        raise ConfigError(
            f"temporal_init='clip_text' copies CLIP text blocks of width {clip.text_width} into a {cfg.head} "
            f"transformer of width {transformer.width} (the embed dim of {clip.arch}); they only match on "
            "architectures whose embed dim equals the text width (OpenAI ViT CLIPs); set temporal_init='random'"
        )
    # official: `if num_layer < cross_num_hidden_layers` over the text blocks, so deeper heads keep random top blocks
    init_from_clip_text(transformer, clip, n_layers=min(len(transformer.blocks), clip.text_layers))


# ----- loose heads ---------------------------------------------------------------------------------------------------


class LooseHead(SimilarityHead):
    """Independent encoders + meanP pooling + scaled cosine; subclasses contextualise the frames first."""

    def __init__(self, init_logit_scale: float) -> None:
        super().__init__()
        # learnable logit scale, clamped at ln 100 in `after_step` (official `clip.logit_scale`, CrossEn); the loss
        # gathers the global batch itself. normalize=False: representations are already unit vectors.
        self.loss = ContrastiveLoss(temperature=None, init_logit_scale=init_logit_scale, normalize=False)

    def contextualise(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames (B, T, D), mask (B, T) → (B, T, D); only positions where mask is True are read afterwards."""
        raise NotImplementedError

    def text_repr(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(text, dim=-1)  # (B, D)

    def video_repr(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.contextualise(frames, mask), dim=-1)  # (B, T, D) unit frames
        return F.normalize(masked_mean(x, mask), dim=-1)  # (B, D); official `_mean_pooling_for_similarity_visual`

    def similarity(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        return text_repr @ video_repr.T  # (Q, G) cosine; the logit scale is a constant factor for ranking

    def training_logits(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        return self.loss.logits(text_repr, video_repr)  # (world·B, world·B) = exp(logit_scale) · cosine

    def after_step(self) -> None:
        self.loss.clamp_()

    def log_scalars(self) -> dict[str, torch.Tensor]:
        return {"logit_scale": self.loss.scale().detach()}


class MeanPHead(LooseHead):
    """Parameter-free type: mean pooling of the (unit) frame features (paper Eq. 5)."""

    @classmethod
    def from_config(cls, cfg: Clip4ClipConfig, clip: ClipBackbone, embed_dim: int) -> MeanPHead:
        return cls(_logit_scale(cfg, clip))

    def contextualise(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return frames


class SeqLSTMHead(LooseHead):
    """Sequential type, LSTM (paper Eq. 6): 1-layer unidirectional LSTM of width D over the frames, + residual.

    The official code packs the valid frames (`pack_padded_sequence`); an LSTM is causal, so with valid frames first
    (a prefix mask, which is what every CLIP4Clip loader produces and what is checked here) running it over the padded
    sequence gives identical outputs at the valid positions without a host sync for the lengths. Padded positions take
    the input back (official: `torch.cat((out, original[:, out.size(1):]))`) and meanP never reads them.
    """

    def __init__(self, embed_dim: int, init_logit_scale: float) -> None:
        super().__init__(init_logit_scale)
        self.lstm = nn.LSTM(embed_dim, embed_dim, num_layers=1, batch_first=True, bidirectional=False)

    @classmethod
    def from_config(cls, cfg: Clip4ClipConfig, clip: ClipBackbone, embed_dim: int) -> SeqLSTMHead:
        return cls(embed_dim, _logit_scale(cfg, clip))

    def contextualise(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
        prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths  # (B, T)
        if not torch.equal(prefix, mask):
            raise ValueError("seqLSTM needs the valid frames first in video_mask (a prefix mask)")
        out, _ = self.lstm(frames)  # (B, T, D); causal, so padding after the valid frames cannot reach them
        return torch.where(mask[..., None], out, frames) + frames  # official residual `out + original`


class SeqTransfHead(LooseHead):
    """Sequential type, Transformer Encoder (paper Eq. 7): frame positions + CLIP-style blocks + residual.

    `TemporalTransformer` carries the frame position embeddings (official `frame_position_embeddings`, init from CLIP's
    text positional embedding) and the blocks (official `transformerClip`, init from CLIP text blocks 0..3); padded
    frames are masked out of attention keys (official `(1 − mask) · −1e6`).
    """

    def __init__(self, temporal: TemporalTransformer, init_logit_scale: float) -> None:
        super().__init__(init_logit_scale)
        self.temporal = temporal

    @classmethod
    def from_config(cls, cfg: Clip4ClipConfig, clip: ClipBackbone, embed_dim: int) -> SeqTransfHead:
        temporal = TemporalTransformer(embed_dim, cfg.cross_layers, _cross_heads(cfg, clip), cfg.max_frames)
        _init_from_text(temporal, cfg, clip)
        return cls(temporal, _logit_scale(cfg, clip))

    def contextualise(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.temporal(frames, mask) + frames  # (B, T, D); TemporalTransformer has no outer residual


def _logit_scale(cfg: Clip4ClipConfig, clip: ClipBackbone) -> float:
    return cfg.init_logit_scale if cfg.init_logit_scale is not None else float(clip.logit_scale.detach())


# ----- tight head ----------------------------------------------------------------------------------------------------


class TightTransfHead(SimilarityHead):
    """Tight type (paper §3.3, Eq. 8): a cross encoder over ``[text EOT ; T frames]`` scored by ``Linear(D, 1)``.

    Per pair: tokens ``[t ; f_1 .. f_T]`` (1 + T, D) + type embeddings (0 text, 1 video) → dropout → position
    embeddings + `cross_layers` CLIP-style blocks (`TemporalTransformer`, key padding over the padded frames) →
    pooler (LayerNorm → first token → Linear(D, D) → QuickGELU, official `CrossPooler`) → `score` Linear(D, 1).

    Departures from the official code, all small: its `CrossEmbeddings` has the type embeddings commented out — the
    paper (and METHODS §1) has them, so they are here; its dropout acts after the positions are added, here before
    (positions are added inside the shared `TemporalTransformer`); its `similarity_dense` bias is dropped (see
    `score`); its pooler LayerNorm uses eps 1e-12, here PyTorch's 1e-5.

    The video representation is the frame features with the validity mask appended as a last channel,
    ``(B, T, D + 1)``, so it concatenates along dim 0 like every other representation.
    """

    def __init__(
        self, embed_dim: int, layers: int, heads: int, max_frames: int, dropout: float, pair_chunk_size: int
    ) -> None:
        super().__init__()
        self.pair_chunk_size = pair_chunk_size
        self.type_embedding = nn.Embedding(2, embed_dim)  # row 0 text, row 1 video
        self.dropout = nn.Dropout(dropout)
        self.cross = TemporalTransformer(embed_dim, layers, heads, max_positions=1 + max_frames)
        self.pool_norm = nn.LayerNorm(embed_dim)
        self.pool_dense = nn.Linear(embed_dim, embed_dim)
        self.pool_act = QuickGELU()
        # official `similarity_dense` = Linear(D, 1) with a bias; a bias shifts every logit equally, which softmax
        # cross-entropy ignores (its gradient is exactly zero) and no ranking sees, so it is left out as dead weight
        self.score = nn.Linear(embed_dim, 1, bias=False)
        for module in (self.type_embedding, self.pool_dense, self.score):
            nn.init.normal_(module.weight, std=0.02)  # official BERT-style `init_weights`: N(0, 0.02), zero bias
        nn.init.zeros_(self.pool_dense.bias)

    @classmethod
    def from_config(cls, cfg: Clip4ClipConfig, clip: ClipBackbone, embed_dim: int) -> TightTransfHead:
        head = cls(
            embed_dim, cfg.cross_layers, _cross_heads(cfg, clip), cfg.max_frames, cfg.cross_dropout, cfg.pair_chunk_size
        )
        _init_from_text(head.cross, cfg, clip)  # official: cross.embeddings.position_embeddings, cross.transformer
        return head

    def text_repr(self, text: torch.Tensor) -> torch.Tensor:
        return text  # (B, D) raw EOT feature (official `sequence_output`, unnormalised)

    def video_repr(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([frames, mask[..., None].to(frames.dtype)], dim=-1)  # (B, T, D + 1)

    def similarity(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        frames, mask = video_repr[..., :-1], video_repr[..., -1] > 0.5  # (G, T, D), (G, T)
        return self.pair_scores(text_repr, frames, mask)

    def training_logits(self, text_repr: torch.Tensor, video_repr: torch.Tensor) -> torch.Tensor:
        return self.similarity(text_repr, video_repr)  # local (B, B) pair scores, no extra scale

    def pair_scores(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Score every pair: text (Q, D), frames (G, T, D), mask (G, T) → (Q, G), at most `pair_chunk_size` pairs
        per cross-encoder forward (blocks of whole text rows when G fits in a chunk, else single rows split by
        videos)."""
        q, g = text.shape[0], frames.shape[0]
        cols = min(g, self.pair_chunk_size)
        rows = max(1, self.pair_chunk_size // max(cols, 1))
        out_rows = []
        for r0 in range(0, q, rows):
            text_block = text[r0 : r0 + rows]  # (q', D)
            out_cols = []
            for c0 in range(0, g, cols):
                out_cols.append(self._score_block(text_block, frames[c0 : c0 + cols], mask[c0 : c0 + cols]))
            out_rows.append(torch.cat(out_cols, dim=1))  # (q', G)
        if not out_rows:
            return text.new_zeros(q, g)
        return torch.cat(out_rows, dim=0)  # (Q, G)

    def _score_block(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """text (q, D) × frames (g, T, D), mask (g, T) → (q, g) scores of all q·g pairs in one forward."""
        q, (g, t, d) = text.shape[0], frames.shape
        text_tokens = text[:, None, None, :].expand(q, g, 1, d)  # (q, g, 1, D)
        frame_tokens = frames[None].expand(q, g, t, d)  # (q, g, T, D)
        tokens = torch.cat([text_tokens, frame_tokens], dim=2).reshape(q * g, 1 + t, d)  # (P, 1+T, D)
        types = torch.ones(1 + t, dtype=torch.long, device=text.device)
        types[0] = 0
        x = self.dropout(tokens + self.type_embedding(types).to(tokens.dtype))  # (P, 1+T, D)
        text_valid = torch.ones(q * g, 1, dtype=torch.bool, device=mask.device)
        valid = torch.cat([text_valid, mask[None].expand(q, g, t).reshape(q * g, t)], dim=1)  # (P, 1+T)
        hidden = self.cross(x, valid)  # (P, 1+T, D)
        pooled = self.pool_act(self.pool_dense(self.pool_norm(hidden[:, 0])))  # (P, D), the text token
        return self.score(pooled).reshape(q, g)  # (q, g)


HEADS: dict[str, type[SimilarityHead]] = {
    "meanP": MeanPHead,
    "seqLSTM": SeqLSTMHead,
    "seqTransf": SeqTransfHead,
    "tightTransf": TightTransfHead,
}
