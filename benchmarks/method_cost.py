"""Training cost per method: seconds per optimiser step and peak memory, at three model configurations.

Methods: CLIP4Clip (meanP, seqTransf), STAN (self-attention and conv cross-frame modules), UCoFiA — each model's own
`training_step` driven by the engine's `Trainer` (forward, backward, grad clip, AdamW with the method's lr scales,
schedule, `after_step`), on synthetic batches of the right shapes. Configurations:

- ``tiny``: each method's ``Config.tiny()`` (random ``vlrepro-tiny`` CLIP, pixel input), batch 8 — the test config;
- ``mini``: what the mini-world DAGs train (``recipes/configs/<method>/mini-retrieval.yaml``: frozen mini CLIP,
  input features / blocks / tokens, the YAML's batch and frames), random weights (cost does not depend on them);
- ``vit-b32``: the paper setting, end to end from pixels: ``ViT-B-32-quickgelu`` with random weights
  (``pretrained=None``), 224 px, 12 frames, 32 words, batch 2 (2 × 12 = 24 frames per step; the papers use 128).

Each (method, configuration) runs in a fresh subprocess so that peak memory is its own: on CPU the peak resident set
(``VmHWM``) minus the resident set after imports, i.e. model + optimiser state + activations; on CUDA
``torch.cuda.max_memory_allocated``. The first step (lazy AdamW state, allocator warm-up) is timed separately and
left out of the median; ``step_cpu_s_median`` (process CPU seconds per step) is the number to compare on a loaded
machine (with one thread it is the step's compute, whatever else runs). Threads default to 1 (the shared 2-core dev
machine; conventions). Usage::

    .venv/bin/python benchmarks/method_cost.py [--configs tiny,mini,vit-b32] [--methods ...] [--steps 3]
        [--threads 1] [--device cpu|cuda] [--out benchmarks/out/method_cost.json]

Prints one JSON object (all rows) and a markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("clip4clip-meanP", "clip4clip-seqTransf", "stan", "stan-conv", "ucofia")
CONFIGS = ("tiny", "mini", "vit-b32")
#: measured steps per configuration (after one warm-up step) when --steps is not given
DEFAULT_STEPS = {"tiny": 10, "mini": 4, "vit-b32": 3}
VIT_B32 = {"arch": "ViT-B-32-quickgelu", "pretrained": None}
VIT_BATCH, TINY_BATCH = 2, 8


def _proc_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (VmRSS = now, VmHWM = peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# ----- one case (runs in the child process) ------------------------------------------------------------------------


def _model_config(method: str, config: str) -> tuple[Any, Any, int, Callable[[Any], Any]]:
    """(model config, TrainConfig, batch size, build function) of one case."""
    from models.clip4clip import Clip4ClipConfig
    from models.clip4clip import build as build_c4c
    from models.config import load, merge
    from models.stan import StanConfig
    from models.stan import build as build_stan
    from models.ucofia import UCoFiAConfig
    from models.ucofia import build as build_ucofia
    from recipes.clip4clip import Clip4ClipRecipeConfig
    from recipes.stan import StanRecipeConfig
    from recipes.ucofia import UCoFiARecipeConfig

    family, _, variant = method.partition("-")
    variant_overrides: dict[str, Any] = {
        "clip4clip": {"head": variant or "meanP"},
        "stan": {"cross_frame": "conv" if variant == "conv" else "attention"},
        "ucofia": {},
    }[family]
    builders: dict[str, Callable[[Any], Any]] = {"clip4clip": build_c4c, "stan": build_stan, "ucofia": build_ucofia}
    build_fn = builders[family]
    if config == "mini":
        recipe_cls: Any = {"clip4clip": Clip4ClipRecipeConfig, "stan": StanRecipeConfig, "ucofia": UCoFiARecipeConfig}
        from recipes.spec import load_spec

        rc = load(recipe_cls[family], overrides=load_spec(family, "mini-retrieval").base(family))
        mini_clip = {"model.clip.arch": "vlrepro-mini", "model.clip.pretrained": None}  # what the DAGs set
        rc = merge(rc, {**mini_clip, **{f"model.{k}": v for k, v in variant_overrides.items()}})
        return rc.model, rc.train, rc.train.batch_size, build_fn
    cfg_cls: Any = {"clip4clip": Clip4ClipConfig, "stan": StanConfig, "ucofia": UCoFiAConfig}[family]
    train = {"clip4clip": Clip4ClipRecipeConfig, "stan": StanRecipeConfig, "ucofia": UCoFiARecipeConfig}[family]().train
    if config == "tiny":
        return merge(cfg_cls.tiny(), variant_overrides), train, TINY_BATCH, build_fn
    cfg = merge(cfg_cls(), {"clip": VIT_B32, "max_frames": 12, "max_words": 32, **variant_overrides})
    return cfg, train, VIT_BATCH, build_fn


def _batch(model: Any, cfg: Any, batch_size: int) -> dict[str, Any]:
    """Synthetic inputs of the model's input mode: pixels (B,T,3,S,S), features (B,T,D), tokens (B,T,1+N,D) or
    blocks (B,T,K,1+N,W); all frames valid; captions tokenised to max_words."""
    import torch

    from models.common.clip import arch_image_size, tokenize

    g = torch.Generator().manual_seed(0)
    b, t = batch_size, cfg.max_frames
    arch = cfg.clip.arch
    mode = cfg.input
    if mode == "pixels":
        s = arch_image_size(arch)
        video = torch.randn(b, t, 3, s, s, generator=g)
    elif mode == "features":
        video = torch.randn(b, t, model.embed_dim, generator=g)
    elif mode == "tokens":
        video = torch.randn(b, t, 1 + model.n_patches, model.embed_dim, generator=g)
    else:  # blocks: the STAN model keeps its sizes (the tower is reduced in this mode)
        video = torch.randn(b, t, cfg.depth, 1 + model.n_patches, model.width, generator=g)
    captions = [f"a red circle moves left, then up {i}" for i in range(b)]
    return {
        "video": video,
        "video_mask": torch.ones(b, t, dtype=torch.bool),
        "text": tokenize(arch, captions, cfg.max_words),
    }


class _SyntheticRecipe:
    """The engine's `Recipe` over one fixed batch (timing only)."""

    def __init__(self, train: Any, batch: Mapping[str, Any], steps: int) -> None:
        self.train = train
        self._batch = batch
        self._steps = steps

    def build_model(self) -> Any:  # pragma: no cover - the benchmark builds the model itself
        raise NotImplementedError

    def steps_per_epoch(self, world_size: int) -> int:
        return self._steps

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Mapping[str, Any]]:
        for _ in range(start, self._steps):
            yield self._batch

    def evaluate(self, model: Any) -> dict[str, float]:
        return {}


