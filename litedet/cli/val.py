"""`litedet val`: COCO box mAP with pycocotools, a per-class table and plots."""

from __future__ import annotations

import argparse
import sys

from litedet.cli.common import (add_json_option, add_model_option, add_progress_option, add_run_options, check_writable,
                                human_output, print_json, resolve_model, run_folder)
from litedet.runtime import ENGINES

PROJECT = "runs/val"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser)
    parser.add_argument("--weights", required=True, help=".safetensors, .onnx, OpenVINO .xml or ncnn .param, with its config sidecar")
    parser.add_argument("--images", help="folder holding the annotation file's images (with --annotations)")
    parser.add_argument("--annotations", help="COCO instances json (with --images)")
    parser.add_argument("--data", help="dataset YAML (YOLO txt, COCO json or Pascal VOC, as for litedet train) "
                                       "instead of --images/--annotations")
    parser.add_argument("--split", default="val", help="with --data: the split to score (default val)")
    parser.add_argument("--imgsz", type=int, help="input size, a square letterbox (default: the model's)")
    parser.add_argument("--conf", type=float, default=0.001, help="score threshold (default 0.001)")
    parser.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--max-det", type=int, default=300, help="detections per image (default 300)")
    parser.add_argument("--threads", type=int, help="engine CPU threads (default: the engine's choice)")
    parser.add_argument("--engine", choices=sorted(ENGINES), help="engine (default: from the weights' suffix)")
    parser.add_argument("--precision", default="fp32", help="fp32 (default), bf16 or fp16 where the engine supports it")
    parser.add_argument("--resize", choices=["letterbox", "resize"],
                        help="override the config's pre-processing: letterbox (keep aspect) or resize (stretch) "
                             "(default: the config's)")
    parser.add_argument("--interpolation", choices=["area", "linear"], default="area",
                        help="resize filter when an image shrinks: area (YOLOv5 val, default) or linear (ncnn, mobile demos)")
    parser.add_argument("--no-plots", action="store_true", default=False,
                        help="write no run folder (default: confusion matrix, PR/F1/P/R curves and metrics.json "
                             "in PROJECT/NAME)")
    add_run_options(parser, PROJECT)
    add_progress_option(parser)
    add_json_option(parser, "the metrics (mAP, P, R, per-class rows)")


def run(args: argparse.Namespace) -> int:
    import json

    from litedet.engine.evaluator import evaluate, evaluate_data, save_eval_plots

    if bool(args.data) == bool(args.images or args.annotations):
        raise ValueError("give either --data data.yaml or both --images and --annotations")
    if not args.data and not (args.images and args.annotations):
        raise ValueError("--images and --annotations go together (or use --data data.yaml)")
    model = resolve_model(args.weights, args.model)
    options = dict(model=model, imgsz=args.imgsz, engine=args.engine, threads=args.threads,
                   precision=args.precision, conf=args.conf, iou=args.iou, max_det=args.max_det,
                   progress=not args.no_progress, resize=args.resize, interpolation=args.interpolation)
    folder = None
    if not args.no_plots:
        folder = run_folder(args)
        check_writable(folder)  # before the evaluation, not after it
    with human_output(args.json):
        if args.data:
            result = evaluate_data(args.weights, args.data, args.split, **options)
        else:
            result = evaluate(args.weights, args.images, args.annotations, **options)
        out = sys.stdout
        skipped = f" ({len(result.skipped)} unreadable, skipped)" if result.skipped else ""
        if result.note:
            print(f"images {result.images}{skipped}", file=out)
            print(f"no ground truth: {result.note}", file=out)
        else:
            print(result.table(), file=out)
            print(f"images {result.images}{skipped}, {result.detections} detections; mAP50-95 {result.map50_95:.4f}  "
                  f"mAP50 {result.map50:.4f}; P and R at confidence {result.best_conf:.3f} (best mean F1)", file=out)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            written = save_eval_plots(result, folder)
            (folder / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            print(f"plots and metrics.json: {folder} ({len(written)} plots)", file=out)
    if args.json:
        summary = result.to_dict()
        summary["run"] = str(folder) if folder else None
        print_json(summary)
    return 0 if not result.note else 1
