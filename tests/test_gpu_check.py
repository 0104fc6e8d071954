"""scripts/gpu_check.sh: without a CUDA GPU it says so and exits 0; its Python part runs end to
end on the CPU (a functional smoke run, never a timing check)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the script would run the check")
def test_without_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU found" in result.stdout
    assert not (tmp_path / "out").exists()


def test_usage_error_without_output_folder() -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr


def test_python_part_without_gpu_exits_0(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "no CUDA GPU found" in result.stdout


@pytest.mark.slow
def test_cpu_smoke_run_writes_the_report(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(tmp_path), "--device", "cpu",
                             "--models", "v5lite-e@64", "--batches", "1", "--train-batch", "2", "--budget", "400",
                             "--train-seconds", "40"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["mode"] for r in report["inference"]] == ["torch eager fp32"]
    assert report["training"] and report["training"][0]["images_per_s"] > 0
    assert "| v5lite-e | 64 | 1 | torch eager fp32 |" in (tmp_path / "gpu_check.md").read_text()
