"""Experiment specs: one `PaperSpec` per (paper, dataset), read from ``recipes/configs/<paper>/<dataset>.yaml``.

A spec is what one experiment *is*, as data — the DAG that runs it lives in ``flows/``:

- ``jobs``: the DAG's training jobs by name (``stan``; DCC's ``dcc``/``i3d``/``tvl1``; LocVTP's ``pretrain``/
  ``grounding``), each with its recipe and its ``base`` config: overrides of the recipe's typed config, whose field
  defaults are the paper's (with their provenance in the dataclasses). The YAML's comments say why each base value
  differs from the paper;
- ``sizes``: per world size, per job, the overrides that size applies (tiny only proves the DAG; small is
  `make demo`'s);
- ``variants``: named overrides of the main job (a head, an ablated module), ``main`` the paper's own method and
  ``default_variants`` what a plain run trains; ``ablations``: the paper's ablation rows over those variants;
- ``claims``: what the paper reports and what the mini world must show, per ablation group: the prose
  (`PaperSpec.claims`, group → text) and the machine-checkable comparisons that judge it (`PaperSpec.checks`,
  `ClaimCheck`: "A better than B on a block/direction/R@K", or "A above chance"), each judged by a paired bootstrap
  interval over the test queries and training seeds (`recipes.evaluation.claims`), with what the checks leave out
  and why (`PaperSpec.unchecked`). A group is a string (prose only) or ``{text, checks, unchecked}``; ``reported``: the
  paper's own numbers (`Reported`: variant, metric, value, the benchmark and setting they were measured on, the
  source), which a run on that benchmark is compared with (`paper_vs_ours`); ``metric``: the registry's champion
  metric; ``extra``: paper-specific settings a flow reads (e.g. CLIP4Clip's submission order).

The mini CLIP every mini-world DAG pre-trains is one spec of its own (``recipes/configs/mini-clip/<dataset>.yaml``),
so one run name always means one model whichever paper trained it first. Nothing here imports orchestration: the CLI
validates ``--size``/``--variant`` against a spec before anything heavy is imported.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

_TOP_KEYS = {
    "paper",
    "dataset",
    "jobs",
    "sizes",
    "variants",
    "main",
    "default_variants",
    "ablations",
    "claims",
    "reported",
    "metric",
    "extra",
}


class SpecError(ValueError):
    """A spec file or a request against it is wrong (unknown size, variant, job, key)."""


def close_matches(word: str, choices: Any) -> str:
    """``"; did you mean 'x'?"`` when a choice is close to `word`, else ``""``."""
    near = difflib.get_close_matches(word, [str(c) for c in choices], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""


@dataclass(frozen=True)
class Job:
    """One kind of training job in a paper's DAG: its recipe (a key of `recipes.RECIPES`) and base config."""

    recipe: str
    base: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AblationRow:
    """One row of an ablation table: `variant`'s result, read from its report `block` ("" = the main blocks)."""

    group: str
    label: str
    variant: str
    block: str = ""


@dataclass(frozen=True)
class Reported:
    """One number the paper reports: `variant`'s `metric` (a key of the job's metrics, e.g. ``t2v/R@1``) on
    `dataset` (the spec name of the benchmark, e.g. ``msrvtt``) in `setting` (split, backbone), from `source`."""

    variant: str
    metric: str
    value: float
    dataset: str
    setting: str
    source: str


#: what a check may compare: report blocks hold per-query ranks of both directions (`recipes.evaluation.claims`)
CHECK_DIRECTIONS = ("t2v", "v2t")
_CHECK_KEYS = {"better", "worse", "chance", "block", "worse_block", "direction", "metric"}
_RECALL = re.compile(r"R@([1-9][0-9]*)")


