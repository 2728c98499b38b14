"""DCC: "Distilling Vision-Language Pre-training to Collaborate with Weakly-Supervised Temporal Action Localization"
(Ju et al., CVPR 2023). No official code (paper-code-notes §5.1); spec METHODS §4, review seed 003.

| paper piece | here |
|---|---|
| CBP branch: transformer over I3D features → ``P^cb`` | `cbp.CBPBranch` |
| VLP branch: frozen CLIP + 2-layer temporal transformer + learnable prompts → ``P^vl`` | `vlp.VLPBranch` |
| warm-up of CBP with the top-k MIL loss | `DCC.warmup_step` (`losses.MIL_LOSSES`) |
| confident pseudo-labels ``H`` (δ_h = 0.3, δ_l = 0.1) | `pseudo_labels.confident_labels`, `foreground_background` |
| B step: frozen CBP's ``H^cb`` trains VLP; F step: frozen VLP's ``H^vl`` trains CBP | `DCC.b_step`, `DCC.f_step` |
| ``L = L_kd(H', P) + λ L_fb`` (λ = 0.05, τ = 0.07) | `losses.kd_loss`, `losses.fb_contrastive_loss` |
| inference from the CBP branch only | `DCC.localization_inputs`, `inference.localize` |
| Adam, lr 1e-4 | `DCCConfig.optim` |

Training is staged (each stage a separate, resumable DAG stage): one `DCCStage(model, stage)` per stage implements the
engine's `TrainableModel`; only that stage's parameters require gradients (set when the stage is built, before the
engine builds its optimiser), the teacher branch runs under `no_grad` in eval mode, and CLIP never trains.
Stages: ``"warmup"`` (CBP, MIL), ``"B"`` (VLP student), ``"F"`` (CBP student) and the project's optional
``"vlp_warmup"`` (VLP with the same MIL loss; for the "VLP alone" baseline, not part of the paper's recipe).

Batch (a mapping): ``"features"`` float (B, T, cbp.input_dim) I3D snippet features; ``"clip"`` float (B, T, D_clip)
frozen CLIP frame features of the same snippets (needed by "B", "F", "vlp_warmup"); ``"mask"`` bool (B, T), True =
real snippet; ``"labels"`` float (B, C) multi-hot video labels, classes in `class_names` order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from models.common.clip import build_clip
from models.dcc.cbp import BranchOutput, CBPBranch
from models.dcc.config import DCCConfig
from models.dcc.losses import MIL_LOSSES, fb_contrastive_loss, kd_loss, video_scores
from models.dcc.pseudo_labels import confident_labels, foreground_background
from models.dcc.vlp import VLPBranch

Batch = Mapping[str, Any]
Stage = Literal["warmup", "vlp_warmup", "B", "F"]
Branch = Literal["cbp", "vlp"]

# parameter-name prefixes each stage trains (CLIP, under "vlp.clip.", never does)
STAGE_PREFIXES: dict[str, tuple[str, ...]] = {
    "warmup": ("cbp.",),
    "vlp_warmup": ("vlp.prompts.", "vlp.temporal."),
    "B": ("vlp.prompts.", "vlp.temporal."),
    "F": ("cbp.",),
}
_CLIP_PREFIX = "vlp.clip."


@contextmanager
def _teacher_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the frozen branch that produces pseudo-labels."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class DCC(nn.Module):
    """Both branches and the step losses. Build with `build(cfg, class_names)`; train one stage with `DCCStage`."""

    def __init__(self, cfg: DCCConfig, cbp: CBPBranch, vlp: VLPBranch, class_names: Sequence[str]) -> None:
        super().__init__()
        if cbp.num_classes != len(class_names) or vlp.num_classes != len(class_names):
            raise ValueError("both branches must be built for the same class list")
        self.cfg = cfg
        self.class_names = tuple(class_names)
        self.cbp = cbp
        self.vlp = vlp
        self._mil = MIL_LOSSES[cfg.mil_loss]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ----- parameters per stage --------------------------------------------------------------------------------------

    def stage_parameter_names(self, stage: Stage) -> list[str]:
        """Names of the parameters `stage` trains."""
        prefixes = STAGE_PREFIXES[stage]
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes) and not n.startswith(_CLIP_PREFIX)]

    def set_stage(self, stage: Stage) -> None:
        """`requires_grad` on exactly `stage`'s parameters (CLIP: never)."""
        if stage not in STAGE_PREFIXES:
            raise ValueError(f"unknown stage {stage!r}; choose from {sorted(STAGE_PREFIXES)}")
        trainable = set(self.stage_parameter_names(stage))
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    # ----- branches --------------------------------------------------------------------------------------------------

    def cbp_outputs(self, batch: Batch) -> BranchOutput:
        return self.cbp(batch["features"], batch["mask"])

    def vlp_outputs(self, batch: Batch) -> BranchOutput:
        return self.vlp(batch["clip"], batch["mask"])

    # ----- training steps --------------------------------------------------------------------------------------------

    def _mil_loss(self, out: BranchOutput, batch: Batch) -> torch.Tensor:
        return self._mil(out.logits, batch["mask"].bool(), batch["labels"], self.cfg.mil_topk_ratio)

    def warmup_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """CBP warm-up: the top-k MIL classification loss on the CBP branch."""
        mil = self._mil_loss(self.cbp_outputs(batch), batch)
        return {"loss": mil, "mil": mil.detach()}

    def vlp_warmup_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Project option: the same MIL loss on the VLP branch (video-level prompt tuning, as Efficient-Prompt)."""
        mil = self._mil_loss(self.vlp_outputs(batch), batch)
        return {"loss": mil, "mil": mil.detach()}

    def b_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """B step: the frozen CBP branch's confident pseudo-labels (its reliable part: background) train VLP."""
        return self._distill_step(batch, self.cbp, self.cbp_outputs, self.vlp_outputs, role="background")

    def f_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """F step: the frozen VLP branch's confident pseudo-labels (its reliable part: foreground) train CBP."""
        return self._distill_step(batch, self.vlp, self.vlp_outputs, self.cbp_outputs, role="foreground")

    def _distill_step(
        self,
        batch: Batch,
        teacher: nn.Module,
        teacher_outputs: Callable[[Batch], BranchOutput],
        student_outputs: Callable[[Batch], BranchOutput],
        role: Literal["background", "foreground"],
    ) -> dict[str, torch.Tensor]:
        d = self.cfg.distill
        mask = batch["mask"].bool()
        labels = batch["labels"]
        with _teacher_mode(teacher):
            h = confident_labels(teacher_outputs(batch).probs, labels, d.high, d.low, mask)  # (B, T, C)
        fg, bg = foreground_background(h, labels, mask)  # (B, T) each
        if d.kd_snippets == "confident":
            distilled = fg | bg
        else:
            distilled = bg if role == "background" else fg
        student = student_outputs(batch)
        kd = kd_loss(student.log_probs, h, distilled)
        fb, anchors = fb_contrastive_loss(student.features, h, bg, labels, d.fb_temperature, d.fb_reduction)
        loss = kd + d.fb_weight * fb
        out = {"kd": kd.detach(), "fb": fb.detach()}
        if d.mil_weight > 0:
            mil = self._mil_loss(student, batch)
            loss = loss + d.mil_weight * mil
            out["mil"] = mil.detach()
        n_valid = mask.sum().clamp(min=1)
        out["fg_fraction"] = fg.sum() / n_valid
        out["bg_fraction"] = bg.sum() / n_valid
        out["fb_anchors"] = loss.new_tensor(float(anchors))
        return {"loss": loss, **out}

    # ----- inference -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def localization_inputs(self, batch: Batch, branch: Branch = "cbp") -> tuple[torch.Tensor, torch.Tensor]:
        """(probs (B, T, C), video scores (B, C)) of one branch in eval mode; padded snippets have probability 0.

        Video score = top-k mean of the snippet probabilities, k = max(1, T_valid // ratio) — the quantity the
        "bce" warm-up trains and that inference thresholds at θ_cls. Inference uses ``branch="cbp"`` (paper).
        """
        was_training = self.training
        self.eval()
        try:
            out = self.cbp_outputs(batch) if branch == "cbp" else self.vlp_outputs(batch)
        finally:
            self.train(was_training)
        mask = batch["mask"].bool()
        probs = out.probs.masked_fill(~mask[..., None], 0.0)  # (B, T, C)
        return probs, video_scores(probs, mask, self.cfg.mil_topk_ratio)

    def forward(self, batch: Batch) -> BranchOutput:
        """The CBP branch's outputs (the branch inference uses)."""
        return self.cbp_outputs(batch)


