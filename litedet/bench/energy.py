"""Energy per image, only where the platform measures power.

VoVNet (Lee et al. 2019, §4.1) defines energy per image as mean board power x time per image;
with an energy counter that is simply joules consumed / images. Sources, in order:

- NVML (``pynvml``, from the ``nvidia-ml-py`` package) on NVIDIA GPUs: the board's total-energy
  counter where supported (Volta and newer), else power samples averaged over the span;
- RAPL (``/sys/class/powercap/intel-rapl:*/energy_uj``) on Intel/AMD CPUs where readable: the
  package counters, which include every process on the socket (the load figure says how much).

Otherwise the meter says ``"not available"`` and reports no number: never an estimate.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

NOT_AVAILABLE = "not available"
POWERCAP = "/sys/class/powercap"


class EnergyMeter:
    """Accumulates joules over one or more start/stop spans. This base class measures nothing."""

    source: str = NOT_AVAILABLE

    def __init__(self) -> None:
        self.joules = 0.0
        self.seconds = 0.0
        self._t0: float | None = None

    @property
    def available(self) -> bool:
        return self.source != NOT_AVAILABLE

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start()

    def stop(self) -> None:
        if self._t0 is None:
            return
        self.joules += self._stop()
        self.seconds += time.perf_counter() - self._t0
        self._t0 = None

    def _start(self) -> None:
        pass

    def _stop(self) -> float:
        return 0.0

    @property
    def mean_watts(self) -> float | None:
        if not self.available or self.seconds <= 0:
            return None
        return self.joules / self.seconds

    def per_image_mj(self, images: int) -> float | None:
        """Millijoules per image over everything measured, or None when not available."""
        if not self.available or images <= 0:
            return None
        return self.joules / images * 1e3

    def close(self) -> None:
        pass


class RaplMeter(EnergyMeter):
    """CPU package energy from the Linux powercap RAPL counters (all packages summed)."""

    source = "rapl"

    def __init__(self, zones: list[Path]) -> None:
        super().__init__()
        if not zones:
            raise ValueError("no RAPL zones given")
        self.zones = zones
        self._ranges = [self._read(zone / "max_energy_range_uj") for zone in zones]
        self._begin: list[int] = []

    @staticmethod
    def _read(path: Path) -> int:
        return int(path.read_text().strip())

    def _start(self) -> None:
        self._begin = [self._read(zone / "energy_uj") for zone in self.zones]

    def _stop(self) -> float:
        total = 0
        for zone, begin, wrap in zip(self.zones, self._begin, self._ranges):
            end = self._read(zone / "energy_uj")
            total += end - begin if end >= begin else end + wrap - begin  # the counter wraps
        return total / 1e6


def rapl_zones(root: str = POWERCAP) -> list[Path]:
    """Top-level RAPL package zones whose counters this user can read (often root-only)."""
    zones = []
    for name in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
        path = Path(name)
        if path.name.count(":") != 1:  # sub-zones (core, uncore, dram) are inside the package
            continue
        counter = path / "energy_uj"
        try:
            int(counter.read_text().strip())
            int((path / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError):
            continue
        zones.append(path)
    return zones


class NvmlMeter(EnergyMeter):
    """Board energy of one NVIDIA GPU through NVML."""

    source = "nvml"

    def __init__(self, index: int = 0, sample_interval_s: float = 0.005) -> None:
        super().__init__()
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._interval = sample_interval_s
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._counter = True
        except pynvml.NVMLError:
            self._counter = False
        self.source = "nvml energy counter" if self._counter else "nvml power samples"
        self._begin_mj = 0
        self._samples: list[float] = []
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._span_start = 0.0

    def _sample(self) -> None:
        while not self._stop_event.is_set():
            self._samples.append(self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3)  # mW -> W
            self._stop_event.wait(self._interval)

    def _start(self) -> None:
        if self._counter:
            self._begin_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            return
        self._samples = []
        self._stop_event.clear()
        self._span_start = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _stop(self) -> float:
        if self._counter:
            return (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._begin_mj) / 1e3
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
        span = time.perf_counter() - self._span_start
        if not self._samples:
            return 0.0
        return sum(self._samples) / len(self._samples) * span  # mean power x time (VoVNet §4.1)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def open_energy_meter(device: str = "cpu") -> EnergyMeter:
    """The best meter for ``device`` ("cpu" or "cuda[:i]"); a meter whose ``source`` is
    "not available" when the platform exposes no power reading."""
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        try:
            return NvmlMeter(index)
        except ImportError:
            logger.info("energy: pynvml not installed (pip install nvidia-ml-py); not available")
        except Exception as err:  # NVMLError subclasses vary by driver; any failure means no reading
            logger.info("energy: NVML not usable (%s); not available", err)
        return EnergyMeter()
    zones = rapl_zones()
    if zones:
        return RaplMeter(zones)
    logger.info("energy: no readable RAPL counters under %s; not available", POWERCAP)
    return EnergyMeter()