@dataclass(frozen=True)
class ClaimCheck:
    """One machine-checkable part of a claim: `better`'s `metric` (``R@K``) on `block`/`direction` is higher than
    `worse`'s on the same test queries (on `worse_block` when it names another block of the same job, e.g. UCoFiA's
    ``no_sinkhorn``), or, with `chance`, higher than a random ranking of the block's gallery scores. `block` is a key
    of the job's report: ``overall`` or a subset (``order``, ``twins``) or another scoring (``no_sinkhorn``,
    ``level-…``)."""

    better: str
    worse: str = ""
    chance: bool = False
    block: str = "overall"
    worse_block: str = ""  # "" = `block`
    direction: str = "t2v"
    metric: str = "R@1"

    @property
    def k(self) -> int:
        """The K of the ``R@K`` metric."""
        match = _RECALL.fullmatch(self.metric)
        assert match is not None  # checked when the spec was read
        return int(match.group(1))

    @property
    def against_block(self) -> str:
        return self.worse_block or self.block

    def describe(self) -> str:
        """e.g. ``seqTransf > meanP on order t2v R@1``, ``ucofia > ucofia[no_sinkhorn] on overall t2v R@1``."""
        if self.chance:
            other = "chance"
        else:
            other = self.worse + (f"[{self.worse_block}]" if self.worse_block else "")
        return f"{self.better} > {other} on {self.block} {self.direction} {self.metric}"


