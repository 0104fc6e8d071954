"""`litedet bench`: latency, throughput, memory and energy on this device, beside peers;
`litedet bench guidelines`: the ShuffleNetV2 G1-G4 experiments and two seed comparisons."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", nargs="?", choices=("run", "guidelines"), default="run",
                        help="run (default): benchmark models and peers; guidelines: ShuffleNetV2 §2 experiments")
    parser.add_argument("--models", default="v5lite-e", help="comma-separated registry names (litedet models), NAME@SIZE to pin one size; '' for none")
    parser.add_argument("--engines", default="torch,onnxruntime,openvino,ncnn", help="comma-separated engines")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--imgsz", default="320", help="comma-separated input sizes (square)")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes (throughput)")
    parser.add_argument("--peers", default="", help="comma-separated peers: yolov8n, yolo11n, ssdlite, v5lite-ncnn, "
                        "nanodet-plus, fastestdet, yolo-fastestv2 (absent ones are skipped with a note)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time letterbox + inference + decode + NMS on coco256 val images")
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                        help="use a checkpoint instead of random weights for MODEL, or time an engine file as it is (.onnx, OpenVINO .xml, ncnn .param with its sidecar, e.g. a quantized or pruned model) on its own engine (repeatable)")
    parser.add_argument("--out", default=None, help="output folder (default runs/bench, runs/bench/guidelines)")
    parser.add_argument("--cache", default=None, help="export cache folder, reused across runs (default runs/bench/cache)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list, last")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per configuration after warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs per configuration")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per interleaved group; stops early (at least 10 runs each) when spent")
    parser.add_argument("--map", dest="map_results", default=None, metavar="RESULTS.JSON",
                        help="accuracy per model for the Pareto plot: [{model, engine?, imgsz?, map50_95, map50?}]")
    parser.add_argument("--load-threshold", type=float, default=25.0,
                        help="%% of the machine other processes may use before a figure is re-measured/flagged")
    parser.add_argument("--max-attempts", type=int, default=2,
                        help="measurements per configuration while disturbed (1: flag only, never repeat)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for GPU figures (torch engine)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="torch engine precision (autocast); exported engines run fp32")
    parser.add_argument("--quick", action="store_true", help="guidelines: x1 channels only, 20 runs each")


def _weights(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--weights expects MODEL=PATH, got {pair!r}")
        name, path = pair.split("=", 1)
        mapping[name] = path
    return mapping


def run(args: argparse.Namespace) -> int:
    if args.mode == "guidelines":
        from litedet.bench.api import run_guidelines
        from litedet.bench.guidelines import guidelines_markdown

        threads = [int(t) for t in str(args.threads).split(",") if t]
        report = run_guidelines(
            out_dir=args.out or "runs/bench/guidelines", quick=args.quick, device=args.device,
            threads=max(threads) if threads else None, min_runs=args.runs, budget_s=args.budget,
            progress=lambda title: print(f"... {title}", file=sys.stderr, flush=True),
        )
        print(guidelines_markdown(report))
        if args.json:
            print(json.dumps(report.to_dict()))
        return 0

    from litedet.bench.api import benchmark
    from litedet.bench.report import load_map_results, markdown_report

    map_results = load_map_results(args.map_results) if args.map_results else None
    result = benchmark(
        models=args.models, engines=args.engines, threads=args.threads, imgsz=args.imgsz, batch=args.batch,
        peers=args.peers, end_to_end=args.end_to_end, out_dir=args.out or "runs/bench", runs=args.runs,
        budget_s=args.budget, warmup=args.warmup, weights=_weights(args.weights), map_results=map_results,
        load_threshold=args.load_threshold, max_attempts=args.max_attempts, device=args.device,
        precision=args.precision,
        command=" ".join(shlex.quote(a) for a in ["litedet", *sys.argv[1:]]), cache_dir=args.cache,
    )
    print(markdown_report(result.rows, result.machine, result.notes))
    for name, path in result.paths.items():
        print(f"{name}: {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.rows, default=str))
    return 0
