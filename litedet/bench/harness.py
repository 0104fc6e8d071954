"""Latency measurement: warm-up, repeats, robust statistics, interleaving and background load.

Timings follow BENCHMARKS.md "Noise": report the median and p90 over >= 100 runs after warm-up
(or over what a time budget allows), compare configurations only when they were measured side by
side (A, B, A, B ... in rounds), and record with every figure how busy the machine was with
*other* processes while it was measured. ``time.perf_counter`` times every call; on CUDA the
caller passes ``synchronize=torch.cuda.synchronize`` so queued kernels are waited for (this module
imports no torch, so a device with only an inference engine can use it).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# A figure measured while other processes used more than this share of the machine (percent of
# all cores) is flagged ``disturbed``; BENCHMARKS.md asks for the load to be reported with it.
DEFAULT_LOAD_THRESHOLD = 25.0


@dataclass
class LatencyStats:
    """Summary of per-call wall times, in milliseconds.

    ``other_load`` is the mean share (percent of all cores, 0-100) of the machine that *other*
    processes used during the measurement; ``steal`` the share the hypervisor took (KVM guests);
    ``None`` when it could not be read. ``disturbed`` is True when ``other_load`` exceeded the
    threshold the measurement was taken with; ``attempts`` counts measurements taken (a disturbed
    one may be repeated, the least disturbed is kept). ``energy_per_call_mj`` is measured energy
    per call where an energy meter was given and readable (``energy_source`` names it), else None.
    ``rounds`` lists ``(round, median ms of that round's chunk)`` for an interleaved measurement:
    configurations timed in the same call share round numbers, so ``paired_ratio`` can compare
    them round by round.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    n: int
    total_s: float
    other_load: float | None = None
    steal: float | None = None
    disturbed: bool = False
    attempts: int = 1
    energy_per_call_mj: float | None = None
    energy_source: str = "not available"
    rounds: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(times_s: Sequence[float]) -> LatencyStats:
    """Statistics of per-call times given in seconds (median, p90 by linear interpolation, mean,
    sample standard deviation)."""
    if len(times_s) == 0:
        raise ValueError("no timings to summarize (0 runs); raise min_runs or the time budget")
    values = np.asarray(times_s, dtype=np.float64) * 1e3
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"timings must be finite and >= 0, got min={values.min()} max={values.max()}")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return LatencyStats(
        median_ms=float(np.median(values)),
        p90_ms=float(np.percentile(values, 90)),
        mean_ms=float(values.mean()),
        std_ms=std,
        min_ms=float(values.min()),
        max_ms=float(values.max()),
        n=int(values.size),
        total_s=float(values.sum() / 1e3),
    )


# --------------------------------------------------------------------------- background load


@dataclass
class _CpuSnapshot:
    wall: float
    busy: float  # seconds of CPU time all processes spent, over all cores (user+system+irq+...)
    steal: float
    own: float  # CPU seconds of this process (all its threads) and its waited-for children


def _read_cpu() -> _CpuSnapshot | None:
    try:
        import psutil
    except ImportError:  # psutil is optional: fall back to /proc/stat on Linux
        psutil = None
    wall = time.perf_counter()
    if psutil is not None:
        times = psutil.cpu_times()
        proc = psutil.Process().cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        steal = getattr(times, "steal", 0.0)
        # guest time is already inside user on Linux; steal is time the hypervisor ran others.
        total = sum(getattr(times, name) for name in times._fields if name not in ("guest", "guest_nice"))
        busy = total - idle - steal
        own = proc.user + proc.system + proc.children_user + proc.children_system
        return _CpuSnapshot(wall, busy, steal, own)
    try:
        with open("/proc/stat") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        user, nice, system, idle, iowait, irq, softirq = fields[:7]
        steal = fields[7] if len(fields) > 7 else 0.0
        busy = (user + nice + system + irq + softirq) / ticks
        own_times = os.times()
        own = own_times.user + own_times.system + own_times.children_user + own_times.children_system
        return _CpuSnapshot(wall, busy, steal / ticks, own)
    except (OSError, ValueError):
        return None


