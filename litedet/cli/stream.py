"""`litedet stream`: spread a video or camera stream over several model replicas (Ray); results
come out in frame order. With `--workers 1` and no `--address` it runs in-process without Ray."""

from __future__ import annotations

import argparse
import logging
import sys

from litedet.cli.common import (
    add_json_option, add_model_option, add_progress_option, human_output, print_json, resolve_model, sigterm_as_interrupt,
)
from litedet.cli.detect import add_live_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="video file, folder, glob, camera index (0) or rtsp:// URL")
    parser.add_argument("--weights", required=True, help="model file: .safetensors, .onnx, .xml (OpenVINO) or .param (ncnn)")
    add_model_option(parser)
    parser.add_argument("--workers", type=int, default=1, help="model replicas (Ray actors when > 1 or with --address; default 1)")
    parser.add_argument("--address", default=None,
                        help="join a Ray cluster: 'auto' or HOST:PORT (default: in-process for 1 worker, else a local Ray)")
    parser.add_argument("--ray-dashboard", action="store_true",
                        help="with a local Ray (no --address): also start the Ray dashboard and Prometheus metrics, on 127.0.0.1 only (default: off)")
    parser.add_argument("--engine", default=None, choices=("torch", "onnxruntime", "openvino", "ncnn"),
                        help="engine (default: from the weights suffix)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="engine threads (and Ray CPUs) per replica (default 1)")
    parser.add_argument("--imgsz", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum score (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help="frames read but not yet written (back-pressure; default 2 x workers)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (default: the whole source)")
    parser.add_argument("--save", default=None, metavar="DIR",
                        help="write annotated video/images, detections.jsonl, summary.json (default: nothing written)")
    add_live_options(parser)
    add_json_option(parser, "the run summary")
    add_progress_option(parser)
    parser.add_argument("--progress", action="store_true", default=False,
                        help="deprecated: the progress bar is now shown by default (see --no-progress)")


def run(args: argparse.Namespace) -> int:
    from litedet.data.sources import open_source
    from litedet.distributed.stream import run_stream

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.progress:
        print("litedet stream: --progress is deprecated (the bar is shown unless --no-progress)", file=sys.stderr)
    model = resolve_model(args.weights, args.model)
    with human_output(args.json):
        # SIGTERM ends the run like Ctrl-C: frames already done are written, Ray is shut down.
        try:
            with sigterm_as_interrupt():
                # opened here for the reconnect options; run_stream closes it
                source = open_source(args.source, max_frames=args.max_frames, reconnect=args.reconnect,
                                     stall_timeout=args.stall_timeout)
                try:
                    report = run_stream(
                        source, args.weights, model=model, workers=args.workers, address=args.address,
                        engine=args.engine, threads_per_worker=args.threads_per_worker, imgsz=args.imgsz, conf=args.conf,
                        iou=args.iou, max_in_flight=args.max_in_flight, max_frames=args.max_frames, save_dir=args.save,
                        keep_results=False, progress=not args.no_progress, ray_dashboard=args.ray_dashboard,
                    )
                finally:
                    source.close()  # when run_stream refused its arguments before taking the source
        except KeyboardInterrupt:  # while the source, the model or the workers were opening: nothing to keep
            print("litedet stream: interrupted before the first frame", file=sys.stderr)
            return 130
        for line in report.summary_lines():
            print(line)
        lost = source.stats.ended  # a live stream gone for good: its reconnects failed
        if lost:
            print(lost)
    if args.json:
        print_json({**report.to_dict(), "lost": lost})
    if lost:
        return 1
    return 130 if report.interrupted else 0
