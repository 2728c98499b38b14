"""`reproduce-clip4clip`: data → ingest → mini CLIP → frame features → train each head → evaluate → register.

Heads (CLIP4Clip §3.2): meanP, seqLSTM, seqTransf, tightTransf, plus meanP and seqTransf on 1 frame (the
paper's "one frame is not enough" finding, for a pooling head and for one that can use the order of the frames), and
tightTransf over the text tower seqTransf trained (`NEEDS`: that job runs first and its ``model.pt`` seeds this one).
A run trains `DEFAULT_VARIANTS` unless `variants` names others (their prerequisites are added).
Evaluation reports the whole test set and the mini world's **order-dependent subset** (reversal twins whose frame
multisets are identical, so order-blind pooling provably cannot separate them).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows import stages
from flows.ingest import ingest_flow
from infra.settings import Resources
from pipelines import storage
from recipes.clip4clip import Clip4ClipRecipeConfig
from recipes.experiments.retrieval import order_subsets, variant_config
from recipes.spec import load_spec

#: the experiment spec (recipes/configs/clip4clip/mini-retrieval.yaml): the mini base config, the heads (`VARIANTS`),
#: the heads a plain run trains, the size overrides, and the claims; the names below are views of it
SPEC = load_spec("clip4clip", "mini-retrieval")
VARIANTS: dict[str, dict[str, Any]] = SPEC.variants
#: variants that start from another variant's trained model: variant → (that variant, the config key that gets the
#: path of its ``model.pt``). The path is known before training (``<root>/models/<run name>``), so the dependent job's
#: config — and its cache key — digests its prerequisite's; `stages.train_together` starts it only after that job.
NEEDS: dict[str, tuple[str, str]] = {k: (v[0], v[1]) for k, v in SPEC.extra["needs"].items()}
DEFAULT_VARIANTS: tuple[str, ...] = SPEC.default_variants
SUBMIT_ORDER: tuple[str, ...] = tuple(SPEC.extra["submit_order"])
SIZES: dict[str, dict[str, Any]] = {size: SPEC.size_overrides(size, "clip4clip") for size in SPEC.sizes}


def with_prerequisites(variants: list[str]) -> list[str]:
    """`variants` plus the variants they need (`NEEDS`), in `VARIANTS` order."""
    wanted = set(variants)
    todo = list(variants)
    while todo:
        need = NEEDS.get(todo.pop())
        if need and need[0] not in wanted:
            wanted.add(need[0])
            todo.append(need[0])
    return [v for v in VARIANTS if v in wanted]


def head_config(
    features_uri: str,
    clip: dict[str, Any],
    subsets: dict[str, list[str]],
    variant: str,
    overrides: dict[str, Any],
    size: str = "small",
) -> dict[str, Any]:
    return variant_config(SPEC, Clip4ClipRecipeConfig, features_uri, clip, subsets, size, variant, overrides)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    rep = result.get("report", {})
    out = {k: rep[k] for k in ("overall", "order", "twins") if k in rep}
    out.update(
        run_id=result["run_id"],
        run_name=result["run_name"],
        model_version=(result.get("registered") or {}).get("version"),
    )
    return out


def job_configs(
    size: str,
    user: dict[str, dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    ablations: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every job's config as the DAG would resolve it (``--print-config``), with what the stages produce as
    stand-ins; `user` are the routed ``--set`` overrides (job kind → overrides). CLIP4Clip has no ablation table."""
    user = user or {}
    out = {"miniclip": stages.mini_clip_config(size, user.get("miniclip"))}
    for v in with_prerequisites(list(variants or DEFAULT_VARIANTS)):
        fixed = dict(user.get("clip4clip", {}))
        if v in NEEDS:
            fixed[NEEDS[v][1]] = f"<model.pt of the {NEEDS[v][0]} job>"
        out[f"clip4clip/{v}"] = head_config(stages.pending("clip-features"), stages.PENDING_CLIP, {}, v, fixed, size)
    return out


@flow(name="reproduce-clip4clip", log_prints=True)
def reproduce_clip4clip(
    dataset: str = "mini-retrieval",
    root: str = "runs",
    size: str = "small",
    seed: int = 0,
    variants: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 1,
    cpus_per_worker: float | None = None,
    parallel_jobs: int | None = None,
) -> dict[str, Any]:
    start = time.monotonic()
    root = storage.resolve_root(root)  # once, at the edge: every path below is absolute (or a URI)
    resources = Resources.resolve(cpus_per_worker, parallel_jobs)  # the lone mini CLIP: all; the heads: a share
    if dataset != "mini-retrieval":
        raise ValueError(
            f"the CLIP4Clip DAG runs on mini-retrieval here (got {dataset!r}); real datasets: ingest + train"
        )
    SPEC.check_size(size)
    if variants:
        SPEC.check_variants(list(variants))
    chosen = with_prerequisites(list(variants or DEFAULT_VARIANTS))
    # the one grammar: `key=v` reaches every job that has the key, `<job>.key=v` one job (before any work)
    user = stages.route_overrides(overrides, job_configs(size, variants=variants))
    t = stages.cached(root)
    key = stages.dataset_key(dataset, size, seed)
    world = t["make_data"](dataset, root, size, seed)
    # the mini CLIP trains on the world's still frames, not on the ingested clips: both stages run at once. Ray is
    # started here, in the main thread: started from a task thread, its node agents outlive the process.
    from infra.jobs import training_job
    from infra.ray_train import connect

    connect()
    clip_future = t["pretrain_mini_clip"].submit(
        root, key, world["image_text"], stages.mini_clip_overrides(size, user["miniclip"]), resources.cpus_per_worker
    )
    frames = ingest_flow(world["sources_csv"], root, key, **stages.MINI_INGEST[dataset])
    clip = clip_future.result()
    feats = t["extract_clip_features"](frames["stage_uri"], root, key, clip["clip_arch"], clip["clip_checkpoint"])
    subsets = order_subsets(world["annotations"])
    jobs: dict[str, dict[str, Any]] = {}
    run_names: dict[str, str] = {}
    for variant in sorted(chosen, key=lambda v: v in NEEDS):  # prerequisites first: their run names feed configs
        fixed, after = dict(user["clip4clip"]), []
        if variant in NEEDS:
            base, config_key = NEEDS[variant]
            fixed[config_key] = storage.join(root, "models", run_names[base], "model.pt")
            after.append(run_names[base])
        config = head_config(feats["stage_uri"], clip, subsets, variant, fixed, size)
        jobs[variant] = training_job(
            paper="clip4clip",
            recipe="clip4clip",
            config=config,
            root=root,
            metric="t2v/R@1",
            part=variant,
            data=key,
            num_workers=num_workers,
            dataset_stage=feats["stage_uri"],
            tags={"vlrepro.variant": variant},
            after=after,
        )
        run_names[variant] = jobs[variant]["run_name"]
    order = sorted(chosen, key=SUBMIT_ORDER.index)
    results = stages.train_together(t["train"], [jobs[v] for v in order], resources)
    by_variant = dict(zip(order, results, strict=True))
    heads = {v: summarise(by_variant[v]) for v in chosen}
    return {
        "paper": "clip4clip",
        "dataset": key,
        "frames_stage": frames["stage_uri"],
        "features_stage": feats["stage_uri"],
        "mini_clip": stages.mini_clip_summary(clip),
        "heads": heads,
        "seconds": round(time.monotonic() - start, 1),
        "root": storage.join(root),
    }
