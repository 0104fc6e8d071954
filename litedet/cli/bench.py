"""`litedet bench`: latency, throughput, memory and energy on this device, beside peers;
`litedet bench guidelines`: the ShuffleNetV2 G1-G4 experiments and two seed comparisons."""

from __future__ import annotations

import argparse
import shlex
import sys

from litedet.cli.common import add_json_option, add_progress_option, add_run_options, human_output, print_json, run_folder

PROJECT = "runs/bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", nargs="?", choices=("run", "guidelines"), default="run",
                        help="run (default): benchmark models and peers; guidelines: ShuffleNetV2 §2 experiments")
    parser.add_argument("--models", default="v5lite-e", help="comma-separated registry names (litedet models), "
                        "NAME@SIZE to pin one size; '' for none (default v5lite-e)")
    parser.add_argument("--engines", default="torch,onnxruntime,openvino,ncnn",
                        help="comma-separated engines (default torch,onnxruntime,openvino,ncnn)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--imgsz", default="320", help="comma-separated input sizes, square (default 320)")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes for throughput (default 1)")
    parser.add_argument("--streams", default="1",
                        help="comma-separated numbers of engine copies side by side, sharing each --threads count "
                             "(T // N threads each, one input each; litedet detect --streams N): N > 1 adds images/s "
                             "rows; 1 = one copy (default 1)")
    parser.add_argument("--peers", default="", help="comma-separated peers: yolov8n, yolo11n, ssdlite, v5lite-ncnn, "
                        "nanodet-plus, fastestdet, yolo-fastestv2; absent ones are skipped with a note (default: none)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time letterbox + inference + decode + NMS on coco256 val images (default: off)")
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                        help="use a checkpoint instead of random weights for MODEL, or time an engine file as it is (.onnx, OpenVINO .xml, ncnn .param with its sidecar, e.g. a quantized or pruned model) on its own engine (repeatable)")
    add_run_options(parser, PROJECT)
    parser.add_argument("--out", default=None, help="exact output folder, used as is (default: a new run folder "
                        "PROJECT/NAME; guidelines: PROJECT/guidelines)")
    parser.add_argument("--cache", default=None, help="export cache folder, reused across runs (default runs/bench/cache)")
    parser.add_argument("--full", action="store_true",
                        help="print the whole Markdown report (default: a short summary; the report files have it all)")
    add_json_option(parser, "the rows as one list")
    add_progress_option(parser)
    parser.add_argument("--runs", type=int, default=100, help="timed runs per configuration after warm-up (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs per configuration (default 10)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per interleaved group; stops early (at least 10 runs each) when spent "
                             "(default: no budget)")
    parser.add_argument("--map", dest="map_results", default=None, metavar="RESULTS.JSON",
                        help="accuracy per model for the Pareto plot: [{model, engine?, imgsz?, map50_95, map50?}] "
                             "(default: no Pareto plot)")
    parser.add_argument("--load-threshold", type=float, default=25.0,
                        help="%% of the machine other processes may use before a figure is re-measured/flagged "
                             "(default 25)")
    parser.add_argument("--max-attempts", type=int, default=2,
                        help="measurements per configuration while disturbed (1: flag only, never repeat; default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for GPU figures (torch engine; default cpu)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="torch engine precision (autocast); exported engines run fp32 (default fp32)")
    parser.add_argument("--quick", action="store_true", help="guidelines: x1 channels only, 20 runs each (default: off)")


def _weights(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--weights expects MODEL=PATH, got {pair!r}")
        name, path = pair.split("=", 1)
        mapping[name] = path
    return mapping


def run(args: argparse.Namespace) -> int:
    with human_output(args.json):
        payload, interrupted = _run(args)
    if args.json:
        print_json(payload)
    return 130 if interrupted else 0


def _run(args: argparse.Namespace) -> tuple[object, bool]:
    """Measure, print the human summary; returns what ``--json`` prints and whether Ctrl-C cut
    the timing short (the summary and the report then hold what was measured)."""
    if args.mode == "guidelines":
        from litedet.bench.api import run_guidelines
        from litedet.bench.guidelines import guidelines_markdown

        if args.out:
            out = args.out
        else:
            args.name = "guidelines" if args.name == "exp" else args.name
            out = run_folder(args)
        threads = [int(t) for t in str(args.threads).split(",") if t]
        report = run_guidelines(
            out_dir=out, quick=args.quick, device=args.device,
            threads=max(threads) if threads else None, min_runs=args.runs, budget_s=args.budget,
            progress=None if args.no_progress else (lambda title: print(f"... {title}", file=sys.stderr, flush=True)),
        )
        print(guidelines_markdown(report))
        print(f"written to {out}", file=sys.stderr)
        return report.to_dict(), False

    from litedet.bench.api import benchmark
    from litedet.bench.report import load_map_results, markdown_report, terminal_summary

    map_results = load_map_results(args.map_results) if args.map_results else None
    out = run_folder(args, args.out)
    result = benchmark(
        models=args.models, engines=args.engines, threads=args.threads, imgsz=args.imgsz, batch=args.batch,
        peers=args.peers, end_to_end=args.end_to_end, out_dir=out, runs=args.runs,
        budget_s=args.budget, warmup=args.warmup, weights=_weights(args.weights), map_results=map_results,
        load_threshold=args.load_threshold, max_attempts=args.max_attempts, device=args.device,
        precision=args.precision, progress=not args.no_progress,
        command=" ".join(shlex.quote(a) for a in ["litedet", *sys.argv[1:]]), cache_dir=args.cache,
        streams=args.streams,
    )
    if args.full:
        print(markdown_report(result.rows, result.machine, result.notes))
        for name, path in result.paths.items():
            print(f"{name}: {path}", file=sys.stderr)
    else:
        print(terminal_summary(result.rows, result.notes, result.paths))
    if result.interrupted:
        where = f" in {out}" if result.paths else ""
        print(f"litedet bench: interrupted; the figures measured until then are kept{where}", file=sys.stderr)
    return result.rows, result.interrupted
