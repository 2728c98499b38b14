"""``s3://`` run roots against a real S3 API: a moto server on 127.0.0.1 (reliability notes §2.2 #12, §2.3 #18).

S3 has no rename, so the protocol there is "objects appear whole on one PUT, the commit marker is PUT last"
(`pipelines.storage`). Checked here on the wire, by listing the bucket with boto3 (not through our own code):

- the ingest writes shards, parquet and markers to S3; a writer that fails mid-shard publishes nothing for that
  shard, and one that fails between its tar and its marker leaves a visible but *uncommitted* tar that readers
  ignore; the rerun rewrites exactly those shards, with no duplicate keys, and the shards are byte-identical to a
  local ingest of the same videos; a marker removed by another process is seen at once (no cached listings);
- the readers (`iter_stage`, `read_manifest`, `loaders.ShardIndex`/`EpochPlan`) and the CLIP feature stage read and
  write S3;
- a training job (`infra.training_job.run_job` → Ray Train) checkpoints to S3, uploads its model folder there and
  returns its stored record when relaunched; its MLflow artefacts also land in S3.

Credentials are dummies set in the environment only, where boto3, s3fs and pyarrow read them (``AWS_ENDPOINT_URL``
points all three at moto). Each server is stopped in teardown.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.common.clip import ClipConfig, build_clip
from pipelines import ingest as ing
from pipelines import loaders, shards, storage
from pipelines.decode import DecodeConfig
from pipelines.features import clip_frames
from tests.media import encode, moving_square

log = logging.getLogger(__name__)

BUCKET = "bucket"
ROOT = f"s3://{BUCKET}/runs"
CFG = ing.IngestConfig(DecodeConfig(fps=4, short_side=32, crop=32), samples_per_shard=2)  # 5 videos → 3 shards
REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


@contextlib.contextmanager
def moto_server(bucket: str = BUCKET) -> Iterator[tuple[str, float]]:
    """A moto S3 server on a free loopback port holding an empty `bucket`: yields (endpoint URL, start seconds)."""
    start = time.monotonic()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        yield endpoint, time.monotonic() - start
    finally:
        server.stop()


def s3_environment(mp: pytest.MonkeyPatch, endpoint: str) -> dict[str, str]:
    """Dummy credentials and the endpoint, in the environment only; fsspec's cached clients of an older server go."""
    import s3fs

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,  # botocore (boto3, s3fs) and pyarrow (Ray's storage) all read it
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        mp.delenv(name, raising=False)
    for name, value in env.items():
        mp.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return env


