"""`scheduling.train_together`: a DAG's independent training jobs, `parallel_jobs` at a time, results in job order."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import pytest

from flows import scheduling, stages


class FakeFuture:
    """What `train_together` uses of a Prefect future: `wrapped_future` and `result()`."""

    def __init__(self, wrapped: concurrent.futures.Future[Any]) -> None:
        self.wrapped_future = wrapped

    def result(self) -> Any:
        return self.wrapped_future.result()


class FakeTask:
    """A stand-in for the `train` task: `.submit` runs in a thread pool, plain calls run inline; records overlap."""

    def __init__(self, seconds: dict[str, float], fail: str | None = None) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        self.seconds, self.fail = seconds, fail
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.submitted: list[dict[str, Any]] = []
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def _run(self, job: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started[job["run_name"]] = time.monotonic()
        try:
            time.sleep(self.seconds[job["run_name"]])
            if job["run_name"] == self.fail:
                raise RuntimeError(f"job {job['run_name']} failed")
            return {"run_name": job["run_name"], "cpus": job.get("cpus_per_worker")}
        finally:
            with self.lock:
                self.running -= 1
                self.ended[job["run_name"]] = time.monotonic()

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        self.submitted.append(job)
        return self._run(job)

    def submit(self, job: dict[str, Any]) -> FakeFuture:
        self.submitted.append(job)
        return FakeFuture(self.pool.submit(self._run, job))


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch):
    def use(cpus: str, parallel: str) -> None:
        monkeypatch.setenv("VLREPRO_CPUS_PER_WORKER", cpus)
        monkeypatch.setenv("VLREPRO_PARALLEL_JOBS", parallel)
        from infra.settings import get_settings

        get_settings(reload=True)

    yield use
    monkeypatch.delenv("VLREPRO_CPUS_PER_WORKER")
    monkeypatch.delenv("VLREPRO_PARALLEL_JOBS")
    from infra.settings import get_settings

    get_settings(reload=True)


def test_jobs_run_two_at_a_time_on_half_the_cpus_and_come_back_in_order(settings):
    settings("2", "2")
    # the first job is the slowest: results must still come back in job order, and the window must refill as soon
    # as any job finishes (5 jobs: 0.4 | 0.1, 0.1, 0.1, 0.1 → about 0.4 s, where waves of two would take 0.6 s)
    seconds = {"a": 0.4, "b": 0.1, "c": 0.1, "d": 0.1, "e": 0.1}
    task = FakeTask(seconds)
    jobs = [{"run_name": name} for name in seconds]
    t0 = time.monotonic()
    out = scheduling.train_together(task, jobs)
    elapsed = time.monotonic() - t0
    assert [r["run_name"] for r in out] == list(seconds)
    assert task.peak == 2
    assert {r["cpus"] for r in out} == {1.0}
    assert elapsed < 0.55
    assert jobs == [{"run_name": name} for name in seconds]  # the caller's dicts are not modified


def test_one_job_at_a_time_is_a_plain_call_with_all_the_cpus(settings):
    settings("2", "1")
    task = FakeTask({"a": 0.0, "b": 0.0})
    out = scheduling.train_together(task, [{"run_name": "a"}, {"run_name": "b"}])
    assert task.peak == 1 and [r["cpus"] for r in out] == [2.0, 2.0]  # each lone job gets all of them
    assert task.submitted == [{"run_name": "a", "cpus_per_worker": 2.0}, {"run_name": "b", "cpus_per_worker": 2.0}]


def test_resources_handed_to_the_flow_win_over_the_settings(settings):
    from infra.settings import Resources

    settings("1", "1")
    task = FakeTask({"a": 0.5, "b": 0.5, "c": 0.5})  # long enough to overlap on a loaded machine
    out = scheduling.train_together(
        task, [{"run_name": n} for n in "abc"], Resources(cpus_per_worker=4, parallel_jobs=2)
    )
    assert task.peak == 2 and [r["cpus"] for r in out] == [2.0, 2.0, 2.0]
    assert Resources.resolve(None, 3) == Resources(1.0, 3)  # the settings fill in what is not given
    with pytest.raises(ValueError, match="parallel_jobs"):
        Resources(1.0, 0)
    with pytest.raises(ValueError, match="cpus_per_worker"):
        Resources(float("nan"), 1)


def test_a_failing_job_raises_its_error(settings):
    settings("2", "2")
    task = FakeTask({"a": 0.05, "b": 0.0, "c": 0.0}, fail="b")
    with pytest.raises(RuntimeError, match="job b failed"):
        scheduling.train_together(task, [{"run_name": n} for n in "abc"])


def test_a_job_starts_only_after_the_jobs_it_names_and_does_not_block_the_others(settings):
    settings("2", "2")
    # a is slow and c needs it; b and d are free: when b ends, d (not c) takes the free slot, c waits for a
    task = FakeTask({"a": 0.3, "b": 0.05, "c": 0.05, "d": 0.05})
    jobs = [{"run_name": "a"}, {"run_name": "b"}, {"run_name": "c", "after": ["a"]}, {"run_name": "d"}]
    out = scheduling.train_together(task, jobs)
    assert [r["run_name"] for r in out] == ["a", "b", "c", "d"]
    assert task.started["c"] >= task.ended["a"]
    assert task.started["d"] < task.ended["a"]  # the waiting job did not hold the window
    assert all("after" not in job for job in task.submitted)  # the train task never sees the key
    assert jobs[2]["after"] == ["a"]  # nor is the caller's dict modified


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_job_naming_a_later_or_unknown_job_is_refused_before_anything_runs(settings, parallel):
    settings("2", parallel)
    task = FakeTask({"a": 0.0, "b": 0.0})
    for after in (["b"], ["zzz"]):  # b comes later (with one at a time it would run first), zzz is not a job
        with pytest.raises(ValueError, match="must run after"):
            scheduling.train_together(task, [{"run_name": "a", "after": after}, {"run_name": "b"}])
    assert task.submitted == []


def test_one_at_a_time_drops_the_after_key_and_keeps_the_order(settings):
    settings("2", "1")
    task = FakeTask({"a": 0.0, "b": 0.0})
    scheduling.train_together(task, [{"run_name": "a"}, {"run_name": "b", "after": ["a"]}])
    assert [{k: v for k, v in job.items() if k != "cpus_per_worker"} for job in task.submitted] == [
        {"run_name": "a"},
        {"run_name": "b"},
    ]


def test_every_clip4clip_variant_has_a_submission_slot():
    from flows.reproduce_clip4clip import SPEC

    assert sorted(SPEC.extra["submit_order"]) == sorted(SPEC.variants)


def test_clip4clip_prerequisites_are_added_and_submitted_first():
    from flows.reproduce_clip4clip import SPEC
    from recipes.experiments.retrieval import needs, submit_order, with_prerequisites

    assert with_prerequisites(SPEC, ["tightTransf-seqText"]) == ["seqTransf", "tightTransf-seqText"]
    assert with_prerequisites(SPEC, ["meanP", "tightTransf"]) == ["meanP", "tightTransf"]
    default = SPEC.chosen_variants(None, False)
    assert default == list(SPEC.default_variants) and with_prerequisites(SPEC, default) == default
    for variant, (base, key) in needs(SPEC).items():
        assert SPEC.extra["submit_order"].index(base) < SPEC.extra["submit_order"].index(variant)
        assert key.startswith("model.")
    # a prerequisite is handed to the trainer before its dependant whatever the spec's order says
    order = submit_order(SPEC, with_prerequisites(SPEC, ["tightTransf-seqText", "meanP"]))
    assert order.index("seqTransf") < order.index("tightTransf-seqText") and sorted(order) == sorted(
        ["seqTransf", "tightTransf-seqText", "meanP"]
    )


def test_only_the_method_is_registered_unless_the_paper_has_none():
    from flows.reproduce_clip4clip import SPEC as CLIP4CLIP
    from flows.reproduce_stan import SPEC as STAN

    assert [v for v in STAN.variants if STAN.registers(v)] == ["stan"]
    assert all(CLIP4CLIP.registers(v) for v in CLIP4CLIP.variants)


def test_one_mini_clip_size_table_for_every_dag() -> None:
    """`--size tiny` means the same (tiny) mini CLIP whichever paper runs: the sizes live in one spec
    (recipes/configs/mini-clip/mini-world.yaml), and no flow module keeps mini-CLIP budgets of its own."""
    from pathlib import Path

    assert stages.mini_clip_overrides("tiny")["steps_per_epoch"] == 6
    assert stages.mini_clip_overrides("tiny", {"steps_per_epoch": 9})["steps_per_epoch"] == 9
    assert stages.mini_clip_overrides("small") == {"train.epochs": 2}
    with pytest.raises(ValueError, match="unknown size"):
        stages.mini_clip_overrides("huge")
    flows_dir = Path(stages.__file__).parent
    owners = [p.name for p in flows_dir.glob("*.py") if "steps_per_epoch" in p.read_text()]
    assert owners == [], owners
    assert stages.MINI_CLIP.size_overrides("tiny", "miniclip") == stages.mini_clip_overrides("tiny")
