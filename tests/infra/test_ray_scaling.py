"""`train.device` → Ray's worker group, unit-level (no GPU, no Ray started): `ScalingSpec.for_device`, the scaling
config and the torch.distributed backend (gloo between CPUs, NCCL between GPUs)."""

from __future__ import annotations

import pytest

from infra.ray_train import ScalingSpec
from models.engine.device import DeviceUnavailableError


def test_cpu_workers_are_gloo_and_ask_for_no_gpu() -> None:
    spec = ScalingSpec(num_workers=2, cpus_per_worker=1.5)
    config = spec.to_ray()
    assert (config.num_workers, config.use_gpu, config.resources_per_worker) == (2, False, {"CPU": 1.5})
    assert spec.backend == "gloo" and spec.torch_config().backend == "gloo"


def test_gpu_workers_are_nccl_and_reserve_a_gpu_each() -> None:
    spec = ScalingSpec(num_workers=4, use_gpu=True, cpus_per_worker=8, collective_timeout_s=60)
    config = spec.to_ray()
    assert config.use_gpu and config.resources_per_worker == {"CPU": 8, "GPU": 1.0}
    torch_config = spec.torch_config()
    assert (torch_config.backend, torch_config.timeout_s) == ("nccl", 60)


@pytest.mark.parametrize(
    ("device", "gpus", "use_gpu"),
    [
        ("cpu", 0, False),
        ("cpu", 8, False),  # cpu stays cpu on a GPU cluster
        ("auto", 0, False),  # the default on a CPU machine: what every existing run did
        ("auto", 1, False),  # too few GPUs for 2 workers: CPUs (with a warning), never a hang
        ("auto", 2, True),
        ("cuda", 2, True),
    ],
)
def test_train_device_decides_use_gpu(device: str, gpus: int, use_gpu: bool) -> None:
    spec = ScalingSpec(num_workers=2).for_device(device, cluster_gpus=gpus)
    assert spec.use_gpu is use_gpu
    assert spec.backend == ("nccl" if use_gpu else "gloo")


def test_cuda_on_a_ray_without_gpus_is_an_error_locally_and_waits_on_a_cluster() -> None:
    with pytest.raises(DeviceUnavailableError, match=r"--set train\.device=cpu"):
        ScalingSpec(num_workers=2).for_device("cuda", cluster_gpus=1)
    # a remote cluster may scale GPU nodes up on demand
    assert ScalingSpec(num_workers=2).for_device("cuda", cluster_gpus=0, can_autoscale=True).use_gpu
    # an explicit use_gpu on a local Ray without GPUs: the same error instead of waiting forever
    with pytest.raises(DeviceUnavailableError):
        ScalingSpec(use_gpu=True).for_device("auto", cluster_gpus=0)


def test_contradictions_are_errors() -> None:
    with pytest.raises(ValueError, match="contradicts"):
        ScalingSpec(use_gpu=True).for_device("cpu", cluster_gpus=4)
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        ScalingSpec().for_device("tpu", cluster_gpus=0)
