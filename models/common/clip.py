"""The shared CLIP backbone: one wrapper over open_clip that every method builds on.

Implements the CLIP pieces the five papers need beyond open_clip's `encode_image` / `encode_text`
(METHODS.md §0; paper-code-notes §1.3, §2.2, §3.2, §5.2, §7.7):

- frame CLS after `ln_post @ proj` (CLIP4Clip `module_clip.py`; every method's frame feature);
- **projected** patch tokens — open_clip's `output_tokens=True` returns them after `ln_post` but before `proj`
  (UCoFiA `encode_image(return_hidden=True)`);
- the vision tower in pieces — patch stem, token assembly, blocks with intermediate outputs, pooling — so CLIP4Clip can
  swap in its Conv3d stem and STAN can branch off the last K blocks (`clip_stan_hf.py`);
- word-level text features at every position with a padding mask (UCoFiA / X-CLIP word features, masked here where
  the official code forgets) and text encoding from token *embeddings* for prompt learning (DCC, after
  Efficient-Prompt `model.py`: open_clip has no public API for it);
- weights (`build_clip`, the one loading path): a tag such as ``openai`` for `ViT-B-32-quickgelu` /
  `ViT-B-16-quickgelu` (OpenAI's ``ViT-B-32.pt`` already in the URL cache ``~/.cache/clip``, SHA-checked, else the
  Hugging Face hub), a local file — OpenAI's TorchScript archive, an open_clip / OpenAI state dict (``.pt``/``.bin``,
  ``.safetensors``, nested or prefixed) or the project's own `torch.save(backbone.state_dict())` — or random init.
  Offline without a cached file: one `WeightsUnavailableError` naming
  ``--set model.clip.pretrained=/path/to/ViT-B-32.pt``;
- CLIP frame normalisation (`preprocess_frames`): the one place in the project that knows CLIP's mean and std.

Registered architectures (JSON in `clip_configs/`, added to open_clip's registry on import, idempotently):

| name | embed | vision px / patch / width / layers / heads | text context / width / layers / heads | params |
|---|---|---|---|---|
| `vlrepro-tiny` | 32 | 32 / 16 / 32 / 2 / 2 | 16 / 32 / 2 / 2 | 1.66 M (vision 0.05 M) |
| `vlrepro-mini` | 128 | 64 / 16 / 128 / 4 / 4 | 32 / 128 / 2 / 4 | 7.65 M (vision 0.91 M) |

The embed dim equals the text width, as in every OpenAI ViT CLIP (512/512), so CLIP4Clip's seqTransf/tightTransf
can start from the text blocks as the paper does. `vlrepro-tiny` serves tests on 2 CPU cores; it keeps 2 blocks per
tower so STAN's last-K branch and the seqTransf init from text blocks have something to index. `vlrepro-mini` is
the project's CLIP pre-trained on 64×64 mini-world frames (miniworld-feasibility.md: patch 16 is 3× faster than
patch 8, 0.9 M vision parameters; embed 128 instead of the prototype's 64, see above); its context of 32
words is CLIP4Clip's `max_words`.

Both use QuickGELU like OpenAI CLIP, so code paths (and `TemporalTransformer`, initialised from text blocks) behave
the same as with real weights. Both keep the full 49408-token BPE vocabulary so open_clip's tokenizer works unchanged.

open_clip quirks handled here:
- `ViT-B-32` + `pretrained="openai"` only *warns* and silently runs GELU; here it is an error naming the
  `-quickgelu` architecture.
- CLIP4Clip tokenises 32 words for a 77-position OpenAI CLIP and uses the first 32 position rows
  (`positional_embedding[:x.size(1)]`); open_clip's `force_context_length` would *interpolate* them instead. So
  `ClipConfig.context_length` only shortens tokenisation and the text forward slices positions and the causal mask,
  which, under the causal mask, leaves every feature up to EOT unchanged.
- Transformer stacks may be batch-first (the default in recent open_clip) or sequence-first (`batch_first=False`,
  older releases); both are handled and every tensor this wrapper returns is batch-first.
- `torch.load(weights_only=True)` refuses TorchScript archives (OpenAI's original `ViT-B-32.pt`); those are read with
  `torch.jit.load`, whose deserialiser runs no pickled Python. Nothing else is ever unpickled. OpenAI's files keep
  most weights in float16 and carry three scalar entries (``input_resolution``, ``context_length``, ``vocab_size``):
  the scalars are dropped and the weights copied into the float32 model, as open_clip's OpenAI loader does
  (`tests/models/test_clip_weights.py` builds such files and checks both loaders agree).
- Only the plain ViT class-token path is supported (no attentional pooler, `avg` pooling, patch dropout, timm or
  ResNet towers, HF or CoCa text towers): methods index the CLS token and all N patches, so anything else raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

# OpenAI CLIP's training normalisation (openai/CLIP `clip.py::_transform`, open_clip OPENAI_DATASET_MEAN/STD); the
# project's mini CLIP is pre-trained through `preprocess_frames` too, so one pair of constants serves every checkpoint.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_CONFIG_DIR = Path(__file__).with_name("clip_configs")
REGISTERED_ARCHS: tuple[str, ...] = ("vlrepro-tiny", "vlrepro-mini")


def register_clip_configs() -> None:
    """Add the project's architectures (`clip_configs/*.json`) to open_clip's registry; a no-op the second time."""
    if not all(name in open_clip.list_models() for name in REGISTERED_ARCHS):
        open_clip.add_model_config(_CONFIG_DIR)


register_clip_configs()


class WeightsUnavailableError(RuntimeError):
    """Pretrained CLIP weights named by a tag (e.g. ``"openai"``) could not be fetched."""


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Which CLIP to build and where its weights come from."""

    # open_clip architecture name. OpenAI weights need the `-quickgelu` names (paper-code-notes §7.7): plain
    # `ViT-B-32` + "openai" runs GELU on QuickGELU weights. CLIP4Clip/STAN/UCoFiA default to ViT-B/32; DCC uses B/16.
    arch: str = "ViT-B-32-quickgelu"
    # "openai" (or another open_clip tag of `arch`: downloaded where the hub is reachable), a local checkpoint path
    # (open_clip formats or the project's saved `ClipBackbone.state_dict()`), or None for random init (tests).
    pretrained: str | None = "openai"
    # words per caption L; None = the architecture's context (77 for OpenAI CLIP). CLIP4Clip uses 32 words with the
    # first 32 of the 77 position rows (module_clip.py), never an interpolated table.
    context_length: int | None = None
    # download cache for tagged weights; None = the hub's default (HF_HOME / HF_HUB_CACHE).
    cache_dir: str | None = None


