"""`litedet val`: COCO box mAP with pycocotools."""

from __future__ import annotations

import argparse
import json

from litedet.runtime import ENGINES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registered model name (e.g. v5lite-s); checked against the weights' config")
    parser.add_argument("--weights", required=True, help=".safetensors, .onnx, OpenVINO .xml or ncnn .param, with its config sidecar")
    parser.add_argument("--images", help="folder holding the annotation file's images")
    parser.add_argument("--annotations", help="COCO instances json")
    parser.add_argument("--data", help="dataset YAML (YOLO txt, COCO json or Pascal VOC, as for litedet train) "
                                       "instead of --images/--annotations")
    parser.add_argument("--split", default="val", help="with --data: the split to score (default val)")
    parser.add_argument("--imgsz", type=int, help="input size, a square letterbox (default: the model's)")
    parser.add_argument("--json", action="store_true", help='print {"map50_95", "map50", "images"} last')
    parser.add_argument("--conf", type=float, default=0.001, help="score threshold (default 0.001)")
    parser.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--max-det", type=int, default=300, help="detections per image (default 300)")
    parser.add_argument("--threads", type=int, help="engine CPU threads")
    parser.add_argument("--engine", choices=sorted(ENGINES), help="engine (default: from the weights' suffix)")
    parser.add_argument("--precision", default="fp32", help="fp32 (default), bf16 or fp16 where the engine supports it")
    parser.add_argument("--resize", choices=["letterbox", "resize"],
                        help="override the config's pre-processing: letterbox (keep aspect) or resize (stretch)")
    parser.add_argument("--interpolation", choices=["area", "linear"], default="area",
                        help="resize filter when an image shrinks: area (YOLOv5 val, default) or linear (ncnn, mobile demos)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from litedet.engine.evaluator import evaluate, evaluate_data

    if bool(args.data) == bool(args.images or args.annotations):
        raise ValueError("give either --data data.yaml or both --images and --annotations")
    if not args.data and not (args.images and args.annotations):
        raise ValueError("--images and --annotations go together (or use --data data.yaml)")
    options = dict(model=args.model, imgsz=args.imgsz, engine=args.engine, threads=args.threads,
                   precision=args.precision, conf=args.conf, iou=args.iou, max_det=args.max_det,
                   progress=not args.no_progress, resize=args.resize, interpolation=args.interpolation)
    if args.data:
        result = evaluate_data(args.weights, args.data, args.split, **options)
    else:
        result = evaluate(args.weights, args.images, args.annotations, **options)
    print(f"images {result.images}" + (f" ({len(result.skipped)} unreadable, skipped)" if result.skipped else ""))
    print(f"mAP50-95 {result.map50_95:.4f}  mAP50 {result.map50:.4f}")
    if result.per_class:
        print("per-class AP50-95:")
        width = max(len(name) for name in result.per_class)
        for name, ap in result.per_class.items():
            print(f"  {name:<{width}}  {ap:.4f}")
    if args.json:
        print(json.dumps(result.to_dict()))
    return 0
