"""The DCC experiment: each job's config from the spec, the step records, the ablation rows and the result.

Specs: ``recipes/configs/dcc/mini-wtal.yaml`` — the mini DCC config, the per-size overrides of each job (``dcc``,
``i3d``, ``tvl1``; the mini CLIP's are its own spec, shared by every DAG), the ablation chains — and one per real
benchmark (`BENCHMARKS`: ``thumos14.yaml``, ``activitynet12.yaml``): the paper's config with its provenance, sizes
``paper`` and ``smoke``, the ingest settings and the paper's numbers. The DAG: `flows/reproduce_dcc.py`. Every
function here takes the dataset (default: the mini world's, whose behaviour is unchanged).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.config import build, merge, to_dict
from models.dcc import VARIANT_EVAL_BRANCH
from pipelines.features.i3d import I3DFeatureConfig
from pipelines.features.tvl1 import TVL1Config
from recipes.dcc import DCCRecipeConfig
from recipes.experiments import PENDING_CLIP, PENDING_WORLD, mini_clip_config, pending
from recipes.spec import PaperSpec, SpecError, load_spec

SPEC = load_spec("dcc", "mini-wtal")
PAPER = SPEC.paper
#: the registry's champion metric: THUMOS-style average mAP over tIoU 0.1:0.7 of the CBP branch (the paper infers
#: from CBP); fractions
METRIC = SPEC.metric
MAIN_VARIANT: str = SPEC.extra["main_variant"]
#: ablation rows in the order of the paper's table
ABLATIONS: tuple[str, ...] = tuple(SPEC.extra["ablation_chains"])
JOB_KINDS = ("miniclip", "tvl1", "i3d", "dcc")
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    size: {job: SPEC.size_overrides(size, job) for job in ("dcc", "i3d", "tvl1")} for size in SPEC.sizes
}
#: the real benchmarks the DAG runs on, each with its spec (``recipes/configs/dcc/<name>.yaml``) → the recipe's
#: ground-truth format (`pipelines.datasets.wtal_data.LOADERS`) of the ground truth the DAG writes for it
BENCHMARKS: dict[str, str] = {"thumos14": "thumos14", "activitynet12": "activitynet1.2"}
BENCHMARK_JOB_KINDS = ("tvl1", "i3d", "dcc")
#: the size a run gets when none is asked for: the mini world's demo size, a benchmark's paper config
DEFAULT_SIZE = {"mini": "small", "benchmark": "paper"}


def is_benchmark(dataset: str) -> bool:
    return dataset != SPEC.dataset


def spec_of(dataset: str) -> PaperSpec:
    """The spec of `dataset`: the mini world's or a benchmark's (`SpecError` naming the specs DCC has)."""
    return SPEC if dataset == SPEC.dataset else load_spec(PAPER, dataset)


def default_size(dataset: str) -> str:
    return DEFAULT_SIZE["benchmark" if is_benchmark(dataset) else "mini"]


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
    dataset: str = SPEC.dataset,
) -> dict[str, dict[str, Any]]:
    """Every job's config as the DAG would resolve it (``--print-config``): the mini CLIP (mini world only), TV-L1,
    I3D and the DCC base every warm-up/B/F step derives from (`step_config`), with what the stages produce as
    stand-ins (the CBP input width is the I3D network's); `user` are the routed ``--set`` overrides (job kind →
    overrides)."""
    if is_benchmark(dataset):
        return benchmark_job_configs(dataset, size, user)
    user = {kind: {} for kind in JOB_KINDS} | (user or {})
    tvl1, i3d = feature_configs(size, user)
    from pipelines.features.i3d import build_two_stream

    width = build_two_stream(build(I3DFeatureConfig, i3d)).feature_dim  # what the I3D stage will report
    pending_i3d = {"stage_uri": pending("i3d-features"), "feature_dim": width}
    pending_clip = {"stage_uri": pending("clip-features")}
    return {
        "miniclip": mini_clip_config(size, user["miniclip"]),
        "tvl1": tvl1,
        "i3d": i3d,
        "dcc": base_config(PENDING_WORLD, pending_i3d, pending_clip, PENDING_CLIP, size, user["dcc"]),
    }


def feature_configs(
    size: str, user: dict[str, dict[str, Any]], dataset: str = SPEC.dataset
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TV-L1 config, I3D config) as plain dicts: the mini world's I3D is the random-init tiny width (1/16 → 64-d
    per stream); `i3d.rgb_weights` / `i3d.flow_weights` / `i3d.width=1.0` select pytorch-i3d checkpoints. A
    benchmark's come from its spec (the paper's: pytorch-i3d files at full width, see `resolve_i3d_weights`)."""
    if is_benchmark(dataset):
        spec = spec_of(dataset)
        tvl1_b = {**spec.base("tvl1"), **spec.size_overrides(size, "tvl1"), **user.get("tvl1", {})}
        i3d_b = {**spec.base("i3d"), **spec.size_overrides(size, "i3d"), **user.get("i3d", {})}
        return asdict(merge(TVL1Config(), tvl1_b)), asdict(merge(I3DFeatureConfig(), i3d_b))
    tvl1 = merge(TVL1Config(), {**SIZES[size]["tvl1"], **user["tvl1"]})
    i3d = merge(I3DFeatureConfig.tiny(), {**SIZES[size]["i3d"], **user["i3d"]})
    return asdict(tvl1), asdict(i3d)


