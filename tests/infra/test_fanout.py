"""Shard fan-out policy: at most `slots` shards at once in this process; a cluster only with RAY_ADDRESS."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from infra import fanout
from infra.settings import get_settings


def test_at_most_slots_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    get_settings(reload=True)
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return i * i

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: fanout.run_shard(work, i, slots=3), range(12)))
    assert out == [i * i for i in range(12)]
    assert state["peak"] == 3  # eight threads, three slots
    assert not fanout.on_cluster()
    with pytest.raises(ValueError, match="slots"):
        fanout.run_shard(work, 1, slots=0)


def test_a_cluster_only_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    try:
        assert get_settings(reload=True).ray_address == "127.0.0.1:1" and fanout.on_cluster()
    finally:
        monkeypatch.delenv("RAY_ADDRESS")
        get_settings(reload=True)
