"""What machine a benchmark ran on, and its measured ceilings (the roofline).

The fp32 peak is *measured*: the best of several dense kernels on every installed BLAS / engine
(torch and numpy sgemm, ONNX Runtime and OpenVINO MatMul and convs; ``measure_peak_kernels``),
and raised to the best GFLOP/s a benchmarked model reaches if that is higher
(``raise_peak_to_observed``), so ``% peak`` never exceeds 100. A model's achieved GFLOP/s divided
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

from litedet.ops import native

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
    # litedet's own decode + NMS: "compiled" (litedet.ops.native) or "numpy"
    postprocess: str = ""

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


# The fp32 peak is the best GFLOP/s of several dense kernels, each on its own BLAS / JIT: a model
# run on an engine can only be compared with a ceiling that engine's own kernels reach (ONNX
# Runtime's MLAS and OpenVINO's oneDNN beat torch's sgemm on small and medium products, and a 3x3
# convolution may run as Winograd, which does fewer multiplications than the 2*MACs it is counted
# as). Sizes span the shapes detectors use: products of 512..2048 and 1x1 / 3x3 convs at 64..256
# channels.
PEAK_MATMUL_SIZES = (512, 1024, 2048)
PEAK_CONV_SHAPES = ((256, 28, 1), (128, 56, 3), (256, 28, 3))  # (channels, map side, kernel)


def _best_seconds(fn, repeats: int, budget_s: float) -> float:
    fn()  # warm-up: first call allocates and picks kernels
    best, start = float("inf"), time.perf_counter()
    for _ in range(repeats):
        best = min(best, _time_once(fn))
        if time.perf_counter() - start > budget_s:
            break
    return best


def _peak_torch(threads: int, repeats: int, budget_s: float, sizes: Sequence[int]) -> dict[str, float]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    results = {}
    try:
        with torch.inference_mode():
            for n in sizes:
                a, b = torch.randn(n, n), torch.randn(n, n)
                out = torch.empty(n, n)
                seconds = _best_seconds(lambda: torch.mm(a, b, out=out), repeats, budget_s)
                results[f"torch {torch.__version__} sgemm n={n}"] = 2.0 * n**3 / seconds / 1e9
    finally:
        torch.set_num_threads(previous)
    return results


def _peak_numpy(threads: int, repeats: int, budget_s: float, sizes: Sequence[int]) -> dict[str, float]:
    from threadpoolctl import threadpool_info, threadpool_limits

    libraries = sorted({info.get("internal_api", "blas") for info in threadpool_info() if info.get("user_api") == "blas"})
    rng = np.random.default_rng(0)
    results = {}
    with threadpool_limits(limits=threads, user_api="blas"):
        for n in sizes:
            a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
            out = np.empty((n, n), dtype=np.float32)
            seconds = _best_seconds(lambda: np.matmul(a, b, out=out), repeats, budget_s)
            results[f"numpy {np.__version__} ({'/'.join(libraries) or 'blas'}) sgemm n={n}"] = 2.0 * n**3 / seconds / 1e9
    return results


def _peak_graphs(sizes: Sequence[int]) -> list[tuple[str, float, Any]]:
    """(label, FLOPs, ONNX model) for one MatMul and a few convs, built in memory."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graphs = []
    for n in sorted(sizes)[-2:]:  # the engines' MatMul at the two largest sizes
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight])
        graphs.append((f"MatMul n={n}", 2.0 * n**3, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    for channels, side, kernel in PEAK_CONV_SHAPES:
        weight = numpy_helper.from_array(rng.standard_normal((channels, channels, kernel, kernel), dtype=np.float32), "w")
        pad = (kernel - 1) // 2
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4)], "conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, side, side])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, side, side])], [weight])
        flops = 2.0 * channels * channels * kernel * kernel * side * side
        graphs.append((f"Conv {kernel}x{kernel} {channels}ch {side}x{side}", flops,
                       helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    return graphs


def _graph_input(model: Any) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(1).standard_normal(dims, dtype=np.float32)


def _peak_onnxruntime(threads: int, repeats: int, budget_s: float, sizes: Sequence[int]) -> dict[str, float]:
    import onnxruntime as ort

    from litedet.runtime.onnxruntime_backend import session_options

    results = {}
    for label, flops, model in _peak_graphs(sizes):
        session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        feed = {"x": _graph_input(model)}
        seconds = _best_seconds(lambda: session.run(None, feed), repeats, budget_s)
        results[f"onnxruntime {ort.__version__} {label}"] = flops / seconds / 1e9
    return results


def _peak_openvino(threads: int, repeats: int, budget_s: float, sizes: Sequence[int]) -> dict[str, float]:
    import openvino as ov

    core = ov.Core()
    results = {}
    for label, flops, model in _peak_graphs(sizes):
        compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        feed = _graph_input(model)
        seconds = _best_seconds(lambda: request.infer([feed]), repeats, budget_s)
        results[f"openvino {ov.__version__} {label}"] = flops / seconds / 1e9
    return results


PEAK_KERNELS = (("torch", _peak_torch), ("threadpoolctl", _peak_numpy), ("onnxruntime", _peak_onnxruntime),
                ("openvino", _peak_openvino))


def measure_peak_kernels(threads: int, repeats: int = 10, budget_s: float = 0.4,
                         sizes: Sequence[int] = PEAK_MATMUL_SIZES) -> dict[str, float]:
    """GFLOP/s of every peak kernel whose library is installed, on ``threads`` threads: torch and
    numpy sgemm (n in ``sizes``), ONNX Runtime and OpenVINO MatMul and 1x1 / 3x3 Conv.
    ``budget_s`` bounds the timed repeats of one kernel (at least one runs)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if min(sizes) < 64:
        raise ValueError(f"matrix sizes must be >= 64 for a meaningful peak, got {list(sizes)}")
    results: dict[str, float] = {}
    for package, measure in PEAK_KERNELS:
        if importlib.util.find_spec(package) is None or (package in ("onnxruntime", "openvino") and importlib.util.find_spec("onnx") is None):
            continue
        try:
            results.update(measure(threads, repeats, budget_s, sizes))
        except Exception as err:  # an engine that cannot build a kernel here must not stop a benchmark
            logger.warning("peak kernels of %s failed: %s", package, err)
    return results


def measure_peak_gflops(threads: int, n: int | None = None, repeats: int = 10) -> tuple[float, str]:
    """The machine's fp32 peak on ``threads`` threads: the best GFLOP/s of ``measure_peak_kernels``
    (FLOPs counted as 2 * multiply-adds), matrix products of size ``n`` only when given. Returns
    (GFLOP/s, method: the winning kernel, how many were tried, the SIMD features the CPU reports)."""
    if n is not None and n < 64:
        raise ValueError(f"matrix size n must be >= 64 for a meaningful peak, got {n}")
    kernels = measure_peak_kernels(threads, repeats, sizes=(n,) if n else PEAK_MATMUL_SIZES)
    if not kernels:
        raise RuntimeError("no peak kernel could run: install torch, numpy+threadpoolctl or onnxruntime")
    best = max(kernels, key=kernels.__getitem__)
    flags = [f for f in cpu_flags() if f in ("avx2", "fma", "avx512f", "amx_bf16", "neon", "asimd", "sve")]
    return kernels[best], f"best of {len(kernels)} kernels: {best}" + (f" ({', '.join(flags)})" if flags else "")


def raise_peak_to_observed(machine: "MachineInfo", rows: list[dict[str, Any]], device: str = "cpu") -> list[str]:
    """Make ``% peak`` honest: where a row achieves more GFLOP/s than the measured peak of its
    thread count (a peak kernel was slowed down by other load, or the engine beat every peak
    kernel), the peak becomes the best observed and every row's ``peak_share`` is recomputed.
    Rows of torch on a CUDA ``device`` (compared with the GPU peak) are left alone. Returns one
    note per raised peak."""
    notes = []
    cpu_rows = [r for r in rows if r.get("achieved_gflops") and r.get("peak_share") is not None
                and not (device.startswith("cuda") and r.get("engine") == "torch")]
    for threads in sorted({int(r["threads"]) for r in cpu_rows}):
        peak = machine.peak_for(threads)
        best = max((r for r in cpu_rows if int(r["threads"]) == threads), key=lambda r: r["achieved_gflops"])
        if peak is None or best["achieved_gflops"] <= peak:
            continue
        observed = round(best["achieved_gflops"], 1)
        machine.peak_gflops[threads] = observed
        for row in cpu_rows:
            if int(row["threads"]) == threads:
                row["peak_share"] = row["achieved_gflops"] / observed
        notes.append(f"{threads} thread(s): {best['model']} on {best['engine']} reached {observed} GFLOP/s, above the "
                     f"measured peak {peak}: the peak is raised to that (it was measured too low, e.g. under load)")
    return notes


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
    the copy bandwidth with ``bandwidth``). Takes a few seconds per thread count (one budgeted
    timing per peak kernel)."""
    info = MachineInfo(
        cpu_model=cpu_model(),
        logical_cpus=os.cpu_count() or 1,
        physical_cores=_physical_cores(),
        memory_gib=_memory_gib(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=platform.python_version(),
        cpu_flags=cpu_flags(),
        engines=engine_versions(),
        postprocess="compiled" if native.available() else "numpy",
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
