"""GPU readiness of the training engine, exercised on CPU: `train.device`, `train.precision` (bf16 autocast) and
`train.prefetch_batches`; the defaults are the float32 CPU path bit for bit."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from models.config import ConfigError, build, merge
from models.engine.device import DeviceUnavailableError, autocast, resolve_device
from models.engine.loop import Batch, TrainConfig, Trainer, fit_local, prefetch
from models.engine.optim import OptimConfig

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is ~10x faster than two on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without CUDA, wherever the test runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@dataclass(frozen=True)
class RecipeConfig:
    train: TrainConfig = field(default_factory=TrainConfig)


# ----- device selection -------------------------------------------------------------------------------------------
def test_auto_is_the_cpu_without_cuda_and_cpu_is_always_the_cpu(no_cuda: None) -> None:
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    assert resolve_device("cpu", assigned="cuda:0") == CPU  # an explicit cpu wins over a launcher's GPU


def test_auto_on_this_machine() -> None:
    want = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else CPU
    assert resolve_device("auto") == want
    assert TrainConfig().device == "auto" and TrainConfig().precision == "fp32" and TrainConfig().prefetch_batches == 0


def test_cuda_without_cuda_is_one_error_naming_the_fix(no_cuda: None) -> None:
    with pytest.raises(DeviceUnavailableError) as info:
        resolve_device("cuda")
    message = str(info.value)
    assert "\n" not in message and "--set train.device=cpu" in message and "CUDA build" in message


def test_a_launcher_s_device_decides_auto_and_must_be_a_gpu_for_cuda() -> None:
    """Ray Train hands each worker its device (`ray.train.torch.get_device()`): a GPU only for a use_gpu job."""
    gpu = torch.device("cuda", 1)
    assert resolve_device("auto", assigned=gpu) == gpu  # building a device object needs no GPU
    assert resolve_device("cuda", assigned=gpu) == gpu
    assert resolve_device("auto", assigned=CPU) == CPU
    with pytest.raises(DeviceUnavailableError, match="use_gpu=False"):
        resolve_device("cuda", assigned=CPU)
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("gpu")


def test_device_and_precision_are_typed_config_keys() -> None:
    """Reachable by the override grammar (`--set train.device=cuda --set train.precision=bf16`: every recipe config
    holds a `train: TrainConfig`), strictly typed."""
    cfg = merge(RecipeConfig(), {"train.device": "cuda", "train.precision": "bf16"})
    assert (cfg.train.device, cfg.train.precision) == ("cuda", "bf16")
    with pytest.raises(ConfigError, match="auto"):
        build(TrainConfig, {"device": "gpu"})
    with pytest.raises(ConfigError, match="bf16"):
        build(TrainConfig, {"precision": "fp16"})


# ----- a toy problem ------------------------------------------------------------------------------------------------
class Probe(nn.Module):
    """Linear regression through a hidden layer; records the dtype its hidden activations had."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 1))
        self.seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}  # training? -> dtypes

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.net[0](x)
        self.seen[self.training].add(hidden.dtype)
        return self.net[2](self.net[1](hidden)).squeeze(-1)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        return {"loss": nn.functional.mse_loss(self(batch["x"]).float(), batch["y"])}

    def lr_scales(self) -> dict[str, float]:
        return {}

    def after_step(self) -> None:
        pass


@dataclass
class ToyRecipe:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=6, batch_size=32, seed=3, optim=OptimConfig(lr=2e-2, weight_decay=0.0, warmup_steps=1)
        )
    )
    n: int = 192
    log: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.n, 8, generator=g)
        self.y = self.x @ torch.randn(8, generator=g)

    def build_model(self) -> nn.Module:
        return Probe()

    def steps_per_epoch(self, world_size: int) -> int:
        return self.n // self.train.batch_size

    def batches(self, epoch: int, rank: int, world_size: int, start: int = 0) -> Iterator[Batch]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch))
        b = self.train.batch_size
        for i in range(start, self.steps_per_epoch(world_size)):
            self.log.append(i)
            idx = order[i * b : (i + 1) * b]
            yield {"x": self.x[idx], "y": self.y[idx]}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"mse": float(nn.functional.mse_loss(model(self.x), self.y))}


