"""Ray Train controller poll interval: wall time of one small `infra.ray_train.fit` at Ray's default 2 s vs ours.

Every reported checkpoint and the end of a run wait for the controller's next poll of its workers, so on small jobs
(the tests' tiny configurations, the mini world's heads) the poll interval, not the training, sets the wall time.
Each interval runs in a fresh process (the interval is fixed when the process starts its local Ray) that fits the
tests' toy recipe (`tests/infra/toy_recipe.py`, 3 epochs, one checkpoint each) ``--fits`` times, each under a new
run name; sides alternate ``--rounds`` times, and the ratio of the medians is what to read. Usage::

    .venv/bin/python benchmarks/ray_train_poll.py [--fits 3] [--rounds 2] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from infra.ray_train import RunSpec, ScalingSpec, connect, fit
connect()
out = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter()
    fit("tests.infra.toy_recipe:build", {}, ScalingSpec(), RunSpec(name=f"poll-{i}", storage_path=sys.argv[1]))
    out.append(time.perf_counter() - t)
print(json.dumps(out))
"""


def one_side(poll_s: float, fits: int) -> list[float]:
    env = {**os.environ, "VLREPRO_RAY_TRAIN_POLL_S": str(poll_s), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as storage:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, storage, str(fits)], cwd=ROOT, env=env, capture_output=True, text=True
        )
    if done.returncode != 0:
        raise SystemExit(f"poll {poll_s}: child failed:\n{done.stderr[-3000:]}")
    return [float(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ours", type=float, default=0.2, help="our interval (the setting's default)")
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args()
    sides: dict[str, list[float]] = {"2.0": [], str(args.ours): []}
    for _ in range(args.rounds):
        for key in sides:
            sides[key] += one_side(float(key), args.fits)
            print(f"poll {key} s: {[round(x, 2) for x in sides[key]]}", file=sys.stderr, flush=True)
    medians = {key: statistics.median(values) for key, values in sides.items()}
    report = {
        "fit_seconds": {key: [round(x, 2) for x in values] for key, values in sides.items()},
        "median_seconds": {key: round(value, 2) for key, value in medians.items()},
        "ours_over_default": round(medians[str(args.ours)] / medians["2.0"], 3),
        "load_average": os.getloadavg(),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ray_train_poll.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
