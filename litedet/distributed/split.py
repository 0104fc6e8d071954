"""Split one detector between two devices at the layer that minimises end-to-end latency.

Neurosurgeon (Kang et al., ASPLOS 2017, §4-5) profiles each layer's latency on the mobile device
and on the server, and the size of each layer's output, then picks the split point ``k`` that
minimises ``compute_A(layers < k) + transfer(output of layer k-1) + compute_B(layers >= k)``.
It assumes a chain. A YOLO detector is not one: the backbone's stride 8/16/32 maps feed the PAN
neck, and the neck keeps laterals for its bottom-up path (skip connections). So here:

- the network is captured as a graph with ``torch.export`` (aten ops, the exact eager kernels);
- ops are grouped into **blocks** (a ShuffleNetV2 unit, a PAN C3, a head conv, ...) by the
  module that runs them;
- a **cut point** is a boundary between blocks where every value still needed later is a tensor;
  what crosses the cut is the set of **live tensors** there (produced before it and used after
  it, e.g. C3 and C4 while the backbone's last stage runs), and its transfer size is their sum;
- device A holds the camera (the input starts there); cut 0 sends the input to B, the last cut
  keeps everything on A and sends nothing. Decode and NMS run where the network ends (their
  result is a few boxes and is not modelled).

``profile_device`` writes a ``DeviceProfile`` (per-block median latency, per-cut transfer size)
on the device it runs on; ``plan_split`` combines two profiles with a bandwidth and a latency and
predicts every candidate's end-to-end latency; ``SplitBackend`` runs part A and part B as Ray
actors placed by custom resources (``ray start --resources '{"device_a": 1}'``), and plugs into
the usual ``Predictor``, so its detections are those of the single-device model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from litedet.bench.machine import cpu_model
from litedet.config import ModelConfig, write_text_atomic
from litedet.runtime.base import Backend

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

LOGGER = logging.getLogger(__name__)

PROFILE_VERSION = 1

__all__ = [
    "Candidate", "DeviceProfile", "SplitBackend", "SplitGraph", "SplitPlan", "load_profile", "parse_bandwidth",
    "parse_latency", "plan_from_dict", "plan_split", "profile_device", "run_split",
]


# ---- units ---------------------------------------------------------------------------------------

_BANDWIDTH_UNITS = {
    "b/s": 1.0, "kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9,
    "kib/s": 1024.0, "mib/s": 1024.0**2, "gib/s": 1024.0**3,
    "bit/s": 1 / 8, "kbit/s": 1e3 / 8, "mbit/s": 1e6 / 8, "gbit/s": 1e9 / 8,
    "bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8,
}


def parse_bandwidth(text: str | float) -> float:
    """``"10MB/s"`` (bytes), ``"100Mbit/s"`` / ``"100mbps"`` (bits), ``"5MiB/s"``, or a number of
    bytes per second -> bytes per second."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "b/s"
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z/]*)\s*", str(text), re.IGNORECASE)
        if not match:
            raise ValueError(f"--bandwidth {text!r}: expected a number and a unit such as 10MB/s, 100Mbit/s, 5MiB/s")
        value, unit = float(match.group(1)), match.group(2) or "b/s"
        # "MB/s" -> bytes, "Mb/s" -> bits (the usual network convention)
        if re.fullmatch(r"[kmgKMG]b/s", unit):
            unit = unit[0] + "bit/s"
        unit = unit.lower()
        if unit not in _BANDWIDTH_UNITS:
            raise ValueError(f"--bandwidth {text!r}: unknown unit {unit!r}; use one of {', '.join(_BANDWIDTH_UNITS)}")
    bandwidth = value * _BANDWIDTH_UNITS[unit]
    if bandwidth <= 0:
        raise ValueError(f"--bandwidth {text!r} must be > 0")
    return bandwidth