def base_config(
    world: dict[str, Any],
    i3d: dict[str, Any],
    clip_features: dict[str, Any],
    clip: dict[str, Any],
    size: str,
    user: dict[str, Any],
) -> dict[str, Any]:
    """The mini YAML, the stage URIs, the I3D width, the mini CLIP checkpoint, then size and user overrides."""
    cfg = merge(build(DCCRecipeConfig), SPEC.base("dcc"))
    cfg = merge(
        cfg,
        {
            "data.i3d_stage": i3d["stage_uri"],
            "data.clip_stage": clip_features["stage_uri"],
            "data.ground_truth": world["annotations"],
            "data.ground_truth_format": "mini-wtal",
            "model.cbp.input_dim": i3d["feature_dim"],
            "model.vlp.clip.arch": clip["clip_arch"],
            "model.vlp.clip.pretrained": clip["clip_checkpoint"],
        },
    )
    return to_dict(merge(merge(cfg, SIZES[size]["dcc"]), user))


def step_config(base: dict[str, Any], stage: str, init_from: str | None) -> dict[str, Any]:
    """One warm-up / B / F step of the chain: the base config, its stage, the previous step's weights."""
    return to_dict(merge(build(DCCRecipeConfig, base), {"stage": stage, "init_from": init_from}))


def step_record(i: int, stage: str, result: dict[str, Any], reused: bool) -> dict[str, Any]:
    """What the DAG keeps of one finished step job (the next step starts from its ``model``)."""
    return {
        "step": i,
        "stage": stage,
        "run_name": result["run_name"],
        "run_id": result["run_id"],
        "model": str(Path(result["model_dir"]) / "model.pt"),
        "model_dir": result["model_dir"],
        "metrics": result["metrics"],
        "model_version": (result.get("registered") or {}).get("version"),
        "seconds": result.get("seconds"),
        "reused": reused,
    }