@dataclass(frozen=True)
class PaperSpec:
    paper: str
    dataset: str
    jobs: dict[str, Job]
    sizes: dict[str, dict[str, dict[str, Any]]]
    metric: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    main: str = ""
    default_variants: tuple[str, ...] = ()
    ablations: tuple[AblationRow, ...] = ()
    claims: dict[str, str] = field(default_factory=dict)  # group → the claim's prose
    checks: dict[str, tuple[ClaimCheck, ...]] = field(default_factory=dict)  # group → its machine-checkable parts
    unchecked: dict[str, str] = field(default_factory=dict)  # group → what its checks leave out, and why
    reported: tuple[Reported, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def paper_vs_ours(self, measured: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The paper's numbers beside ours (`measured`: variant → metrics), one row per reported number. Only a run
        on the paper's own benchmark is compared (``ours`` is None otherwise, e.g. on the mini world, and says so)."""
        rows = []
        for r in self.reported:
            same = r.dataset == self.dataset
            ours = (measured.get(r.variant) or {}).get(r.metric) if same else None
            rows.append(
                {
                    "variant": r.variant,
                    "metric": r.metric,
                    "paper": r.value,
                    "ours": None if ours is None else float(ours),
                    "delta": None if ours is None else round(float(ours) - r.value, 2),
                    "setting": r.setting,
                    "comparable": same,
                    "source": r.source,
                }
            )
        return rows

    @property
    def has_ablations(self) -> bool:
        """Whether the paper's DAG has an ablation table to run (``--ablations``)."""
        return bool(self.ablations or self.extra.get("ablations") or self.extra.get("ablation_chains"))

    def check_size(self, size: str) -> str:
        if size not in self.sizes:
            raise SpecError(f"unknown size {size!r} for {self.paper}; choose one of {list(self.sizes)}")
        return size

    def size_overrides(self, size: str, job: str) -> dict[str, Any]:
        """The overrides `size` applies to `job` (empty when the size leaves it alone)."""
        return dict(self.sizes[self.check_size(size)].get(job, {}))

    def base(self, job: str) -> dict[str, Any]:
        if job not in self.jobs:
            raise SpecError(
                f"{self.paper} has no job {job!r}; its jobs: {list(self.jobs)}{close_matches(job, self.jobs)}"
            )
        return dict(self.jobs[job].base)

    def chosen_variants(self, variants: list[str] | None, ablations: bool) -> list[str]:
        """What a run trains: every variant with `ablations`, else `variants` (checked), else the spec's
        ``default_variants`` or the paper's method."""
        if ablations:
            return list(self.variants)
        if variants:
            return self.check_variants(list(variants))
        return list(self.default_variants) or [self.main]

    def registers(self, variant: str) -> bool:
        """Whether `variant`'s model becomes a registered version: the paper's method only (an ablation row must never
        become ``<paper>@champion``), or every variant of a paper without one method (CLIP4Clip's heads)."""
        return variant == self.main if self.main else True

    def check_variants(self, chosen: list[str]) -> list[str]:
        """`chosen` if every name is a variant of this spec, else a `SpecError` naming the unknown ones."""
        if not self.variants:
            raise SpecError(f"{self.paper} has no variants to choose from")
        unknown = [v for v in chosen if v not in self.variants]
        if unknown:
            hint = "".join(close_matches(v, self.variants) for v in unknown)
            raise SpecError(f"unknown {unknown} for {self.paper}; choose from {list(self.variants)}{hint}")
        return chosen


def _reported(row: Any, where: str) -> Reported:
    if not isinstance(row, Mapping) or set(row) != {"variant", "metric", "value", "dataset", "setting", "source"}:
        raise SpecError(f"{where}: a reported number needs variant, metric, value, dataset, setting, source: {row!r}")
    strings = {k: str(row[k]) for k in ("variant", "metric", "dataset", "setting", "source")}
    return Reported(value=float(row["value"]), **strings)


def _check(row: Any, where: str, variants: Mapping[str, Any]) -> ClaimCheck:
    if not isinstance(row, Mapping) or set(row) - _CHECK_KEYS or "better" not in row:
        raise SpecError(
            f"{where}: a check needs better and worse (or chance: true), may have {sorted(_CHECK_KEYS)}: {row!r}"
        )
    check = ClaimCheck(
        better=str(row["better"]),
        worse=str(row.get("worse") or ""),
        chance=bool(row.get("chance", False)),
        block=str(row.get("block") or "overall"),
        worse_block=str(row.get("worse_block") or ""),
        direction=str(row.get("direction") or "t2v"),
        metric=str(row.get("metric") or "R@1"),
    )
    if check.chance == bool(check.worse) or (check.chance and check.worse_block):
        raise SpecError(f"{where}: a check compares with either a worse variant or chance, not both: {row!r}")
    if check.direction not in CHECK_DIRECTIONS:
        raise SpecError(f"{where}: direction must be one of {list(CHECK_DIRECTIONS)}: {row!r}")
    if not _RECALL.fullmatch(check.metric):
        raise SpecError(f"{where}: a check's metric is a mean over queries, R@K (e.g. R@1): {row!r}")
    unknown = [v for v in (check.better, check.worse) if v and variants and v not in variants]
    if unknown:
        hint = "".join(close_matches(v, variants) for v in unknown)
        raise SpecError(f"{where}: a check names variants that are not defined: {unknown}{hint}")
    if check.better == check.worse and not check.worse_block:
        raise SpecError(f"{where}: a check compares {check.better!r} with itself on the same block: {row!r}")
    return check


def _claims(
    data: Any, where: str, variants: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, tuple[ClaimCheck, ...]], dict[str, str]]:
    """``claims:`` → (group → text, group → checks, group → what the checks leave out)."""
    text: dict[str, str] = {}
    checks: dict[str, tuple[ClaimCheck, ...]] = {}
    unchecked: dict[str, str] = {}
    for group, claim in (data or {}).items():
        group = str(group)
        if isinstance(claim, str):
            text[group] = claim
            continue
        if not isinstance(claim, Mapping) or "text" not in claim or set(claim) - {"text", "checks", "unchecked"}:
            raise SpecError(f"{where}: claim {group!r} is a string or {{text, checks, unchecked}}: {claim!r}")
        text[group] = str(claim["text"])
        checks[group] = tuple(_check(c, f"{where}: claim {group!r}", variants) for c in claim.get("checks") or ())
        if claim.get("unchecked"):
            unchecked[group] = str(claim["unchecked"])
    return text, checks, unchecked


def _spec_from(data: Mapping[str, Any], where: str) -> PaperSpec:
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: top level must be a mapping")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        hint = "".join(close_matches(k, _TOP_KEYS) for k in sorted(unknown))
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}{hint}")
    missing = {"paper", "dataset", "jobs", "sizes", "metric"} - set(data)
    if missing:
        raise SpecError(f"{where}: missing {sorted(missing)}")
    jobs = {name: Job(recipe=str(j["recipe"]), base=dict(j.get("base") or {})) for name, j in data["jobs"].items()}
    sizes = {str(s): {str(job): dict(o or {}) for job, o in (per or {}).items()} for s, per in data["sizes"].items()}
    for size, per in sizes.items():
        bad = set(per) - set(jobs)
        if bad:
            raise SpecError(f"{where}: size {size!r} names jobs {sorted(bad)} the spec does not have")
    variants = {str(k): dict(v or {}) for k, v in (data.get("variants") or {}).items()}
    ablations = tuple(AblationRow(**row) for row in data.get("ablations") or ())
    claims, checks, unchecked = _claims(data.get("claims"), where, variants)
    spec = PaperSpec(
        paper=str(data["paper"]),
        dataset=str(data["dataset"]),
        jobs=jobs,
        sizes=sizes,
        metric=str(data["metric"]),
        variants=variants,
        main=str(data.get("main") or ""),
        default_variants=tuple(data.get("default_variants") or ()),
        ablations=ablations,
        claims=claims,
        checks=checks,
        unchecked=unchecked,
        reported=tuple(_reported(r, where) for r in data.get("reported") or ()),
        extra=dict(data.get("extra") or {}),
    )
    named = {*spec.default_variants, *(r.variant for r in ablations), *([spec.main] if spec.main else [])}
    if variants and named - set(variants):
        raise SpecError(f"{where}: names variants that are not defined: {sorted(named - set(variants))}")
    return spec


