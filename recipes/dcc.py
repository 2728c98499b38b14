"""DCC staged training recipe: one recipe, the stage (warm-up, B step, F step, VLP warm-up) chosen by its config.

DCC (Ju et al., CVPR 2023; METHODS §4) trains in stages — the CBP warm-up with the MIL loss, then alternating B steps
(frozen CBP teaches VLP) and F steps (frozen VLP teaches CBP). Each stage is a separate training job of the DAG
(`flows.reproduce_dcc`), so this recipe trains **one** stage (`DCCRecipeConfig.stage`) of a `models.dcc.DCC` wrapped in
`DCCStage` (only that stage's parameters train), starting from the previous stage's final weights
(``init_from``: the ``model.pt`` the previous job saved — the whole `DCCStage` state dict, both branches). A job
that resumes from its own Ray checkpoint restores those weights from the checkpoint instead (the engine loads it after
`build_model`), so ``init_from`` only seeds a fresh start.

Schedule of one stage (the engine's `TrainConfig`, derived from the model config so it has one source of truth):
epochs = ``model.stages.warmup_epochs`` for "warmup" / "vlp_warmup", ``model.stages.step_epochs`` for "B" / "F";
global batch = ``model.stages.batch_size`` videos; optimiser = ``model.optim`` (paper: Adam, lr 1e-4); data =
`pipelines.datasets.wtal_data` windows of ``model.window`` snippets.

**Evaluation** (`evaluate_dcc`, on the test videos, whole): for each branch — CBP (the paper's inference branch), VLP
and their average (the "fused" CAS the review reports for the only-B / only-F rows, `inference.fuse_probs`) —

- detections: class threshold θ_cls, multi-threshold proposals, outer-inner contrast, Gaussian soft-NMS
  (`models.dcc.inference.localize`); **mAP** at THUMOS14's tIoU 0.1:0.1:0.7 with AVG(0.1:0.5), AVG(0.3:0.7),
  AVG(0.1:0.7) and at ActivityNet's 0.5:0.05:0.95 (`models.common.metrics.detection`, fractions);
- the **pseudo-labels** the branch would hand the other one (δ_h, δ_l): foreground/background IoU against the
  ground-truth snippet masks and their mean (`inference.pseudo_label_miou`);
- on the mini world, **phase coverage**: the share of snippets of each phase category (core, run-up/follow-through
  edges, static context, still distractor, empty background) that the branch marks confident foreground or
  background, and its mean label probability there. This is the probe of the paper's claim "CBP is incomplete (misses
  the edges), VLP over-complete (fires on the static context)".

Metric keys: ``<branch>/mAP@0.1`` … ``<branch>/AVG(0.1:0.7)``, ``<branch>/anet/mAP@0.50`` …
``<branch>/anet/average_mAP``, ``<branch>/pseudo/{fg_iou,bg_iou,miou}``, ``<branch>/phase/<category>/{fg,bg,prob}``.
`export` writes the ActivityNet result file of each branch (``predictions_<branch>.json``, scorable with
``vlrepro eval detection``) and ``timeline.json`` (CAS, pseudo-labels and detections of a few test videos, for the
timeline plot of `infra.plots_wtal`) into the job's model folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.common.metrics.detection import ANET_TIOU, THUMOS14_TIOU, detection_map, thumos_summary
from models.config import build as build_config
from models.dcc import DCC, DCCConfig, DCCStage, Stage
from models.dcc import build as build_dcc
from models.dcc.inference import fuse_probs, localize, pseudo_label_masks, pseudo_label_miou, to_activitynet
from models.dcc.losses import video_scores
from models.engine.loop import Batch, TrainConfig
from pipelines.datasets.wtal import write_predictions
from pipelines.datasets.wtal_data import PHASE_CATEGORIES, EvalVideo, WTALData, WTALDataConfig

WARMUP_STAGES: frozenset[str] = frozenset({"warmup", "vlp_warmup"})
BRANCHES: tuple[str, ...] = ("cbp", "vlp", "fused")
TIMELINE_DETECTIONS = 8  # detections per video and branch kept for the timeline plot


@dataclass(frozen=True)
class DCCRecipeConfig:
    data: WTALDataConfig = field(default_factory=WTALDataConfig)
    model: DCCConfig = field(default_factory=DCCConfig)
    stage: Stage = "warmup"  # which stage this job trains (models.dcc.STAGE_PREFIXES)
    init_from: str | None = None  # the previous stage's model.pt (a DCCStage state dict); None = fresh init
    seed: int = 0
    eval_every_epochs: int = 0  # 0 = evaluate after the last epoch only (the driver evaluates again anyway)
    timeline_videos: int = 3  # test videos exported for the timeline plot


def load_state(path: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict")
    return state


@dataclass
class BranchCas:
    """One video's per-branch outputs: probs (T, C) and video scores (C,) as numpy."""

    probs: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


