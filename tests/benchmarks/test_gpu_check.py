"""`benchmarks/gpu_check.py` is prepared for a GPU and tested here on CPU: its ``--quick`` variant, in process (the
script's own entry point; a subprocess would spend most of the time importing torch again)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_cpu_run_reports_every_measurement(
    gpu_check: ModuleType, one_thread: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu_check.json"
    args = ["--quick", "--device", "cpu", "--repeats", "1", "--threads", "1", "--out", str(out)]
    assert gpu_check.main(args) == 0
    stdout = capsys.readouterr().out
    result = json.loads(stdout.strip().splitlines()[-1])  # one JSON object, the last line
    assert result == json.loads(out.read_text())
    assert result["device"]["device"] == "cpu" and result["quick"] is True
    assert [r["precision"] for r in result["extraction"]] == ["fp32", "bf16"]
    for row in result["extraction"]:
        assert row["extract_fps"] > 0 and row["bare_forward_fps"] > 0 and row["extract_over_bare"] > 0
    for row in result["training"]:
        assert row["steps_per_s"] > 0 and row["batch"] == gpu_check.QUICK.batch
    assert set(result["bf16_speedup"]) == {"extraction", "training"}
    assert "| CLIP4Clip meanP training |" in stdout and "extract ÷ bare" in stdout


def test_the_full_check_is_the_papers_setting(gpu_check: ModuleType) -> None:
    full = gpu_check.FULL
    assert (full.extract_arch, full.frame_px) == ("ViT-B-16-quickgelu", 224)
    assert (full.train_arch, full.batch, full.train_frames, full.words) == ("ViT-B-32-quickgelu", 128, 12, 32)


def test_cuda_without_cuda_is_the_engine_s_clear_error(gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.engine.device import DeviceUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match=r"--set train\.device=cpu"):
        gpu_check.main(["--quick", "--device", "cuda"])
