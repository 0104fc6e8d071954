"""`litedet detect`: detect objects in images, folders, globs, videos, cameras and streams."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from litedet.cli.common import add_model_option, add_progress_option
from litedet.data.sources import DEFAULT_RECONNECT, STALL_TIMEOUT_S
from litedet.runtime import ENGINES

# Per-image lines are printed for runs up to this many frames.
LISTED_FRAMES = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser)
    parser.add_argument("--weights", required=True, help=".safetensors, .onnx, OpenVINO .xml or ncnn .param, with its config sidecar")
    parser.add_argument("--source", required=True, help="image, folder, glob, video, camera index (0) or rtsp:// / http:// URL")
    parser.add_argument("--save", metavar="DIR", help="write annotated images, videos (<name>.avi), detections.jsonl and summary.json here")
    # JSON Lines, not one document at the end (common.add_json_option): a stream never ends
    parser.add_argument("--json", action="store_true",
                        help="print every result to stdout as it comes, JSON Lines (one object per image/frame); human output goes to stderr")
    parser.add_argument("--max-frames", type=int, help="stop after this many images/frames")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum score (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    parser.add_argument("--max-det", type=int, default=300, help="most detections per image (default 300)")
    parser.add_argument("--imgsz", type=int, help="input size (default: the model's)")
    parser.add_argument("--classes", nargs="+", help="keep only these class ids or names")
    parser.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--threads", type=int, help="engine CPU threads")
    parser.add_argument("--engine", choices=sorted(ENGINES), help="engine (default: from the weights' suffix)")
    parser.add_argument("--precision", default="fp32", help="fp32 (default), bf16 or fp16 where the engine supports it")
    parser.add_argument("--streams", type=int,
                        help="engine copies inferring side by side, each on threads/streams threads (default: 2 for videos "
                             "and folders of more than 20 images, 1 for cameras and streams; not with the torch engine)")
    parser.add_argument("--no-pipeline", action="store_true", help="run the stages one after another (to compare with the pipelined default)")
    add_live_options(parser)
    add_progress_option(parser)


def add_live_options(parser: argparse.ArgumentParser) -> None:
    """``--reconnect`` and ``--stall-timeout``: how a camera or network stream that is lost is
    re-opened (also used by `litedet stream`)."""
    parser.add_argument("--reconnect", type=int, default=DEFAULT_RECONNECT, metavar="N",
                        help=f"re-open a camera or stream that stalls or closes up to N times in a row, waiting 1, 2, 4, "
                             f"... up to 10 s between attempts; 0: end at the first failure; a stream lost for good "
                             f"exits 1 (default {DEFAULT_RECONNECT})")
    parser.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT_S, metavar="SECONDS",
                        help=f"a network stream that sends nothing for this long counts as lost, at open and while "
                             f"reading (default {STALL_TIMEOUT_S:g})")


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from litedet.engine.predictor import detect

    # SIGTERM ends the run like Ctrl-C: every finished frame is written, files are closed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = detect(
            args.source, args.weights, model=args.model, engine=args.engine, save_dir=args.save, conf=args.conf,
            iou=args.iou, max_det=args.max_det, classes=args.classes, agnostic=args.agnostic, imgsz=args.imgsz,
            threads=args.threads, precision=args.precision, progress=not args.no_progress, max_frames=args.max_frames,
            keep_results=LISTED_FRAMES, results_stream=sys.stdout if args.json else None, pipeline=not args.no_pipeline,
            stop_signals=(signal.SIGINT, signal.SIGTERM), streams=args.streams, reconnect=args.reconnect,
            stall_timeout=args.stall_timeout,
        )
    except KeyboardInterrupt:  # before the first frame (opening the source, loading the model): nothing to keep
        print("litedet detect: interrupted before the first frame", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `--json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    # stdout carries only the JSON Lines with --json; human text goes to stderr then.
    out = sys.stderr if args.json else sys.stdout
    if report.frames <= LISTED_FRAMES:
        for result in report.results:
            counts: dict[str, int] = {}
            for det in result["detections"]:
                counts[det["class_name"]] = counts.get(det["class_name"], 0) + 1
            text = ", ".join(f"{n} {name}" for name, n in counts.items()) or "no detections"
            print(f"{result['source']}: {text}", file=out)
    for line in report.summary_lines():
        print(line, file=out)
    if report.lost:  # a live stream gone for good (its reconnects failed) is a failed run
        return 1
    return 0 if report.frames or not report.skipped else 1
