"""Every experiment spec builds: each (paper, dataset) × job × size × variant/ablation resolves to a valid typed
config of its recipe, and a wrong spec or a wrong request against one is a clear error."""

from __future__ import annotations

from typing import Any

import pytest

from models.config import ConfigError, build, merge
from recipes.clip4clip import Clip4ClipRecipeConfig
from recipes.dcc import DCCRecipeConfig
from recipes.grounding import GroundingRecipeConfig
from recipes.locvtp import LocVTPRecipeConfig
from recipes.miniclip import MiniClipConfig
from recipes.spec import PaperSpec, SpecError, _spec_from, available, job_base, load_spec
from recipes.stan import StanRecipeConfig
from recipes.ucofia import UCoFiARecipeConfig

#: recipe → its typed config (what a job's base, size and variant overrides must build into)
CONFIGS: dict[str, type] = {
    "clip4clip": Clip4ClipRecipeConfig,
    "stan": StanRecipeConfig,
    "ucofia": UCoFiARecipeConfig,
    "dcc": DCCRecipeConfig,
    "locvtp": LocVTPRecipeConfig,
    "grounding": GroundingRecipeConfig,
    "miniclip": MiniClipConfig,
}
SPECS = [(paper, dataset) for paper, datasets in available().items() for dataset in datasets]
#: the specs of the generated mini worlds (the others are the papers' configs on downloaded benchmarks)
MINI_SPECS = [(paper, dataset) for paper, dataset in SPECS if dataset.startswith("mini-")]


def test_every_paper_has_its_mini_world_spec() -> None:
    assert set(SPECS) >= {
        ("clip4clip", "mini-retrieval"),
        ("stan", "mini-retrieval"),
        ("ucofia", "mini-retrieval"),
        ("dcc", "mini-wtal"),
        ("locvtp", "mini-grounding"),
        ("mini-clip", "mini-world"),
    }


def _variant_overrides(spec: PaperSpec, job: str) -> dict[str, dict[str, Any]]:
    """The overrides each variant/ablation applies to `job` ({"": {}} = the base alone)."""
    out: dict[str, dict[str, Any]] = {"": {}}
    if job == spec.paper:  # the retrieval papers: one job kind, the variants are its overrides
        out.update(spec.variants)
    if spec.paper == "locvtp" and job == "pretrain":
        out.update({name: a["overrides"] for name, a in spec.extra["ablations"].items()})
    return out


@pytest.mark.parametrize(("paper", "dataset"), SPECS)
def test_every_job_size_and_variant_builds_a_valid_config(paper: str, dataset: str) -> None:
    spec = load_spec(paper, dataset)
    built = 0
    for job_name, job in spec.jobs.items():
        if not job.recipe:  # a feature stage (DCC's i3d, tvl1): configured by the flow, no recipe config
            continue
        cls = CONFIGS[job.recipe]
        for size in spec.sizes:
            for variant, overrides in _variant_overrides(spec, job_name).items():
                cfg = merge(merge(build(cls, spec.base(job_name)), spec.size_overrides(size, job_name)), overrides)
                assert isinstance(cfg, cls), (job_name, size, variant)
                built += 1
    assert built >= len(spec.sizes)
    # the spec's names hold together
    assert set(spec.default_variants) <= set(spec.variants) or not spec.variants
    assert {row.variant for row in spec.ablations} <= set(spec.variants)
    assert {row.group for row in spec.ablations} <= set(spec.claims)
    if dataset.startswith("mini-"):
        assert {"tiny", "small", "medium"} <= set(spec.sizes)
    else:  # a benchmark: the paper's config, and the smoke test of the same DAG
        assert list(spec.sizes)[:1] == ["paper"] and "smoke" in spec.sizes and spec.reported
        assert all(r.dataset == dataset for r in spec.reported)  # compared with the run (`paper_vs_ours`)


def test_the_tiny_sizes_are_tiny() -> None:
    """`--size tiny` (mini world) and `--smoke` (a benchmark) prove the DAG: every training job runs at most a couple
    of epochs; smoke's on the tiny random CLIP."""
    for paper, dataset in SPECS:
        spec = load_spec(paper, dataset)
        size = "tiny" if dataset.startswith("mini-") else "smoke"
        for job_name, job in spec.jobs.items():
            if job.recipe and job.recipe != "dcc":
                cfg = merge(build(CONFIGS[job.recipe], spec.base(job_name)), spec.size_overrides(size, job_name))
                assert cfg.train.epochs <= 2, (paper, job_name)  # type: ignore[attr-defined]
                if size == "smoke":
                    assert cfg.model.clip.arch == "vlrepro-tiny" and cfg.model.clip.pretrained is None  # type: ignore[attr-defined]
                    assert cfg.model.max_frames == 4, (paper, dataset)  # type: ignore[attr-defined]


