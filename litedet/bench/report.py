"""Benchmark output: a Markdown report, JSON, and PNG plots (matplotlib, Agg backend).

Rows are the dicts ``litedet.bench.run.run_benchmark`` returns (see ``ROW_KEYS``). Accuracy for
the Pareto plot comes from a JSON file (``--map results.json``): a list of objects

    [{"model": "v5lite-e", "engine": "onnxruntime", "imgsz": 320, "map50_95": 0.275, "map50": 0.445}, ...]

``model`` and ``map50_95`` are required; ``map50``, ``engine``, ``imgsz`` and ``kind`` are optional.
``model`` matches a row's model or its variant (``v5lite-e`` matches the published build listed
under the peer ``v5lite-ncnn``); ``kind`` ("litedet" or "peer") tells the two apart. An entry
without ``engine`` applies to every engine (accuracy barely moves between engines in fp32); an
entry without ``imgsz`` applies to every input size.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from litedet.bench.harness import paired_ratio
from litedet.config import write_text_atomic

logger = logging.getLogger(__name__)

# Keys every row carries (``--json`` prints rows with at least these).
REQUIRED_KEYS = ("model", "engine", "threads", "imgsz", "batch", "median_ms", "p90_ms", "gflops", "params")
ROW_KEYS = REQUIRED_KEYS + (
    "streams", "variant", "kind", "mode", "precision", "mean_ms", "std_ms", "n", "images_per_s", "mac_m", "activation_mb",
    "achieved_gflops", "peak_share", "other_load", "steal", "disturbed", "attempts", "energy_mj_per_image",
    "energy_source", "source", "notes",
)


def validate_rows(rows: Iterable[dict[str, Any]]) -> None:
    """Raise ValueError naming the first row that lacks a required key."""
    for index, row in enumerate(rows):
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ValueError(f"benchmark row {index} ({row.get('model', '?')}) lacks {missing}")


def load_map_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and check an accuracy file for the Pareto plot (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mAP results file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{model, map50_95, ...}} objects, got {type(data).__name__}")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or "model" not in entry or "map50_95" not in entry:
            raise ValueError(f"{path}: entry {index} needs at least 'model' and 'map50_95', got {entry!r}")
        value = entry["map50_95"]
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{path}: entry {index} map50_95 must be a fraction in [0, 1], got {value!r}")
    return data


def attach_accuracy(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows joined with the accuracy entry that matches their model (variant), engine and size."""
    joined = []
    for row in rows:
        names = {row["model"], row.get("variant") or row["model"]}
        for entry in results:
            if entry["model"] not in names:
                continue
            if "engine" in entry and entry["engine"] != row["engine"]:
                continue
            if "imgsz" in entry and int(entry["imgsz"]) != int(row["imgsz"]):
                continue
            if "kind" in entry and entry["kind"] != row.get("kind"):
                continue
            joined.append({**row, "map50_95": entry["map50_95"], "map50": entry.get("map50")})
            break
    return joined


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points (latency, accuracy) not beaten by another that is both faster (or as
    fast) and at least as accurate, sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for index in order:
        if points[index][1] > best:
            front.append(index)
            best = points[index][1]
    return front


# --------------------------------------------------------------------------- Markdown


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _label(row: dict[str, Any]) -> str:
    variant = row.get("variant")
    name = row["model"] if not variant or variant == row["model"] else f"{row['model']} ({variant})"
    return f"{name} @{row['imgsz']}"


def _streams(row: dict[str, Any]) -> int:
    return int(row.get("streams", 1))