def parse_latency(text: str | float) -> float:
    """``"5ms"``, ``"0.2s"``, ``"300us"`` or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*(s|ms|us)?\s*", str(text), re.IGNORECASE)
        if not match:
            raise ValueError(f"--latency {text!r}: expected a number and a unit such as 5ms, 0.2s, 300us")
        seconds = float(match.group(1)) * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[(match.group(2) or "s").lower()]
    if seconds < 0:
        raise ValueError(f"--latency {text!r} must be >= 0")
    return seconds


# ---- the graph and its cut points ----------------------------------------------------------------


def _flat_outputs(outputs: Any) -> list["torch.Tensor"]:
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return list(outputs)


class SplitGraph:
    """A detector captured with ``torch.export`` at a fixed input size, grouped into blocks.

    ``blocks[i]`` is the name of block ``i`` (its module path); cut ``k`` (0..len(blocks)) lies
    before block ``k``; ``live(k)`` are the graph values crossing it and ``transfer_bytes(k)`` their
    size (cut 0: the input; the last cut: nothing, all on A). ``part(start, end)`` is a standalone
    ``fx.GraphModule`` that takes the tensors live at cut ``start`` and returns those live at cut
    ``end``; part(0, n) returns the raw head maps, exactly as the eager model does.
    """

    def __init__(self, model: "nn.Module", input_size: Sequence[int], batch: int = 1) -> None:
        import torch

        self.input_size = (int(input_size[0]), int(input_size[1]))
        example = torch.zeros(batch, 3, *self.input_size)
        model = model.eval()
        with torch.no_grad():
            exported = torch.export.export(model, (example,))
        self.module = exported.module()
        self.root = model
        graph = self.module.graph
        nodes = list(graph.nodes)
        self.input_node = next(n for n in nodes if n.op == "placeholder")
        self.output_node = next(n for n in nodes if n.op == "output")
        compute = [n for n in nodes if n.op == "call_function"]
        position = {n: i for i, n in enumerate(compute)}
        position[self.input_node] = -1
        end = len(compute)
        # Block label per op (None for glue such as the neck's top-level concat: joins the next block).
        labels = [self._block_of(n) for n in compute]
        for i in range(len(labels) - 2, -1, -1):
            if labels[i] is None:
                labels[i] = labels[i + 1]
        for i in range(1, len(labels)):
            if labels[i] is None:
                labels[i] = labels[i - 1]
        # Candidate boundaries: where the block changes and every live value is a tensor.
        last_use = {}
        for value in [self.input_node, *compute]:
            # users outside the computation (export's input-guard call) do not keep a value live
            uses = [end if u is self.output_node else position[u] for u in value.users if u in position or u is self.output_node]
            last_use[value] = max(uses) if uses else -1

        def live_at(cut_pos: int) -> list[Any]:
            values = [self.input_node, *compute[:cut_pos]]
            return [v for v in values if last_use[v] >= cut_pos]

        starts = [0]
        for i in range(1, len(compute)):
            if labels[i] != labels[i - 1]:
                live = live_at(i)
                if all(isinstance(v.meta.get("val"), torch.Tensor) for v in live):
                    starts.append(i)
        self._compute = compute
        self._starts = starts  # op index where each block starts
        names: list[str] = []
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else end
            seen = dict.fromkeys(labels[start:stop])
            name = "+".join(str(s) for s in seen)
            names.append(name)
        self.blocks = names
        self._live = [live_at(s) for s in starts]
        self._live.append([n for n in self.output_node.args[0]] if isinstance(self.output_node.args[0], (list, tuple)) else [self.output_node.args[0]])

    def _block_of(self, node: Any) -> str | None:
        """The block an op belongs to: the outermost module on its stack that is neither the root,
        a direct part (backbone/neck/head) nor a plain container (Sequential/ModuleList/ModuleDict)."""
        from torch import nn

        stack = node.meta.get("nn_module_stack") or {}
        for path, _ in stack.values():
            path = str(path)
            if not path or path.count(".") < 1:
                continue
            try:
                module = self.root.get_submodule(path)
            except AttributeError:
                continue
            # exact types: a block such as ConvBnAct may itself subclass Sequential
            if type(module) in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
                continue
            return path
        return None

    @property
    def num_cuts(self) -> int:
        """Cut points 0..len(blocks)."""
        return len(self.blocks) + 1

    def check_cut(self, cut: int) -> int:
        if not 0 <= int(cut) <= len(self.blocks):
            raise ValueError(f"cut {cut} is out of range: this model has cuts 0..{len(self.blocks)}")
        return int(cut)

    def live(self, cut: int) -> list[Any]:
        """The graph values that cross cut ``cut``."""
        return list(self._live[self.check_cut(cut)])

    def live_shapes(self, cut: int) -> list[list[int]]:
        """Shapes of the tensors crossing cut ``cut``."""
        return [list(v.meta["val"].shape) for v in self.live(cut)]

    def transfer_bytes(self, cut: int) -> int:
        """Bytes sent from A to B at cut ``cut`` (0 for the last cut: nothing leaves A)."""
        cut = self.check_cut(cut)
        if cut == len(self.blocks):
            return 0
        return int(sum(v.meta["val"].numel() * v.meta["val"].element_size() for v in self._live[cut]))

    def part(self, start: int, end: int) -> "fx.GraphModule":
        """Blocks ``start..end-1`` as a GraphModule: live(start) tensors in, live(end) tensors out
        (a tuple); tensors that only pass through are returned unchanged."""
        from torch import fx

        start, end = self.check_cut(start), self.check_cut(end)
        if start > end:
            raise ValueError(f"part start {start} is after its end {end}")
        op_start = self._starts[start] if start < len(self.blocks) else len(self._compute)
        op_end = self._starts[end] if end < len(self.blocks) else len(self._compute)
        graph = fx.Graph()
        env: dict[Any, Any] = {}
        for index, value in enumerate(self._live[start]):
            placeholder = graph.placeholder(f"live{index}")
            placeholder.meta = dict(value.meta)
            env[value] = placeholder

        def lookup(node: Any) -> Any:
            if node not in env:
                if node.op != "get_attr":
                    raise RuntimeError(f"value {node.name} is used by part [{start}, {end}) but not live at cut {start}")
                env[node] = graph.get_attr(node.target)
            return env[node]

        for node in self._compute[op_start:op_end]:
            env[node] = graph.node_copy(node, lookup)
        outputs = tuple(lookup(v) for v in self._live[end])
        graph.output(outputs)
        graph.lint()
        return fx.GraphModule(self.module, graph)


# ---- device profiles -----------------------------------------------------------------------------


@dataclass
class DeviceProfile:
    """One device's per-block latency for one model at one input size (``litedet split profile``).

    ``blocks``: ``{"name", "latency_ms", "madds"}`` per block, in execution order (multiply-adds
    from ``litedet.bench.profile``). ``cuts``: per cut
    ``{"cut", "after", "transfer_bytes", "shapes"}``. ``total_ms``: the whole network, measured
    in one piece (compare with the sum of the blocks).
    """

    device: str
    model: str
    input_size: tuple[int, int]
    threads: int
    blocks: list[dict[str, Any]]
    cuts: list[dict[str, Any]]
    total_ms: float
    host: str = ""
    cpu: str = ""
    engine: str = "torch"
    repeats: int = 0
    version: int = PROFILE_VERSION

    def block_ms(self, calibrate: bool = False) -> list[float]:
        """Each block's median latency; ``calibrate`` scales them to add up to ``total_ms`` (a block
        timed alone, again and again, runs on warm caches and so reads faster than in the network)."""
        values = [float(b["latency_ms"]) for b in self.blocks]
        total = sum(values)
        if calibrate and total > 0 and self.total_ms > 0:
            values = [v * self.total_ms / total for v in values]
        return values

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "DeviceProfile":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown device profile keys {unknown}")
        missing = [k for k in ("device", "model", "input_size", "threads", "blocks", "cuts", "total_ms") if k not in data]
        if missing:
            raise ValueError(f"{source}: not a litedet device profile (missing {missing}); write one with `litedet split profile`")
        data = dict(data)
        data["input_size"] = tuple(int(v) for v in data["input_size"])
        if len(data["cuts"]) != len(data["blocks"]) + 1:
            raise ValueError(f"{source}: {len(data['cuts'])} cuts for {len(data['blocks'])} blocks (expected blocks + 1)")
        return cls(**data)


def load_profile(path: str | os.PathLike) -> DeviceProfile:
    """Read a ``DeviceProfile`` JSON written by ``profile_device``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"device profile not found: {path} (write one with `litedet split profile`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a device profile (invalid JSON: {err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a device profile (expected a JSON object)")
    return DeviceProfile.from_dict(data, source=str(path))