def test_a_wrong_value_in_a_spec_is_a_config_error() -> None:
    spec = load_spec("stan", "mini-retrieval")
    with pytest.raises(ConfigError):
        merge(build(StanRecipeConfig, spec.base("stan")), {"model.varient": "stan"})


def test_requests_against_a_spec_name_close_matches() -> None:
    spec = load_spec("clip4clip", "mini-retrieval")
    with pytest.raises(SpecError, match=r"unknown \['seqTransff'\].*did you mean 'seqTransf'"):
        spec.check_variants(["meanP", "seqTransff"])
    with pytest.raises(SpecError, match="unknown size 'huge'"):
        spec.size_overrides("huge", "clip4clip")
    with pytest.raises(SpecError, match=r"no job 'clip4clp'.*did you mean 'clip4clip'"):
        spec.base("clip4clp")
    with pytest.raises(SpecError, match="has no variants"):
        load_spec("dcc", "mini-wtal").check_variants(["full"])
    with pytest.raises(SpecError, match=r"unknown paper 'stann'.*did you mean 'stan'"):
        load_spec("stann", "mini-retrieval")
    with pytest.raises(SpecError, match="no spec for dataset 'lsmdc'"):
        load_spec("stan", "lsmdc")


def test_a_malformed_spec_is_refused_with_its_reason() -> None:
    good = {"paper": "p", "dataset": "d", "metric": "m", "jobs": {"j": {"recipe": "stan"}}, "sizes": {"tiny": {}}}
    assert _spec_from(good, "x").jobs["j"].recipe == "stan"
    with pytest.raises(SpecError, match=r"unknown keys \['variant'\].*did you mean 'variants'"):
        _spec_from({**good, "variant": {}}, "x")
    with pytest.raises(SpecError, match=r"missing \['metric'\]"):
        _spec_from({k: v for k, v in good.items() if k != "metric"}, "x")
    with pytest.raises(SpecError, match=r"names jobs \['k'\]"):
        _spec_from({**good, "sizes": {"tiny": {"k": {"a": 1}}}}, "x")
    with pytest.raises(SpecError, match="not defined"):
        _spec_from({**good, "variants": {"a": {}}, "main": "b"}, "x")


def test_a_spec_file_given_as_a_config_gives_its_jobs_base() -> None:
    import yaml

    from recipes.spec import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "locvtp" / "mini-grounding.yaml").read_text())
    spec = load_spec("locvtp", "mini-grounding")
    assert job_base(data, "grounding") == spec.base("grounding")
    assert job_base({"train": {"epochs": 1}}, "stan") == {"train": {"epochs": 1}}  # a plain config stays as it is
    with pytest.raises(SpecError, match="no single job for recipe 'stan'"):
        job_base(data, "stan")


def test_every_paper_reports_its_numbers_with_their_source_and_compares_only_on_its_benchmark() -> None:
    """The reproduction ledger's left column: each spec carries the paper's numbers (LocVTP's are not recorded yet,
    and its spec says so); a run is compared with them only on the paper's own benchmark."""
    from dataclasses import replace

    counts = {paper: len(load_spec(paper, ds).reported) for paper, ds in MINI_SPECS if paper != "mini-clip"}
    assert counts == {"clip4clip": 4, "stan": 2, "ucofia": 4, "dcc": 2, "locvtp": 0}
    spec = load_spec("clip4clip", "mini-retrieval")
    seq = next(r for r in spec.reported if r.variant == "seqTransf")
    assert (seq.metric, seq.value, seq.dataset) == ("t2v/R@1", 44.5, "msrvtt") and "1k-A" in seq.setting and seq.source
    measured = {"seqTransf": {"t2v/R@1": 40.0}}
    mini = {r["variant"]: r for r in spec.paper_vs_ours(measured)}
    assert mini["seqTransf"]["ours"] is None and mini["seqTransf"]["comparable"] is False  # the mini world ≠ MSR-VTT
    on_msrvtt = {r["variant"]: r for r in replace(spec, dataset="msrvtt").paper_vs_ours(measured)}
    assert (on_msrvtt["seqTransf"]["ours"], on_msrvtt["seqTransf"]["delta"]) == (40.0, -4.5)
    assert on_msrvtt["meanP"]["ours"] is None  # not trained in this run
    with pytest.raises(SpecError, match="reported number needs"):
        _spec_from({**_minimal(), "reported": [{"variant": "x", "value": 1.0}]}, "x.yaml")


def _minimal() -> dict[str, Any]:
    return {"paper": "p", "dataset": "d", "jobs": {"j": {"recipe": "stan"}}, "sizes": {"tiny": {}}, "metric": "m"}