def _run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None,
    batch_first: bool,
    grad_checkpointing: bool,
    take: Sequence[int] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run residual blocks on batch-first tokens `x (B, S, W)`; also return the outputs of blocks in `take`."""
    wanted = set(take)
    outputs: dict[int, torch.Tensor] = {}
    if not batch_first:
        x = x.transpose(0, 1)  # (S, B, W): stacks built with batch_first=False expect LND
    for i, block in enumerate(blocks):
        if grad_checkpointing and torch.is_grad_enabled():

            def run(t: torch.Tensor, block: nn.Module = block) -> torch.Tensor:
                return block(t, attn_mask=attn_mask)

            x = checkpoint(run, x, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
        if i in wanted:
            outputs[i] = x if batch_first else x.transpose(0, 1)  # (B, S, W)
    if not batch_first:
        x = x.transpose(0, 1)  # (B, S, W)
    return x, outputs


@lru_cache(maxsize=8)
def _tokenizer(arch: str) -> Callable[..., torch.Tensor]:
    # building the BPE tokenizer reads the vocabulary file; share one per architecture
    return open_clip.get_tokenizer(arch)


def arch_image_size(arch: str) -> int:
    """Input resolution of a registered architecture (without building it)."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown CLIP arch {arch!r}")
    size = cfg["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def tokenize(arch: str, texts: str | Sequence[str], context_length: int) -> torch.Tensor:
    """Captions → token ids `(B, L)` for `arch` without building a model (data loaders use this)."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        return _tokenizer(arch)([], context_length=context_length)
    # training draws the same captions every pass: memoised rows, stacked into a fresh tensor (callers may write it)
    return torch.stack([_token_row(arch, t, context_length) for t in texts])


@lru_cache(maxsize=1 << 16)
def _token_row(arch: str, text: str, context_length: int) -> torch.Tensor:
    return _tokenizer(arch)([text], context_length=context_length)[0]


class ClipBackbone(nn.Module):
    """open_clip CLIP with the pieces the video methods need. Letters: B batch, N patches, L words, D embed dim,
    W tower width. All token tensors are batch-first.

    `self.model` is the open_clip model; `state_dict()` therefore has keys ``model.<open_clip key>``, which
    `build_clip(ClipConfig(pretrained=path))` reads back.
    """

    def __init__(self, model: nn.Module, arch: str, context_length: int | None = None) -> None:
        super().__init__()
        _check_supported(model, arch)
        self.model = model
        self.arch = arch
        max_context = int(self._text_tower.positional_embedding.shape[0])
        if context_length is not None and not 2 <= context_length <= max_context:
            raise ValueError(f"context_length={context_length} must lie in [2, {max_context}] for {arch}")
        self._context_length = context_length or max_context

    # ----- parts exposed for methods that copy or branch off them -------------------------------------------------

    @property
    def _oc(self) -> Any:
        # the open_clip model, typed Any: open_clip ships no type information and nn.Module.__getattr__ is untyped
        return self.model

    @property
    def visual(self) -> VisionTransformer:
        return self._oc.visual

    @property
    def conv1(self) -> nn.Conv2d:
        """2D patch stem `Conv2d(3, W, p, stride p)` (CLIP4Clip initialises its Conv3d centre slice from it)."""
        return self.visual.conv1

    @property
    def class_embedding(self) -> nn.Parameter:
        return self.visual.class_embedding

    @property
    def vision_positional_embedding(self) -> nn.Parameter:
        """(1+N, W): row 0 is the class token's position."""
        return self.visual.positional_embedding

    @property
    def vision_blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def ln_post(self) -> nn.Module:
        return self.visual.ln_post

    @property
    def proj(self) -> nn.Parameter:
        """(W, D) image projection."""
        return self.visual.proj

    @property
    def _text_tower(self) -> Any:
        # open_clip's CLIP keeps the text tower's parts on the model itself; CustomTextCLIP nests them in `.text`
        return getattr(self.model, "text", self.model)

    @property
    def text_blocks(self) -> nn.ModuleList:
        return self._text_tower.transformer.resblocks

    @property
    def text_positional_embedding(self) -> nn.Parameter:
        """(context of the architecture, W); the text forward uses its first L rows."""
        return self._text_tower.positional_embedding

    @property
    def ln_final(self) -> nn.Module:
        return self._text_tower.ln_final

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learnable log temperature (ln(1/0.07) at init, ≈ ln 100 in OpenAI's weights)."""
        return self._oc.logit_scale

    # ----- dimensions ----------------------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.proj.shape[1])

    @property
    def vision_width(self) -> int:
        return int(self.conv1.out_channels)

    @property
    def text_width(self) -> int:
        return int(self._text_tower.token_embedding.embedding_dim)

    @property
    def image_size(self) -> int:
        return int(self.visual.image_size[0])

    @property
    def patch_size(self) -> int:
        return int(self.visual.patch_size[0])

    @property
    def grid(self) -> int:
        """Patches per side."""
        return int(self.visual.grid_size[0])

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    @property
    def context_length(self) -> int:
        """L: tokens per caption produced by `tokenize`."""
        return self._context_length

    @property
    def vision_layers(self) -> int:
        return len(self.vision_blocks)

    @property
    def vision_heads(self) -> int:
        return int(self.visual.transformer.resblocks[0].attn.num_heads)

    @property
    def text_layers(self) -> int:
        return len(self.text_blocks)

    @property
    def text_heads(self) -> int:
        return int(self._text_tower.transformer.resblocks[0].attn.num_heads)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (STAN's DiDeMo configs turn this on)."""
        self._oc.set_grad_checkpointing(enable)

    # ----- vision --------------------------------------------------------------------------------------------------

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """`images (B, 3, S, S)` (normalised, see `preprocess_frames`) → patch tokens `(B, N, W)` via `conv1`."""
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.arch} expects images (B, 3, {s}, {s}); got {tuple(images.shape)}")
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (B, W, g, g)
        return x.flatten(2).transpose(1, 2)  # (B, N, W), patches in row-major order

    def tokens_from_patches(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """`(B, N, W)` → `(B, 1+N, W)`: prepend the class embedding, add positions, apply `ln_pre`.

        Any stem that yields N patch tokens of width W can feed this (CLIP4Clip's Conv3d stem does).
        """
        b, n, w = patch_tokens.shape
        if (n, w) != (self.n_patches, self.vision_width):
            raise ValueError(f"expected patch tokens (B, {self.n_patches}, {self.vision_width}); got {(b, n, w)}")
        cls = self.class_embedding.to(patch_tokens.dtype).expand(b, 1, w)  # (B, 1, W)
        x = torch.cat([cls, patch_tokens], dim=1)  # (B, 1+N, W)
        x = x + self.vision_positional_embedding.to(x.dtype)
        return self.visual.ln_pre(x)

    def forward_blocks(
        self, x: torch.Tensor, return_layers: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the vision blocks on tokens `(B, 1+N, W)`.

        Returns the last block's output `(B, 1+N, W)` and, for each index in `return_layers` (0-based, negative counts
        from the end, in the order given), that block's output `(B, 1+N, W)` — STAN reads the last K:
        ``return_layers=range(L - K, L)``.
        """
        n = self.vision_layers
        take = []
        for i in return_layers:
            if not -n <= i < n:
                raise IndexError(f"block index {i} out of range for {n} vision blocks")
            take.append(i % n)
        out, outputs = _run_blocks(
            self.vision_blocks,
            x,
            attn_mask=None,
            batch_first=getattr(self.visual.transformer, "batch_first", False),
            grad_checkpointing=getattr(self.visual.transformer, "grad_checkpointing", False),
            take=take,
        )
        return out, [outputs[i] for i in take]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Block output `(B, 1+N, W)` → image embedding `(B, D)`: CLS → `ln_post` → `proj`."""
        return self.ln_post(x[:, 0]) @ self.proj

    def pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Block output `(B, 1+N, W)` → every token projected `(B, 1+N, D)`: `ln_post` → `proj` (CLS first)."""
        return self.ln_post(x) @ self.proj

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, S, S)` → `(B, D)` frame CLS embedding (equals open_clip's `encode_image`, unnormalised)."""
        x, _ = self.forward_blocks(self.tokens_from_patches(self.embed_patches(images)))
        return self.pool(x)

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, 3, S, S)` → (CLS `(B, D)`, projected patch tokens `(B, N, D)`), one forward pass."""
        x, _ = self.forward_blocks(self.tokens_from_patches(self.embed_patches(images)))
        tokens = self.pool_tokens(x)  # (B, 1+N, D)
        return tokens[:, 0], tokens[:, 1:]

    # ----- text ----------------------------------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Captions → token ids `(B, L)` (int64, CPU): ``[SOT] words [EOT] 0 …``, truncated to keep EOT."""
        return tokenize(self.arch, texts, self.context_length)

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(B, L)` → `(B,)` position of EOT: the largest id in CLIP's vocabulary (open_clip pool_type 'argmax')."""
        return tokens.argmax(dim=-1)

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(B, L)` ids → `(B, L, W)` input embeddings (no positions): what prompt learning edits."""
        return self._text_tower.token_embedding(tokens)

    def _text_hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        """`(B, L, W)` token embeddings → text transformer output `(B, L, W)` before `ln_final`."""
        tower = self._text_tower
        length = embeds.shape[1]
        max_context = self.text_positional_embedding.shape[0]
        if length > max_context:
            raise ValueError(f"{length} text positions exceed the {max_context} of {self.arch}")
        # first L position rows and the L×L corner of the causal mask (CLIP4Clip's 32-of-77 slicing)
        x = embeds + self.text_positional_embedding[:length].to(embeds.dtype)
        mask = tower.attn_mask
        mask = mask[:length, :length] if mask is not None else None
        x, _ = _run_blocks(
            self.text_blocks,
            x,
            attn_mask=mask,
            batch_first=getattr(tower.transformer, "batch_first", False),
            grad_checkpointing=getattr(tower.transformer, "grad_checkpointing", False),
        )
        return x

    def _project_text(self, x: torch.Tensor) -> torch.Tensor:
        projection = self._text_tower.text_projection
        if isinstance(projection, nn.Linear):
            return projection(x)
        return x @ projection

    def encode_text_embeddings(self, embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings `(B, L, W)` and EOT positions `(B,)` → sentence embedding `(B, D)`.

        For prompt learning (DCC, Efficient-Prompt `encode_text(embeddings, token_ids)`): learnable vectors replace
        some rows of `token_embedding(tokens)`; the feature is read at `eot_index`.
        """
        x = self._text_hidden(embeds)  # (B, L, W)
        rows = torch.arange(x.shape[0], device=x.device)
        return self._project_text(self.ln_final(x[rows, eot_index]))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(B, L)` ids → `(B, D)` EOT feature (equals open_clip's `encode_text`, unnormalised)."""
        return self.encode_text_embeddings(self.token_embedding(tokens), self.eot_index(tokens))

    def encode_words(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, L)` ids → (word features `(B, L, D)`, mask `(B, L)` bool).

        Words are `ln_final(transformer(tok + pos)) @ text_projection` at every position; the mask is True on real
        tokens SOT..EOT inclusive and False on padding (UCoFiA's code leaves padding in; METHODS.md §3 says mask it).
        The sentence feature is the row at `eot_index(tokens)`, so callers needing both run one forward.
        """
        words = self._project_text(self.ln_final(self._text_hidden(self.token_embedding(tokens))))
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        mask = positions[None, :] <= self.eot_index(tokens)[:, None]  # (B, L)
        return words, mask

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image `(B, D)`, text `(B', D)`) embeddings, unnormalised."""
        return self.encode_image(images), self.encode_text(tokens)


def _check_supported(model: nn.Module, arch: str) -> None:
    """Raise for open_clip variants whose CLS / patch / EOT layout differs from plain ViT CLIP."""
    visual = getattr(model, "visual", None)
    problems = []
    if not isinstance(visual, VisionTransformer):
        problems.append(f"vision tower is {type(visual).__name__}, not open_clip's VisionTransformer")
    else:
        if visual.attn_pool is not None:
            problems.append("attentional pooling")
        if visual.pool_type != "tok":
            problems.append(f"pool_type={visual.pool_type!r} (need the class token, 'tok')")
        if visual.proj is None:
            problems.append("no image projection")
        if not isinstance(visual.patch_dropout, nn.Identity):
            problems.append("patch dropout (methods need all N patch tokens)")
        if visual.image_size[0] != visual.image_size[1] or visual.patch_size[0] != visual.patch_size[1]:
            problems.append("non-square images or patches")
    text = getattr(model, "text", model)
    if not hasattr(text, "token_embedding") or not hasattr(text, "transformer"):
        problems.append(f"text tower {type(text).__name__} is not open_clip's TextTransformer")
    else:
        if getattr(text, "cls_emb", None) is not None:
            problems.append("text class token (CoCa)")
        pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        if pool_type != "argmax":
            problems.append(f"text pool_type={pool_type!r} (need 'argmax': EOT has the largest id)")
        if getattr(text, "use_pad_mask", False):
            problems.append("bidirectional text with padding mask")
    if problems:
        raise ValueError(f"{arch}: unsupported by ClipBackbone (only plain ViT CLS CLIP is): {'; '.join(problems)}")


# ----- weights -----------------------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


#: where a user's recipe sets the CLIP checkpoint (CLIP4Clip, STAN, UCoFiA, LocVTP: `model.clip`; DCC:
#: `model.vlp.clip`): the fix the offline error names
PRETRAINED_KEY = "model.clip.pretrained"


def _weights_file_name(arch: str, tag_cfg: Mapping[str, Any]) -> str:
    """The file name users download for a tag: OpenAI's ``ViT-B-32.pt`` for ``openai``, else ``<arch>.pt``."""
    url = str(tag_cfg.get("url") or "")
    return url.rsplit("/", 1)[-1] if url else f"{arch}.pt"


def _unavailable(arch: str, tag: str, reason: str, tag_cfg: Mapping[str, Any]) -> WeightsUnavailableError:
    reason = " ".join(reason.split())[:200]
    name = _weights_file_name(arch, tag_cfg)
    url = tag_cfg.get("url")
    where = f" (from {url})" if url else ""
    return WeightsUnavailableError(
        f"CLIP weights {arch}/{tag} cannot be fetched ({reason}); fix: set pretrained to a local checkpoint path, "
        f"e.g. download {name}{where} and pass --set {PRETRAINED_KEY}=/path/to/{name} (an OpenAI TorchScript .pt "
        f"or any open_clip state dict), or run where the Hugging Face hub is reachable (HF_HUB_OFFLINE unset), or use "
        f"arch 'vlrepro-mini' with the checkpoint of the project's own mini-CLIP pre-training stage"
    )


def _cached_url_file(tag_cfg: Mapping[str, Any], cache_dir: str | None) -> Path | None:
    """A tag's URL download already on disk (OpenAI's own `clip.load` and open_clip keep ``~/.cache/clip/ViT-B-32.pt``),
    checked against the SHA-256 prefix in OpenAI's URL; None when absent or different. Needs no network."""
    url = str(tag_cfg.get("url") or "")
    if "openaipublic" not in url:
        return None
    path = Path(cache_dir or "~/.cache/clip").expanduser() / url.rsplit("/", 1)[-1]
    if not path.is_file():
        return None
    expected = url.split("/")[-2]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(expected):
        log.warning("%s does not match the SHA-256 in %s: ignored", path, url)
        return None
    return path


def _resolve_weights(cfg: ClipConfig, model_cfg: Mapping[str, Any]) -> Path | None:
    """The checkpoint file `cfg.pretrained` names (a tag: OpenAI's file already in the URL cache, else downloaded from
    the hub), or None for random init. Runs before the model is built so that a bad setting fails fast."""
    if cfg.pretrained is None:
        return None
    tag_cfg = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained)
    if tag_cfg:
        if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
            raise ValueError(
                f"pretrained={cfg.pretrained!r} was trained with QuickGELU but {cfg.arch} uses GELU "
                f"(open_clip would only warn); use arch '{cfg.arch}-quickgelu'"
            )
        cached = _cached_url_file(tag_cfg, cfg.cache_dir)
        if cached is not None:
            return cached
        if _env_flag("HF_HUB_OFFLINE") and not tag_cfg.get("hf_hub"):
            raise _unavailable(cfg.arch, cfg.pretrained, "HF_HUB_OFFLINE is set and the tag has only a URL", tag_cfg)
        try:
            path = open_clip.download_pretrained(tag_cfg, cache_dir=cfg.cache_dir)
        except Exception as exc:  # hub errors come as RuntimeError, FileNotFoundError, OSError, HTTP errors
            raise _unavailable(cfg.arch, cfg.pretrained, f"{type(exc).__name__}: {exc}", tag_cfg) from exc
        if not path:
            raise _unavailable(cfg.arch, cfg.pretrained, "open_clip returned no file", tag_cfg)
        return Path(path)
    path = Path(cfg.pretrained).expanduser()
    if not path.is_file():
        tags = open_clip.list_pretrained_tags_by_model(cfg.arch)
        raise FileNotFoundError(
            f"pretrained={cfg.pretrained!r}: no such checkpoint file ({path}), and not a weights tag of {cfg.arch} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    return path


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


#: scalar entries of OpenAI's checkpoints (open_clip's `build_model_from_openai_state_dict` drops them too)
_OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")


def _is_torchscript_archive(path: Path) -> bool:
    # torch.serialization's own test: a TorchScript zip has a `constants.pkl` record, a torch.save zip does not
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a CLIP checkpoint as an open_clip-keyed state dict, never unpickling arbitrary objects.

    Accepts `.safetensors`; `torch.save`d state dicts (`weights_only=True`), also nested as ``{"state_dict": …}``
    and prefixed ``module.`` (DDP), ``_orig_mod.`` (torch.compile) or ``model.`` (`ClipBackbone.state_dict()`);
    and OpenAI's TorchScript archives.
    """
    path = Path(path)
    obj: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    elif _is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            obj = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a CLIP state dict (expected a mapping of names to tensors)")
    state_dict = dict(obj)
    for prefix in ("module.", "_orig_mod.", "model."):
        state_dict = _strip_prefix(state_dict, prefix)
    for key in _OPENAI_SCALARS:  # in OpenAI's archives (and state dicts taken from them), not parameters
        state_dict.pop(key, None)
    return state_dict


def load_clip_weights(backbone: ClipBackbone, path: str | Path) -> None:
    """Load a checkpoint (any format `read_clip_state_dict` reads) into `backbone`, strictly."""
    model = backbone.model
    state_dict = read_clip_state_dict(path)
    # open_clip's load_checkpoint conversions: CLIP-layout text keys into a CustomTextCLIP, scalar vs 1-d logit_scale
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = open_clip.model.convert_to_custom_text_state_dict(state_dict)
    scale = state_dict.get("logit_scale")
    if scale is not None and scale.ndim != backbone.logit_scale.ndim:
        state_dict["logit_scale"] = scale.reshape(backbone.logit_scale.shape)
    # TorchScript archives also store non-persistent buffers (the causal `attn_mask`); the model rebuilds those
    persistent = model.state_dict().keys()
    for name, _ in model.named_buffers():
        if name not in persistent:
            state_dict.pop(name, None)
    # No silent resizing of position tables (open_clip interpolates): a shape mismatch means the wrong arch.
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit arch {backbone.arch}: {exc}") from exc
    log.info("loaded CLIP weights %s into %s", path, backbone.arch)


@contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    # open_clip warns "No pretrained weights loaded ... initialized randomly" although we load them right after
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def build_clip(cfg: ClipConfig) -> ClipBackbone:
    """Build the backbone `cfg` describes: architecture from open_clip's registry, then weights (if any)."""
    model_cfg = open_clip.get_model_config(cfg.arch)
    if model_cfg is None:
        raise ValueError(
            f"unknown CLIP arch {cfg.arch!r}; project archs: {', '.join(REGISTERED_ARCHS)}; "
            f"others: open_clip.list_models() (e.g. ViT-B-32-quickgelu, ViT-B-16-quickgelu)"
        )
    checkpoint_path = _resolve_weights(cfg, model_cfg)
    if checkpoint_path is None:
        model = open_clip.create_model(cfg.arch, pretrained=None)
    else:
        with _quiet_random_init_warning():
            model = open_clip.create_model(cfg.arch, pretrained=None)
    backbone = ClipBackbone(model, cfg.arch, context_length=cfg.context_length)
    if checkpoint_path is not None:
        load_clip_weights(backbone, checkpoint_path)
    return backbone


# ----- frames ------------------------------------------------------------------------------------------------------


def preprocess_frames(frames: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 RGB frames `(..., H, W, 3)` → CLIP input `(..., 3, S, S)` float32, S = `image_size`.

    CLIP's eval transform (open_clip `image_transform`, DCC `visfeat.py`): resize the shorter side to S (bicubic,
    antialiased like PIL, clamped to [0, 1] like PIL's uint8 output), centre-crop S×S, normalise by CLIP_MEAN/STD.
    Frames already S×S are only normalised. Only uint8 is accepted, so frames are never normalised twice.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8:
        raise TypeError(f"preprocess_frames expects uint8 RGB frames, got {x.dtype}")
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"expected frames (..., H, W, 3), got {tuple(x.shape)}")
    lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
    x = x.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float().div_(255.0)  # (M, 3, H, W)
    if (h, w) != (image_size, image_size):
        scale = image_size / min(h, w)
        size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
        top = round((size[0] - image_size) / 2.0)  # torchvision CenterCrop's offsets
        left = round((size[1] - image_size) / 2.0)
        x = x[:, :, top : top + image_size, left : left + image_size]  # (M, 3, S, S)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.reshape(*lead, 3, image_size, image_size)
