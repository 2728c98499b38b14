"""How a DAG hands work to its tasks: independent training jobs a window at a time (`train_together`), chains of step
jobs (`StepChains`), and the TV-L1 → I3D branch fanned out per shard (`motion_features`).

**Chains.** Each step starts from the previous step's final weights (DCC's warm-up → B → F → …).

Every step is its own `infra.training_job.TrainingJob` run by the DAG's cached ``train`` task, named by
`infra.jobs.training_job` as ``<paper>-<i><stage>-<data>-<hash>``. Step i's config holds step i−1's ``model.pt``
path (``init_from``), so its key digests its predecessor's: a crash in step k leaves steps < k finished and the rerun
resumes at step k. Chains that share a prefix (the warm-up; only-B's first B step) have the same keys for it, and
`StepChains` runs each key once per flow run.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.tasks import i3d_features, tvl1_commit, tvl1_plan, tvl1_shard
from infra.jobs import training_job, was_finished
from infra.settings import Resources


@dataclass
class StepChains:
    train: Any  # the DAG's cached ``train`` task
    config: Callable[[str, str | None], dict[str, Any]]  # (stage, previous step's model.pt) → the step's config
    record: Callable[[int, str, dict[str, Any], bool], dict[str, Any]]  # (i, stage, job result, reused) → kept record
    job: Mapping[str, Any]  # the other `training_job` fields every step shares (paper, recipe, root, metric, data, …)
    tags: Mapping[str, str] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # run name → step record, in this flow run

    def run(self, schedule: Sequence[str], register: bool) -> list[dict[str, Any]]:
        """The steps of `schedule` in order (the last one registered when `register`); their records."""
        steps: list[dict[str, Any]] = []
        previous: str | None = None
        for i, stage in enumerate(schedule):
            tags = {**self.tags, "vlrepro.stage": stage, "vlrepro.step": str(i)}
            last = i == len(schedule) - 1
            job = training_job(
                **self.job,
                config=self.config(stage, previous),
                part=f"{i}{stage}",
                register=register and last,
                tags=tags,
            )
            name = job["run_name"]
            if name not in self.finished:
                reused = was_finished(job)  # before training: a persisted task result cannot say so
                result = self.train.with_options(task_run_name=f"{job['paper']}-step{i}-{stage}")(job)
                self.finished[name] = self.record(i, stage, result, reused)
            steps.append(self.finished[name])
            previous = self.finished[name]["model"]
        return steps


def train_together(
    train_task: Any, jobs: list[dict[str, Any]], resources: Resources | None = None
) -> list[dict[str, Any]]:
    """Training jobs, ``resources.parallel_jobs`` at a time (default: the settings'), each with its share of
    ``resources.cpus_per_worker``; results in the order of `jobs`. With one at a time (the default) they run one after
    the other, as plain task calls, each with all of ``cpus_per_worker``.

    A job may name, under ``"after"``, the run names of jobs in the list that must finish first (a model it starts
    from); the key is taken out before the job reaches `train_task`. A job is started only when those have finished,
    so with one at a time they must come earlier in `jobs`.

    A window rather than handing every job to Ray at once: a Ray Train job waiting for CPUs times out its worker-group
    start (60 s) and retries, which is noise and counts against nothing we can read back. The first failure raises.

    Raises:
        ValueError: an ``"after"`` name that is not an earlier job's run name.
    """
    names = [job["run_name"] for job in jobs]
    needs = [list(job.get("after", ())) for job in jobs]
    for i, need in enumerate(needs):
        bad = [n for n in need if n not in names[:i]]
        if bad:
            raise ValueError(f"job {names[i]} must run after {bad}, which are not earlier jobs of this list")
    plain = [{k: v for k, v in job.items() if k != "after"} for job in jobs]
    resources = resources or Resources.resolve()
    window = min(resources.parallel_jobs, len(jobs))
    if window <= 1:
        return [train_task({**job, "cpus_per_worker": resources.cpus_per_worker}) for job in plain]
    cpus = resources.job_cpus(len(jobs))
    logging.getLogger(__name__).info("training %d jobs, %d at a time, %g CPUs each", len(jobs), window, cpus)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    finished: set[str] = set()
    pending = [(i, {**job, "cpus_per_worker": cpus}) for i, job in enumerate(plain)]
    running: dict[concurrent.futures.Future[Any], tuple[int, Any]] = {}
    while pending or running:
        ready = [p for p in pending if finished.issuperset(needs[p[0]])]
        while ready and len(running) < window:
            i, job = ready.pop(0)
            pending.remove((i, job))
            future = train_task.submit(job)
            running[future.wrapped_future] = (i, future)
        done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for wrapped in done:
            i, future = running.pop(wrapped)
            results[i] = future.result()  # raises the job's error
            finished.add(names[i])
    return [r for r in results if r is not None]


def motion_features(
    root: str, frames_uri: str, dataset: str, tvl1_cfg: dict[str, Any], i3d_cfg: dict[str, Any], workers: int
) -> tuple[Any, Any]:
    """Submit frames → TV-L1 per shard → commit → two-stream I3D (Prefect worker threads); (flow, I3D) futures.

    `tvl1_plan` lists one job per committed frames shard and `tvl1_shard` is mapped over them (tag ``"tvl1"``): at
    most `workers` at once here, or one Ray task each on a cluster at ``RAY_ADDRESS`` (`infra.fanout`); across flow
    runs, a Prefect tag limit (``prefect concurrency-limit create tvl1 2``) bounds them."""
    from prefect import unmapped

    from flows.runtime import cached_task
    from infra import fanout

    fanout.prepare()  # a cluster is joined from the main thread, before any shard task needs it
    plan = cached_task(tvl1_plan, root)(frames_uri, root, dataset, tvl1_cfg)
    shards = cached_task(tvl1_shard, root).map(plan["jobs"], unmapped(frames_uri), unmapped(tvl1_cfg), workers)
    flow = cached_task(tvl1_commit, root).submit(plan, frames_uri, tvl1_cfg, shards)
    return flow, cached_task(i3d_features, root).submit(frames_uri, flow, root, dataset, i3d_cfg)
