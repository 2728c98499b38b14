"""The one override grammar (`recipes.overrides.route`) on hand-made job configs."""

from __future__ import annotations

import pytest

from recipes.overrides import flat_keys, has_key, route
from recipes.spec import SpecError

JOBS = {
    "miniclip": {"train": {"epochs": 6, "batch_size": 128}, "steps_per_epoch": 100},
    "stan": {"train": {"epochs": 5, "optim": {"lr": 2e-4}}, "model": {"depth": 2, "clip": None}},
    "tvl1": {"flow_size": 64},
}


def test_a_key_reaches_every_job_that_has_it_and_a_job_prefix_one_job() -> None:
    out = route({"train.epochs": 2, "stan.model.depth": 1, "flow_size": 16, "miniclip.train": {"seed": 1}}, JOBS)
    assert out == {
        "miniclip": {"train.epochs": 2, "train": {"seed": 1}},
        "stan": {"train.epochs": 2, "model.depth": 1},
        "tvl1": {"flow_size": 16},
    }
    assert route({}, JOBS) == {"miniclip": {}, "stan": {}, "tvl1": {}}


def test_an_unknown_key_names_close_matches() -> None:
    with pytest.raises(SpecError, match=r"unknown key 'train.epoch'.*did you mean 'train.epochs'"):
        route({"train.epoch": 2}, JOBS)
    with pytest.raises(SpecError, match=r"unknown key 'steps_per_epoch' for job 'stan'"):
        route({"stan.steps_per_epoch": 2}, JOBS)
    with pytest.raises(SpecError, match=r"unknown key 'depth' for job 'stan'; did you mean 'model.depth'"):
        route({"stan.depth": 3}, JOBS)
    with pytest.raises(SpecError, match=r"did you mean .*'stan.model.depth'"):  # a misspelt job name
        route({"stann.model.depth": 3}, JOBS)
    with pytest.raises(SpecError, match=r"'flow_siz'.*did you mean 'flow_size' or 'tvl1.flow_size'"):  # by last part
        route({"flow_siz": 1}, JOBS)
    with pytest.raises(SpecError, match="no job of this DAG"):
        route({"nothing.like.it": 1}, JOBS)


def test_key_helpers() -> None:
    assert has_key(JOBS["stan"], "train.optim.lr") and has_key(JOBS["stan"], "train.optim")
    assert not has_key(JOBS["stan"], "train.optim.lr.x") and not has_key(JOBS["stan"], "model.clip.arch")
    assert flat_keys(JOBS["stan"]) == ["train.epochs", "train.optim.lr", "model.depth", "model.clip"]
