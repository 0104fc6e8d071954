"""`litedet tune`: the most accurate configuration (checkpoint x size x engine x precision x
threads) that meets a latency budget, measured on this device beside published peers."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", nargs="+", required=True, metavar="W",
                        help="litedet checkpoints (.safetensors + sidecar; `litedet import` makes them from published ncnn files)")
    parser.add_argument("--data", help="dataset YAML: its val split is scored, its train split calibrates INT8")
    parser.add_argument("--images", help="folder of the validation images (with --annotations)")
    parser.add_argument("--annotations", help="COCO instances json of the validation images")
    parser.add_argument("--calib", help="calibration images for INT8 (default: the --data train split)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", type=float, help="end-to-end latency budget, milliseconds per image")
    budget.add_argument("--min-fps", type=float, help="the budget as frames per second (1000 / FPS ms)")
    budget.add_argument("--budget-peer", metavar="PEER_BUILD",
                        help="the budget is this peer build's latency measured in the same run, e.g. nanodet-plus-m-416")
    parser.add_argument("--imgsz", default="320:512:32",
                        help="input sizes: START:STOP:STEP (stop included) and/or a comma list (default 320:512:32)")
    parser.add_argument("--engines", default="onnxruntime,openvino,ncnn", help="comma-separated engines (default onnxruntime,openvino,ncnn)")
    parser.add_argument("--precisions", default="fp32,bf16,int8",
                        help="fp32, bf16 (OpenVINO/torch, where the CPU has it), int8 (ONNX Runtime static, calibrated) "
                             "(default fp32,bf16,int8)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: every core)")
    parser.add_argument("--peers", default="nanodet-plus,v5lite-ncnn",
                        help="published peers measured as reference points ('' for none; default nanodet-plus,v5lite-ncnn)")
    parser.add_argument("--out", default="runs/tune", help="output folder: report.md, front.json, pareto.png, best/, cache/ (default runs/tune)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per candidate after warm-up (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs per candidate (default 10)")
    parser.add_argument("--latency-budget", type=float, metavar="SECONDS",
                        help="cap on the interleaved timing (each timing attempt); stops early once spent, at least 10 runs each "
                             "(default: no cap)")
    parser.add_argument("--max-attempts", type=int, default=2,
                        help="timings per candidate while other processes disturb it (1: flag only, never repeat; default 2)")
    parser.add_argument("--whole-front", action="store_true",
                        help="also score front candidates over the budget (the whole Pareto front)")
    parser.add_argument("--remeasure", action="store_true", help="re-time every candidate instead of reusing cached latencies")
    parser.add_argument("--val-limit", type=int, help="score only the first N validation images (quick looks; default: all)")
    parser.add_argument("--load-threshold", type=float, default=25.0,
                        help="%% of the machine other processes may use before a timing is repeated/flagged (default 25)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print only the result as one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from litedet.tuner import markdown_report, tune

    command = " ".join(shlex.quote(a) for a in ["litedet", *sys.argv[1:]])
    result = tune(
        args.weights, data=args.data, images=args.images, annotations=args.annotations, calib=args.calib,
        budget_ms=args.budget_ms, min_fps=args.min_fps, budget_peer=args.budget_peer, imgsz=args.imgsz,
        engines=args.engines, precisions=args.precisions, threads=args.threads, peers=args.peers, out_dir=args.out,
        runs=args.runs, warmup=args.warmup, latency_budget_s=args.latency_budget, max_attempts=args.max_attempts,
        whole_front=args.whole_front, remeasure=args.remeasure,
        val_limit=args.val_limit, load_threshold=args.load_threshold, progress=not args.no_progress, command=command,
    )
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
        return 0
    print(markdown_report(result, command))
    for name, path in result.paths.items():
        print(f"{name}: {path}", file=sys.stderr)
    print(result.choice.message, file=sys.stderr)
    for line in result.commands:
        print(f"run it: {line}", file=sys.stderr)
    return 0