def _single(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one engine copy (latency figures); stream rows are throughput figures."""
    return [r for r in rows if _streams(r) == 1]


def rows_table(rows: Sequence[dict[str, Any]]) -> str:
    """Every row with every measured figure (a stream row's ms are per call of ``streams`` images,
    its ``thr`` the threads all copies share)."""
    header = ("| model | engine | thr | streams | batch | mode | params M | GFLOPs | MAC M | act MB | median ms | p90 ms | "
              "img/s | GFLOP/s | % peak | load % | mJ/img |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for row in rows:
        params = row.get("params")
        lines.append(
            f"| {_label(row)} | {row['engine']} | {row['threads']} | {_streams(row)} | {row['batch']} | {row.get('mode', 'network')} | "
            f"{_fmt(None if params is None else params / 1e6)} | {_fmt(row.get('gflops'), '.3f')} | "
            f"{_fmt(row.get('mac_m'), '.1f')} | {_fmt(row.get('activation_mb'), '.1f')} | {_fmt(row['median_ms'])} | "
            f"{_fmt(row['p90_ms'])} | {_fmt(row.get('images_per_s'), '.1f')} | {_fmt(row.get('achieved_gflops'), '.1f')} | "
            f"{_fmt(None if row.get('peak_share') is None else 100 * row['peak_share'], '.1f')} | "
            f"{_fmt(row.get('other_load'), '.0f')}{'!' if row.get('disturbed') else ''} | "
            f"{_fmt(row.get('energy_mj_per_image'), '.1f')} |"
        )
    return "\n".join(lines)


def pivot_table(rows: Sequence[dict[str, Any]], mode: str, threads: int, batch: int = 1, streams: int = 1) -> str:
    """Median ms with model@size down and engine across (BENCHMARKS.md's layout), for one mode,
    thread count, batch and number of streams."""
    chosen = [r for r in rows if r.get("mode", "network") == mode and r["threads"] == threads and r["batch"] == batch
              and _streams(r) == streams]
    if not chosen:
        return ""
    engines = [e for e in ("torch", "onnxruntime", "openvino", "ncnn") if any(r["engine"] == e for r in chosen)]
    engines += sorted({r["engine"] for r in chosen} - set(engines))
    cells: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    info: dict[str, dict[str, Any]] = {}
    for row in chosen:
        cells[_label(row)][row["engine"]] = row
        info.setdefault(_label(row), row)
    lines = ["| model | params M | GFLOPs | " + " | ".join(engines) + " |",
             "|---" * (3 + len(engines)) + "|"]
    for label, by_engine in cells.items():
        params = info[label].get("params")
        entries = []
        for engine in engines:
            row = by_engine.get(engine)
            entries.append("" if row is None else f"{row['median_ms']:.2f}{'!' if row.get('disturbed') else ''}")
        lines.append(f"| {label} | {_fmt(None if params is None else params / 1e6)} | {_fmt(info[label].get('gflops'), '.3f')} | "
                     + " | ".join(entries) + " |")
    return "\n".join(lines)


def stage_table(rows: Sequence[dict[str, Any]]) -> str:
    """Pre/post ms of every end-to-end row that has them, beside its network median; '' if none.
    End to end - network is compared round by round where both rows have rounds
    (``litedet.bench.harness.paired_ratio``), else as the difference of the two medians."""
    rows = _single(rows)
    network = {(r["model"], r["variant"], r["engine"], r["threads"], r["imgsz"], r.get("precision")): r
               for r in rows if r.get("mode", "network") == "network" and r["batch"] == 1}
    lines = []
    for r in rows:
        if r.get("mode") != "end-to-end" or r.get("pre_ms") is None or r.get("post_ms") is None:
            continue
        net_row = network.get((r["model"], r["variant"], r["engine"], r["threads"], r["imgsz"], r.get("precision")))
        net = net_row["median_ms"] if net_row else None
        share = "—" if not net else f"{100 * (r['pre_ms'] + r['post_ms']) / net:.1f} %"
        paired = paired_ratio(r.get("rounds") or [], net_row.get("rounds") or []) if net_row else None
        if paired is not None:
            gap = f"{100 * (paired['ratio'] - 1):.1f} %"
        else:
            gap = "—" if not net else f"{100 * (r['median_ms'] - net) / net:.1f} % (medians)"
        lines.append(f"| {_label(r)} | {r['engine']} | {r['threads']} | {r['pre_ms']:.2f} | {r['post_ms']:.2f} | "
                     f"{'—' if not net else f'{net:.2f}'} | {share} | {r['median_ms']:.2f} | {gap} |")
    if not lines:
        return ""
    head = ["| model | engine | thr | pre ms | post ms | network ms | share | end-to-end ms | end-to-end - network |",
            "|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + lines)


def peer_pairs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every litedet row beside every peer row measured alike (engine, threads, input size,
    batch 1, one copy, mode, precision): ``ratio`` = the peer's time / the litedet model's,
    compared round by round (``litedet.bench.harness.paired_ratio``: ``low``/``high`` are its
    10th/90th percentiles over the rounds), or the ratio of the two medians (``paired`` False)
    where they share too few rounds; ``flops_ratio`` = the peer's GFLOPs / the litedet model's."""
    def key(row: dict[str, Any]) -> tuple:
        return (row["engine"], row["threads"], row["imgsz"], row.get("mode", "network"), row.get("precision"))

    chosen = [r for r in _single(rows) if r["batch"] == 1]
    peers = defaultdict(list)
    for row in chosen:
        if row.get("kind") == "peer":
            peers[key(row)].append(row)
    pairs = []
    for ours in chosen:
        if ours.get("kind") != "litedet":
            continue
        for theirs in peers.get(key(ours), []):
            paired = paired_ratio(theirs.get("rounds") or [], ours.get("rounds") or [])
            if paired is None:
                if not ours["median_ms"]:
                    continue
                paired = {"ratio": theirs["median_ms"] / ours["median_ms"], "low": None, "high": None, "rounds": 0}
            flops = (theirs["gflops"] / ours["gflops"]) if theirs.get("gflops") and ours.get("gflops") else None
            pairs.append({"litedet": _label(ours), "peer": _label(theirs), "engine": ours["engine"],
                          "threads": ours["threads"], "mode": ours.get("mode", "network"),
                          "litedet_ms": ours["median_ms"], "peer_ms": theirs["median_ms"],
                          "paired": bool(paired["rounds"]), "flops_ratio": flops, **paired,
                          "disturbed": bool(ours.get("disturbed") or theirs.get("disturbed"))})
    return pairs


SWING_NOTE = "the machine's speed changed during the run"


def speed_swing_notes(rows: Sequence[dict[str, Any]], swing: float = 1.3) -> list[str]:
    """A note when the machine's speed changed during the run while other processes left it
    alone: the quickest and slowest round medians of a configuration (``rounds``, at least 4)
    more than ``swing`` apart, undisturbed, in at least half of the configurations. Such a
    machine (a shared VM's cores) mixes fast and slow stretches into every median; the
    round-by-round ratios hold."""
    spreads = []
    for row in rows:
        medians = [ms for _, ms in row.get("rounds") or [] if ms > 0]
        if len(medians) >= 4 and not row.get("disturbed"):
            spreads.append((max(medians) / min(medians), row, min(medians), max(medians)))
    swung = [entry for entry in spreads if entry[0] > swing]
    if not spreads or 2 * len(swung) < len(spreads):
        return []
    _, row, low, high = max(swung, key=lambda entry: entry[0])
    return [f"{SWING_NOTE} with other processes idle: in {len(swung)} of "
            f"{len(spreads)} configurations the slowest round took over {swing:.1f}x the quickest (most: "
            f"{_label(row)} {row['engine']} {row['threads']} thr {row.get('mode', 'network')}, {low:.2f}-{high:.2f} ms "
            f"per round); medians mix fast and slow stretches, so compare the round-by-round ratios "
            f"(side by side with the peers, end to end - network) rather than two medians"]


def peer_table(rows: Sequence[dict[str, Any]]) -> str:
    """The ``peer_pairs`` as a Markdown table; '' when the run has no litedet row beside a peer."""
    pairs = peer_pairs(rows)
    if not pairs:
        return ""
    lines = ["| litedet | peer | engine | thr | mode | litedet ms | peer ms | peer / litedet time | p10–p90 of rounds | "
             "FLOPs peer / litedet |", "|---" * 10 + "|"]
    for pair in pairs:
        spread = (f"{pair['low']:.2f}–{pair['high']:.2f} ({pair['rounds']} rounds)" if pair["paired"]
                  else "medians (no shared rounds)")
        lines.append(f"| {pair['litedet']} | {pair['peer']} | {pair['engine']} | {pair['threads']} | {pair['mode']} | "
                     f"{pair['litedet_ms']:.2f} | {pair['peer_ms']:.2f} | "
                     f"{pair['ratio']:.2f}x{'!' if pair['disturbed'] else ''} | {spread} | "
                     f"{_fmt(pair['flops_ratio'])}{'x' if pair['flops_ratio'] else ''} |")
    return "\n".join(lines)


def _throughput_grid(rows: Sequence[dict[str, Any]]) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]], dict[tuple, dict[str, Any]]]:
    """Batch-1 rows as (columns (mode, streams, threads), row keys (model@size, engine), cells);
    no columns when the run has no stream rows."""
    chosen = [r for r in rows if r["batch"] == 1]
    if not any(_streams(r) > 1 for r in chosen):
        return [], [], {}
    columns = sorted({(r.get("mode", "network"), _streams(r), r["threads"]) for r in chosen},
                     key=lambda c: (c[0] != "network", c[0], c[1] * c[2], c[1]))
    keys = list(dict.fromkeys((_label(r), r["engine"]) for r in chosen))
    cells = {(_label(r), r["engine"], r.get("mode", "network"), _streams(r), r["threads"]): r for r in chosen}
    return columns, keys, cells