def object_keys(endpoint: str, prefix: str) -> list[str]:
    """Every object under `prefix`, listed with boto3 (independent of the code under test)."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))


def object_bytes(endpoint: str, key: str) -> bytes:
    body: bytes = s3_client(endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    import s3fs

    with moto_server() as (endpoint, seconds), pytest.MonkeyPatch.context() as mp:
        log.warning("moto S3 server on %s started in %.1f s", endpoint, seconds)
        s3_environment(mp, endpoint)
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()  # its clients point at this server, which stops now


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i in range(5):
        encode(folder / f"clip{i}.mp4", moving_square(seed=i))
    return folder


@pytest.mark.timeout(300)
def test_ingest_features_and_readers_on_s3_with_commit_markers(s3, videos, tmp_path, monkeypatch):
    t0 = time.monotonic()
    keys = [f"clip{i}" for i in range(5)]
    # keys and names that could leave the run root are refused before anything is written
    with pytest.raises(storage.UnsafeKeyError):
        shards.stage_uri(ROOT, "../elsewhere", "frames", CFG.hash())
    with pytest.raises(storage.UnsafeKeyError), shards.ShardWriter(storage.join(ROOT, "x"), 0) as writer:
        writer.add("a/../../b", {"json": {}})

    # Run 1 fails in two places: mid-shard (shard 1, at its second video, after one sample was written) and between
    # shard 2's tar and its marker (the S3 equivalent of a kill after the upload).
    real_item, real_write_json = ing.ingest_item, storage.write_json_atomic

    def failing_item(item: Any, cfg: Any, digest: str) -> Any:
        if item["key"] == "clip3":
            raise RuntimeError("injected failure mid-shard")
        return real_item(item, cfg, digest)

    def failing_marker(uri: str, obj: Any) -> None:
        if uri.endswith("/000002_stats.json"):
            raise RuntimeError("injected failure before the commit marker")
        real_write_json(uri, obj)

    monkeypatch.setattr(ing, "ingest_item", failing_item)
    monkeypatch.setattr(storage, "write_json_atomic", failing_marker)
    with pytest.raises(RuntimeError, match="injected failure"):
        ing.ingest(videos, ROOT, "clips", CFG)
    monkeypatch.undo()

    uri = shards.stage_uri(ROOT, "clips", ing.FRAMES_STAGE, CFG.hash())
    prefix = uri[len(f"s3://{BUCKET}/") :] + "/"
    assert object_keys(s3, prefix) == [
        "000000.parquet",
        "000000.tar",
        "000000_stats.json",
        "000002.parquet",  # published, but without its marker it is not a shard
        "000002.tar",
        "_config.json",
    ]
    assert shards.committed_shards(uri) == [0]
    assert [r["key"] for r in shards.read_manifest(uri)] == ["clip0", "clip1"]
    with pytest.raises(shards.StageIncompleteError):
        next(shards.iter_stage(uri))
    with pytest.raises(shards.StageIncompleteError):
        loaders.ShardIndex.from_stage(uri)

    res = ing.ingest(videos, ROOT, "clips", CFG)  # the rerun completes exactly the two uncommitted shards
    t_ingest = time.monotonic() - t0
    assert (res.stage_uri, res.shards_written, res.shards_skipped) == (uri, 2, 1)
    assert res.status_counts == {"ok": 5} and res.n_samples == 5
    assert object_keys(s3, prefix) == sorted(
        [f"{i:06d}{ext}" for i in range(3) for ext in (".parquet", ".tar", "_stats.json")]
        + ["_config.json", "_stats.json"]
    )
    manifest = shards.read_manifest(uri)
    assert sorted(r["key"] for r in manifest) == keys  # one row per input, no duplicates
    samples = list(shards.iter_stage(uri))
    assert [k for k, _ in samples] == keys
    assert all(m["npy"].shape == (12, 32, 32, 3) and m["npy"].dtype == np.uint8 for _, m in samples)
    assert ing.ingest(videos, ROOT, "clips", CFG).shards_written == 0  # incremental: markers are read from S3
    # Another process (boto3 here) drops shard 1's marker after we listed the stage: the change is seen at once,
    # not hidden by a cached listing.
    assert shards.committed_shards(uri) == [0, 1, 2]
    s3_client(s3).delete_object(Bucket=BUCKET, Key=f"{prefix}000001_stats.json")
    assert shards.committed_shards(uri) == [0, 2]
    assert ing.ingest(videos, ROOT, "clips", CFG).shards_written == 1

    # the same ingest on a local root writes byte-identical shards (tars are deterministic: mtime 0, sorted members)
    local = ing.ingest(videos, str(tmp_path / "runs"), "clips", CFG)
    for i in range(3):
        assert object_bytes(s3, f"{prefix}{i:06d}.tar") == (Path(local.stage_uri) / f"{i:06d}.tar").read_bytes()

    # training readers: counts from the S3 markers, deterministic batches streamed from the S3 tars
    index = loaders.ShardIndex.from_stage(uri)
    assert (index.shards, index.counts, index.n_samples) == ((0, 1, 2), (2, 2, 1), 5)
    plan = loaders.EpochPlan(index, global_batch=2, seed=0)
    batches = list(plan.batches(0, 0, 1, collate=lambda group, rng: [k for k, _ in group]))
    assert len(batches) == plan.steps(1) == 2
    assert len({k for b in batches for k in b}) == 4 and {k for b in batches for k in b} <= set(keys)

    # the CLIP feature stage reads the frame shards from S3 and writes its own shards there
    t1 = time.monotonic()
    torch.manual_seed(0)
    model = build_clip(ClipConfig(arch="vlrepro-tiny", pretrained=None)).eval()
    fcfg = clip_frames.ClipFeatureConfig(clip=ClipConfig(arch="vlrepro-tiny", pretrained=None))
    out = clip_frames.extract(uri, ROOT, "clips", fcfg, model=model)
    t_features = time.monotonic() - t1
    assert out["stage_uri"].startswith(f"{ROOT}/clips/clip-features/") and out["n_samples"] == 5
    assert "_stats.json" in object_keys(s3, out["stage_uri"][len(f"s3://{BUCKET}/") :] + "/")
    feat_keys, feats, metas = shards.load_stage(out["stage_uri"])
    expected = clip_frames.encode_frames(model, [m["npy"] for _, m in samples], batch_frames=512)
    assert feat_keys == keys and [m["key"] for m in metas] == keys
    for got, want in zip(feats, expected):
        assert got.shape == (12, 32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert clip_frames.extract(uri, ROOT, "clips", fcfg, model=model)["shards_written"] == 0
    log.warning("S3 ingest (fail + rerun + noop) %.1f s, features %.1f s", t_ingest, t_features)


@pytest.fixture(scope="module")
def ray_with_s3(s3: str) -> Iterator[str]:
    """A private local Ray whose workers import this repo and see the S3 environment (set before `ray.init`)."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        mp.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        mp.setenv("RAY_TRAIN_METRICS_ENABLED", "0")
        if ray.is_initialized():  # another module's instance would not carry the S3 environment to its workers
            ray.shutdown()
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        )
        try:
            yield s3
        finally:
            ray.shutdown()


