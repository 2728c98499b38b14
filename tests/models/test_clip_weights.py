"""Real CLIP weights, offline: format-exact local files through the one loading path (`build_clip`).

OpenAI's ``ViT-B-32.pt`` / ``ViT-B-16.pt`` are TorchScript archives of openai/CLIP's ``model.py`` with most weights in
float16 and three scalar entries; the Hugging Face copies open_clip downloads are plain state dicts. Both are made
here from a random model of OpenAI's layout at a tiny width (64: OpenAI's code has one head per 64 channels, which
open_clip's OpenAI loader infers), and each must load to outputs *identical* to the in-memory model; open_clip's own
OpenAI loader reading the same archive is the oracle that the archive is the format it reads. The real
architectures' layouts are checked on the meta device (no memory, no download).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP
from torch import nn

from models.common.clip import (
    PRETRAINED_KEY,
    ClipBackbone,
    ClipConfig,
    WeightsUnavailableError,
    build_clip,
    read_clip_state_dict,
)

ARCH = "vlrepro-test-openai-layout"  # OpenAI's layout at width 64 (registered by the `arch` fixture)
ARCH_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
SCALARS = ("input_resolution", "context_length", "vocab_size")
CAPTIONS = ["a red circle moves left, then up", "a blue square", "three green triangles spin slowly"]


# ----- openai/CLIP model.py (ViT path), as OpenAI traced it: the format of ViT-B-32.pt -------------------------------
class _LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.type(torch.float32)).type(x.dtype)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = _LayerNorm(width)
        mlp = [("c_fc", nn.Linear(width, width * 4)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
        self.mlp = nn.Sequential(OrderedDict(mlp))
        self.ln_2 = _LayerNorm(width)
        self.attn_mask = attn_mask  # a plain attribute, as in OpenAI's code: a constant of the trace, not a weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.attn_mask.to(dtype=x.dtype) if self.attn_mask is not None else None
        x = x + self.attn(*(self.ln_1(x),) * 3, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class _Visual(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, embed: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = _LayerNorm(width)
        self.transformer = _Transformer(width, layers, width // 64)
        self.ln_post = _LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class OpenAICLIP(nn.Module):
    def __init__(
        self, embed: int, resolution: int, v_layers: int, v_width: int, patch: int, context: int, vocab: int,
        t_width: int, t_heads: int, t_layers: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.visual = _Visual(resolution, patch, v_width, v_layers, embed)
        mask = torch.full((context, context), float("-inf")).triu_(1)
        self.transformer = _Transformer(t_width, t_layers, t_heads, mask)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, t_width))
        self.ln_final = _LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.randn(t_width, embed))
        self.logit_scale = nn.Parameter(torch.ones([]))
        # the three scalar entries of OpenAI's archives (open_clip's loader pops them)
        for name, value in (("input_resolution", resolution), ("context_length", context), ("vocab_size", vocab)):
            self.register_buffer(name, torch.tensor(value))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.type(self.visual.conv1.weight.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        dtype = self.visual.conv1.weight.dtype
        x = self.token_embedding(text).type(dtype) + self.positional_embedding.type(dtype)
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)).type(dtype)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image), self.encode_text(text)


def convert_weights_to_fp16(model: nn.Module) -> None:
    """openai/CLIP `convert_weights`: conv / linear / attention weights and the projections to float16."""

    def convert(layer: nn.Module) -> None:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            layer.weight.data = layer.weight.data.half()
            if layer.bias is not None:
                layer.bias.data = layer.bias.data.half()
        if isinstance(layer, nn.MultiheadAttention):
            for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"):
                tensor = getattr(layer, attr)
                if tensor is not None:
                    tensor.data = tensor.data.half()
        for name in ("text_projection", "proj"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.half()

    model.apply(convert)


def openai_like(embed: int, vision: dict, text: dict) -> OpenAICLIP:
    res, patch = vision["image_size"], vision["patch_size"]
    return OpenAICLIP(
        embed, res, vision["layers"], vision["width"], patch,
        text["context_length"], text["vocab_size"], text["width"], text["heads"], text["layers"],
    )  # fmt: skip


# ----- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    if open_clip.get_model_config(ARCH) is None:
        path = tmp_path_factory.mktemp("clip-configs") / f"{ARCH}.json"
        path.write_text(json.dumps(ARCH_CFG))
        open_clip.add_model_config(path)
    return ARCH


@pytest.fixture(scope="module")
def files(arch: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random model of OpenAI's layout saved in the formats users have: OpenAI's TorchScript archive, the same
    state dict torch.save'd, and open_clip's Hugging Face files (``.bin``, ``.safetensors``) of its float32 copy."""
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    source = openai_like(ARCH_CFG["embed_dim"], ARCH_CFG["vision_cfg"], ARCH_CFG["text_cfg"]).eval()
    convert_weights_to_fp16(source)
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 49407, (2, 77))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on attention's shape checks, jit's deprecation notice
        traced = torch.jit.trace(source, (images, tokens), check_trace=False)  # OpenAI traced theirs
    traced.save(str(out / "ViT-B-32.pt"))
    torch.save(source.state_dict(), out / "openai-state-dict.pt")
    fp32 = {k: v.float() for k, v in source.state_dict().items() if k not in SCALARS}  # open_clip drops the scalars
    torch.save(fp32, out / "open_clip_pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in fp32.items()}, str(out / "open_clip_model.safetensors"))
    return {
        "torchscript": out / "ViT-B-32.pt",
        "openai_state_dict": out / "openai-state-dict.pt",
        "hf_bin": out / "open_clip_pytorch_model.bin",
        "hf_safetensors": out / "open_clip_model.safetensors",
    }


@pytest.fixture(scope="module")
def reference(arch: str, files: dict[str, Path]) -> ClipBackbone:
    """The in-memory model: the project's backbone holding the saved values (float16 ones exactly widened)."""
    torch.manual_seed(1)
    backbone = build_clip(ClipConfig(arch=arch, pretrained=None))
    weights = torch.load(files["openai_state_dict"], weights_only=True)
    for key in SCALARS:
        weights.pop(key)
    backbone.model.load_state_dict(weights, strict=True)
    return backbone.eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, list[str]]:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)), CAPTIONS


