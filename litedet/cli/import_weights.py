"""`litedet import FILE.param --arch v5lite-s -o model.safetensors`: published ncnn weights -> litedet."""

from __future__ import annotations

import argparse

from litedet.cli.common import add_json_option, add_progress_option, human_output, print_json
from litedet.config import sidecar_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("param", help="ncnn .param file (its .bin beside it, or --bin)")
    parser.add_argument("--arch", "--model", dest="arch", required=True,
                        help="registered detector the graph should fit, e.g. v5lite-s, v5lite-e")
    parser.add_argument("-o", "--output", default=None, help="output .safetensors (default: <name>.safetensors here)")
    parser.add_argument("--bin", default=None, help="ncnn .bin weights (default: beside the .param)")
    parser.add_argument("--imgsz", type=int, default=None, help="input size to record (default: the arch's)")
    parser.add_argument("--names", default=None, help="comma-separated class names (default: COCO for 80 classes)")
    add_progress_option(parser)
    add_json_option(parser, "the written files and the model config")


def run(args: argparse.Namespace) -> int:
    from litedet.models.ncnn_import import import_ncnn_weights

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    with human_output(args.json):
        path, config = import_ncnn_weights(
            args.param, args.arch, args.output, bin_path=args.bin, names=names, input_size=args.imgsz
        )
        height, width = config.input_size
        print(f"imported {args.param} as {config.model} ({config.num_classes} classes, {height}x{width})")
        print(f"weights: {path}")
        print(f"config:  {sidecar_path(path)}")
    if args.json:
        print_json({"weights": str(path), "config": str(sidecar_path(path)), "model": config.model,
                    "num_classes": config.num_classes, "input_size": list(config.input_size)})
    return 0
