"""The ShuffleNetV2 guideline experiments (Ma et al., ECCV 2018, §2, Tables 1-4) on this device,
plus two seed comparisons: Focus vs strided conv (YOLOv5), OSA module vs dense block (VoVNet).

Each experiment stacks 10 blocks on a 56x56 input and varies one design choice while holding
FLOPs fixed by scaling channels with the paper's channel numbers. Settings are timed side by side
(interleaved, ``litedet.bench.harness``); each table is printed beside the paper's direction and
says whether this device agrees.

Where the paper leaves a detail open, the reading used here is stated in the block's docstring:
blocks are bare convolutions (no BN), G3's parallel fragments split the output channels between
branches and concatenate them, and G4's ``c`` is the unit's input/output width with a c/4
bottleneck (ResNet's expansion 4). The batch is 1 on the CPU (the paper's ARM column) and 8 on
CUDA (the paper's GPU setting, Fig. 1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from litedet.bench.harness import Candidate, LatencyStats, measure_interleaved

logger = logging.getLogger(__name__)

INPUT_HW = 56  # ShuffleNetV2 §2: "Input image size is 56 x 56"
NUM_BLOCKS = 10  # §2: "stacking 10 building blocks repeatedly"


# --------------------------------------------------------------------------- blocks


def _conv1x1(cin: int, cout: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False, groups=groups)


class G1Block(nn.Sequential):
    """Two 1x1 convs c1 -> c2 -> c1 (§2 G1: "The first contains c1 input channels and c2 output
    channels, and the second otherwise")."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__(_conv1x1(c1, c2), _conv1x1(c2, c1))


class G2Block(nn.Sequential):
    """One 1x1 group convolution c -> c with ``groups`` groups (§2 G2)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(_conv1x1(channels, channels, groups))


class SeriesFragments(nn.Sequential):
    """``fragments`` 1x1 convs in series, each c -> c (§2 G3, appendix Fig. 1 b/c)."""

    def __init__(self, channels: int, fragments: int) -> None:
        super().__init__(*[_conv1x1(channels, channels) for _ in range(fragments)])


class ParallelFragments(nn.Module):
    """``fragments`` 1x1 convs side by side on the same input, each producing c/fragments
    channels, concatenated (§2 G3, appendix Fig. 1 d/e): the FLOPs of one c -> c conv, split
    into smaller kernels."""

    def __init__(self, channels: int, fragments: int) -> None:
        super().__init__()
        if channels % fragments:
            raise ValueError(f"channels ({channels}) must divide into {fragments} fragments")
        self.branches = nn.ModuleList(_conv1x1(channels, channels // fragments) for _ in range(fragments))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


class Bottleneck(nn.Module):
    """ResNet bottleneck (He et al. 2016, Fig. 5 right): 1x1 c -> c/4, 3x3 c/4 -> c/4, 1x1
    c/4 -> c, with the ReLUs and the identity shortcut each optional (§2 G4, Table 4)."""

    def __init__(self, channels: int, relu: bool, shortcut: bool) -> None:
        super().__init__()
        mid = channels // 4
        self.conv1 = _conv1x1(channels, mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.conv3 = _conv1x1(mid, channels)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.has_shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.conv1(x))
        out = self.act(self.conv2(out))
        out = self.conv3(out)
        if self.has_shortcut:
            out = out + x
        return self.act(out)


def stack(block: Callable[[], nn.Module], count: int = NUM_BLOCKS) -> nn.Sequential:
    """``count`` blocks in series (§2: every experiment stacks 10)."""
    return nn.Sequential(*[block() for _ in range(count)])


# --------------------------------------------------------------------------- experiments


@dataclass
class Setting:
    """One row of an experiment: a label as in the paper's table, the network, its input."""

    label: str
    channels: str
    build: Callable[[], nn.Module]
    in_channels: int


@dataclass
class Experiment:
    """One controlled experiment: settings at equal FLOPs and the paper's expected winner."""

    key: str
    title: str
    paper_table: str
    paper_direction: str
    expected_fastest: str
    settings: list[Setting]
    input_hw: int = INPUT_HW
    flops_tolerance: float = 0.06  # the paper's channel numbers give FLOPs equal within ~5 %
    monotone: bool = False  # the paper's speed falls setting after setting (G1, G2)


def _g1(scale: int) -> Experiment:
    # Table 1: (c1, c2) at x1 keep c1*c2 ~ 128^2 (FLOPs of the two convs: 2*h*w*c1*c2).
    pairs = [("1:1", 128, 128), ("1:2", 90, 180), ("1:6", 52, 312), ("1:12", 36, 432)]
    return Experiment(
        key="G1",
        title=f"G1 equal channel width minimizes MAC (x{scale})",
        paper_table="Table 1",
        paper_direction="1:1 fastest; speed drops as c1:c2 departs from 1:1",
        expected_fastest="1:1",
        monotone=True,
        settings=[
            Setting(label, f"({c1 * scale},{c2 * scale})",
                    (lambda c1=c1 * scale, c2=c2 * scale: stack(lambda: G1Block(c1, c2))), c1 * scale)
            for label, c1, c2 in pairs
        ],
    )


def _g2(scale: int) -> Experiment:
    # Table 2: c at x1 keeps c^2/g ~ 128^2 for g = 1, 2, 4, 8.
    rows = [(1, 128), (2, 180), (4, 256), (8, 360)]
    return Experiment(
        key="G2",
        title=f"G2 excessive group convolution increases MAC (x{scale})",
        paper_table="Table 2",
        paper_direction="g=1 fastest; speed drops as the group number grows",
        expected_fastest="g=1",
        monotone=True,
        settings=[
            Setting(f"g={g}", f"c={c * scale}", (lambda c=c * scale, g=g: stack(lambda: G2Block(c, g))), c * scale)
            for g, c in rows
        ],
    )


def _g3(scale: int) -> Experiment:
    # Table 3: c = 128 (x1) for 1-fragment; series fragments of k convs use c/sqrt(k) channels so
    # k * (c/sqrt(k))^2 = c^2; parallel fragments split c outputs between k branches.
    c = 128 * scale
    c2 = int(round(c / math.sqrt(2)))
    c4 = c // 2
    return Experiment(
        key="G3",
        title=f"G3 network fragmentation reduces parallelism (c={c})",
        paper_table="Table 3",
        paper_direction="1-fragment fastest; more fragments are slower, parallel worse than series on GPU",
        expected_fastest="1-fragment",
        settings=[
            Setting("1-fragment", f"c={c}", lambda: stack(lambda: SeriesFragments(c, 1)), c),
            Setting("2-fragment-series", f"c={c2}", lambda: stack(lambda: SeriesFragments(c2, 2)), c2),
            Setting("4-fragment-series", f"c={c4}", lambda: stack(lambda: SeriesFragments(c4, 4)), c4),
            Setting("2-fragment-parallel", f"c={c}", lambda: stack(lambda: ParallelFragments(c, 2)), c),
            Setting("4-fragment-parallel", f"c={c}", lambda: stack(lambda: ParallelFragments(c, 4)), c),
        ],
    )


def _g4(channels: int) -> Experiment:
    # Table 4: c = 32, 64, 128; ReLU and shortcut removed separately. Element-wise ops add no
    # conv FLOPs, so FLOPs are equal by construction.
    rows = [("ReLU+shortcut", True, True), ("shortcut only", False, True), ("ReLU only", True, False),
            ("neither", False, False)]
    return Experiment(
        key="G4",
        title=f"G4 element-wise operations are non-negligible (c={channels})",
        paper_table="Table 4",
        paper_direction="removing ReLU and shortcut is fastest (about 20 % faster on GPU and ARM)",
        expected_fastest="neither",
        settings=[
            Setting(label, f"c={channels}",
                    (lambda r=relu, s=short: stack(lambda: Bottleneck(channels, r, s))), channels)
            for label, relu, short in rows
        ],
    )


def guideline_experiments(scales: Sequence[int] = (1, 2, 4)) -> list[Experiment]:
    """G1-G4 at the paper's channel multipliers (x1, x2, x4; G4 at c = 32, 64, 128)."""
    for scale in scales:
        if scale not in (1, 2, 4):
            raise ValueError(f"channel multiplier must be 1, 2 or 4 as in the paper, got {scale}")
    experiments: list[Experiment] = []
    for builder in (_g1, _g2, _g3):
        experiments.extend(builder(scale) for scale in scales)
    experiments.extend(_g4(32 * scale) for scale in scales)
    return experiments


# --------------------------------------------------------------------------- profiling + timing


@dataclass
class SettingResult:
    """A measured row."""

    experiment: str
    label: str
    channels: str
    params: int
    gflops: float
    mac_m: float | None  # memory access cost, millions of elements (paper's MAC definition)
    median_ms: float
    p90_ms: float
    per_second: float  # images/s (CPU, batch 1) or batches/s (CUDA, as the paper's GPU column)
    relative: float  # median / median of the fastest setting
    n: int
    other_load: float | None
    disturbed: bool


@dataclass
class ExperimentResult:
    key: str
    title: str
    paper_table: str
    paper_direction: str
    expected_fastest: str
    fastest: str
    agrees: bool
    expected_relative: float  # median of the paper's pick / median of the fastest here
    monotone: bool | None  # for G1/G2: does speed fall setting after setting here too
    batch: int
    device: str
    rows: list[SettingResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def profile_network(model: nn.Module, in_channels: int, hw: int, batch: int = 1) -> dict[str, float | None]:
    """Params, GFLOPs (2 x multiply-adds) and MAC (millions of elements) of ``model`` for an
    input [batch, in_channels, hw, hw], from ``litedet.bench.profile``."""
    from litedet.bench.profile import profile_model

    prof = profile_model(model, (hw, hw), batch, in_channels=in_channels)
    return {"params": int(prof.params), "gflops": 2.0 * float(prof.madds) / 1e9, "mac_m": float(prof.mac) / 1e6}


def check_equal_flops(experiment: Experiment, batch: int = 1) -> list[float]:
    """GFLOPs of every setting; raises ValueError if they differ by more than the tolerance."""
    flops = []
    for setting in experiment.settings:
        flops.append(profile_network(setting.build(), setting.in_channels, experiment.input_hw, batch)["gflops"])
    low, high = min(flops), max(flops)
    if high > low * (1 + experiment.flops_tolerance):
        raise ValueError(f"{experiment.key}: FLOPs differ beyond {experiment.flops_tolerance:.0%}: {flops}")
    return flops


def _device_sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def run_experiment(
    experiment: Experiment,
    device: str = "cpu",
    batch: int | None = None,
    warmup: int = 5,
    min_runs: int = 100,
    budget_s: float | None = 20.0,
    threads: int | None = None,
) -> ExperimentResult:
    """Profile and time every setting of ``experiment`` side by side (interleaved)."""
    batch = batch or (8 if device.startswith("cuda") else 1)
    if threads is not None:
        torch.set_num_threads(threads)
    candidates: dict[str, Candidate] = {}
    profiles: dict[str, dict] = {}
    for setting in experiment.settings:
        model = setting.build().eval()
        profiles[setting.label] = profile_network(model, setting.in_channels, experiment.input_hw, 1)
        model = model.to(device)
        x = torch.randn(batch, setting.in_channels, experiment.input_hw, experiment.input_hw, device=device)

        def call(model: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        candidates[setting.label] = Candidate(call)
    stats = measure_interleaved(candidates, warmup=warmup, min_runs=min_runs, budget_s=budget_s,
                                synchronize=_device_sync(device), max_attempts=1)
    return _result(experiment, stats, profiles, batch, device)


def _result(experiment: Experiment, stats: dict[str, LatencyStats], profiles: dict[str, dict], batch: int,
            device: str) -> ExperimentResult:
    fastest = min(stats, key=lambda name: stats[name].median_ms)
    best = stats[fastest].median_ms
    per_unit = 1 if device.startswith("cuda") else batch  # GPU column counts batches/s
    result = ExperimentResult(
        key=experiment.key, title=experiment.title, paper_table=experiment.paper_table,
        paper_direction=experiment.paper_direction, expected_fastest=experiment.expected_fastest,
        fastest=fastest, agrees=fastest == experiment.expected_fastest,
        expected_relative=stats[experiment.expected_fastest].median_ms / best,
        monotone=(all(stats[a.label].median_ms <= stats[b.label].median_ms
                      for a, b in zip(experiment.settings, experiment.settings[1:]))
                  if experiment.monotone else None),
        batch=batch, device=device,
    )
    for setting in experiment.settings:
        s = stats[setting.label]
        prof = profiles[setting.label]
        result.rows.append(SettingResult(
            experiment=experiment.key, label=setting.label, channels=setting.channels,
            params=int(prof["params"]), gflops=float(prof["gflops"]), mac_m=prof["mac_m"],
            median_ms=s.median_ms, p90_ms=s.p90_ms, per_second=per_unit * 1e3 / s.median_ms,
            relative=s.median_ms / best, n=s.n, other_load=s.other_load, disturbed=s.disturbed,
        ))
    return result


# --------------------------------------------------------------------------- seed comparisons


class SpaceToDepth(nn.Module):
    """YOLOv5's Focus slicing: [B, C, H, W] -> [B, 4C, H/2, W/2] (four pixel phases)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


def _conv_bn_silu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 if k % 2 else (k - 2) // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


def focus_stems(out_channels: int = 32) -> dict[str, nn.Module]:
    """YOLOv5 stems that halve the resolution: Focus (slice + 3x3 conv), the 6x6 stride-2 conv
    that replaced it in YOLOv5 v6.0 (same receptive field and params), and a plain 3x3 stride-2
    conv (what YOLOv5-Lite and ShuffleNetV2 use)."""
    return {
        "Focus + 3x3 conv": nn.Sequential(SpaceToDepth(), _conv_bn_silu(12, out_channels, 3, 1)),
        "6x6 conv stride 2": _conv_bn_silu(3, out_channels, 6, 2),
        "3x3 conv stride 2": _conv_bn_silu(3, out_channels, 3, 2),
    }


@dataclass
class StemResult:
    label: str
    params: int
    gflops: float
    forward_ms: float
    forward_p90_ms: float
    backward_ms: float
    backward_p90_ms: float
    other_load: float | None


def compare_focus(imgsz: int = 640, batch: int = 1, device: str = "cpu", min_runs: int = 100,
                  budget_s: float | None = 20.0) -> list[StemResult]:
    """Params, FLOPs, forward time and forward+backward time of the stems at ``imgsz``."""
    stems = focus_stems()
    forward: dict[str, Candidate] = {}
    backward: dict[str, Candidate] = {}
    profiles = {}
    for label, stem in stems.items():
        profiles[label] = profile_network(stem.eval(), 3, imgsz, 1)
        stem = stem.to(device).train()
        x = torch.randn(batch, 3, imgsz, imgsz, device=device)

        def fwd(stem: nn.Module = stem, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                stem(x)

        def fwd_bwd(stem: nn.Module = stem, x: torch.Tensor = x) -> None:
            stem.zero_grad(set_to_none=True)
            stem(x).sum().backward()

        forward[label] = Candidate(fwd)
        backward[label] = Candidate(fwd_bwd)
    sync = _device_sync(device)
    f_stats = measure_interleaved(forward, warmup=3, min_runs=min_runs, budget_s=budget_s, synchronize=sync,
                                  max_attempts=1)
    b_stats = measure_interleaved(backward, warmup=3, min_runs=min_runs, budget_s=budget_s, synchronize=sync,
                                  max_attempts=1)
    return [
        StemResult(label, int(profiles[label]["params"]), float(profiles[label]["gflops"]),
                   f_stats[label].median_ms, f_stats[label].p90_ms, b_stats[label].median_ms,
                   b_stats[label].p90_ms, _max_load(f_stats[label].other_load, b_stats[label].other_load))
        for label in stems
    ]


def _max_load(*loads: float | None) -> float | None:
    values = [v for v in loads if v is not None]
    return max(values) if values else None


class DenseBlock(nn.Module):
    """DenseNet-BC block (Huang et al. 2017): each layer BN-ReLU-1x1(4k)-BN-ReLU-3x3(k) sees the
    concatenation of the input and every earlier layer's output."""

    def __init__(self, in_channels: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        channels = in_channels
        for _ in range(layers):
            self.layers.append(nn.Sequential(
                nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 4 * growth, 1, bias=False),
                nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            ))
            channels += growth
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def osa_module(in_channels: int = 128, stage_channels: int = 128, out_channels: int = 256, layers: int = 5) -> nn.Module:
    """The OSA module of VoVNet-39 stage 2 (Lee et al. 2019, Table 1), from ``litedet.layers``."""
    from litedet.layers import OSAModule

    return OSAModule(in_channels, stage_channels, out_channels, layers)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def equal_params_dense_block(target_params: int, in_channels: int = 128, layers: int = 5) -> DenseBlock:
    """The dense block with ``layers`` layers whose growth rate brings its params closest to
    ``target_params``."""
    best = None
    for growth in range(4, 512):
        block = DenseBlock(in_channels, growth, layers)
        gap = abs(_params(block) - target_params)
        if best is None or gap < best[0]:
            best = (gap, block)
        elif _params(block) > target_params:
            break
    assert best is not None
    return best[1]


@dataclass
class BlockResult:
    label: str
    params: int
    gflops: float
    mac_m: float | None
    out_channels: int
    median_ms: float
    p90_ms: float
    other_load: float | None


def compare_osa_dense(hw: int = 56, in_channels: int = 128, batch: int = 1, device: str = "cpu",
                      min_runs: int = 100, budget_s: float | None = 20.0) -> list[BlockResult]:
    """OSA module (VoVNet-39 stage 2) vs a DenseNet-BC block of equal params: MAC and latency.
    VoVNet §3.1: one-shot aggregation keeps MAC low, dense aggregation grows it with depth."""
    osa = osa_module(in_channels)
    dense = equal_params_dense_block(_params(osa), in_channels)
    blocks = {"OSA module (5 x 3x3, concat once)": osa, f"dense block (5 layers, growth {dense.layers[0][-1].out_channels})": dense}
    candidates: dict[str, Candidate] = {}
    profiles = {}
    out_channels = {}
    for label, block in blocks.items():
        block = block.eval()
        profiles[label] = profile_network(block, in_channels, hw, 1)
        x = torch.randn(batch, in_channels, hw, hw, device=device)
        block = block.to(device)
        with torch.no_grad():
            out_channels[label] = int(block(x).shape[1])

        def call(block: nn.Module = block, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                block(x)

        candidates[label] = Candidate(call)
    stats = measure_interleaved(candidates, warmup=3, min_runs=min_runs, budget_s=budget_s,
                                synchronize=_device_sync(device), max_attempts=1)
    return [
        BlockResult(label, int(profiles[label]["params"]), float(profiles[label]["gflops"]), profiles[label]["mac_m"],
                    out_channels[label], stats[label].median_ms, stats[label].p90_ms, stats[label].other_load)
        for label in blocks
    ]


# --------------------------------------------------------------------------- the whole run


@dataclass
class GuidelinesReport:
    device: str
    threads: int
    experiments: list[ExperimentResult]
    focus: list[StemResult]
    osa: list[BlockResult]
    machine: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def run_guidelines(
    quick: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    min_runs: int = 100,
    budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> GuidelinesReport:
    """Run G1-G4 and the two seed comparisons. ``quick``: x1 channels only, 20 runs each.

    ``budget_s`` caps the timing of each interleaved table (default 20 s, 5 s when quick);
    every row reports how many runs it got. Disturbed rows are flagged, not re-measured, to
    keep the run bounded (about 15 tables).
    """
    from litedet.bench.machine import machine_info

    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    scales = (1,) if quick else (1, 2, 4)
    runs = min(min_runs, 20) if quick else min_runs
    budget = budget_s if budget_s is not None else (5.0 if quick else 20.0)
    experiments = []
    for experiment in guideline_experiments(scales):
        if progress:
            progress(experiment.title)
        experiments.append(run_experiment(experiment, device, min_runs=runs, budget_s=budget))
    if progress:
        progress("Focus vs strided conv at 640x640")
    focus = compare_focus(device=device, min_runs=runs, budget_s=budget)
    if progress:
        progress("OSA module vs dense block of equal params")
    osa = compare_osa_dense(device=device, min_runs=runs, budget_s=budget)
    machine = machine_info(threads=(threads,), measure=False).to_dict()
    return GuidelinesReport(device, threads, experiments, focus, osa, machine)


def guidelines_markdown(report: GuidelinesReport) -> str:
    """The tables, each with the paper's direction and this device's verdict."""
    lines = [f"# ShuffleNetV2 guidelines on this device ({report.device}, {report.threads} threads)", ""]
    lines.append(f"CPU: {report.machine.get('cpu_model', '?')}; torch {report.machine.get('engines', {}).get('torch', '?')}. "
                 "Input 56x56, 10 stacked blocks, FLOPs equal within each table; `load` is the % of the machine "
                 "other processes used while the row was timed.")
    lines += ["", "## Summary", "", "| experiment | paper's fastest | fastest here | paper's pick vs fastest | verdict |",
              "|---|---|---|---|---|"]
    for exp in report.experiments:
        lines.append(f"| {exp.title} | {exp.expected_fastest} | {exp.fastest} | {exp.expected_relative:.2f}x | "
                     f"{_verdict(exp)} |")
    for exp in report.experiments:
        unit = "batches/s" if exp.device.startswith("cuda") else "images/s"
        lines += ["", f"## {exp.title} — paper {exp.paper_table}", "",
                  f"Paper: {exp.paper_direction}. Here (batch {exp.batch}): fastest is **{exp.fastest}**; the "
                  f"paper's pick runs at {exp.expected_relative:.2f}x its time — {_verdict(exp)}.", "",
                  f"| setting | channels | GFLOPs | MAC (M) | median ms | p90 ms | {unit} | x fastest | n | load % |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in exp.rows:
            lines.append(
                f"| {row.label} | {row.channels} | {row.gflops:.3f} | {_fmt(row.mac_m, '.1f')} | {row.median_ms:.2f} | "
                f"{row.p90_ms:.2f} | {row.per_second:.1f} | {row.relative:.2f} | {row.n} | "
                f"{_fmt(row.other_load, '.0f')}{' (disturbed)' if row.disturbed else ''} |")
    lines += ["", "## Focus vs strided convolution at 640x640 (YOLOv5 stem)", "",
              "| stem | params | GFLOPs | forward ms | fwd p90 | forward+backward ms | f+b p90 | load % |",
              "|---|---|---|---|---|---|---|---|"]
    for stem in report.focus:
        lines.append(f"| {stem.label} | {stem.params} | {stem.gflops:.3f} | {stem.forward_ms:.2f} | {stem.forward_p90_ms:.2f} | "
                     f"{stem.backward_ms:.2f} | {stem.backward_p90_ms:.2f} | {_fmt(stem.other_load, '.0f')} |")
    lines += ["", "## OSA module vs dense block of equal params (56x56, 128 input channels)", "",
              "VoVNet §3: with equal params, one-shot aggregation should need less MAC and run faster.", "",
              "| block | params | GFLOPs | MAC (M) | out channels | median ms | p90 ms | load % |",
              "|---|---|---|---|---|---|---|---|"]
    for block in report.osa:
        lines.append(f"| {block.label} | {block.params} | {block.gflops:.3f} | {_fmt(block.mac_m, '.1f')} | {block.out_channels} | "
                     f"{block.median_ms:.2f} | {block.p90_ms:.2f} | {_fmt(block.other_load, '.0f')} |")
    return "\n".join(lines) + "\n"


def _verdict(exp: ExperimentResult) -> str:
    """'agrees' / 'DISAGREES', with the ordering for the experiments whose paper table is monotone."""
    text = "agrees" if exp.agrees else "DISAGREES"
    if exp.monotone is not None:
        text += ", speed falls in the paper's order" if exp.monotone else ", order differs from the paper's"
    return text


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def save_guidelines(report: GuidelinesReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``guidelines.md`` and ``guidelines.json`` into ``out_dir``."""
    import json

    from litedet.config import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "guidelines.md", "json": out / "guidelines.json"}
    write_text_atomic(paths["markdown"], guidelines_markdown(report))
    write_text_atomic(paths["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    return paths
