"""The retrieval experiments on the mini world (CLIP4Clip, STAN, UCoFiA): a job's config, the variants a run trains
(with the ones they start from), the evaluation subsets, and the ablation table as data.

An ablation table is the spec's rows (`recipes.spec.AblationRow`: group, label, variant, block) — which variant's
result fills which row; one variant may fill rows of several groups and is trained once — turned into table rows by
`build_table`: the retrieval columns of each job's report plus the paper's own (e.g. recognition for STAN). The DAG
logs it in the one results schema (`infra.results`).

A job's config is the recipe's typed defaults (the paper's) ← the spec's base ← the mini CLIP, the features stage
and the evaluation subsets ← the variant ← the size (a size's epochs win over a variant's, e.g. CLIP4Clip's 1-frame
heads) ← the user's ``--set``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.config import build, merge, to_dict
from recipes.spec import AblationRow, PaperSpec, SpecError


def variant_config(
    spec: PaperSpec,
    recipe_config: type,
    features_uri: str,
    clip: Mapping[str, Any],
    subsets: Mapping[str, list[str]],
    size: str,
    variant: str,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The config of `variant`'s job (`recipe_config` is the recipe's typed config; the job kind is the paper);
    `clip` is the mini CLIP's ``clip_arch``/``clip_checkpoint``, or empty to keep the spec's ``model.clip``."""
    cfg: Any = merge(build(recipe_config), spec.base(spec.paper))
    stages_in: dict[str, Any] = {"data.stage": features_uri, "data.subsets": dict(subsets)}
    if clip:  # the mini CLIP the DAG pre-trained; on a real benchmark ({}) the spec's own CLIP (real weights)
        stages_in = {
            "model.clip.arch": clip["clip_arch"],
            "model.clip.pretrained": clip["clip_checkpoint"],
            **stages_in,
        }
    cfg = merge(merge(merge(cfg, stages_in), spec.variants[variant]), spec.size_overrides(size, spec.paper))
    return to_dict(merge(cfg, dict(overrides)))


def default_size(spec: PaperSpec) -> str:
    """The size a run gets when none is asked for: ``small`` on the mini world (`make demo`'s), else the spec's first
    size (``paper`` on a real benchmark: the paper's own configuration)."""
    return "small" if "small" in spec.sizes else next(iter(spec.sizes))


def ingest_settings(spec: PaperSpec, size: str) -> dict[str, Any]:
    """A real benchmark's ingest keyword arguments (`flows.ingest.ingest_flow`: fps, size, crop) at `size`: the
    spec's ``extra.ingest`` updated by ``extra.ingest_sizes[size]`` (e.g. smoke's 32 px frames)."""
    base = dict(spec.extra.get("ingest") or {})
    if not base:
        raise SpecError(f"the {spec.paper} spec for {spec.dataset} has no extra.ingest (fps, size, crop)")
    return {**base, **dict((spec.extra.get("ingest_sizes") or {}).get(size) or {})}


def order_subsets(annotations: str | Path) -> dict[str, list[str]]:
    """Evaluation subsets from the mini world's annotations: provable order twins, and all twins."""
    ann = json.loads(Path(annotations).read_text())
    pairs = ann.get("order_pairs", [])
    order = sorted({k for p in pairs if p.get("provable") for k in (p["a"], p["b"])})
    twins = sorted({k for p in pairs for k in (p["a"], p["b"])})
    return {"order": order, "twins": twins} if order else {}


def needs(spec: PaperSpec) -> dict[str, tuple[str, str]]:
    """Variants that start from another variant's trained model (the spec's ``extra.needs``): variant → (that variant,
    the config key that gets the path of its ``model.pt``). CLIP4Clip's tightTransf-seqText starts from seqTransf."""
    return {k: (str(v[0]), str(v[1])) for k, v in (spec.extra.get("needs") or {}).items()}


def with_prerequisites(spec: PaperSpec, variants: list[str]) -> list[str]:
    """`variants` plus the variants they start from (`needs`), in the spec's variant order."""
    need = needs(spec)
    wanted = set(variants)
    todo = list(variants)
    while todo:
        base = need.get(todo.pop())
        if base and base[0] not in wanted:
            wanted.add(base[0])
            todo.append(base[0])
    return [v for v in spec.variants if v in wanted]


def submit_order(spec: PaperSpec, variants: list[str]) -> list[str]:
    """The order jobs are handed to the trainer: the spec's ``extra.submit_order`` first (CLIP4Clip: long jobs early,
    so two at a time finish together), then the rest in variant order; a variant always after the one it needs."""
    first = [v for v in spec.extra.get("submit_order") or () if v in variants]
    order = first + [v for v in variants if v not in first]
    need = needs(spec)
    for v in list(order):
        if v in need and need[v][0] in order and order.index(need[v][0]) > order.index(v):
            order.remove(need[v][0])
            order.insert(order.index(v), need[v][0])
    return order


#: metric columns every retrieval table carries: column → (report block, direction, metric)
RETRIEVAL_COLUMNS: dict[str, tuple[str, str, str]] = {
    "t2v R@1": ("overall", "t2v", "R@1"),
    "t2v R@5": ("overall", "t2v", "R@5"),
    "v2t R@1": ("overall", "v2t", "R@1"),
    "order t2v R@1": ("order", "t2v", "R@1"),
    "order v2t R@1": ("order", "v2t", "R@1"),
}


#: one row of an ablation table (the spec's type: `recipes.spec.AblationRow`)
Row = AblationRow


def retrieval_cells(report: Mapping[str, Any], block: str = "") -> dict[str, float | None]:
    """The `RETRIEVAL_COLUMNS` of one job report (None where the report lacks the block, e.g. no order subset)."""
    cells: dict[str, float | None] = {}
    for column, (name, direction, metric) in RETRIEVAL_COLUMNS.items():
        source = block if (block and name == "overall") else name
        value = report.get(source, {}).get(direction, {}).get(metric)
        cells[column] = None if value is None else round(float(value), 2)
    return cells


def build_table(
    rows: Sequence[Row],
    results: Mapping[str, Mapping[str, Any]],
    extra: Callable[[Row, Mapping[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Table rows: group, label, variant, the retrieval columns (+ `extra(row, record)`), the job's key and run id.

    A row whose block only has overall metrics (UCoFiA's un-normalised ``no_sinkhorn``) leaves the order columns None
    rather than mixing in the normalised order numbers.
    """
    table = []
    for row in rows:
        record = results[row.variant]
        report = record.get("report") or {}
        cells = retrieval_cells(report, row.block)
        if row.block:
            cells.update({c: None for c, (name, _, _) in RETRIEVAL_COLUMNS.items() if name != "overall"})
        table.append(
            {
                **asdict(row),
                **cells,
                **(extra(row, record) if extra else {}),
                "run_name": record["run_name"],
                "run_id": record["run_id"],
            }
        )
    return table
