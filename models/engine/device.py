"""Where training runs and in which precision: `train.device` and `train.precision`, resolved in one place.

- ``train.device``: ``auto`` (the default) takes the GPU this process was given — a Ray worker's
  (``ray.train.torch.get_device()``, i.e. only when the job has ``use_gpu``), else CUDA when torch sees it — and the
  CPU otherwise; ``cpu`` always the CPU; ``cuda`` a GPU or a `DeviceUnavailableError` naming the fix. On a machine
  without CUDA ``auto`` is the CPU, so every CPU result stays what it was.
- ``train.precision``: ``fp32`` (the default: no autocast, the exact float32 path) or ``bf16``: forward and loss under
  ``torch.autocast(dtype=bfloat16)`` on the training device (matmuls, convolutions and attention in bfloat16; norms,
  softmax and losses in float32, torch's autocast lists). Weights, gradients and optimiser state stay float32, so no
  loss scaling is needed (bfloat16 has float32's exponent range). Evaluation runs in float32.
"""

from __future__ import annotations

import contextlib
import os
from typing import Literal

import torch

DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class DeviceUnavailableError(RuntimeError):
    """The configured device or precision does not exist here; the message names the setting that fixes it."""


def _cuda_diagnosis() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    build = torch.version.cuda or "none (a CPU-only build)"
    return f"torch {torch.__version__}, CUDA build {build}, CUDA_VISIBLE_DEVICES={visible!r}"


def resolve_device(requested: str, assigned: torch.device | str | None = None) -> torch.device:
    """The torch device for ``train.device = requested``.

    ``assigned`` is the device a launcher gave this process (Ray Train: ``ray.train.torch.get_device()``, CUDA only
    when the job has ``use_gpu``); without one, CUDA is used when torch sees it.
    """
    if requested not in DEVICES:
        raise ValueError(f"train.device must be one of {', '.join(DEVICES)}; got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if assigned is not None:
        device = torch.device(assigned)
        if device.type == "cuda":
            return device
        if requested == "cuda":
            raise DeviceUnavailableError(
                "train.device=cuda but this training worker was given no GPU (the Ray job has use_gpu=False or the "
                "cluster has no free GPU); fix: run where Ray sees GPUs, or --set train.device=cpu (or auto)"
            )
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        raise DeviceUnavailableError(
            f"train.device=cuda but torch sees no CUDA device ({_cuda_diagnosis()}); fix: --set train.device=cpu "
            "(or auto: the GPU where there is one, else the CPU), or run on a machine with a GPU and a CUDA build "
            "of torch"
        )
    return torch.device("cpu")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """The context the forward and loss run in: nothing for ``fp32``, bfloat16 autocast for ``bf16``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceUnavailableError(
            f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support (needs compute "
            "capability 8.0+, e.g. A100/H100); fix: --set train.precision=fp32"
        )
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