@cache
def load_spec(paper: str, dataset: str) -> PaperSpec:
    """The spec of `paper` on `dataset` (``recipes/configs/<paper>/<dataset>.yaml``)."""
    path = CONFIG_DIR / paper / f"{dataset}.yaml"
    if not path.is_file():
        have = available()
        if paper not in have:
            raise SpecError(f"unknown paper {paper!r}{close_matches(paper, have)}")
        raise SpecError(
            f"{paper} has no spec for dataset {dataset!r}; it has {have[paper]}{close_matches(dataset, have[paper])}"
        )
    spec = _spec_from(yaml.safe_load(path.read_text()) or {}, str(path.relative_to(CONFIG_DIR.parent)))
    if (spec.paper, spec.dataset) != (paper, dataset):
        raise SpecError(f"{path}: says paper {spec.paper!r}, dataset {spec.dataset!r}")
    return spec


def available() -> dict[str, list[str]]:
    """paper → the datasets it has a spec for."""
    return {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in sorted(CONFIG_DIR.iterdir()) if p.is_dir()}


def job_base(data: Mapping[str, Any], recipe: str | None) -> dict[str, Any]:
    """A config file's recipe config: a spec file gives the base of its job that runs `recipe` (so
    ``vlrepro train run --recipe clip4clip --config recipes/configs/clip4clip/mini-retrieval.yaml`` trains the spec's
    base); any other mapping is the recipe config itself."""
    if not ("jobs" in data and "paper" in data):
        return dict(data)
    jobs = {name: job for name, job in (data.get("jobs") or {}).items() if (job or {}).get("recipe") == recipe}
    if len(jobs) != 1:
        runs = sorted({str((j or {}).get("recipe")) for j in (data.get("jobs") or {}).values()} - {"", "None"})
        raise SpecError(f"the spec of {data['paper']} has no single job for recipe {recipe!r}; its recipes: {runs}")
    (job,) = jobs.values()
    return dict(job.get("base") or {})
