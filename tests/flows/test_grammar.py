"""One override grammar for every paper's DAG, and ``--print-config`` (resolves every job's config, runs nothing)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from recipes.overrides import has_key
from recipes.spec import SpecError

PAPERS = {
    "clip4clip": ("flows.reproduce_clip4clip", {"miniclip", "clip4clip"}),
    "stan": ("flows.reproduce_stan", {"miniclip", "stan", "clip4clip"}),  # clip4clip: the text tower STAN starts from
    "ucofia": ("flows.reproduce_ucofia", {"miniclip", "ucofia"}),
    "dcc": ("flows.reproduce_dcc", {"miniclip", "tvl1", "i3d", "dcc"}),
    "locvtp": ("flows.reproduce_locvtp", {"miniclip", "pretrain", "grounding"}),
}


def _get(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_train_epochs_reaches_every_job_that_has_it_and_a_job_prefix_one_kind(paper: str) -> None:
    from flows.stages import route_overrides

    module = importlib.import_module(PAPERS[paper][0])
    plain = module.job_configs("tiny")
    assert {name.split("/")[0] for name in plain} == PAPERS[paper][1]
    user = route_overrides({"train.epochs": 7, "miniclip.steps_per_epoch": 3}, plain)
    resolved = module.job_configs("tiny", user)
    with_epochs = [name for name, cfg in resolved.items() if has_key(cfg, "train.epochs")]
    # DCC's steps count their epochs in model.stages (warm-up / B / F): there only the mini CLIP has train.epochs
    assert "miniclip" in with_epochs and len(with_epochs) >= (1 if paper == "dcc" else 2)
    for name in with_epochs:
        assert _get(resolved[name], "train.epochs") == 7, name
    assert resolved["miniclip"]["steps_per_epoch"] == 3
    untouched = [n for n, cfg in resolved.items() if not has_key(cfg, "train.epochs") and n != "miniclip"]
    assert all(resolved[n] == plain[n] for n in untouched)
    with pytest.raises(SpecError, match=r"did you mean 'train.epochs'"):
        route_overrides({"train.epochz": 2}, plain)
    with pytest.raises(SpecError, match="no job of this DAG"):
        route_overrides({"bogus.key": 2}, plain)


def test_print_config_resolves_every_job_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's own entry point, in this process (the flow modules are imported already: a subprocess would pay
    for Prefect's and torch's imports again), from an empty working directory with the default run root."""
    import signal

    from flows.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("VLREPRO_RUN_ROOT", raising=False)
    previous = signal.getsignal(signal.SIGTERM)
    argv = ["reproduce", "stan", "--size", "tiny", "--ablations", "--print-config"]
    try:
        rc = main([*argv, "--set", "train.epochs=3", "--set", "stan.model.depth=1", "--json"])
        out = capsys.readouterr()
        bad_rc = main([*argv, "--set", "train.epocs=3"])
        bad = capsys.readouterr()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert rc == 0, out.err[-2000:]
    configs = json.loads(out.out.strip().splitlines()[-1])
    assert set(configs) == {
        "miniclip",
        "clip4clip/seqTransf",  # the motion-aware text tower the STAN rows start from (STAN's extra.needs)
        "stan/stan",
        "stan/stan-conv",
        "stan/stan-no-cross-frame",
        "stan/posterior",
        "stan/baseline",
        "stan/stan-miniclip-text",
        "stan/baseline-miniclip-text",
    }
    assert all(c["train"]["epochs"] == 3 for c in configs.values())
    assert all(c["model"]["depth"] == 1 for name, c in configs.items() if name.startswith("stan/"))
    assert configs["stan/baseline"]["model"]["variant"] == "baseline"
    assert configs["stan/stan"]["model"]["clip"]["pretrained"].startswith("<")  # a stage's output: a stand-in
    assert configs["stan/stan"]["model"]["text_init"] == "<model.pt of the clip4clip/seqTransf job>"
    assert configs["clip4clip/seqTransf"]["model"]["head"] == "seqTransf"  # `train.epochs=3` reached it too
    assert bad_rc == 2
    lines = bad.err.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'train.epochs'" in lines[0], bad.err
    assert list(work.iterdir()) == []  # no run root, nothing else
