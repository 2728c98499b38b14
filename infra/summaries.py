"""Typed views of what a DAG's stages return: a flow reads fields, not string keys.

Tasks return small JSON dicts — Prefect persists them as JSON under the run root, and a JSON record names no class to
import (`flows.runtime`) — and a flow wraps each one once, where it receives it, in the view below. A missing key
fails there, with the stage's name, instead of deep inside a later stage.

| view | made by | carries |
|---|---|---|
| `World` | `make_data` (a generated mini world) | sources CSV, annotations, frame–caption pairs, extra files |
| `StageRef` | ingest, every feature stage | the committed stage's URI and sample count |
| `MiniClip` | `pretrain_mini_clip` | the checkpoint and arch the feature stages read, its skill, run and version |
| `JobResult` | `train` (`infra.training_job.run_job`) | run name and id, metrics, report, model folder, version |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _need(summary: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in summary:
        raise KeyError(f"{what}: the stage's summary has no {key!r} (keys: {sorted(summary)})")
    return summary[key]


@dataclass(frozen=True)
class World:
    name: str
    path: str
    sources_csv: str
    annotations: str
    image_text: str
    extra_files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> World:
        return cls(
            name=str(_need(summary, "name", "world")),
            path=str(summary.get("path", "")),
            sources_csv=str(_need(summary, "sources_csv", "world")),
            annotations=str(_need(summary, "annotations", "world")),
            image_text=str(_need(summary, "image_text", "world")),
            extra_files={str(k): str(v) for k, v in (summary.get("extra_files") or {}).items()},
        )


@dataclass(frozen=True)
class StageRef:
    """A committed shard stage (`pipelines.shards`): where it is and how many samples it holds."""

    uri: str
    n_samples: int | None = None

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> StageRef:
        n = summary.get("n_samples", summary.get("n_ok"))
        return cls(uri=str(_need(summary, "stage_uri", "stage")), n_samples=None if n is None else int(n))


@dataclass(frozen=True)
class MiniClip:
    checkpoint: str  # clip.pt of the registered model folder
    arch: str
    run_id: str
    frame2caption_r1: float | None
    model_version: Any

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> MiniClip:
        return cls(
            checkpoint=str(_need(result, "clip_checkpoint", "mini CLIP")),
            arch=str(_need(result, "clip_arch", "mini CLIP")),
            run_id=str(_need(result, "run_id", "mini CLIP")),
            frame2caption_r1=(result.get("metrics") or {}).get("frame2caption/R@1"),
            model_version=_version(result),
        )

    @property
    def config(self) -> dict[str, str]:
        """What a job's config takes of it (`recipes.experiments.PENDING_CLIP` is its stand-in)."""
        return {"clip_arch": self.arch, "clip_checkpoint": self.checkpoint}

    def summary(self) -> dict[str, Any]:
        """What a DAG reports of the mini CLIP it used: zero-shot skill, MLflow run, registered version."""
        return {"frame2caption_R@1": self.frame2caption_r1, "run_id": self.run_id, "model_version": self.model_version}


@dataclass(frozen=True)
class JobResult:
    """One finished training job (`infra.training_job.run_job`), and whether it had finished before this run."""

    run_name: str
    run_id: str
    metrics: dict[str, Any]
    report: dict[str, Any]
    model_dir: str | None
    model_version: Any
    reused: bool = False

    @classmethod
    def of(cls, result: Mapping[str, Any], reused: bool = False) -> JobResult:
        return cls(
            run_name=str(_need(result, "run_name", "job")),
            run_id=str(_need(result, "run_id", "job")),
            metrics=dict(result.get("metrics") or {}),
            report=dict(result.get("report") or {}),
            model_dir=result.get("model_dir"),
            model_version=_version(result),
            reused=reused,
        )

    def summary(self) -> dict[str, Any]:
        """What a DAG reports of the job: its metrics, run, registered version, and whether it was reused."""
        return {
            "metrics": self.metrics,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "model_version": self.model_version,
            "reused": self.reused,
        }

    def record(self) -> dict[str, Any]:
        """The job record the results tables read (`flows.ablations.build_table`)."""
        return {"run_name": self.run_name, "run_id": self.run_id, "report": self.report, "metrics": self.metrics}


def _version(result: Mapping[str, Any]) -> Any:
    """The registered version as the registry gave it (None when the job registers nothing)."""
    return (result.get("registered") or {}).get("version")