def table_row(variant: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One ablation row: the variant's evaluated branch's average mAPs and both branches' pseudo-label mIoU and
    phase coverage (share of core / edge / context snippets marked confident foreground)."""
    branch = VARIANT_EVAL_BRANCH[variant]
    m = steps[-1]["metrics"]

    def get(key: str) -> float | None:
        v = m.get(key)
        return float(v) if isinstance(v, int | float) else None

    row: dict[str, Any] = {
        "variant": variant,
        "schedule": " ".join(s["stage"] for s in steps),
        "branch": branch,
        **{k: get(f"{branch}/{k}") for k in ("AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)", "mAP@0.5")},
        "anet_avg": get(f"{branch}/anet/average_mAP"),
        "cbp_miou": get("cbp/pseudo/miou"),
        "vlp_miou": get("vlp/pseudo/miou"),
    }
    for b in ("cbp", "vlp"):
        for phase in ("core", "edges", "context"):
            row[f"{b}_fg_{phase}"] = get(f"{b}/phase/{phase}/fg")
    row["run_name"] = steps[-1]["run_name"]
    return row


def dag_result(
    key: str,
    stages: Mapping[str, str],
    main: list[dict[str, Any]],
    scored: Mapping[str, Any],
    ground_truth: str,
) -> dict[str, Any]:
    """What the DCC DAG returns of its main chain: the stages, the steps, the scored detections of the evaluated
    branch, both branches' pseudo-label mIoU and phase coverage, the registered version."""
    m = main[-1]["metrics"]
    return {
        "paper": PAPER,
        "dataset": key,
        **stages,
        "steps": [{k: v for k, v in s.items() if k not in ("metrics", "model_dir")} for s in main],
        "results": {
            "branch": VARIANT_EVAL_BRANCH[MAIN_VARIANT],
            "thumos": scored["thumos"],
            "anet": scored["anet"],
            "pseudo_miou": {b: m.get(f"{b}/pseudo/miou") for b in ("cbp", "vlp")},
            "phase_fg": {
                b: {p: m.get(f"{b}/phase/{p}/fg") for p in ("core", "edges", "context", "distractor", "empty")}
                for b in ("cbp", "vlp")
            },
            "predictions": scored["predictions"],
            "ground_truth": ground_truth,
        },
        "model_version": main[-1]["model_version"],
        "paper_vs_ours": SPEC.paper_vs_ours({MAIN_VARIANT: main[-1]["metrics"]}),
    }


def check_request(
    dataset: str,
    size: str | None,
    flow_workers: int,
    data_dir: str | None = None,
    features: str | None = None,
    video_dir: str | None = None,
) -> str:
    """The DAG's arguments, before any work (a `ValueError` / `SpecError` naming what is wrong); the size to run
    (`default_size` when None)."""
    if flow_workers < 1:
        raise ValueError(f"flow_workers must be >= 1, got {flow_workers}")
    if not is_benchmark(dataset):
        given = [f for f, v in (("--data-dir", data_dir), ("--video-dir", video_dir), ("--features", features)) if v]
        if given:
            raise ValueError(f"{dataset} is generated by the project: {', '.join(given)} name a real benchmark's files")
        return SPEC.check_size(size or default_size(dataset))
    if dataset not in BENCHMARKS:
        raise SpecError(f"dcc has no DAG for dataset {dataset!r}; it runs on {[SPEC.dataset, *BENCHMARKS]}")
    spec = spec_of(dataset)
    if not data_dir:
        raise ValueError(f"--data-dir is required for {dataset}: the folder holding its annotation files")
    for flag, folder in (("--data-dir", data_dir), ("--video-dir", video_dir), ("--features", features)):
        if folder and not Path(folder).expanduser().is_dir():
            raise ValueError(f"{flag} {folder}: not a folder")
    return spec.check_size(size or default_size(dataset))


# ----- the real benchmarks ------------------------------------------------------------------------------------------


def benchmark_key(dataset: str, data_dir: str, video_dir: str | None) -> str:
    """Stage folder name of a benchmark download: the dataset and a digest of where its files are (two downloads on
    one run root never share stages)."""
    where = "|".join(str(Path(p).expanduser().resolve()) for p in (data_dir, video_dir or data_dir))
    return f"{dataset}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def i3d_feature_dim(width: float) -> int:
    """RGB + flow width of the two-stream I3D at `width` (`models.i3d.I3D.feature_dim` without building it: the sum
    of Mixed_5c's scaled branches; 2 × 1024 at full width)."""
    from models.i3d import ENDPOINTS, scaled

    b0, _, b1b, _, b2b, b3b = ENDPOINTS[-1][1][1]
    return 2 * sum(scaled(c, width) for c in (b0, b1b, b2b, b3b))


def benchmark_job_configs(
    dataset: str, size: str, user: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """A benchmark's job configs (``--print-config``): TV-L1, I3D and the DCC base, stages as stand-ins."""
    user = {kind: {} for kind in BENCHMARK_JOB_KINDS} | (user or {})
    tvl1, i3d = feature_configs(size, user, dataset)
    pending_i3d = {"stage_uri": pending("i3d-features"), "feature_dim": i3d_feature_dim(i3d["width"])}
    return {
        "tvl1": tvl1,
        "i3d": i3d,
        "dcc": benchmark_config(
            dataset,
            "<the benchmark's ground truth (ground_truth-<digest>.json)>",
            pending_i3d,
            pending("clip-features"),
            size,
            user["dcc"],
        ),
    }


def benchmark_config(
    dataset: str,
    ground_truth: str,
    i3d: Mapping[str, Any],
    clip_stage: str,
    size: str,
    user: Mapping[str, Any],
) -> dict[str, Any]:
    """The benchmark's DCC base config: the spec, the stage URIs (`clip_stage` "" = no VLP input: CBP only), the
    ground truth the DAG wrote, the I3D width, then size and user overrides."""
    spec = spec_of(dataset)
    cfg = merge(build(DCCRecipeConfig), spec.base("dcc"))
    cfg = merge(
        cfg,
        {
            "data.i3d_stage": i3d["stage_uri"],
            "data.clip_stage": clip_stage,
            "data.ground_truth": ground_truth,
            "data.ground_truth_format": BENCHMARKS[dataset],
            "model.cbp.input_dim": i3d["feature_dim"],
        },
    )
    return to_dict(merge(merge(cfg, spec.size_overrides(size, "dcc")), dict(user)))


def main_variant(dataset: str, user: Mapping[str, Any], size: str) -> str:
    """The variant a benchmark run's main chain trains: the spec's (the paper's alternation) unless
    ``--set dcc.model.stages.variant=…`` asks for another (e.g. ``cbp_only`` with released features and no videos)."""
    stand_in = {"stage_uri": pending("i3d-features"), "feature_dim": 1}
    return str(benchmark_config(dataset, "", stand_in, "", size, user)["model"]["stages"]["variant"])


def needs_frames(variant: str, features: str | None) -> bool:
    """Whether a benchmark run needs the videos' frames: for the I3D features (unless released ones are given) and
    for the VLP branch's CLIP frame features (every variant but ``cbp_only``)."""
    return not features or variant != "cbp_only"


def check_videos_found(dataset: str, prepared: Mapping[str, Any], features: str | None) -> None:
    """A benchmark run that needs frames must have found training and test videos (`ValueError` saying what to
    pass); `prepared` is `pipelines.datasets.wtal_sources.prepare`'s output."""
    lacking = [role for role in ("train", "test") if not prepared["found"].get(role)]
    if not lacking:
        return
    subsets = {s["role"]: (name, s["annotated"]) for name, s in prepared["splits"].items()}
    name, annotated = subsets[lacking[0]]
    where = f"none of the {annotated} annotated {dataset} {name} videos was found under {prepared['video_dir']}"
    if features:
        raise ValueError(
            f"DCC's VLP branch needs the videos' frames (frozen CLIP ViT-B/16 frame features), but {where}: pass "
            "--video-dir DIR, or train the CBP branch alone on the released features with --set "
            "dcc.model.stages.variant=cbp_only (the paper's 'CBP only' row, not DCC: never compared with its numbers)"
        )
    raise ValueError(
        f"{where} (files named <video id> with a video extension): pass --video-dir DIR, or start from released I3D "
        "features with --features DIR"
    )


def ingest_settings(dataset: str, size: str) -> dict[str, Any]:
    """How a benchmark's videos are decoded (`flows.ingest.ingest_flow` keywords): the spec's ``extra.ingest``, then
    ``extra.ingest_sizes[size]``."""
    spec = spec_of(dataset)
    return {**spec.extra["ingest"], **(spec.extra.get("ingest_sizes") or {}).get(size, {})}


def excluded_videos(dataset: str) -> tuple[str, ...]:
    """Videos the protocol leaves out (THUMOS14: the W-TAL repos' 3 test videos), from the spec."""
    return tuple(str(v) for v in spec_of(dataset).extra.get("exclude") or ())


def resolve_i3d_weights(i3d: Mapping[str, Any], data_dir: str) -> dict[str, Any]:
    """The I3D config with each weights file resolved: a path that exists, else a bare file name found anywhere under
    `data_dir` (the spec names pytorch-i3d's ``rgb_imagenet.pt`` / ``flow_imagenet.pt``); None stays random init.
    Raises `FileNotFoundError` saying how to give them."""
    from pipelines.datasets.files import FileIndex

    out = dict(i3d)
    index: FileIndex | None = None
    for field in ("rgb_weights", "flow_weights"):
        name = out.get(field)
        if not name:
            continue
        path = Path(str(name)).expanduser()
        if path.is_file():
            out[field] = str(path.resolve())
            continue
        if len(path.parts) == 1:
            index = index or FileIndex(Path(data_dir).expanduser())
            hit = index.find(path.name, required=False)
            if hit is not None:
                out[field] = str(hit.resolve())
                continue
        raise FileNotFoundError(
            f"I3D weights {name!r} not found (as given, or under --data-dir {data_dir}): download pytorch-i3d's "
            f"models/{path.name} and pass --set i3d.{field}=/path/to/{path.name}, or start from released features "
            "with --features DIR"
        )
    return out


def percent_metrics(scored: Mapping[str, Any], variant: str) -> dict[str, float]:
    """The DAG's scoring of `variant`'s evaluated branch as the paper reports it (percent): ``<branch>/AVG(0.3:0.7)``,
    ``<branch>/mAP@0.5``, …, ``<branch>/anet/average_mAP`` (the keys of the specs' ``reported``)."""
    branch = VARIANT_EVAL_BRANCH[variant]
    out = {f"{branch}/{k}": 100.0 * float(v) for k, v in scored["thumos"].items()}
    out.update({f"{branch}/anet/{k}": 100.0 * float(v) for k, v in scored["anet"].items()})
    return out


def benchmark_result(
    dataset: str,
    key: str,
    stages: Mapping[str, str | None],
    main: list[dict[str, Any]],
    scored: Mapping[str, Any],
    variant: str,
    ledger: Mapping[str, Any],
) -> dict[str, Any]:
    """What the DCC DAG returns on a benchmark: `dag_result`'s fields for the main chain (`variant`), its scoring on
    the whole test subset (fractions) and the paper's numbers beside ours in percent (``paper_vs_ours``: the main
    variant's rows only when the run trained it), the ledger."""
    spec = spec_of(dataset)
    m = main[-1]["metrics"]
    return {
        "paper": PAPER,
        "dataset": dataset,
        "data": key,
        **stages,
        "variant": variant,
        "steps": [{k: v for k, v in s.items() if k not in ("metrics", "model_dir")} for s in main],
        "results": {
            "branch": VARIANT_EVAL_BRANCH[variant],
            "thumos": scored["thumos"],
            "anet": scored["anet"],
            "per_class_ap": scored.get("thumos_per_class_ap"),
            "scored": {
                k: scored.get(k) for k in ("test_subset", "test_videos", "predicted_videos", "ambiguous_segments")
            },
            "pseudo_miou": {b: m.get(f"{b}/pseudo/miou") for b in ("cbp", "vlp")},
            "predictions": scored["predictions"],
            "ground_truth": ledger.get("ground_truth", ""),
        },
        "model_version": main[-1]["model_version"],
        "paper_vs_ours": spec.paper_vs_ours({variant: percent_metrics(scored, variant)}),
        "ledger": dict(ledger),
    }


def parent_summary(
    key: str, main: list[dict[str, Any]], scored: Mapping[str, Any], table: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """What the DAG's parent MLflow run logs (`infra.results`): the main chain's final metrics and steps, the scored
    detections, the ablation table."""
    return {
        "dataset": key,
        "metrics": main[-1]["metrics"],
        "scored": scored,
        "steps": [{k: s[k] for k in ("step", "stage", "run_name", "run_id")} for s in main],
        "ablations": table,
        "paper_vs_ours": SPEC.paper_vs_ours({MAIN_VARIANT: main[-1]["metrics"]}),
    }


def final_file(steps: list[dict[str, Any]], name: str) -> str:
    """A file the chain's final step wrote into its model folder (``timeline.json``, ``predictions_<branch>.json``)."""
    return str(Path(steps[-1]["model_dir"]) / name)