@torch.no_grad()
def branch_outputs(model: DCC, video: EvalVideo) -> BranchCas:
    """CAS and video scores of each branch (and their average) on one whole video, in eval mode."""
    v = video.video
    batch: dict[str, torch.Tensor] = {
        "features": torch.from_numpy(v.features)[None],  # (1, T, D)
        "mask": torch.ones(1, v.n_snippets, dtype=torch.bool),
    }
    probs: dict[str, torch.Tensor] = {}
    scores: dict[str, torch.Tensor] = {}
    probs["cbp"], scores["cbp"] = model.localization_inputs(batch, branch="cbp")
    if v.clip is not None:
        batch["clip"] = torch.from_numpy(v.clip)[None]
        probs["vlp"], scores["vlp"] = model.localization_inputs(batch, branch="vlp")
        probs["fused"] = fuse_probs(probs["cbp"], probs["vlp"])
        scores["fused"] = video_scores(probs["fused"], batch["mask"], model.cfg.mil_topk_ratio)
    return BranchCas(
        {k: p[0].numpy().astype(np.float64) for k, p in probs.items()},
        {k: s[0].numpy().astype(np.float64) for k, s in scores.items()},
    )


def phase_coverage(
    probs: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    fg: Sequence[np.ndarray],
    bg: Sequence[np.ndarray],
    phases: Sequence[np.ndarray],
) -> dict[str, dict[str, float]]:
    """Per phase category: share of its snippets marked confident foreground / background, mean label probability.

    The label probability of a snippet is the max over the video's labelled classes (what the pseudo-label rule
    thresholds). Categories without snippets get NaN.
    """
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(PHASE_CATEGORIES):
        n = 0
        fg_n = bg_n = 0
        prob_sum = 0.0
        for p, y, f, b, ph in zip(probs, labels, fg, bg, phases):
            sel = ph == k
            if not sel.any():
                continue
            lab = np.flatnonzero(np.asarray(y) > 0.5)
            label_prob = p[:, lab].max(axis=1) if lab.size else np.zeros(len(p))  # (T,)
            n += int(sel.sum())
            fg_n += int(f[sel].sum())
            bg_n += int(b[sel].sum())
            prob_sum += float(label_prob[sel].sum())
        nan = float("nan")
        out[name] = {
            "fg": fg_n / n if n else nan,
            "bg": bg_n / n if n else nan,
            "prob": prob_sum / n if n else nan,
            "snippets": float(n),
        }
    return out


def evaluate_dcc(model: DCC, data: WTALData, timeline_videos: int = 3) -> dict[str, Any]:
    """The full evaluation report (module docstring): per branch detection mAP, pseudo-label mIoU, phase coverage;
    plus ``predictions`` (ActivityNet ``results`` per branch) and ``timeline`` (a few videos) for `export`."""
    cfg = model.cfg
    classes = list(model.class_names)
    evalset = data.eval_set
    outputs = [branch_outputs(model, ev) for ev in evalset]
    branches = [b for b in BRANCHES if b in outputs[0].probs]
    gt_db = data.ground_truth_database()
    report: dict[str, Any] = {"branches": {}, "n_test_videos": len(evalset), "classes": classes}
    predictions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    masks: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for b in branches:
        results: dict[str, list[dict[str, Any]]] = {}
        fgs, bgs = [], []
        for ev, out in zip(evalset, outputs):
            segs = localize(out.probs[b], out.scores[b], cfg.inference, ev.video.duration)
            results[ev.video.key] = to_activitynet(segs, classes)
            fg, bg = pseudo_label_masks(out.probs[b], ev.video.labels, cfg.distill.high, cfg.distill.low)
            fgs.append(fg)
            bgs.append(bg)
        thumos = detection_map(gt_db, results, THUMOS14_TIOU, classes=classes)
        anet = detection_map(gt_db, results, ANET_TIOU, classes=classes)
        block: dict[str, Any] = {
            "thumos": thumos_summary(thumos),
            "thumos_per_class_ap": thumos["per_class_ap"],
            "anet": {f"mAP@{t:.2f}": m for t, m in zip(anet["tiou"], anet["mAP"])}
            | {"average_mAP": anet["average_mAP"]},
            "pseudo": pseudo_label_miou(fgs, bgs, [ev.gt_foreground for ev in evalset]),
            "n_detections": sum(len(r) for r in results.values()),
        }
        if all(ev.phases is not None for ev in evalset):
            block["phases"] = phase_coverage(
                [o.probs[b] for o in outputs],
                [ev.video.labels for ev in evalset],
                fgs,
                bgs,
                [ev.phases for ev in evalset if ev.phases is not None],
            )
        report["branches"][b] = block
        predictions[b] = results
        masks[b] = (fgs, bgs)
    report["predictions"] = predictions
    report["timeline"] = _timeline(data, evalset[:timeline_videos], outputs, predictions, masks, classes)
    return report