class LoadMonitor:
    """Measures how much of the machine *other* processes used between ``start`` and ``stop``.

    The system-wide busy CPU time (psutil, else /proc/stat) minus this process's own CPU time,
    divided by wall time x logical CPUs, in percent. Several start/stop spans accumulate, so one
    monitor per configuration covers all of its interleaved rounds.
    """

    def __init__(self) -> None:
        self.cpus = os.cpu_count() or 1
        self._start: _CpuSnapshot | None = None
        self._wall = 0.0
        self._busy = 0.0
        self._steal = 0.0
        self._own = 0.0
        self.available = True

    def start(self) -> None:
        self._start = _read_cpu()
        if self._start is None:
            self.available = False

    def stop(self) -> None:
        if self._start is None:
            return
        end = _read_cpu()
        if end is None:
            self.available = False
            return
        self._wall += end.wall - self._start.wall
        self._busy += end.busy - self._start.busy
        self._steal += end.steal - self._start.steal
        self._own += end.own - self._start.own
        self._start = None

    def __enter__(self) -> "LoadMonitor":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def other_load(self) -> float | None:
        """Percent of all cores used by other processes (0-100), or None when unreadable."""
        if not self.available or self._wall <= 0:
            return None
        share = (self._busy - self._own) / (self._wall * self.cpus) * 100.0
        return float(min(100.0, max(0.0, share)))

    @property
    def steal(self) -> float | None:
        """Percent of all cores the hypervisor gave to other guests (0-100)."""
        if not self.available or self._wall <= 0:
            return None
        return float(min(100.0, max(0.0, self._steal / (self._wall * self.cpus) * 100.0)))


# --------------------------------------------------------------------------- measuring


def _timed_calls(
    fn: Callable[[], object], count: int, synchronize: Callable[[], None] | None, out: list[float]
) -> None:
    for _ in range(count):
        start = time.perf_counter()
        fn()
        if synchronize is not None:
            synchronize()
        out.append(time.perf_counter() - start)


def _check_counts(warmup: int, min_runs: int, budget_s: float | None) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs}")
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")


def measure_latency(
    fn: Callable[[], object],
    warmup: int = 10,
    min_runs: int = 100,
    budget_s: float | None = None,
    min_runs_in_budget: int = 10,
    synchronize: Callable[[], None] | None = None,
    load_threshold: float = DEFAULT_LOAD_THRESHOLD,
    max_attempts: int = 2,
) -> LatencyStats:
    """Time ``fn()`` ``min_runs`` times after ``warmup`` calls.

    With ``budget_s`` the measurement stops early once the budget is spent and at least
    ``min_runs_in_budget`` runs were taken (``n`` in the result says how many). When other
    processes used more than ``load_threshold`` percent of the machine, the measurement is taken
    again (up to ``max_attempts`` in all); the least disturbed attempt is returned, flagged
    ``disturbed`` if it still exceeded the threshold.
    """
    return measure_interleaved(
        {"fn": fn},
        warmup=warmup,
        min_runs=min_runs,
        budget_s=budget_s,
        min_runs_in_budget=min_runs_in_budget,
        synchronize=synchronize,
        load_threshold=load_threshold,
        max_attempts=max_attempts,
        chunk=min(min_runs, 10),
    )["fn"]


@dataclass
class Candidate:
    """One configuration to time: ``fn`` is the call; ``before`` runs (untimed) before each of
    its chunks, e.g. ``torch.set_num_threads(n)`` when configurations share one torch."""

    fn: Callable[[], object]
    before: Callable[[], None] | None = None
    synchronize: Callable[[], None] | None = None


def interleave_schedule(names: Sequence[str], runs_done: Mapping[str, int], target: int) -> Iterator[str]:
    """One round: every configuration that still needs runs, in the given order (A, B, C, ...)."""
    for name in names:
        if runs_done[name] < target:
            yield name


