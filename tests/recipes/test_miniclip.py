"""The mini CLIP's export: the backbone a method loads scores exactly like the model that was trained."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from models.common.clip import ClipConfig, build_clip, tokenize
from recipes.miniclip import MiniClipConfig, MiniClipModel, MiniClipRecipe


def test_the_exported_clip_keeps_the_trained_logit_scale(tmp_path: Path) -> None:
    cfg = ClipConfig(arch="vlrepro-tiny", pretrained=None)
    torch.manual_seed(0)
    model = MiniClipModel(cfg).eval()
    with torch.no_grad():
        model.loss.logit_scale.fill_(math.log(19.3))  # what training left in the loss (the backbone's stays at init)
    assert not math.isclose(float(model.clip.logit_scale.detach().exp()), 19.3, rel_tol=1e-3)
    MiniClipRecipe(MiniClipConfig(image_text="unused.npz", clip=cfg)).export(model, tmp_path)

    loaded = build_clip(ClipConfig(arch="vlrepro-tiny", pretrained=str(tmp_path / "clip.pt"))).eval()
    assert math.isclose(float(loaded.logit_scale.detach().exp()), 19.3, rel_tol=1e-5)
    images = torch.rand(3, 3, 32, 32)
    text = tokenize("vlrepro-tiny", ["a red square moves left", "a blue circle", "a green square"], 16)
    with torch.no_grad():
        trained = model.loss.logit_scale.exp() * model.clip.encode_image(images) @ model.clip.encode_text(text).T
        exported = loaded.logit_scale.exp() * loaded.encode_image(images) @ loaded.encode_text(text).T
    torch.testing.assert_close(exported, trained)