def build(cfg: DCCConfig, class_names: Sequence[str]) -> DCC:
    """Build DCC for `class_names` (their order = the label order): CLIP (with its weights), both branches.

    Raises `vlp.PromptLengthError` when the prompts and the longest class name do not fit CLIP's text context.
    """
    if not class_names:
        raise ValueError("DCC needs at least one class name")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique: {list(class_names)}")
    clip = build_clip(cfg.vlp.clip)
    vlp = VLPBranch(cfg.vlp, clip, class_names)
    cbp = CBPBranch(cfg.cbp, len(class_names))
    return DCC(cfg, cbp, vlp, class_names)


STAGE_STEPS: dict[str, Callable[[DCC, Batch], dict[str, torch.Tensor]]] = {
    "warmup": DCC.warmup_step,
    "vlp_warmup": DCC.vlp_warmup_step,
    "B": DCC.b_step,
    "F": DCC.f_step,
}


class DCCStage(nn.Module):
    """One training stage of a `DCC` model, as the engine's `TrainableModel`.

    Construction sets `requires_grad` on exactly the stage's parameters (build the engine's optimiser after it);
    `training_step` runs the stage's step; all trainable parameters use the base lr (Adam 1e-4, `DCCConfig.optim`).
    The wrapped model is `self.model` (state-dict keys ``model.…``).
    """

    def __init__(self, model: DCC, stage: Stage) -> None:
        super().__init__()
        if stage not in STAGE_STEPS:
            raise ValueError(f"unknown stage {stage!r}; choose from {sorted(STAGE_STEPS)}")
        self.model = model
        self.stage: Stage = stage
        self._step = STAGE_STEPS[stage]
        model.set_stage(stage)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._step(self.model, batch)

    def lr_scales(self) -> dict[str, float]:
        return {}

    def after_step(self) -> None:
        return None

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)