@pytest.mark.timeout(420)
def test_training_job_checkpoints_and_model_on_s3(ray_with_s3, tmp_path, monkeypatch):
    from infra import ray_train
    from infra.registry import Registry
    from infra.tracking import Tracker
    from infra.training_job import TrainingJob, run_job
    from recipes import RECIPES
    from tests.infra.toy_recipe import build

    s3 = ray_with_s3
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a remote run root keeps its MLflow DB under ~/.vlrepro
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("infra.settings._settings", None)
    monkeypatch.setitem(RECIPES, "toy", "tests.infra.toy_recipe:build")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may be written to the working directory (e.g. an "s3:/bucket" folder)

    job = TrainingJob(
        paper="s3-toy",
        method="s3-toy",
        recipe="toy",
        config={"epochs": 2},
        run_name="toy-s3",
        root=ROOT,
        metric="eval/mse",
        higher_is_better=False,
        num_workers=1,
    )
    from tests.infra.toy_recipe import ToyRecipe

    def no_driver_evaluation(self: Any, model: Any) -> dict[str, float]:
        raise AssertionError("the driver must use the workers' final evaluation (report.json), not evaluate again")

    evaluate = ToyRecipe.evaluate
    monkeypatch.setattr(ToyRecipe, "evaluate", no_driver_evaluation)  # this process only: Ray workers are others
    t0 = time.monotonic()
    out = run_job(job)
    t_job = time.monotonic() - t0
    monkeypatch.setattr(ToyRecipe, "evaluate", evaluate)
    run_prefix = "runs/ray/toy-s3/"
    assert out["reused"] is False and len(out["history"]) == 2
    assert out["checkpoint"] == f"{ROOT}/ray/toy-s3/epoch_0002"
    ray_keys = object_keys(s3, run_prefix)
    for epoch in ("epoch_0001", "epoch_0002"):
        assert {f"{epoch}/{f}" for f in ("state.pt", "model.pt", "history.json")} <= set(ray_keys)
    assert "epoch_0002/report.json" in ray_keys  # the last epoch's evaluation, read back by the driver from S3
    assert "vlrepro_run.json" in ray_keys
    assert object_keys(s3, "runs/models/toy-s3/") == ["job.json", "model.pt"]
    assert out["model_dir"] == f"{ROOT}/models/toy-s3"
    assert "toy-s3.json" in object_keys(s3, "runs/jobs/")
    assert list(cwd.iterdir()) == []

    def state(blob: bytes) -> dict[str, torch.Tensor]:
        loaded: dict[str, torch.Tensor] = torch.load(io.BytesIO(blob), weights_only=True)
        return loaded

    trained = state(object_bytes(s3, f"{run_prefix}epoch_0002/model.pt"))
    uploaded = state(object_bytes(s3, "runs/models/toy-s3/model.pt"))
    assert trained.keys() == uploaded.keys() and all(torch.equal(trained[k], uploaded[k]) for k in trained)

    # MLflow (embedded SQLite under ~ for a remote root) keeps the registered model's artefacts in S3 too
    tracker = Tracker.for_run_root(ROOT)
    registry = Registry(tracker)
    champion = registry.champion("s3-toy")
    assert champion is not None and champion["source"].startswith(f"{ROOT}/mlartifacts/")
    assert out["registered"]["promoted"] is True
    folder = registry.download("models:/s3-toy@champion", tmp_path / "champion")
    recipe = build({"epochs": 2})
    model = recipe.build_model()
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        assert recipe.evaluate(model)["eval/mse"] == out["metrics"]["eval/mse"] == champion["metric"]

    # relaunching is free: the job record and the Ray run record are read back from S3
    again = run_job(job)
    assert again["reused"] is True and again["run_id"] == out["run_id"]
    spec = ray_train.RunSpec("toy-s3", f"{ROOT}/ray")
    fit = ray_train.fit(RECIPES["toy"], job.config, ray_train.ScalingSpec(num_workers=1), spec)
    assert fit.reused is True and fit.checkpoint_path == out["checkpoint"]
    with pytest.raises(ValueError, match="path component"):
        ray_train.fit(RECIPES["toy"], job.config, ray_train.ScalingSpec(num_workers=1), ray_train.RunSpec("..", ROOT))
    log.warning("S3 training job (Ray, 1 worker, 2 epochs) %.1f s", t_job)
