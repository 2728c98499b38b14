"""DCC's VLP branch: frozen CLIP frame features + temporal transformer, prompt-learned frozen CLIP text encoder.

Paper (review, METHODS §4): ``F_vid = Φ_temp(F_vis)`` with a 2-layer temporal transformer over frozen CLIP ViT-B/16
frame features; ``F_txt = Φ_txt(Φ_prmp(C_name))`` with 16 learnable prompt vectors before and 16 after the class-name
tokens (init N(0, 0.01)); ``P^vl = σ(F_vid · F_txtᵀ)``. Only Φ_temp and the prompts train. Template: the first
author's Efficient-Prompt (`src/model.py`, paper-code-notes §5.2):

- ``temporalEmbedding`` (N(0, 0.01)) added to the frame features, then CLIP ``ResidualAttentionBlock``s (8 heads,
  dropout 0), no outer residual → `TemporalTransformer` (its position table is that embedding);
- one learnable embedding table shared by all classes, written around each class's frozen token embeddings as
  ``[SOT][prefix × P][class tokens][postfix × Q][EOT]``; the text feature is read at EOT → `PromptLearner` +
  `ClipBackbone.encode_text_embeddings`;
- logits = normalised video · normalised text / 0.07 (``featnorm``), per snippet for localisation.

Project addition: a background "class" prompt (same learnable vectors around the tokens of ``"background"``), so the
softmax runs over C + 1 and a confident-background snippet can have every action probability low (see
`VLPConfig.background_prompt`). ``P^vl`` = the C action columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.common.clip import ClipBackbone, tokenize
from models.common.temporal import TemporalTransformer
from models.dcc.cbp import BranchOutput, run_in_chunks
from models.dcc.config import VLPConfig


class PromptLengthError(ValueError):
    """The learnable prompts plus a class name do not fit the CLIP text context."""


class PromptLearner(nn.Module):
    """Learnable prefix/postfix vectors around frozen class-name token embeddings → (C', L, W) text-encoder inputs.

    `forward(token_embeddings)` takes CLIP's (frozen) embeddings of `tokens` — (C', L, W), L = the backbone's text
    context — and returns (embeddings (C', L, W), eot_index (C',)) for the C' = len(names) prompts. Only `prefix`
    (P, W) and `postfix` (Q, W) are parameters. The token ids are a buffer; their embeddings are looked up at every
    call (not cached), so they always match the CLIP weights currently loaded.
    """

    tokens: torch.Tensor
    eot_index: torch.Tensor

    def __init__(
        self, clip: ClipBackbone, names: Sequence[str], prefix_length: int, postfix_length: int, init_std: float
    ) -> None:
        super().__init__()
        context = clip.context_length
        # tokenise at the full text table so that a long name is measured, not silently truncated
        full_context = int(clip.text_positional_embedding.shape[0])
        tokens = tokenize(clip.arch, list(names), full_context)  # (C', full context)
        eot = clip.eot_index(tokens)  # (C',) position of EOT = 1 + name length
        name_lengths = (eot - 1).tolist()
        longest = max(name_lengths)
        need = 1 + prefix_length + longest + postfix_length + 1
        if need > context:
            worst = names[name_lengths.index(longest)]
            raise PromptLengthError(
                f"prompt [SOT] + {prefix_length} prefix + {longest} tokens of {worst!r} + {postfix_length} postfix + "
                f"[EOT] = {need} positions exceed the CLIP text context of {context} ({clip.arch}); lower "
                f"vlp.prefix_length / vlp.postfix_length to at most {context - 2 - longest} together"
            )
        width = clip.text_width
        self.prefix_length = prefix_length
        self.postfix_length = postfix_length
        self.context = context
        self.name_lengths = name_lengths
        self.prefix = nn.Parameter(torch.empty(prefix_length, width))
        self.postfix = nn.Parameter(torch.empty(postfix_length, width))
        nn.init.normal_(self.prefix, std=init_std)
        nn.init.normal_(self.postfix, std=init_std)
        self.register_buffer("tokens", tokens[:, :context], persistent=False)  # (C', L)
        self.register_buffer("eot_index", eot + prefix_length + postfix_length, persistent=False)

    def forward(self, token_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if token_embeddings.shape[:2] != self.tokens.shape:
            raise ValueError(
                f"expected embeddings of tokens {tuple(self.tokens.shape)}, got {tuple(token_embeddings.shape)}"
            )
        rows = []
        for c, n in enumerate(self.name_lengths):
            frozen = token_embeddings[c]  # (L, W)
            # [SOT][prefix][name][postfix][EOT][padding…]; positions after EOT never reach EOT (causal mask)
            tail = frozen[n + 1 : self.context - self.prefix_length - self.postfix_length]  # EOT + padding
            rows.append(torch.cat([frozen[:1], self.prefix, frozen[1 : n + 1], self.postfix, tail]))  # (L, W)
        return torch.stack(rows), self.eot_index  # (C', L, W), (C',)


class VLPBranch(nn.Module):
    """`forward(clip_features (B, T, D), mask (B, T) bool) -> BranchOutput` over C + 1 classes (background last).

    Holds the frozen CLIP (vision tower removed: frame features arrive precomputed), the prompt learner and the
    temporal transformer. CLIP parameters never require gradients and CLIP always stays in eval mode.
    """

    def __init__(self, cfg: VLPConfig, clip: ClipBackbone, class_names: Sequence[str]) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = len(class_names)
        self.embed_dim = clip.embed_dim  # read before the visual tower (which holds `proj`) goes
        if hasattr(clip.model, "visual"):
            delattr(clip.model, "visual")
        clip.requires_grad_(False)
        clip.eval()
        self.clip = clip
        self.prompts = PromptLearner(
            clip, [*class_names, cfg.background_prompt], cfg.prefix_length, cfg.postfix_length, cfg.prompt_init_std
        )
        self.temporal = TemporalTransformer(self.embed_dim, cfg.layers, cfg.heads, max_positions=cfg.max_snippets)

    def train(self, mode: bool = True) -> VLPBranch:
        super().train(mode)
        self.clip.eval()  # frozen encoder: never in training mode
        return self

    def text_features(self) -> torch.Tensor:
        """(C + 1, D) prompt text features, unnormalised (background last)."""
        with torch.no_grad():
            frozen = self.clip.token_embedding(self.prompts.tokens)  # (C + 1, L, W)
        embeds, eot = self.prompts(frozen)
        return self.clip.encode_text_embeddings(embeds, eot)

    def video_features(self, clip_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) ``F_vid`` = temporal transformer over frame features + temporal embedding."""
        if clip_features.ndim != 3 or clip_features.shape[-1] != self.embed_dim:
            raise ValueError(f"VLP expects CLIP features (B, T, {self.embed_dim}); got {tuple(clip_features.shape)}")
        if mask.shape != clip_features.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match features {tuple(clip_features.shape[:2])}")
        return run_in_chunks(self.temporal, clip_features, mask.bool(), self.cfg.max_snippets)

    def forward(self, clip_features: torch.Tensor, mask: torch.Tensor) -> BranchOutput:
        video = self.video_features(clip_features, mask)  # (B, T, D)
        text = self.text_features()  # (C + 1, D)
        logits = torch.einsum("btd,cd->btc", F.normalize(video, dim=-1), F.normalize(text, dim=-1))  # (B, T, C + 1)
        return BranchOutput(logits=logits / self.cfg.temperature, features=video)
