"""Where a CPU-bound per-shard function runs: in this process, a bounded number at once, or as a Ray task on a cluster.

The DAGs fan shard work out with Prefect (``.map``: one task per shard); this module is the policy of where each
shard's computation runs:

- **here** (no ``RAY_ADDRESS``): at most `slots` shards compute at once in this process — one process-wide
  semaphore per `slots` value, shared by every task thread (OpenCV and torch release the GIL in their kernels, so
  threads scale like processes; 2 = this machine's cores);
- **on the cluster** at ``RAY_ADDRESS`` (`Settings.ray_address`): each shard is one Ray task of one CPU (retried twice
  on a lost node), which the cluster schedules; the Prefect task only waits for it. `fn` must be importable there
  (a module-level function of the installed project), and arguments and result small JSON-able values (URIs and
  summaries, never arrays).

Across flow runs or deployment workers, Prefect's tag concurrency limits bound the same tasks (`infra/OPERATIONS.md`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from infra.settings import get_settings

T = TypeVar("T")

_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _slots(n: int) -> threading.BoundedSemaphore:
    if n < 1:
        raise ValueError(f"slots must be >= 1, got {n}")
    with _SLOTS_LOCK:
        if n not in _SLOTS:
            _SLOTS[n] = threading.BoundedSemaphore(n)
        return _SLOTS[n]


def on_cluster() -> bool:
    """Whether shard work goes to a Ray cluster (``RAY_ADDRESS`` set)."""
    return get_settings().ray_address is not None


def prepare() -> None:
    """Connect to the cluster from the calling (main) thread before any shard task needs it: Ray started from a task
    thread leaves node agents behind the process. Nothing to do without a cluster."""
    if on_cluster():
        from infra import ray_train

        ray_train.connect()


def run_shard(fn: Callable[..., T], *args: Any, slots: int) -> T:
    """``fn(*args)`` here (at most `slots` at once in this process) or as a one-CPU Ray task on the cluster."""
    if not on_cluster():
        with _slots(slots):
            return fn(*args)
    import ray

    from infra import ray_train

    ray_train.connect()
    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    result: T = ray.get(remote.remote(*args))
    return result
