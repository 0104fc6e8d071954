"""Where ONNX Runtime spends a model's time: kernel milliseconds per run by operator type, from
ONNX Runtime's own profiler, for several ONNX files profiled alternately (round by round, so a
machine whose speed drifts moves them alike), at each thread count.

    python scripts/ort_op_profile.py v5lite-e=exports/model_uint8.onnx \
        yolov8n=runs/bench/cache/peers/yolov8n_320.onnx --threads 1,2 --rounds 3 --runs 200

For each thread count it prints each model's kernel time (median over rounds) split into convs,
data movement (Concat, Split, Slice, Reshape, Transpose and ONNX Runtime's NCHWc reorders) and the
rest, the largest operator types, and for every model after the first the ratio of its time to
the first model's: all kernels, convs only, and with the first model's data movement left out
(the most a graph rewrite that removes data movement could gain against it). Kernel time is what
the profiler records per node; it leaves out the gaps between nodes and any pre/post-processing,
so it is below the latency `litedet bench` reports. Inputs are random (uint8 or float32, as each
model's input asks); ``--json FILE`` writes the numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA_MOVEMENT = {"Concat", "Split", "Slice", "Reshape", "Transpose", "ReorderInput", "ReorderOutput"}


def profile(path: str, threads: int, runs: int) -> dict[str, float]:
    """Kernel ms per run by operator type, over ``runs`` runs after as many warm-up runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="litedet-ort-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        uint8 = "uint8" in spec.type
        image = (np.random.default_rng(0).random(shape) * (255 if uint8 else 1)).astype(np.uint8 if uint8 else np.float32)
        for _ in range(runs):  # warm-up: allocations, thread pool; recorded, and dropped below by time order
            session.run(None, {spec.name: image})
        for _ in range(runs):
            session.run(None, {spec.name: image})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    nodes.sort(key=lambda e: e["ts"])
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in nodes[len(nodes) // 2:]:  # the second half: the timed runs
        per_op[event["args"]["op_name"]] += event["dur"] / runs / 1000.0
    return dict(per_op)


def split(per_op: dict[str, float]) -> dict[str, float]:
    total = sum(per_op.values())
    conv = sum(v for k, v in per_op.items() if "Conv" in k)
    movement = sum(v for k, v in per_op.items() if k in DATA_MOVEMENT)
    return {"total": total, "conv": conv, "movement": movement, "other": total - conv - movement}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=FILE.onnx", help="models to profile; the first is the reference")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma separated (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per thread count (default 3)")
    parser.add_argument("--runs", type=int, default=200, help="profiled runs per model and round (default 200)")
    parser.add_argument("--top", type=int, default=6, help="operator types listed per model (default 6)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    models = []
    for item in args.models:
        name, _, path = item.rpartition("=")
        if not Path(path).is_file():
            parser.error(f"{path}: no such ONNX file")
        models.append((name or Path(path).stem, path))
    out: dict[str, dict] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _ in models}
        for _ in range(args.rounds):
            for name, path in models:
                rounds[name].append(profile(path, threads, args.runs))
        summary = {}
        for name, _ in models:
            ops = sorted({op for r in rounds[name] for op in r})
            median_ops = {op: float(np.median([r.get(op, 0.0) for r in rounds[name]])) for op in ops}
            parts = {k: float(np.median([split(r)[k] for r in rounds[name]])) for k in ("total", "conv", "movement", "other")}
            summary[name] = {"per_op_ms": median_ops, **{f"{k}_ms": v for k, v in parts.items()}}
        reference = models[0][0]
        ref = summary[reference]
        print(f"{threads} thread(s), kernel ms per run (median of {args.rounds} rounds of {args.runs} runs):")
        for name, _ in models:
            row = summary[name]
            top = sorted(row["per_op_ms"].items(), key=lambda kv: -kv[1])[: args.top]
            print(f"  {name}: {row['total_ms']:.2f} ms = conv {row['conv_ms']:.2f} + data movement "
                  f"{row['movement_ms']:.2f} + other {row['other_ms']:.2f}; "
                  + ", ".join(f"{op} {ms:.2f}" for op, ms in top))
            if name != reference:
                row["vs_reference"] = {
                    "all": row["total_ms"] / ref["total_ms"],
                    "conv": row["conv_ms"] / ref["conv_ms"] if ref["conv_ms"] else None,
                    "reference_without_movement": row["total_ms"] / (ref["total_ms"] - ref["movement_ms"]),
                }
                ratio = row["vs_reference"]
                print(f"    {name} / {reference}: {ratio['all']:.2f}x all kernels, "
                      f"{ratio['conv']:.2f}x convs only, {ratio['reference_without_movement']:.2f}x with "
                      f"{reference}'s data movement left out")
        out[str(threads)] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
