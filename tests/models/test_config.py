"""Strict typed configs: defaults, YAML and dotted overrides, unknown keys are errors, stable hashes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from models.config import ConfigError, build, config_hash, load, merge, parse_overrides


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4  # paper §4.1
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass(frozen=True)
class Exp:
    head: Literal["meanP", "seqTransf"] = "meanP"
    frames: int = 12
    optim: Optim = field(default_factory=Optim)
    note: str | None = None


def test_defaults_and_nested_overrides():
    cfg = merge(build(Exp), {"optim.lr": "3e-4", "frames": 8, "head": "seqTransf"})
    assert cfg.optim.lr == 3e-4 and cfg.frames == 8 and cfg.head == "seqTransf" and cfg.optim.betas == (0.9, 0.98)


def test_unknown_keys_are_errors_that_name_the_valid_ones():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys: betas, lr"):
        merge(build(Exp), {"optim.lrr": 1.0})
    with pytest.raises(ConfigError, match="unknown config key"):
        build(Exp, {"frame": 3})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"frames": "many"}, "integer"),
        ({"head": "mean"}, "not one of"),
        ({"optim.betas": [0.9]}, "expected 2 items"),
        ({"frames": True}, "integer"),
    ],
)
def test_wrong_types_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        merge(build(Exp), override)


def test_yaml_file_then_cli_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("frames: 4\noptim:\n  lr: 0.001\n")
    cfg = load(Exp, path, parse_overrides(["optim.lr=2e-3", "note=hello"]))
    assert cfg.frames == 4 and cfg.optim.lr == 2e-3 and cfg.note == "hello"
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(Exp, path)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["frames"])


def test_hash_is_stable_and_sensitive():
    a, b = build(Exp), build(Exp)
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    assert config_hash(a) != config_hash(merge(a, {"frames": 13}))
