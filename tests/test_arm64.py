"""64-bit ARM (Raspberry Pi): CPU probes on a faked aarch64 /proc/cpuinfo, the camera inputs a Pi
uses, and the comparison and skip logic of scripts/arm64_check.sh. The full check (litedet detect under QEMU on an arm64 Debian
root) is the slow test at the end and `make arm64-check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from litedet.bench.machine import cpu_flags, cpu_model
from litedet.data import sources
from litedet.data.sources import open_source

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "arm64_check.sh"
SKIPPED = 77

# /proc/cpuinfo of a Raspberry Pi 4 on 64-bit Raspberry Pi OS (kernel 6.1): no "model name" line,
# ARM's implementer/part numbers per core, the board in a trailing block.
PI4_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    for i in range(4)
) + "Hardware\t: BCM2835\nRevision\t: c03115\nSerial\t\t: 10000000a1b2c3d4\nModel\t\t: Raspberry Pi 4 Model B Rev 1.5\n"

# A big.LITTLE board without a Model line (Rockchip RK3588: 4x Cortex-A55 + 4x Cortex-A76).
RK3588_CPUINFO = "".join(
    f"processor\t: {i}\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
    f"lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x{'2' if i < 4 else '4'}\n"
    f"CPU part\t: {'0xd05' if i < 4 else '0xd0b'}\nCPU revision\t: 0\n\n"
    for i in range(8)
)

X86_CPUINFO = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni amx_bf16\n\n"
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_cpu_model_names_a_raspberry_pi_and_its_cores(tmp_path):
    path = _write(tmp_path, PI4_CPUINFO)
    assert cpu_model(path) == "Raspberry Pi 4 Model B Rev 1.5 (4x Cortex-A72)"
    flags = cpu_flags(path)
    assert flags == ["asimd"]  # Cortex-A72: no fp16 arithmetic (asimdhp), so ncnn fp16 gains little there


def test_cpu_model_counts_big_little_cores_and_fp16_features(tmp_path):
    path = _write(tmp_path, RK3588_CPUINFO)
    assert cpu_model(path) == "4x Cortex-A55 + 4x Cortex-A76"
    assert {"asimd", "asimdhp", "asimddp"} <= set(cpu_flags(path))
    assert not {"avx2", "fma", "neon"} & set(cpu_flags(path))


def test_cpu_model_unknown_arm_core_is_named_by_its_numbers(tmp_path):
    text = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x61\nCPU part\t: 0x022\n\n"
    assert cpu_model(_write(tmp_path, text)) == "1x ARM core 0x61/0x022"


def test_cpu_model_x86_and_missing_file(tmp_path):
    path = _write(tmp_path, X86_CPUINFO)
    assert cpu_model(path) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_flags(path) == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_bf16"]
    missing = tmp_path / "absent"
    assert cpu_model(missing)  # platform's answer, never empty
    assert cpu_flags(missing) == []


def test_machine_info_without_a_peak_kernel_describes_the_machine(monkeypatch):
    """A Pi with litedet[runtime] only (no torch, threadpoolctl or onnx) has no kernel to measure
    the fp32 peak with: `litedet bench` must still describe the machine instead of failing."""
    from litedet.bench import machine

    def no_kernel(threads, *args, **kwargs):
        raise RuntimeError("no peak kernel could run")

    monkeypatch.setattr(machine, "measure_peak_gflops", no_kernel)
    info = machine.machine_info(threads=(1, 2), measure=True)
    assert info.peak_gflops == {} and info.peak_for(1) is None
    assert info.peak_method.startswith("not measured") and info.cpu_model


def test_bench_report_without_matplotlib_writes_the_tables(tmp_path, monkeypatch):
    """On a Pi with the runtime extras there is no matplotlib: the report is written without PNGs."""
    import importlib.util

    from litedet.bench import report

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    row = {"model": "v5lite-s", "variant": "v5lite-s", "kind": "litedet", "engine": "ncnn", "threads": 4, "imgsz": 416,
           "batch": 1, "mode": "network", "median_ms": 90.0, "p90_ms": 95.0, "gflops": 1.66, "params": 1640000,
           "other_load": 1.0, "disturbed": False}
    paths = report.write_report([row], tmp_path, machine={"cpu_model": "Raspberry Pi 5 Model B Rev 1.0 (4x Cortex-A76)"})
    assert set(paths) == {"markdown", "json"} and not list(tmp_path.glob("*.png"))
    assert "Cortex-A76" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["rows"][0]["engine"] == "ncnn"


class _OneFrameCamera:
    """A capture with one frame; records what it was opened with."""

    def __init__(self, spec) -> None:
        self.spec, self.given = spec, False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        if self.given:
            return False, None
        self.given = True
        return True, np.zeros((48, 64, 3), np.uint8)

    def get(self, prop_id: int) -> float:
        return 30.0

    def release(self) -> None:
        pass


@pytest.mark.parametrize("spec", [
    "/dev/video0",  # a USB webcam (V4L2 device node: a character device, not a file)
    "libcamerasrc ! video/x-raw,width=640,height=480 ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true",
    "tcp://127.0.0.1:8888",  # rpicam-vid --listen -o tcp://0.0.0.0:8888
    "udp://0.0.0.0:5000",
])
def test_raspberry_pi_camera_inputs_are_live_sources(spec):
    opened = []

    def factory(arg):
        opened.append(_OneFrameCamera(arg))
        return opened[-1]

    source = open_source(spec, capture_factory=factory)
    try:
        assert source.live and opened[0].spec == spec
        assert [frame.image.shape for frame in source] == [(48, 64, 3)]
    finally:
        source.close()


def test_gstreamer_pipeline_without_gstreamer_names_the_problem(monkeypatch):
    monkeypatch.setattr(sources, "_opencv_has_gstreamer", lambda: False)
    with pytest.raises(ValueError, match="built without GStreamer"):
        open_source("libcamerasrc ! videoconvert ! appsink")
    assert not sources.is_gstreamer_pipeline("clip.mp4") and not sources.is_gstreamer_pipeline("a ! b")


def _compare(tmp_path: Path, reference, candidate, *options: str) -> subprocess.CompletedProcess:
    ref, got = tmp_path / "ref.json", tmp_path / "got.json"
    ref.write_text(reference if isinstance(reference, str) else json.dumps(reference))
    got.write_text(candidate if isinstance(candidate, str) else json.dumps(candidate))
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), "compare", str(ref), str(got), *options],
                          capture_output=True, text=True, env=env, timeout=60)


def _det(box, score, class_id=0, name="person"):
    return {"box": box, "score": score, "class_id": class_id, "class_name": name}


REFERENCE = [
    {"source": "a/1.png", "detections": [_det([10, 20, 110, 220], 0.9), _det([300, 40, 380, 90], 0.6, 2, "car")]},
    {"source": "a/2.png", "detections": [_det([5, 5, 50, 50], 0.26, 16, "dog")]},
]


def test_compare_accepts_equal_detections_from_json_lines(tmp_path):
    lines = "\n".join(json.dumps(row) for row in REFERENCE)  # `litedet detect --json` streams JSON Lines
    nudged = json.loads(json.dumps(REFERENCE))
    nudged[0]["detections"][0]["box"][0] += 0.9
    nudged[0]["detections"][1]["score"] += 0.004
    nudged[1]["source"] = "elsewhere/2.png"  # matched by file name
    result = _compare(tmp_path, lines, nudged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3/3 detections matched" in result.stdout


def test_compare_rejects_a_moved_box_a_changed_class_or_an_extra_detection(tmp_path):
    moved = json.loads(json.dumps(REFERENCE))
    moved[0]["detections"][0]["box"][2] += 1.5
    result = _compare(tmp_path, REFERENCE, moved)
    assert result.returncode == 1 and "box off by 1.50 px" in result.stdout

    relabelled = json.loads(json.dumps(REFERENCE))
    relabelled[0]["detections"][1]["class_id"] = 7
    assert _compare(tmp_path, REFERENCE, relabelled).returncode == 1

    extra = json.loads(json.dumps(REFERENCE))
    extra[1]["detections"].append(_det([200, 200, 260, 300], 0.7))
    result = _compare(tmp_path, REFERENCE, extra)
    assert result.returncode == 1 and "extra person" in result.stdout


def test_compare_score_tolerance_and_threshold(tmp_path):
    shifted = json.loads(json.dumps(REFERENCE))
    shifted[0]["detections"][0]["score"] = 0.93
    assert _compare(tmp_path, REFERENCE, shifted).returncode == 1
    assert _compare(tmp_path, REFERENCE, shifted, "--score-tol", "0.05").returncode == 0
    # The dog at 0.26 sits within the tolerance of the 0.25 threshold: it may vanish on one side.
    dropped = json.loads(json.dumps(REFERENCE))
    dropped[1]["detections"] = []
    assert _compare(tmp_path, REFERENCE, dropped, "--score-tol", "0.02").returncode == 0
    assert _compare(tmp_path, REFERENCE, dropped, "--score-tol", "0.005").returncode == 1


def test_compare_rejects_other_files(tmp_path):
    result = _compare(tmp_path, REFERENCE, "not json at all")
    assert result.returncode != 0 and "not `litedet detect --json` output" in result.stderr + result.stdout


def test_check_skips_with_a_reason_without_shared_data(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "LITEDET_SHARED": str(tmp_path / "no-shared"),
           "ARM64_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == SKIPPED, result.stderr
    assert "SKIPPED" in result.stderr and ("no shared data" in result.stderr or "x86_64" in result.stderr)


def test_check_rejects_bad_arguments():
    result = subprocess.run(["bash", str(SCRIPT), "--images", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--images" in result.stderr


@pytest.mark.slow
def test_arm64_check_end_to_end():
    """The whole check: litedet detect in an emulated arm64 Debian root equals x86 (about 5 min on
    a quiet 2-core machine with a warm cache)."""
    result = subprocess.run(["bash", str(SCRIPT), "--images", "1"], capture_output=True, text=True, timeout=3600)
    if result.returncode == SKIPPED:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "PASSED" in result.stderr