def _timeline(
    data: WTALData,
    evalset: Sequence[EvalVideo],
    outputs: Sequence[BranchCas],
    predictions: Mapping[str, Mapping[str, list[dict[str, Any]]]],
    masks: Mapping[str, tuple[list[np.ndarray], list[np.ndarray]]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """What the timeline plot draws for each video: ground truth (with phases), per-branch CAS of the video's labels,
    pseudo-labels and the top detections."""
    videos = []
    for i, (ev, out) in enumerate(zip(evalset, outputs)):
        key = ev.video.key
        labels = [int(c) for c in np.flatnonzero(ev.video.labels > 0.5)]
        raw = data.raw_database.get(key, {})
        phases = [
            [float(s), float(e), name]
            for a in raw.get("annotations", [])
            for name, (s, e) in a.get("phases", {}).items()
        ]
        videos.append(
            {
                "key": key,
                "duration": ev.video.duration,
                "seconds_per_snippet": data.cfg.snippet / data.cfg.fps,
                "labels": [classes[c] for c in labels],
                "instances": [[s, e, classes[c]] for s, e, c in ev.instances],
                "phases": phases,
                "distractors": [[*d["segment"], d["label"]] for d in raw.get("distractors", [])],
                "cas": {b: out.probs[b][:, labels].T.round(4).tolist() for b in out.probs},
                "pseudo": {
                    b: {"fg": masks[b][0][i].astype(int).tolist(), "bg": masks[b][1][i].astype(int).tolist()}
                    for b in masks
                },
                "detections": {
                    b: sorted(predictions[b][key], key=lambda d: -d["score"])[:TIMELINE_DETECTIONS] for b in predictions
                },
            }
        )
    return {"videos": videos}


def flatten_report(report: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics of `evaluate_dcc`'s report (keys in the module docstring)."""
    out: dict[str, float] = {}
    for b, block in report["branches"].items():
        out.update({f"{b}/{k}": float(v) for k, v in block["thumos"].items()})
        out.update({f"{b}/anet/{k}": float(v) for k, v in block["anet"].items()})
        out.update({f"{b}/pseudo/{k}": float(v) for k, v in block["pseudo"].items()})
        for cat, cov in block.get("phases", {}).items():
            out.update({f"{b}/phase/{cat}/{k}": float(cov[k]) for k in ("fg", "bg", "prob") if np.isfinite(cov[k])})
    return out


class DCCRecipe:
    def __init__(self, cfg: DCCRecipeConfig) -> None:
        self.cfg = replace(cfg, data=replace(cfg.data, window=cfg.model.window))  # one window: the model's
        stages = cfg.model.stages
        self.train: TrainConfig = TrainConfig(
            epochs=stages.warmup_epochs if cfg.stage in WARMUP_STAGES else stages.step_epochs,
            batch_size=stages.batch_size,
            seed=cfg.seed,
            optim=cfg.model.optim,
            eval_every_epochs=cfg.eval_every_epochs,
        )
        self.last_report: dict[str, Any] | None = None
        self._exports: dict[str, Any] | None = None

    @cached_property
    def data(self) -> WTALData:
        return WTALData(self.cfg.data, self.train.batch_size, self.train.seed)

    def build_model(self) -> DCCStage:
        model = build_dcc(self.cfg.model, self.data.class_names)
        stage = DCCStage(model, self.cfg.stage)
        if self.cfg.init_from:
            stage.load_state_dict(load_state(self.cfg.init_from))
        return stage

    def steps_per_epoch(self, world_size: int) -> int:
        return self.data.steps_per_epoch(world_size)

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        # the CBP warm-up never reads the CLIP features: don't collate them
        return self.data.batches(epoch, rank, world_size, start, with_clip=self.cfg.stage != "warmup")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        dcc = model.model if isinstance(model, DCCStage) else model
        if not isinstance(dcc, DCC):
            raise TypeError(f"expected a DCC or DCCStage model, got {type(model).__name__}")
        full = evaluate_dcc(dcc, self.data, self.cfg.timeline_videos)
        self._exports = {k: full.pop(k) for k in ("predictions", "timeline")}
        self.last_report = full
        return flatten_report(full)

    def export(self, model: nn.Module, model_dir: str | Path) -> None:
        """ActivityNet result files per branch and the timeline data, beside ``model.pt``."""
        if self._exports is None:
            self.evaluate(model)
        assert self._exports is not None
        out = Path(model_dir)
        details = f"DCC {self.cfg.stage} stage; two-stream I3D snippet features"
        for branch, results in self._exports["predictions"].items():
            write_predictions(
                out / f"predictions_{branch}.json", results, external_data={"used": False, "details": details}
            )
        (out / "timeline.json").write_text(json.dumps(self._exports["timeline"]), encoding="utf-8")


def build(config: Mapping[str, Any]) -> DCCRecipe:
    return DCCRecipe(build_config(DCCRecipeConfig, config))