def _median_ms(fn: Any, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def build_model(model: "nn.Module | str", weights: str | os.PathLike | None = None, imgsz: int | None = None) -> tuple["nn.Module", tuple[int, int], str]:
    """A model to split: an ``nn.Module``, a registered name (random weights: latency does not
    depend on values; a backbone needs ``imgsz``) or ``weights`` (``load_detector``). Returns
    (model, input size, name)."""
    from torch import nn

    if isinstance(model, nn.Module):
        size = getattr(model, "input_size", None)
        size = (imgsz, imgsz) if imgsz else size
        if size is None:
            raise ValueError("pass imgsz for a model without an input_size attribute")
        return model.eval(), (int(size[0]), int(size[1])), str(getattr(model, "model_name", type(model).__name__))
    if weights is not None:
        from litedet.models.checkpoint import load_detector

        network, config = load_detector(weights, model_name=model or None)
        size = (imgsz, imgsz) if imgsz else tuple(config.input_size)
        _check_size(size, config)
        return network.eval(), (int(size[0]), int(size[1])), config.model
    if not model:
        raise ValueError("name a model (--model) or give --weights")
    import litedet.models.zoo  # noqa: F401 - registers the detectors
    from litedet.models.registry import create_model, model_kind

    if model_kind(str(model)) == "detector":
        network = create_model(str(model), **({"input_size": imgsz} if imgsz else {}))
        size = tuple(network.input_size)
        _check_size(size, network.config)
    else:  # a backbone has no input size of its own
        if not imgsz:
            raise ValueError(f"{model} is a backbone without an input size of its own: give one (--imgsz, e.g. 224)")
        network, size = create_model(str(model)), (imgsz, imgsz)
    return network.eval(), (int(size[0]), int(size[1])), str(model)


def _check_size(size: Sequence[int], config: Any) -> None:
    """A detector's input size must divide by its largest stride (``ModelConfig.size_multiple``)."""
    from litedet.runtime import size_error

    if any(int(side) % config.size_multiple for side in size) or min(size) <= 0:
        raise ValueError(size_error([int(side) for side in size], config.size_multiple))


def _block_madds(network: "nn.Module", size: tuple[int, int], blocks: Sequence[str]) -> list[int]:
    """Multiply-adds of each block (``litedet.bench.profile`` per-layer counts, summed by module path)."""
    from litedet.bench.profile import profile_model

    layers = profile_model(network, size).layers
    totals = []
    for block in blocks:
        prefixes = tuple(part + "." for part in block.split("+"))
        totals.append(int(sum(layer.madds for layer in layers if (layer.name + ".").startswith(prefixes))))
    return totals


def profile_device(
    model: "nn.Module | str",
    input_size: int | Sequence[int] | None = None,
    weights: str | os.PathLike | None = None,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
    device: str | None = None,
    graph: SplitGraph | None = None,
) -> DeviceProfile:
    """Measure each block's median latency (torch eager kernels via the exported graph, CPU) on this
    device at ``threads`` threads, and each cut's transfer size.

    Each block runs as its own module on the tensors live at its start, ``repeats`` times after
    ``warmup``. ``device`` names the profile (default: the host name and thread count).
    """
    import torch

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} / {warmup}")
    imgsz = None
    if input_size is not None:
        imgsz = int(input_size) if isinstance(input_size, (int, np.integer)) else int(input_size[0])
    network, size, name = build_model(model, weights, imgsz)
    if input_size is not None and not isinstance(input_size, (int, np.integer)):
        size = (int(input_size[0]), int(input_size[1]))
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        split = graph or SplitGraph(network, size)
        n = len(split.blocks)
        parts = [split.part(k, k + 1) for k in range(n)]
        whole = split.part(0, n)
        x = torch.rand(1, 3, *size)
        inputs: list[tuple[Any, ...]] = []
        with torch.inference_mode():
            live: tuple[Any, ...] = (x,)
            for part in parts:
                inputs.append(live)
                live = tuple(part(*live))
            block_ms = []
            for part, args in zip(parts, inputs):
                block_ms.append(_median_ms(lambda p=part, a=args: p(*a), warmup, repeats))
            total = _median_ms(lambda: whole(x), warmup, repeats)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    cuts = [
        {
            "cut": k,
            "after": "input" if k == 0 else split.blocks[k - 1],
            "transfer_bytes": split.transfer_bytes(k),
            "shapes": split.live_shapes(k) if k < n else [],
        }
        for k in range(n + 1)
    ]
    madds = _block_madds(network, size, split.blocks)
    host = socket.gethostname()
    return DeviceProfile(
        device=device or f"{host}-{used_threads}t",
        model=name,
        input_size=size,
        threads=used_threads,
        blocks=[
            {"name": b, "latency_ms": round(ms, 4), "madds": m} for b, ms, m in zip(split.blocks, block_ms, madds)
        ],
        cuts=cuts,
        total_ms=round(total, 4),
        host=host,
        cpu=cpu_model(),
        repeats=repeats,
    )


