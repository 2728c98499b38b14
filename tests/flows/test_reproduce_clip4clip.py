"""The CLIP4Clip DAG on a tiny configuration, end to end from a relative run root in another working directory, and
its rerun (the root spelled differently) reusing every stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.flows.conftest import assert_paths_absolute, relative_root

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


@pytest.mark.timeout(900)
def test_tiny_clip4clip_dag_runs_end_to_end_and_reuses_finished_stages(tmp_path: Path) -> None:
    from flows.reproduce_clip4clip import reproduce_clip4clip
    from infra.registry import Registry
    from infra.tracking import Tracker

    kwargs = {
        "dataset": "mini-retrieval",
        "size": "tiny",
        "variants": ["meanP", "tightTransf-seqText"],  # seqTransf comes in as the tight head's prerequisite
    }
    with relative_root(tmp_path) as (spelled, absolute):
        out = reproduce_clip4clip(root=spelled, **kwargs)
    root = str(absolute)
    assert out["root"] == root
    assert_paths_absolute(absolute, out)
    assert list(out["heads"]) == ["meanP", "seqTransf", "tightTransf-seqText"]
    for head in out["heads"].values():
        for block in ("overall", "order"):
            for direction in ("t2v", "v2t"):
                m = head[block][direction]
                assert set(m) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
                assert all(math.isfinite(v) for v in m.values()) and 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
        assert head["run_id"] and head["model_version"] in (1, 2, 3)  # one registered version per head
    # tiny world: 48 test videos (2 colours × 2 shapes × 12 direction pairs), 16 of them in reversal twins
    assert out["heads"]["meanP"]["overall"]["t2v"]["MnR"] <= 48
    tracker = Tracker.for_run_root(root)
    champion = Registry(tracker).champion("clip4clip")
    assert champion is not None and champion["metric_name"] == "t2v/R@1"
    assert Registry(tracker).champion("mini-clip") is not None
    runs = tracker.client.search_runs([tracker.get_or_create_experiment("clip4clip")])
    assert len(runs) == 3
    # the tight head started from seqTransf's saved model and kept its (frozen) text tower
    seq_dir = Path(root) / "models" / out["heads"]["seqTransf"]["run_name"]
    tight_dir = Path(root) / "models" / out["heads"]["tightTransf-seqText"]["run_name"]
    tight_cfg = json.loads((tight_dir / "job.json").read_text())["config"]["model"]
    assert Path(tight_cfg["text_init"]) == seq_dir / "model.pt" and tight_cfg["freeze_text"] is True
    seq_state = torch.load(seq_dir / "model.pt", weights_only=True)
    tight_state = torch.load(tight_dir / "model.pt", weights_only=True)
    text_keys = [k for k in seq_state if k.startswith("clip.model.") and "visual" not in k and "logit" not in k]
    assert len(text_keys) > 10 and all(torch.equal(seq_state[k], tight_state[k]) for k in text_keys)
    mini_clip = torch.load(tight_cfg["clip"]["pretrained"], weights_only=True)  # what seqTransf started from
    assert not torch.equal(mini_clip["model.token_embedding.weight"], seq_state["clip.model.token_embedding.weight"])

    with relative_root(tmp_path, cwd="another") as _:
        again = reproduce_clip4clip(root=f"{tmp_path}/elsewhere/./runs/", **kwargs)
    assert again["heads"] == out["heads"]  # same records, nothing retrained
    runs = tracker.client.search_runs([tracker.get_or_create_experiment("clip4clip")])
    assert len(runs) == 3  # one MLflow run per training job, across reruns
    assert again["seconds"] < out["seconds"]