def run_case(method: str, config: str, steps: int, threads: int, device: str) -> dict[str, Any]:
    """Build one (method, configuration), run 1 + `steps` engine steps, return timings and peak memory."""
    import torch

    from models.engine.loop import Trainer, seed_everything, to_device

    torch.set_num_threads(threads)
    for family in ("clip4clip", "stan", "ucofia"):
        importlib.import_module(f"recipes.{family}")  # imports the model package too
    rss_start = _proc_kib("VmRSS")  # after every import: the peak below is model + optimiser + activations
    seed_everything(0)
    cfg, train, batch_size, build_fn = _model_config(method, config)
    t0 = time.perf_counter()
    model = build_fn(cfg)
    build_s = time.perf_counter() - t0
    batch = to_device(_batch(model, cfg, batch_size), torch.device(device))
    recipe = _SyntheticRecipe(train, batch, 1 + steps)
    trainer = Trainer(recipe, model, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stamps = [(time.perf_counter(), time.process_time())]

    def on_step(metrics: Mapping[str, float], step: int) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append((time.perf_counter(), time.process_time()))

    trainer.train_epoch(on_step)
    times = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]  # CPU seconds: robust to a loaded machine
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out: dict[str, Any] = {
        "method": method,
        "config": config,
        "arch": cfg.clip.arch,
        "input": cfg.input,
        "batch": batch_size,
        "frames": cfg.max_frames,
        "params_M": round(params / 1e6, 2),
        "trainable_M": round(trainable / 1e6, 2),
        "build_s": round(build_s, 2),
        "first_step_s": round(times[0], 3),
        "step_s_median": round(statistics.median(times[1:]), 3),
        "step_s_mean": round(statistics.fmean(times[1:]), 3),
        "step_cpu_s_median": round(statistics.median(cpu[1:]), 3),
        "steps": steps,
        "threads": threads,
        "device": device,
    }
    if device == "cuda":
        out["peak_mem_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        out["peak_mem_MiB"] = round((_proc_kib("VmHWM") - rss_start) / 1024, 1)
    return out


# ----- driver ------------------------------------------------------------------------------------------------------


def _child(method: str, config: str, steps: int, threads: int, device: str, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    argv = [sys.executable, __file__, "--one", f"{method}:{config}", "--steps", str(steps)]
    argv += ["--threads", str(threads), "--device", device]
    wall = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"method": method, "config": config, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"method": method, "config": config, "error": tail[0][:300]}
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    row["case_wall_s"] = round(time.perf_counter() - wall, 1)
    return row


COLUMNS = (
    "method",
    "config",
    "input",
    "batch",
    "frames",
    "params_M",
    "trainable_M",
    "step_s_median",
    "step_cpu_s_median",
    "first_step_s",
    "peak_mem_MiB",
)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['config']} | error: {r['error']} |")
        else:
            lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=0, help="measured steps after the warm-up (0 = per config)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: METHOD:CONFIG
    args = parser.parse_args(argv)
    if args.one:
        method, config = args.one.split(":")
        print(json.dumps(run_case(method, config, args.steps or DEFAULT_STEPS[config], args.threads, args.device)))
        return 0
    rows = []
    load_before = os.getloadavg()
    for config in args.configs.split(","):
        for method in args.methods.split(","):
            steps = args.steps or DEFAULT_STEPS[config]
            rows.append(_child(method, config, steps, args.threads, args.device, args.timeout))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"rows": rows, "load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count()}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    print(markdown(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