# ---- the planner ---------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One cut's predicted end-to-end latency (ms): A's blocks + transfer + B's blocks."""

    cut: int
    after: str
    compute_a_ms: float
    transfer_ms: float
    compute_b_ms: float
    transfer_bytes: int

    @property
    def total_ms(self) -> float:
        return self.compute_a_ms + self.transfer_ms + self.compute_b_ms


@dataclass
class SplitPlan:
    """The chosen cut and every candidate's prediction (``litedet split plan``)."""

    cut: int
    candidates: list[Candidate]
    device_a: str
    device_b: str
    model: str
    input_size: tuple[int, int]
    bandwidth_bytes_s: float
    latency_s: float
    blocks: list[str] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.candidates[self.cut]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "device_a": self.device_a,
            "device_b": self.device_b,
            "bandwidth_bytes_s": self.bandwidth_bytes_s,
            "latency_s": self.latency_s,
            "cut": self.cut,
            "after": self.best.after,
            "predicted_ms": round(self.best.total_ms, 3),
            "candidates": [
                {**dataclasses.asdict(c), "total_ms": round(c.total_ms, 3)} for c in self.candidates
            ],
        }

    def table(self) -> str:
        """A Markdown table of every candidate, the chosen one marked."""
        lines = [
            f"split of {self.model} @{self.input_size[0]}x{self.input_size[1]}: A={self.device_a}, B={self.device_b}, "
            f"bandwidth {self.bandwidth_bytes_s / 1e6:.3g} MB/s, latency {self.latency_s * 1e3:.3g} ms",
            "",
            "| cut | after block | sent KB | A ms | transfer ms | B ms | total ms |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for c in self.candidates:
            mark = " **<- best**" if c.cut == self.cut else ""
            lines.append(
                f"| {c.cut} | {c.after} | {c.transfer_bytes / 1e3:.1f} | {c.compute_a_ms:.2f} | {c.transfer_ms:.2f} | "
                f"{c.compute_b_ms:.2f} | {c.total_ms:.2f}{mark} |"
            )
        return "\n".join(lines)


def plan_from_dict(data: dict[str, Any] | str | os.PathLike) -> SplitPlan:
    """A ``SplitPlan`` from ``SplitPlan.to_dict()`` output or the JSON file ``split plan -o`` wrote."""
    source = "<dict>"
    if not isinstance(data, dict):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"split plan not found: {path} (write one with `litedet split plan -o`)")
        source = str(path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a split plan (invalid JSON: {err})") from None
    try:
        fields = {f.name for f in dataclasses.fields(Candidate)}
        candidates = [Candidate(**{k: v for k, v in c.items() if k in fields}) for c in data["candidates"]]
        return SplitPlan(
            cut=int(data["cut"]), candidates=candidates, device_a=str(data["device_a"]), device_b=str(data["device_b"]),
            model=str(data["model"]), input_size=tuple(int(v) for v in data["input_size"]),  # type: ignore[arg-type]
            bandwidth_bytes_s=float(data["bandwidth_bytes_s"]), latency_s=float(data["latency_s"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: not a litedet split plan ({type(err).__name__}: {err})") from None


def plan_split(
    profile_a: DeviceProfile,
    profile_b: DeviceProfile,
    bandwidth: float | str,
    latency: float | str = 0.0,
    calibrate: bool = True,
) -> SplitPlan:
    """Choose the cut minimising compute on A + transfer + compute on B (Neurosurgeon §5).

    ``bandwidth`` in bytes/s (or a string such as ``"10MB/s"``), ``latency`` in seconds (or
    ``"5ms"``), paid once whenever something is sent (every cut but the last). ``calibrate``
    scales each device's block latencies to add up to its whole-network latency
    (``DeviceProfile.block_ms``).
    """
    bandwidth_b = parse_bandwidth(bandwidth)
    latency_s = parse_latency(latency)
    if profile_a.model != profile_b.model or tuple(profile_a.input_size) != tuple(profile_b.input_size):
        raise ValueError(
            f"the profiles are of different models: A {profile_a.model}@{list(profile_a.input_size)}, "
            f"B {profile_b.model}@{list(profile_b.input_size)}; profile the same --model and --imgsz on both"
        )
    names_a = [b["name"] for b in profile_a.blocks]
    names_b = [b["name"] for b in profile_b.blocks]
    if names_a != names_b:
        raise ValueError(
            f"the profiles cut {profile_a.model} into different blocks ({len(names_a)} on A, {len(names_b)} on B); "
            f"profile both with the same litedet version"
        )
    a_ms, b_ms = profile_a.block_ms(calibrate), profile_b.block_ms(calibrate)
    n = len(a_ms)
    candidates = []
    for k in range(n + 1):
        sent = int(profile_a.cuts[k]["transfer_bytes"])
        transfer = 0.0 if k == n else (latency_s + sent / bandwidth_b) * 1e3
        candidates.append(
            Candidate(
                cut=k,
                after=str(profile_a.cuts[k]["after"]),
                compute_a_ms=float(sum(a_ms[:k])),
                transfer_ms=transfer,
                compute_b_ms=float(sum(b_ms[k:])),
                transfer_bytes=sent if k < n else 0,
            )
        )
    best = min(candidates, key=lambda c: (c.total_ms, c.cut))
    return SplitPlan(
        cut=best.cut, candidates=candidates, device_a=profile_a.device, device_b=profile_b.device,
        model=profile_a.model, input_size=tuple(profile_a.input_size), bandwidth_bytes_s=bandwidth_b,
        latency_s=latency_s, blocks=names_a,
    )


# ---- execution on Ray ----------------------------------------------------------------------------


class SplitPartWorker:
    """Runs one part of a split network (a Ray actor on the device that owns the part).

    ``run(payload)`` takes ``(arrays, timings)`` from the previous stage; with ``bandwidth`` set it
    first sleeps ``latency + bytes / bandwidth`` to simulate the link the arrays came over.
    """

    def __init__(self, part: Any, threads: int | None = None, bandwidth: float | None = None, latency: float = 0.0) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.part = part.eval()
        self.bandwidth = bandwidth
        self.latency = latency

    def ready(self) -> dict[str, Any]:
        import ray
        import torch

        return {"host": socket.gethostname(), "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "threads": torch.get_num_threads()}

    def run(self, payload: tuple[tuple[np.ndarray, ...], dict[str, float]]) -> tuple[tuple[np.ndarray, ...], dict[str, float]]:
        import torch

        arrays, timings = payload
        timings = dict(timings)
        if self.bandwidth:
            sent = sum(a.nbytes for a in arrays)
            delay = self.latency + sent / self.bandwidth
            time.sleep(delay)
            timings["transfer_ms"] = timings.get("transfer_ms", 0.0) + delay * 1e3
        start = time.perf_counter()
        tensors = [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays]
        with torch.inference_mode():
            outputs = self.part(*tensors)
        result = tuple(t.numpy() for t in outputs)
        timings.setdefault("compute_ms", [])
        timings["compute_ms"] = [*timings["compute_ms"], (time.perf_counter() - start) * 1e3]
        return result, timings


_ACTOR_GONE_NAMES = ("RayActorError", "ActorUnavailableError", "NodeDiedError", "ObjectLostError", "OwnerDiedError")


def _actor_gone_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's exceptions for an actor, its node or its objects being lost."""
    return tuple(getattr(ray.exceptions, name) for name in _ACTOR_GONE_NAMES if hasattr(ray.exceptions, name))


class SplitBackend(Backend):
    """A ``Backend`` whose network runs as two Ray actors: blocks ``< cut`` on the node with
    custom resource ``device_a``, the rest on ``device_b``. Use it with ``Predictor`` (letterbox to
    the fixed input size, decode, NMS), so detections match the single-device model's.

    ``fallback="local"``: when an actor or its node is gone, log a warning and run the whole
    network in this process from then on (``fell_back`` becomes True); ``"error"`` raises
    ``RuntimeError`` naming the device. ``bandwidth``/``latency`` simulate the A->B link
    (``sleep(latency + bytes / bandwidth)`` on B before it computes).
    """

    name = "split"

    def __init__(
        self,
        graph: SplitGraph,
        config: ModelConfig,
        cut: int,
        device_a: str = "device_a",
        device_b: str = "device_b",
        threads_a: int | None = None,
        threads_b: int | None = None,
        fallback: str = "error",
        bandwidth: float | None = None,
        latency: float = 0.0,
        start_timeout_s: float = 120.0,
        call_timeout_s: float = 120.0,
    ) -> None:
        import ray

        if fallback not in ("error", "local"):
            raise ValueError(f"--fallback must be 'error' or 'local', got {fallback!r}")
        if not ray.is_initialized():
            raise RuntimeError("SplitBackend needs a Ray connection: call ray.init(address=...) first (run_split does)")
        config = dataclasses.replace(config, input_size=graph.input_size, dynamic=False)
        super().__init__(config, threads=threads_a)
        self.ray = ray
        self.graph = graph
        self.cut = graph.check_cut(cut)
        self.fallback = fallback
        self.fell_back = False
        self.call_timeout_s = call_timeout_s
        self.devices = (device_a, device_b)
        self.timings: list[dict[str, Any]] = []
        self._local: Any = None
        n = len(graph.blocks)
        worker = ray.remote(SplitPartWorker)
        self.actors = [
            worker.options(num_cpus=0, resources={device_a: 1}).remote(graph.part(0, self.cut), threads_a),
            # The last cut keeps everything on A: nothing crosses the link, so nothing to simulate.
            worker.options(num_cpus=0, resources={device_b: 1}).remote(
                graph.part(self.cut, n), threads_b, bandwidth if self.cut < n else None, latency
            ),
        ]
        self.placement: list[dict[str, Any]] = []
        try:
            self.placement = ray.get([a.ready.remote() for a in self.actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            message = (
                f"no node offers the custom resources {device_a!r} and {device_b!r} within {start_timeout_s:.0f} s "
                f"(cluster resources: {ray.cluster_resources()}); start the nodes with "
                f"`ray start --resources '{{\"{device_a}\": 1}}'` and likewise for {device_b!r}"
            )
            self._give_up(message)
        except _actor_gone_errors(ray) as err:
            self._give_up(f"a split part could not start: {err}")

    @property
    def dynamic(self) -> bool:
        return False

    def _give_up(self, message: str) -> None:
        if self.fallback != "local":
            self.close()
            raise RuntimeError(message + "; or pass --fallback local to run on this machine")
        LOGGER.warning("%s; running the whole model locally (--fallback local)", message)
        self.close()
        self.fell_back = True

    def _run_local(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        if self._local is None:
            self._local = self.graph.part(0, len(self.graph.blocks))
        with torch.inference_mode():
            outputs = self._local(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return [t.numpy() for t in outputs]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fell_back:
            return self._run_local(batch)
        ray = self.ray
        start = time.perf_counter()
        ref_a = self.actors[0].run.remote(((batch,), {}))
        ref_b = self.actors[1].run.remote(ref_a)  # Ray moves A's output to B's node directly
        try:
            outputs, timings = ray.get(ref_b, timeout=self.call_timeout_s)
        except (*_actor_gone_errors(ray), ray.exceptions.GetTimeoutError) as err:
            which = self._dead_device()
            reason = (
                f"no answer within {self.call_timeout_s:.0f} s" if isinstance(err, ray.exceptions.GetTimeoutError)
                else f"actor or node died: {type(err).__name__}"
            )
            message = f"split run: the part on {which} is gone ({reason})"
            if self.fallback != "local":
                raise RuntimeError(message + "; pass --fallback local to finish on this machine") from None
            LOGGER.warning("%s; running the whole model locally from now on", message)
            self.close()
            self.fell_back = True
            return self._run_local(batch)
        timings["total_ms"] = (time.perf_counter() - start) * 1e3
        self.timings.append(timings)
        return list(outputs)

    def _dead_device(self) -> str:
        """Which device's actor no longer answers (both named when unsure)."""
        dead = []
        for actor, device in zip(self.actors, self.devices):
            try:
                self.ray.get(actor.ready.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - any failure means this part is unusable
                dead.append(device)
        return " and ".join(repr(d) for d in dead) or " or ".join(repr(d) for d in self.devices)

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                LOGGER.debug("split actor already gone", exc_info=True)
        self.actors = []


@dataclass
class SplitRunReport:
    """What ``run_split`` did: detections per frame and measured vs predicted latency."""

    cut: int
    after: str
    frames: int
    results: list[dict[str, Any]]
    measured_ms: dict[str, float]
    predicted_ms: float | None
    placement: list[dict[str, Any]]
    fell_back: bool
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary_lines(self) -> list[str]:
        m = self.measured_ms
        lines = [
            f"cut {self.cut} (after {self.after}): {self.frames} frame(s); network end to end median "
            f"{m.get('network_ms', float('nan')):.2f} ms (A {m.get('a_ms', float('nan')):.2f} + link "
            f"{m.get('transfer_ms', float('nan')):.2f} + B {m.get('b_ms', float('nan')):.2f} + Ray "
            f"{m.get('overhead_ms', float('nan')):.2f} ms)"
            + (f", predicted {self.predicted_ms:.2f} ms" if self.predicted_ms is not None else ""),
        ]
        for place, device in zip(self.placement, ("A", "B")):
            lines.append(f"  part {device} on {place.get('host')} node {str(place.get('node', ''))[:12]} pid {place.get('pid')}")
        if self.fell_back:
            lines.append("a device was lost: the run finished locally (--fallback local)")
        return lines


def run_split(
    source: str | os.PathLike,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    imgsz: int | None = None,
    cut: int | None = None,
    plan: SplitPlan | None = None,
    address: str | None = None,
    device_a: str = "device_a",
    device_b: str = "device_b",
    threads_a: int | None = None,
    threads_b: int | None = None,
    fallback: str = "error",
    bandwidth: float | str | None = None,
    latency: float | str = 0.0,
    conf: float = 0.25,
    iou: float = 0.45,
    max_frames: int | None = None,
    warmup: int = 2,
    ray_dashboard: bool = False,
) -> SplitRunReport:
    """Detect on ``source`` with the network split at ``cut`` (or ``plan.cut``) across two Ray
    nodes. ``address=None`` starts a local Ray with both custom resources on this machine (a
    simulation: give ``bandwidth`` to add the link delay). Returns per-frame detections and the
    measured median network latency beside the plan's prediction. The local Ray listens on
    127.0.0.1 only, with the dashboard and metrics export off unless ``ray_dashboard``."""
    from litedet.data.sources import open_source
    from litedet.distributed.cluster import connect_ray, shutdown_ray
    from litedet.engine.predictor import Predictor

    if cut is None and plan is None:
        raise ValueError("give --cut or a plan (--devices + --bandwidth)")
    if plan is not None:  # the plan names the model and size it was made for
        model = model or (plan.model if weights is None else None)
        imgsz = imgsz or plan.input_size[0]
    opened = open_source(source, max_frames=max_frames)
    network, size, name = build_model(model or "", weights, imgsz)
    if plan is not None and (plan.model != name or tuple(plan.input_size) != size):
        raise ValueError(f"the plan is for {plan.model}@{list(plan.input_size)}, not {name}@{list(size)}")
    graph = SplitGraph(network, size)
    chosen = graph.check_cut(plan.cut if cut is None else cut)
    bandwidth_b = parse_bandwidth(bandwidth) if bandwidth is not None else None
    latency_s = parse_latency(latency)
    ray, started = connect_ray(address, num_cpus=max(2, os.cpu_count() or 1), resources={device_a: 1, device_b: 1},
                               dashboard=ray_dashboard)
    backend: SplitBackend | None = None
    try:
        config = network.config if hasattr(network, "config") else None
        if config is None:
            raise ValueError(f"{name} has no detector config; split runs a litedet Detector")
        backend = SplitBackend(graph, config, chosen, device_a, device_b, threads_a, threads_b, fallback, bandwidth_b, latency_s)
        predictor = Predictor(backend, conf=conf, iou=iou)
        results = []
        start = time.perf_counter()
        frames = 0
        for index, frame in enumerate(opened):
            if max_frames is not None and index >= max_frames:
                break
            detections = predictor.predict([frame.image], [frame.source])[0]
            results.append(detections.to_json())
            frames += 1
        wall = time.perf_counter() - start
        timings = backend.timings[warmup:] if len(backend.timings) > warmup else backend.timings
        measured: dict[str, float] = {}
        if timings:
            compute = [t.get("compute_ms", [0.0, 0.0]) for t in timings]
            measured = {
                "network_ms": float(np.median([t["total_ms"] for t in timings])),
                "a_ms": float(np.median([c[0] for c in compute])),
                "b_ms": float(np.median([c[-1] for c in compute])),
                "transfer_ms": float(np.median([t.get("transfer_ms", 0.0) for t in timings])),
            }
            # what Ray itself adds: scheduling, serialisation, object transfer between the nodes
            measured["overhead_ms"] = measured["network_ms"] - measured["a_ms"] - measured["b_ms"] - measured["transfer_ms"]
        predicted = plan.candidates[chosen].total_ms if plan is not None else None
        after = "input" if chosen == 0 else graph.blocks[chosen - 1]
        return SplitRunReport(
            cut=chosen, after=after, frames=frames, results=results, measured_ms=measured, predicted_ms=predicted,
            placement=list(backend.placement), fell_back=backend.fell_back, wall_s=wall,
        )
    finally:
        opened.close()
        if backend is not None:
            backend.close()
        if started:
            shutdown_ray(ray)
