"""`litedet export --model v5lite-s --weights W --format onnx|openvino|ncnn -o DIR`."""

from __future__ import annotations

import argparse

from litedet.cli.common import add_json_option, add_model_option, add_progress_option, human_output, print_json, resolve_model
from litedet.export.formats import export_formats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = [f.name for f in export_formats()]
    add_model_option(parser)
    parser.add_argument("--weights", required=True, help=".safetensors with its .json sidecar (or an ncnn .param to import)")
    parser.add_argument("--format", required=True, help=f"one of: {', '.join(formats)}")
    parser.add_argument("--imgsz", help="input size: N (square) or H,W, e.g. 416 or 384,640 (default: the model's)")
    parser.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width (default: static)")
    parser.add_argument("--half", action="store_true", help="fp16 weights (openvino, ncnn; default: fp32)")
    parser.add_argument("--nms", action="store_true", help="decode + NMS inside the graph (onnx, openvino); outputs "
                        "detections, num_detections (default: raw head maps, decoded outside)")
    parser.add_argument("--conf", type=float, default=0.25, help="with --nms: score threshold baked into the graph (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.45, help="with --nms: NMS IoU threshold (default 0.45)")
    parser.add_argument("--max-det", type=int, default=300, help="with --nms: detections per image (default 300)")
    parser.add_argument("--uint8-input", action="store_true", help="the engine takes the letterboxed image as uint8 "
                        "[B, H, W, 3] BGR and normalises it itself: less work per frame for litedet's runtime "
                        "(default: float32 [B, 3, H, W], normalised, as YOLOv5 exports)")
    parser.add_argument("--name", help="file stem (default: model, model_openvino, model_ncnn + variant suffixes)")
    parser.add_argument("-o", "--output", default="exports", help="output folder (default: ./exports)")
    add_progress_option(parser)
    add_json_option(parser, "the exported files and config")


def run(args: argparse.Namespace) -> int:
    from litedet.export.api import export_model

    model = resolve_model(args.weights, args.model)
    with human_output(args.json):
        result = export_model(
            args.weights, args.format, args.output, imgsz=args.imgsz, dynamic=args.dynamic, half=args.half,
            nms=args.nms, model_name=model, stem=args.name, conf=args.conf, iou=args.iou, max_det=args.max_det,
            uint8_input=args.uint8_input,
        )
        print(f"exported {result.summary()}")
        for path in result.files:
            print(f"  {path}")
        if not result.config.nms_in_graph:
            print(f"run it: litedet detect --weights {result.path} --source IMAGE_OR_VIDEO")
    if args.json:
        print_json({"path": str(result.path), "files": [str(p) for p in result.files], "config": result.config.to_dict()})
    return 0
