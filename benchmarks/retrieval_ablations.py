"""The STAN and UCoFiA ablation tables on one run root, with wall time and machine load: the measurement behind the
README's retrieval ablation tables (``python benchmarks/retrieval_ablations.py --size small``)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the STAN and UCoFiA ablation tables on one run root (they share the world, ingest and mini CLIP); write
    ``<root>/<paper>-ablations.json`` with wall time and machine load (1-min load average sampled every 30 s), and
    print the markdown tables."""
    import argparse
    import json
    import os
    import statistics
    import threading
    import time
    from pathlib import Path

    import torch
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from flows.reproduce_stan import reproduce_stan
    from flows.reproduce_ucofia import reproduce_ucofia
    from infra.results import markdown_table

    for var, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(var, value)
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", default="/tmp/vlrepro-ablations", help="run root shared by both papers")
    parser.add_argument("--size", default="small", help="mini-world size: tiny | small | medium")
    parser.add_argument("--papers", default="stan,ucofia", help="comma-separated, run in this order")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the driver evaluates each job; the shared 2-core machine (conventions)

    flows = {"stan": reproduce_stan, "ucofia": reproduce_ucofia}
    for paper in args.papers.split(","):
        samples: list[float] = []
        done = threading.Event()

        def sample(out: list[float] = samples, stop: threading.Event = done) -> None:
            while not stop.wait(30.0):
                out.append(os.getloadavg()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        wall = time.monotonic()
        # the ephemeral Prefect API needs more than its default 20 s to start on a loaded 2-core machine; no telemetry
        settings = {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180, PREFECT_SERVER_ANALYTICS_ENABLED: False}
        with temporary_settings(updates=settings):
            result = flows[paper](root=args.root, size=args.size, ablations=True)
        done.set()
        result["wall_seconds"] = round(time.monotonic() - wall, 1)
        result["load"] = {
            "mean_1min": round(statistics.fmean(samples), 2) if samples else None,
            "max_1min": max(samples, default=None),
            "cpus": os.cpu_count(),
        }
        Path(args.root, f"{paper}-ablations.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"\n## {paper} ({result['dataset']}): {result['wall_seconds']} s, load {result['load']}\n")
        print(markdown_table(result["ablations"]["rows"]))
    return 0


if __name__ == "__main__":  # python benchmarks/retrieval_ablations.py --root /tmp/vlrepro-ablations --size small
    raise SystemExit(main())