def _train(**train: Any) -> tuple[nn.Module, list[dict[str, float]]]:
    recipe = ToyRecipe()
    recipe.train = replace(recipe.train, **train)
    return fit_local(recipe)


def test_bf16_autocasts_the_forward_on_cpu_and_still_converges(no_cuda: None) -> None:
    model32, history32 = _train()
    model16, history16 = _train(precision="bf16")
    assert model32.seen == {True: {torch.float32}, False: {torch.float32}}  # fp32: no autocast anywhere
    assert model16.seen == {True: {torch.bfloat16}, False: {torch.float32}}  # bf16 training forward, fp32 evaluation
    assert all(p.dtype == torch.float32 for p in model16.parameters())  # weights, hence grads and Adam state, fp32
    first, last = history16[0]["train/loss"], history16[-1]["mse"]
    assert last < 0.05 * first, (first, last)  # converges ...
    assert last == pytest.approx(history32[-1]["mse"], rel=0.5, abs=0.02)  # ... about as well as float32
    assert history16[-1]["train/loss"] != history32[-1]["train/loss"]  # and autocast really changed the numbers


def test_autocast_context() -> None:
    with autocast(CPU, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp32, bf16"):
        autocast(CPU, "fp16")


def test_cuda_requested_without_cuda_fails_before_training(no_cuda: None) -> None:
    recipe = ToyRecipe()
    recipe.train = replace(recipe.train, device="cuda")
    with pytest.raises(DeviceUnavailableError, match=r"train\.device=cuda"):
        fit_local(recipe)
    assert recipe.log == []  # no batch was drawn


def test_defaults_train_on_the_cpu_exactly_as_an_explicit_cpu_float32_run(no_cuda: None) -> None:
    recipe = ToyRecipe()
    torch.manual_seed(0)
    default = Trainer(recipe, recipe.build_model())
    torch.manual_seed(0)
    explicit = Trainer(recipe, recipe.build_model(), device="cpu")
    assert default.device == CPU
    for trainer in (default, explicit):
        torch.manual_seed(1)
        trainer.train_epoch()
    for (name, a), (_, b) in zip(default.model.state_dict().items(), explicit.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


# ----- prefetch -----------------------------------------------------------------------------------------------------
def test_prefetch_gives_the_same_training_bit_for_bit() -> None:
    model0, history0 = _train(epochs=2)
    model2, history2 = _train(epochs=2, prefetch_batches=2)
    for a, b in zip(model0.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [h["train/loss"] for h in history0] == [h["train/loss"] for h in history2]


def test_prefetch_reads_ahead_in_order_and_raises_where_the_source_failed() -> None:
    produced: list[int] = []
    consumer = threading.get_ident()
    threads: set[int] = set()

    def source(fail_at: int | None = None) -> Iterator[Mapping[str, Any]]:
        for i in range(6):
            threads.add(threading.get_ident())
            if i == fail_at:
                raise KeyError(f"broken sample {i}")
            produced.append(i)
            yield {"i": i}

    assert [b["i"] for b in prefetch(source(), 2)] == list(range(6))
    assert consumer not in threads  # assembled in the background
    got = []
    with pytest.raises(KeyError, match="broken sample 3"):
        for batch in prefetch(source(fail_at=3), 2):
            got.append(batch["i"])
    assert got == [0, 1, 2]
    # stopping early stops the reader: at most `depth` + 1 batches beyond the last one used
    produced.clear()
    stream = prefetch(source(), 1)
    assert next(stream)["i"] == 0
    stream.close()
    assert len(produced) <= 3
    assert [b["i"] for b in prefetch(source(), 0)] == list(range(6))  # 0: in the caller's thread, as before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_auto_trains_there_in_bf16_like_on_the_cpu() -> None:
    model, history = _train(precision="bf16")
    assert next(model.parameters()).device.type == "cuda"  # auto: the GPU
    assert model.seen[True] == {torch.bfloat16}
    _, cpu_history = _train(device="cpu")
    assert history[-1]["mse"] == pytest.approx(cpu_history[-1]["mse"], rel=0.5, abs=0.02)