def _images_per_s(row: dict[str, Any] | None) -> str:
    if row is None or row.get("images_per_s") is None:
        return ""
    return f"{row['images_per_s']:.1f}{'!' if row.get('disturbed') else ''}"


def throughput_table(rows: Sequence[dict[str, Any]]) -> str:
    """Images/s at batch 1, model@size and engine down, (mode, streams x threads) across; '' when
    the run has no stream rows."""
    columns, keys, cells = _throughput_grid(rows)
    if not columns:
        return ""
    titles = [f"{mode} {threads} thr" + (f" {streams} streams" if streams > 1 else "") for mode, streams, threads in columns]
    lines = ["| model | engine | " + " | ".join(titles) + " |", "|---" * (2 + len(titles)) + "|"]
    for label, engine in keys:
        values = [_images_per_s(cells.get((label, engine, *column))) for column in columns]
        lines.append(f"| {label} | {engine} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def markdown_report(rows: Sequence[dict[str, Any]], machine: dict[str, Any] | None = None,
                    notes: Sequence[str] = (), command: str | None = None) -> str:
    """The whole report: machine, pivot tables per mode/threads/batch, then every row."""
    lines = ["# litedet bench", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if machine:
        peaks = ", ".join(f"{t} thr {v} GFLOP/s" for t, v in machine.get("peak_gflops", {}).items())
        engines = ", ".join(f"{k} {v}" for k, v in machine.get("engines", {}).items())
        lines += [f"Machine: {machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} logical CPUs; "
                  f"measured fp32 peak ({machine.get('peak_method', '')}): {peaks or 'not measured'}.",
                  f"Engines: {engines}." + (f" litedet post-processing: {machine['postprocess']}."
                                            if machine.get("postprocess") else ""), ""]
    lines += ["Median ms after warm-up, configurations interleaved in rounds. `!` marks a figure measured while "
              "other processes used more of the machine than the threshold (`load %`). GFLOPs = 2 x multiply-adds.", ""]
    combos = sorted({(r.get("mode", "network"), r["threads"], r["batch"], _streams(r)) for r in rows},
                    key=lambda c: (c[0] != "network", c[3], -c[1], c[2]))
    for mode, threads, batch, streams in combos:
        title = f"## {mode}, {threads} thread{'s' if threads > 1 else ''}, batch {batch} (median ms)"
        if streams > 1:
            title = (f"## {mode}, {threads} threads in {streams} streams, batch {batch} "
                     f"(median ms per call: {streams} engine copies of {threads // streams} thread"
                     f"{'s' if threads // streams > 1 else ''} side by side, one input each)")
        lines += [title, "", pivot_table(rows, mode, threads, batch, streams), ""]
    throughput = throughput_table(rows)
    if throughput:
        lines += ["## Throughput: images/s of one engine copy and of copies side by side (batch 1)", "",
                  "`T thr N streams`: N engine copies sharing T threads (T // N each), every copy on its own input "
                  "at the same time, as `litedet detect --threads T --streams N` runs a video; images/s counts all "
                  "of them.", "", throughput, ""]
    stages = stage_table(rows)
    if stages:
        lines += ["## Pre- and post-processing of litedet models (median ms per image)", "",
                  "Measured inside each end-to-end call: pre = letterbox into the engine's input, post = decode + NMS "
                  "+ boxes back to the image; share = (pre + post) / the network median of the same row; end to end "
                  "- network is the median of the rounds' own (end to end / network - 1), both timed in each round.", "",
                  stages, ""]
    peers = peer_table(rows)
    if peers:
        lines += ["## Side by side with the peers", "",
                  "How many times longer each peer took than the litedet model measured alike (same engine, threads "
                  "and input size; batch 1). Each round of the run times both; the ratio is the median of the "
                  "rounds' ratios, so a machine whose speed changes between stretches of seconds moves both alike. "
                  "The FLOPs ratio is what the ratio would be if time followed the FLOPs.", "", peers, ""]
    lines += ["## All figures", "", rows_table(rows), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def terminal_summary(rows: Sequence[dict[str, Any]], notes: Sequence[str] = (),
                     paths: dict[str, Path] | None = None) -> str:
    """A few lines for the terminal: median ms at batch 1, model@size x engine down, mode and
    thread count across (``!`` = disturbed), how many figures were disturbed, and where the full
    report is; with stream rows, also images/s of one copy and of copies side by side.
    ``markdown_report`` has every figure."""
    chosen = _single(r for r in rows if r["batch"] == 1) or _single(rows)
    columns = sorted({(r.get("mode", "network"), r["threads"]) for r in chosen}, key=lambda c: (c[0] != "network", c[1]))
    keys = list(dict.fromkeys((_label(r), r["engine"]) for r in chosen))
    cells = {(_label(r), r["engine"], r.get("mode", "network"), r["threads"]): r for r in chosen}
    titles = [f"{threads} thr" if mode == "network" else f"{mode} {threads} thr" for mode, threads in columns]
    width = max([len("model") + 2] + [len(label) for label, _ in keys])
    engine_width = max([len("engine")] + [len(engine) for _, engine in keys])
    lines = []
    if chosen:
        lines += [f"median ms, batch 1 ({len(rows)} figures):",
                  f"{'model':<{width}}  {'engine':<{engine_width}}  " + "  ".join(f"{t:>9}" for t in titles)]
    for label, engine in keys:
        values = []
        for (mode, threads), title in zip(columns, titles):
            row = cells.get((label, engine, mode, threads))
            text = "" if row is None else f"{row['median_ms']:.2f}{'!' if row.get('disturbed') else ''}"
            values.append(f"{text:>{max(9, len(title))}}")
        lines.append(f"{label:<{width}}  {engine:<{engine_width}}  " + "  ".join(values))
    columns3, keys3, cells3 = _throughput_grid(rows)
    if columns3:
        titles3 = [f"{'' if mode == 'network' else 'e2e '}{threads}thr" + (f" {streams}str" if streams > 1 else "")
                   for mode, streams, threads in columns3]
        width3 = max([len("model") + 2] + [len(label) for label, _ in keys3])
        engine_width = max([engine_width] + [len(engine) for _, engine in keys3])
        lines += ["images/s, batch 1 (T thr N str: N engine copies sharing T threads, side by side):",
                  f"{'model':<{width3}}  {'engine':<{engine_width}}  " + "  ".join(f"{t:>9}" for t in titles3)]
        for label, engine in keys3:
            values = [f"{_images_per_s(cells3.get((label, engine, *column))):>{max(9, len(title))}}"
                      for column, title in zip(columns3, titles3)]
            lines.append(f"{label:<{width3}}  {engine:<{engine_width}}  " + "  ".join(values))
    lines += _terminal_pairs(rows)
    disturbed = sum(1 for r in rows if r.get("disturbed"))
    if disturbed:
        lines.append(f"{disturbed} figure(s) marked ! were measured while other processes used the machine "
                     f"(load check); re-run them on a quiet machine before quoting them")
    lines += [f"note: {note}" for note in notes if note.startswith(SWING_NOTE)]
    if notes:
        lines.append(f"{len(notes)} note(s) in the report (skipped peers, engine caveats)")
    if paths:
        report = paths.get("markdown")
        plots = [p.name for key, p in paths.items() if key.endswith("_png")]
        if report is not None:
            lines.append(f"full tables: {report}" + (f"; plots: {', '.join(plots)}" if plots else ""))
    return "\n".join(lines)


def _terminal_pairs(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Peer time / litedet time (``peer_pairs``) of end to end, or of the network when the run
    timed no end to end: pairs down, engine and threads across."""
    pairs = peer_pairs(rows)
    mode = "end-to-end" if any(p["mode"] == "end-to-end" for p in pairs) else "network"
    pairs = [p for p in pairs if p["mode"] == mode]
    if not pairs:
        return []
    columns = list(dict.fromkeys((p["engine"], p["threads"]) for p in pairs))
    names = list(dict.fromkeys((p["peer"], p["litedet"]) for p in pairs))
    cells = {(p["peer"], p["litedet"], p["engine"], p["threads"]): p for p in pairs}
    flops = {(p["peer"], p["litedet"]): p["flops_ratio"] for p in pairs}
    titles = [f"{engine} {threads}thr" for engine, threads in columns]
    labels = [f"{peer} / {ours}" for peer, ours in names]
    width = max([len("peer / litedet")] + [len(label) for label in labels])
    paired = [p["paired"] for p in pairs]
    how = ("median of per-round ratios" if all(paired) else "ratio of the medians: too few shared rounds"
           if not any(paired) else "median of per-round ratios; ratio of the medians where too few rounds were shared")
    lines = [f"peer time / litedet time, {mode}, batch 1 ({how}):",
             f"{'peer / litedet':<{width}}  {'FLOPs':>6}  " + "  ".join(f"{t:>{max(9, len(t))}}" for t in titles)]
    for (peer, ours), label in zip(names, labels):
        ratio = flops[(peer, ours)]
        values = []
        for column, title in zip(columns, titles):
            pair = cells.get((peer, ours, *column))
            text = "" if pair is None else f"{pair['ratio']:.2f}x{'!' if pair['disturbed'] else ''}"
            values.append(f"{text:>{max(9, len(title))}}")
        lines.append(f"{label:<{width}}  {'' if ratio is None else f'{ratio:.2f}x':>6}  " + "  ".join(values))
    return lines


# --------------------------------------------------------------------------- plots


def plot_limit(values: Sequence[float], disturbed: Sequence[bool], margin: float = 1.25) -> float | None:
    """Upper axis limit for latency bars: ``margin`` x the largest undisturbed value, so that one
    disturbed figure (e.g. 446 ms among 10 ms ones) does not squash the rest; None (automatic)
    when nothing is disturbed or every figure is."""
    quiet = [v for v, d in zip(values, disturbed) if not d]
    if not quiet or len(quiet) == len(values) or max(values) <= max(quiet) * margin:
        return None
    return max(quiet) * margin


def plot_latency(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Grouped bars: median latency by model@size (x) and engine (bars), one panel per
    mode x threads (batch 1 rows; other batches are in the tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["batch"] == 1] or list(rows)
    panels = sorted({(r.get("mode", "network"), r["threads"]) for r in chosen}, key=lambda p: (p[0] != "network", p[1]))
    labels = list(dict.fromkeys(_label(r) for r in chosen))
    engines = list(dict.fromkeys(r["engine"] for r in chosen))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.2 * len(labels) + 2), 3.2 * len(panels)), squeeze=False)
    width = 0.8 / max(1, len(engines))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_disturbed = False
    for ax, (mode, threads) in zip(axes[:, 0], panels):
        panel_rows = [r for r in chosen if r["threads"] == threads and r.get("mode", "network") == mode]
        limit = plot_limit([r["median_ms"] for r in panel_rows], [bool(r.get("disturbed")) for r in panel_rows])
        for e_index, engine in enumerate(engines):
            xs, ys, flags = [], [], []
            for l_index, label in enumerate(labels):
                for row in panel_rows:
                    if _label(row) == label and row["engine"] == engine:
                        xs.append(l_index + (e_index - (len(engines) - 1) / 2) * width)
                        ys.append(row["median_ms"])
                        flags.append(bool(row.get("disturbed")))
            if not xs:
                continue
            colour = colours[e_index % len(colours)]
            shown = [min(y, limit) if limit else y for y in ys]
            bars = ax.bar(xs, shown, width=width, label=engine, color=colour)
            for bar, y, flag in zip(bars, ys, flags):
                if flag:  # disturbed: hatched and pale, its value written on it
                    any_disturbed = True
                    bar.set_alpha(0.35)
                    bar.set_hatch("//")
                if flag or (limit and y > limit):
                    ax.annotate(f"{y:.3g}{'!' if flag else ''}{' ^' if limit and y > limit else ''}",
                                (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                                fontsize=6)
        if limit:
            ax.set_ylim(0, limit * 1.08)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("median ms")
        ax.set_title(f"{mode}, {threads} thread{'s' if threads > 1 else ''}, batch 1")
        ax.legend(fontsize=7)
    if any_disturbed:
        fig.text(0.01, 0.005, "hatched, !: measured under other load (disturbed); ^: beyond the axis, value written",
                 fontsize=7)
    fig.tight_layout(rect=(0, 0.04 if any_disturbed else 0, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], path: str | os.PathLike,
                mode: str = "network") -> Path | None:
    """Accuracy (mAP50-95) against median latency for each model x engine at batch 1, the
    Pareto front drawn as a step line; one marker per thread count. None when nothing matches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates = [r for r in rows if r["batch"] == 1 and r.get("mode", "network") == mode]
    joined = attach_accuracy(candidates, results)
    if not joined:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {1: "o", 2: "s", 4: "^", 8: "D"}
    for row in joined:
        disturbed = bool(row.get("disturbed"))  # drawn hollow and left out of the front
        ax.scatter(row["median_ms"], row["map50_95"], marker=markers.get(row["threads"], "x"),
                   facecolors="none" if disturbed else None, edgecolors="grey" if disturbed else None)
        ax.annotate(f"{_label(row)} {row['engine']} {row['threads']}t{' (disturbed)' if disturbed else ''}",
                    (row["median_ms"], row["map50_95"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    quiet = [r for r in joined if not r.get("disturbed")]
    for threads in sorted({r["threads"] for r in quiet}):
        group = [r for r in quiet if r["threads"] == threads]
        front = pareto_front([(r["median_ms"], r["map50_95"]) for r in group])
        xs = [group[i]["median_ms"] for i in front]
        ys = [group[i]["map50_95"] for i in front]
        ax.step(xs, ys, where="post", linewidth=1, label=f"Pareto front, {threads} thread{'s' if threads > 1 else ''}")
    ax.set_xlabel(f"median latency, ms ({mode}, batch 1)")
    ax.set_ylabel("mAP50-95")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, machine: dict[str, Any] | None = None,
                 notes: Sequence[str] = (), map_results: Sequence[dict[str, Any]] | None = None,
                 command: str | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``results.json`` (rows + machine + notes) and the PNG plots (when
    matplotlib is installed: a device with only the runtime extras gets the tables alone)."""
    validate_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"markdown": out / "report.md", "json": out / "results.json"}
    write_text_atomic(paths["markdown"], markdown_report(rows, machine, notes, command))
    payload = {"machine": machine or {}, "notes": list(notes), "command": command, "rows": list(rows)}
    write_text_atomic(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")
    if importlib.util.find_spec("matplotlib") is None:
        logger.warning("no PNG plots: matplotlib is not installed (pip install matplotlib); %s has every figure",
                       paths["markdown"])
        return paths
    single = _single(rows)  # latency plots: one engine copy per figure
    if single:
        paths["latency_png"] = plot_latency(single, out / "latency.png")
    if map_results:
        for mode in ("network", "end-to-end"):
            pareto = plot_pareto(single, map_results, out / f"pareto_{mode}.png", mode)
            if pareto is not None:
                paths[f"pareto_{mode}_png"] = pareto
    return paths