# ----- ablation variants (METHODS §4: CBP alone, VLP alone, only F, only B, full alternation) ------------------------

# (stages run once first, stages of one alternation round)
VARIANT_STAGES: dict[str, tuple[tuple[Stage, ...], tuple[Stage, ...]]] = {
    "cbp_only": (("warmup",), ()),
    "vlp_only": (("vlp_warmup",), ()),
    "only_f": (("warmup",), ("F",)),  # F from the vanilla (untrained) VLP branch
    "only_b": (("warmup",), ("B",)),
    "full": (("warmup",), ("B", "F")),
}
# Branch whose CAS is evaluated. The paper infers from CBP; for "only F / only B" the review says the two branches'
# results were averaged or weighted ("fused": `inference.fuse_probs`).
VARIANT_EVAL_BRANCH: dict[str, str] = {
    "cbp_only": "cbp",
    "vlp_only": "vlp",
    "only_f": "fused",
    "only_b": "fused",
    "full": "cbp",
}


def stage_schedule(variant: str, rounds: int = 1) -> tuple[Stage, ...]:
    """The stage sequence of an ablation variant with `rounds` alternation rounds, e.g. full, 2 → warmup B F B F."""
    if variant not in VARIANT_STAGES:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANT_STAGES)}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    first, per_round = VARIANT_STAGES[variant]
    return first + per_round * rounds
