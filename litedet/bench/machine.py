"""What machine a benchmark ran on, and its measured ceilings (the roofline).

The fp32 peak is *measured* with a large matrix product (BENCHMARKS.md: torch sgemm n=2048 gave
356 / 182 GFLOP/s at 2 / 1 threads on the reference machine); a model's achieved GFLOP/s divided
by it is its efficiency on this machine (VoVNet's "GPU computation efficiency", here on the CPU).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Distribution names whose versions a report names (import names differ for some).
ENGINE_DISTRIBUTIONS = (
    "numpy", "torch", "torchvision", "onnxruntime", "openvino", "ncnn", "pnnx", "opencv-python-headless",
    "ultralytics",
)


@dataclass
class MachineInfo:
    """CPU, memory, engine versions and measured ceilings.

    ``peak_gflops`` maps a thread count to the measured fp32 matrix-product GFLOP/s;
    ``copy_gbs`` maps a thread count to measured memory copy bandwidth (read + write, GB/s).
    """

    cpu_model: str
    logical_cpus: int
    physical_cores: int | None
    memory_gib: float | None
    system: str
    python: str
    cpu_flags: list[str] = field(default_factory=list)
    engines: dict[str, str] = field(default_factory=dict)
    gpu: str | None = None
    peak_gflops: dict[int, float] = field(default_factory=dict)
    peak_method: str = ""
    copy_gbs: dict[int, float] = field(default_factory=dict)
    gpu_peak_tflops: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["peak_gflops"] = {str(k): v for k, v in self.peak_gflops.items()}
        data["copy_gbs"] = {str(k): v for k, v in self.copy_gbs.items()}
        return data

    def peak_for(self, threads: int) -> float | None:
        """Measured fp32 peak for ``threads`` (None when it was not measured)."""
        return self.peak_gflops.get(int(threads))


# ARM's "CPU part" numbers (implementer 0x41) as /proc/cpuinfo gives them on ARM Linux, where
# there is no "model name" line: Raspberry Pi 3/Zero 2 = A53, Pi 4 = A72, Pi 5 = A76.
ARM_CORES = {
    0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57", 0xD08: "Cortex-A72",
    0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77",
    0xD40: "Neoverse-V1", 0xD41: "Cortex-A78", 0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710",
    0xD48: "Cortex-X2", 0xD49: "Neoverse-N2", 0xD4D: "Cortex-A715", 0xD4E: "Cortex-X3", 0xD4F: "Neoverse-V2",
    0xD80: "Cortex-A520", 0xD81: "Cortex-A720", 0xD82: "Cortex-X4",
}
# SIMD features that decide an engine's kernels: x86 "flags" and ARM "Features" names. On ARM,
# asimdhp = fp16 arithmetic (ncnn's fp16 paths), asimddp / i8mm = int8 dot products.
SIMD_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
    "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme",
)


def _cpuinfo_blocks(path: str | os.PathLike) -> list[dict[str, str]]:
    """/proc/cpuinfo as one {key: value} dict per blank-line separated block ([] when unreadable)."""
    try:
        with open(path, errors="replace") as handle:
            text = handle.read()
    except OSError:
        return []
    blocks = []
    for chunk in text.split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's name: x86 ``model name``; on ARM, where that line is absent, the board (``Model``,
    e.g. a Raspberry Pi) and its cores by ``CPU part`` ("Raspberry Pi 4 Model B Rev 1.5 (4x
    Cortex-A72)"); else ``platform.processor()`` or the architecture."""
    board = ""
    cores: dict[str, int] = {}
    for fields in _cpuinfo_blocks(cpuinfo):
        if fields.get("model name"):
            return fields["model name"]
        board = fields.get("Model", board)
        if "CPU part" in fields:
            implementer, part = fields.get("CPU implementer", "").lower(), fields["CPU part"]
            try:
                name = ARM_CORES.get(int(part, 16)) if implementer in ("", "0x41") else None
            except ValueError:
                name = None
            name = name or f"ARM core {implementer or '?'}/{part}"
            cores[name] = cores.get(name, 0) + 1
    core_text = " + ".join(f"{count}x {name}" for name, count in cores.items())
    if board and core_text:
        return f"{board} ({core_text})"
    return board or core_text or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> list[str]:
    """The SIMD features that matter for inference engines, as the kernel reports them (x86
    ``flags``, ARM ``Features``); [] where /proc/cpuinfo is absent."""
    for fields in _cpuinfo_blocks(cpuinfo):
        present = set((fields.get("flags") or fields.get("Features") or "").split())
        if present:
            return [flag for flag in SIMD_FLAGS if flag in present]
    return []