class _Meter(Protocol):
    source: str
    joules: float

    @property
    def available(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class _Progress:
    times: list[float] = field(default_factory=list)
    rounds: list[tuple[int, float]] = field(default_factory=list)
    monitor: LoadMonitor = field(default_factory=LoadMonitor)
    meter: _Meter | None = None


class MeasurementInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``measure_interleaved``: ``partial`` holds the stats of every configuration
    timed at least once so far (from the rounds run), for a caller that keeps what was measured.
    A ``KeyboardInterrupt``, so callers that do not look for it stop as before."""

    def __init__(self, partial: dict[str, "LatencyStats"]) -> None:
        super().__init__("interrupted")
        self.partial = partial


def measure_interleaved(
    configs: Mapping[str, Callable[[], object] | Candidate],
    warmup: int = 10,
    min_runs: int = 100,
    budget_s: float | None = None,
    min_runs_in_budget: int = 10,
    chunk: int = 10,
    synchronize: Callable[[], None] | None = None,
    load_threshold: float = DEFAULT_LOAD_THRESHOLD,
    max_attempts: int = 2,
    on_chunk: Callable[[str, int], None] | None = None,
    energy_meter: Callable[[], _Meter] | None = None,
) -> dict[str, LatencyStats]:
    """Time several configurations side by side: warm each up, then run ``chunk`` calls of A,
    ``chunk`` of B, ... round after round, until each has ``min_runs`` (or ``budget_s`` seconds
    are spent in all and each has ``min_runs_in_budget``).

    Slow drift of the machine (BENCHMARKS.md: up to 15 % over 20 minutes) then hits every
    configuration alike, so their ratios hold. Each configuration's background load is measured
    over its own chunks only. Configurations disturbed beyond ``load_threshold`` are measured
    again (interleaved among themselves), up to ``max_attempts`` in all; the least disturbed
    attempt is kept. ``on_chunk(name, runs_so_far)`` is called after each chunk (progress bars).
    ``energy_meter`` makes one meter per configuration (``litedet.bench.energy.open_energy_meter``)
    that runs over that configuration's chunks only.
    """
    _check_counts(warmup, min_runs, budget_s)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if not configs:
        raise ValueError("no configurations to measure")
    candidates = {
        name: value if isinstance(value, Candidate) else Candidate(fn=value) for name, value in configs.items()
    }
    best: dict[str, LatencyStats] = {}
    pending = list(candidates)
    next_round = 0  # round numbers run on across attempts: a re-measured configuration shares none with the rest
    for attempt in range(1, max_attempts + 1):
        try:
            results, next_round = _measure_round_robin(
                {name: candidates[name] for name in pending},
                warmup, min_runs, budget_s, min_runs_in_budget, chunk, synchronize, on_chunk, energy_meter, next_round,
            )
        except MeasurementInterrupted as stop:  # a re-measurement cut short keeps the earlier attempt
            for stats in stop.partial.values():
                stats.attempts = attempt
                stats.disturbed = stats.other_load is not None and stats.other_load > load_threshold
            raise MeasurementInterrupted({**stop.partial, **best}) from None
        for name, stats in results.items():
            stats.attempts = attempt
            stats.disturbed = stats.other_load is not None and stats.other_load > load_threshold
            previous = best.get(name)
            if previous is None or _less_disturbed(stats, previous):
                best[name] = stats
            else:
                previous.attempts = attempt
        pending = [name for name in pending if best[name].disturbed]
        if not pending:
            break
        logger.info("re-measuring %d configurations disturbed by other processes: %s", len(pending), pending)
    return {name: best[name] for name in candidates}


def _less_disturbed(new: LatencyStats, old: LatencyStats) -> bool:
    if new.other_load is None:
        return False
    return old.other_load is None or new.other_load < old.other_load


def _measure_round_robin(
    candidates: Mapping[str, Candidate],
    warmup: int,
    min_runs: int,
    budget_s: float | None,
    min_runs_in_budget: int,
    chunk: int,
    synchronize: Callable[[], None] | None,
    on_chunk: Callable[[str, int], None] | None,
    energy_meter: Callable[[], _Meter] | None,
    first_round: int = 0,
) -> tuple[dict[str, LatencyStats], int]:
    """One attempt: rounds of chunks until every configuration has its runs; the stats and the
    next unused round number."""
    names = list(candidates)
    progress = {name: _Progress(monitor=LoadMonitor(), meter=energy_meter() if energy_meter else None) for name in names}
    for name, cand in candidates.items():
        if cand.before is not None:
            cand.before()
        sync = cand.synchronize or synchronize
        _timed_calls(cand.fn, warmup, sync, [])
    started = time.perf_counter()
    floor = min(min_runs, max(1, min_runs_in_budget))
    try:
        next_round = _run_rounds(candidates, progress, started, floor, min_runs, budget_s, chunk, synchronize,
                                 on_chunk, first_round)
    except KeyboardInterrupt:  # keep what the rounds so far measured (a chunk cut short included)
        partial = {name: _stats(progress[name]) for name in names if progress[name].times}
        raise MeasurementInterrupted(partial) from None
    return {name: _stats(progress[name]) for name in names}, next_round


def _stats(state: "_Progress") -> LatencyStats:
    stats = summarize(state.times)
    stats.other_load = state.monitor.other_load
    stats.steal = state.monitor.steal
    stats.rounds = state.rounds
    meter = state.meter
    if meter is not None and meter.available:
        stats.energy_per_call_mj = meter.joules / stats.n * 1e3
        stats.energy_source = meter.source
    return stats


def _run_rounds(
    candidates: Mapping[str, Candidate],
    progress: dict[str, "_Progress"],
    started: float,
    floor: int,
    min_runs: int,
    budget_s: float | None,
    chunk: int,
    synchronize: Callable[[], None] | None,
    on_chunk: Callable[[str, int], None] | None,
    round_number: int,
) -> int:
    """The rounds of ``_measure_round_robin`` until every configuration has its runs; the next
    unused round number."""
    names = list(candidates)
    while True:
        done = {name: len(progress[name].times) for name in names}
        over_budget = budget_s is not None and time.perf_counter() - started >= budget_s
        target = floor if over_budget else min_runs
        round_names = list(interleave_schedule(names, done, target))
        if not round_names:
            break
        for name in round_names:
            cand = candidates[name]
            if cand.before is not None:
                cand.before()
            state = progress[name]
            count = min(chunk, target - len(state.times))
            sync = cand.synchronize or synchronize
            # One untimed call per chunk absorbs the switch from the previous configuration
            # (another engine's thread pool winding down, caches refilled).
            if len(names) > 1:
                _timed_calls(cand.fn, 1, sync, [])
            state.monitor.start()
            if state.meter is not None:
                state.meter.start()
            before_chunk = len(state.times)
            _timed_calls(cand.fn, count, sync, state.times)
            state.rounds.append((round_number, float(np.median(state.times[before_chunk:])) * 1e3))
            if state.meter is not None:
                state.meter.stop()
            state.monitor.stop()
            if on_chunk is not None:
                on_chunk(name, len(state.times))
        round_number += 1
    return round_number


def paired_ratio(numerator: Sequence[Sequence[float]], denominator: Sequence[Sequence[float]],
                 min_rounds: int = 3) -> dict[str, float | int] | None:
    """How many times longer ``numerator`` took than ``denominator``, compared round by round.

    Both are ``LatencyStats.rounds`` lists (``(round, median ms)``) of one interleaved
    measurement. Each shared round gives one ratio of the two chunk medians; the result is their
    median with the 10th and 90th percentiles (``low``, ``high``) and the number of ``rounds``. A
    machine whose speed changes from one stretch of seconds to the next (a shared VM's cores)
    moves both figures of a round alike, so this ratio holds where the ratio of two overall
    medians, each a mix of fast and slow stretches, drifts. ``None`` with fewer than
    ``min_rounds`` shared rounds (the two were measured apart, e.g. one re-measured alone).
    """
    theirs = {int(r): float(ms) for r, ms in denominator}
    ratios = [float(ms) / theirs[int(r)] for r, ms in numerator if int(r) in theirs and theirs[int(r)] > 0]
    if len(ratios) < max(1, min_rounds):
        return None
    values = np.asarray(ratios)
    return {"ratio": float(np.median(values)), "low": float(np.percentile(values, 10)),
            "high": float(np.percentile(values, 90)), "rounds": int(values.size)}


def throughput(batch: int, stats: LatencyStats) -> float:
    """Images per second at ``batch`` images per call, from the median latency."""
    if stats.median_ms <= 0:
        return math.inf
    return batch * 1e3 / stats.median_ms
