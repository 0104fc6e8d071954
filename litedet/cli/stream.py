"""`litedet stream`: spread a video or camera stream over several model replicas (Ray); results
come out in frame order. With `--workers 1` and no `--address` it runs in-process without Ray."""

from __future__ import annotations

import argparse
import json
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="video file, folder, glob, camera index (0) or rtsp:// URL")
    parser.add_argument("--weights", required=True, help="model file: .safetensors, .onnx, .xml (OpenVINO) or .param (ncnn)")
    parser.add_argument("--model", default=None, help="registry name (needed for a .safetensors without its .json sidecar)")
    parser.add_argument("--workers", type=int, default=1, help="model replicas (Ray actors when > 1 or with --address)")
    parser.add_argument("--address", default=None,
                        help="join a Ray cluster: 'auto' or HOST:PORT (default: in-process for 1 worker, else a local Ray)")
    parser.add_argument("--engine", default=None, choices=("torch", "onnxruntime", "openvino", "ncnn"),
                        help="engine (default: from the weights suffix)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="engine threads (and Ray CPUs) per replica")
    parser.add_argument("--imgsz", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum score")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help="frames read but not yet written (back-pressure; default 2 x workers)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--save", default=None, metavar="DIR", help="write annotated video/images, detections.json, summary.json")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON object, last")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def run(args: argparse.Namespace) -> int:
    from litedet.distributed.stream import run_stream

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run_stream(
        args.source, args.weights, model=args.model, workers=args.workers, address=args.address, engine=args.engine,
        threads_per_worker=args.threads_per_worker, imgsz=args.imgsz, conf=args.conf, iou=args.iou,
        max_in_flight=args.max_in_flight, max_frames=args.max_frames, save_dir=args.save, keep_results=bool(args.save),
        progress=args.progress,
    )
    for line in report.summary_lines():
        print(line)
    if args.json:
        print(json.dumps(report.to_dict()))
    return 130 if report.interrupted else 0