def engine_versions() -> dict[str, str]:
    """Installed versions of numpy, torch and the inference engines (absent ones are left out)."""
    versions = {}
    for dist in ENGINE_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        try:
            return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        except (ValueError, OSError):
            return None


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def measure_peak_gflops(threads: int, n: int = 2048, repeats: int = 10) -> tuple[float, str]:
    """Best fp32 GFLOP/s of an n x n matrix product (2 n^3 FLOPs) on ``threads`` threads.

    Uses torch when installed (``torch.set_num_threads``, restored afterwards), else numpy's BLAS
    limited with threadpoolctl. Returns (GFLOP/s, method).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if n < 64:
        raise ValueError(f"matrix size n must be >= 64 for a meaningful peak, got {n}")
    flops = 2.0 * n**3
    if importlib.util.find_spec("torch") is not None:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            a = torch.randn(n, n, dtype=torch.float32)
            b = torch.randn(n, n, dtype=torch.float32)
            out = torch.empty(n, n, dtype=torch.float32)
            torch.mm(a, b, out=out)  # warm-up: first call allocates and picks kernels
            best = min(_time_once(lambda: torch.mm(a, b, out=out)) for _ in range(repeats))
        finally:
            torch.set_num_threads(previous)
        return flops / best / 1e9, f"torch {torch.__version__} sgemm n={n}"
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        best = min(_time_once(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return flops / best / 1e9, f"numpy {np.__version__} sgemm n={n}"


def measure_copy_bandwidth(threads: int, megabytes: int = 256, repeats: int = 5) -> float:
    """Best memory copy bandwidth in GB/s, counting read + write (BENCHMARKS.md's "memory copy").

    torch's parallel ``copy_`` when torch is installed (so ``threads`` matters), numpy otherwise
    (single-threaded).
    """
    count = megabytes * 2**20 // 4
    if importlib.util.find_spec("torch") is not None:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            src = torch.ones(count, dtype=torch.float32)
            dst = torch.empty_like(src)
            dst.copy_(src)
            best = min(_time_once(lambda: dst.copy_(src)) for _ in range(repeats))
        finally:
            torch.set_num_threads(previous)
    else:
        src = np.ones(count, dtype=np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        best = min(_time_once(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * count * 4 / best / 1e9


def _time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _gpu_info(measure: bool) -> tuple[str | None, dict[str, float]]:
    if importlib.util.find_spec("torch") is None:
        return None, {}
    import torch

    if not torch.cuda.is_available():
        return None, {}
    name = torch.cuda.get_device_name(0)
    peaks: dict[str, float] = {}
    if measure:
        n = 8192
        for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False  # true fp32, not TF32
            try:
                a @ b
                torch.cuda.synchronize()
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    a @ b
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
            peaks[label] = 2.0 * n**3 / min(times) / 1e12
    return name, peaks


def machine_info(threads: Sequence[int] = (1, 2), measure: bool = True, bandwidth: bool = False) -> MachineInfo:
    """Describe this machine; with ``measure``, measure the fp32 peak at each thread count (and
    the copy bandwidth with ``bandwidth``). Takes about a second per thread count."""
    info = MachineInfo(
        cpu_model=cpu_model(),
        logical_cpus=os.cpu_count() or 1,
        physical_cores=_physical_cores(),
        memory_gib=_memory_gib(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=platform.python_version(),
        cpu_flags=cpu_flags(),
        engines=engine_versions(),
    )
    if measure:
        unmeasurable = False
        for count in sorted(set(int(t) for t in threads)):
            if not unmeasurable:
                try:
                    gflops, method = measure_peak_gflops(count)
                    info.peak_gflops[count] = round(gflops, 1)
                    info.peak_method = method
                except (RuntimeError, ImportError) as err:
                    # A device with one inference engine only (a Raspberry Pi with litedet[runtime])
                    # may have no kernel to measure with: describe it without a peak, do not fail.
                    unmeasurable = True
                    info.peak_method = f"not measured ({err})"
                    logger.warning("fp32 peak not measured: %s", err)
            if bandwidth:
                info.copy_gbs[count] = round(measure_copy_bandwidth(count), 1)
    info.gpu, info.gpu_peak_tflops = _gpu_info(measure)
    return info