@torch.no_grad()
def _outputs(backbone: ClipBackbone, inputs: tuple[torch.Tensor, list[str]]) -> list[torch.Tensor]:
    """Image and text features, patch tokens and word features."""
    images, captions = inputs
    tokens = backbone.tokenize(captions)
    return [
        backbone.encode_image(images),
        backbone.encode_text(tokens),
        backbone.encode_image_tokens(images)[1],
        backbone.encode_words(tokens)[0],
    ]


# ----- the file formats ----------------------------------------------------------------------------------------------
def test_the_archive_is_openai_s_format(files: dict[str, Path], reference: ClipBackbone) -> None:
    path = files["torchscript"]
    with zipfile.ZipFile(path) as archive:  # a TorchScript zip (code + constants), not a torch.save pickle
        names = archive.namelist()
    assert any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.load's "looks like a TorchScript archive", jit's deprecation notice
        with pytest.raises(Exception, match=r"(?i)torchscript|weights.only"):
            torch.load(path, weights_only=True)  # why the loader needs its TorchScript branch
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert set(state) == set(reference.model.state_dict()) | set(SCALARS)  # OpenAI's keys = open_clip's CLIP keys
    assert state["visual.conv1.weight"].dtype == torch.float16  # OpenAI's mixed precision
    assert state["visual.transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    assert state["token_embedding.weight"].dtype == torch.float32 and state["ln_final.weight"].dtype == torch.float32
    assert int(state["context_length"]) == 77


@pytest.mark.parametrize("kind", ["torchscript", "openai_state_dict", "hf_bin", "hf_safetensors"])
def test_each_format_loads_to_identical_outputs(
    kind: str, arch: str, files: dict[str, Path], reference: ClipBackbone, inputs: tuple[torch.Tensor, list[str]]
) -> None:
    torch.manual_seed(123)  # another random init: equality below comes only from the loaded weights
    loaded = build_clip(ClipConfig(arch=arch, pretrained=str(files[kind]))).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for got, want in zip(_outputs(loaded, inputs), _outputs(reference, inputs), strict=True):
        assert torch.equal(got, want)
    assert set(read_clip_state_dict(files[kind])) == set(reference.model.state_dict())


def test_open_clip_s_openai_loader_reads_the_same_archive(
    files: dict[str, Path], reference: ClipBackbone, inputs: tuple[torch.Tensor, list[str]]
) -> None:
    """open_clip's own reader of OpenAI's files (`load_openai_model`) is the oracle for the archive's format."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        oracle = open_clip.load_openai_model(str(files["torchscript"]), precision="fp32", device="cpu")
    images, captions = inputs
    tokens = reference.tokenize(captions)
    with torch.no_grad():
        torch.testing.assert_close(oracle.encode_image(images), reference.encode_image(images))
        torch.testing.assert_close(oracle.encode_text(tokens), reference.encode_text(tokens))


def test_openai_tag_uses_openai_s_download_in_the_url_cache(
    arch: str,
    files: dict[str, Path],
    reference: ClipBackbone,
    inputs: tuple[torch.Tensor, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pretrained: openai`` offline finds ``ViT-B-32.pt`` where OpenAI's ``clip.load`` / open_clip put it (checked
    by the SHA-256 prefix of OpenAI's URL); a file that does not match is ignored, leaving the clear error."""
    data = files["torchscript"].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    url = f"https://openaipublic.azureedge.net/clip/models/{sha}/ViT-B-32.pt"
    tags = {"openai": {"url": url, "hf_hub": "timm/no-such-repo/", "quick_gelu": True}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, tags)
    (tmp_path / "ViT-B-32.pt").write_bytes(data)
    loaded = build_clip(ClipConfig(arch=arch, pretrained="openai", cache_dir=str(tmp_path))).eval()
    for got, want in zip(_outputs(loaded, inputs), _outputs(reference, inputs), strict=True):
        assert torch.equal(got, want)
    (tmp_path / "ViT-B-32.pt").write_bytes(data[:-1] + b"x")  # corrupted: not the file OpenAI published
    if _hub_offline():
        with pytest.raises(WeightsUnavailableError, match=r"ViT-B-32\.pt"):
            build_clip(ClipConfig(arch=arch, pretrained="openai", cache_dir=str(tmp_path)))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# ----- the real architectures -----------------------------------------------------------------------------------------
REAL = [("ViT-B-32-quickgelu", "ViT-B-32.pt"), ("ViT-B-16-quickgelu", "ViT-B-16.pt")]


@pytest.mark.parametrize(("name", "file"), REAL)
def test_offline_openai_is_one_error_naming_the_fix(name: str, file: str, tmp_path: Path) -> None:
    if not _hub_offline():
        pytest.skip("HF_HUB_OFFLINE was not set before huggingface_hub was imported")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        build_clip(ClipConfig(arch=name, pretrained="openai", cache_dir=str(tmp_path)))
    assert time.monotonic() - start < 5.0  # before any model is built
    message = str(info.value)
    assert "\n" not in message
    assert f"--set {PRETRAINED_KEY}=/path/to/{file}" in message and PRETRAINED_KEY == "model.clip.pretrained"
    assert "openaipublic" in message  # where to download it


@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu"])
def test_real_architectures_have_openai_s_layout(name: str) -> None:
    """Every key and shape of OpenAI's ViT-B/32 and B/16 (openai/CLIP `build_model`) is the registered arch's, so
    their archives load strictly; built on the meta device: no memory, no download."""
    cfg = open_clip.get_model_config(name)
    assert cfg is not None and cfg["quick_gelu"] is True
    with torch.device("meta"):
        ours = OpenClipCLIP(**cfg)
        theirs = openai_like(cfg["embed_dim"], cfg["vision_cfg"], {"vocab_size": 49408, "heads": 8, **cfg["text_cfg"]})
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    for key in SCALARS:
        want.pop(key)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert want["visual.conv1.weight"] == (768, 3, int(name[6:8]), int(name[6:8]))
