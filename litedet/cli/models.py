"""`litedet models`: every registered model with params, multiply-adds and MAC."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--input", type=int, default=None, help="count at this square input size (default: 224 for backbones, the model's own for detectors)")
    parser.add_argument("--filter", default="*", help="glob over model names, e.g. 'mobilenet*'")


def run(args: argparse.Namespace) -> int:
    from litedet.models.table import format_table, model_table

    if args.input is not None and args.input <= 0:
        raise ValueError(f"--input must be > 0, got {args.input}")
    rows = model_table(args.filter, args.input)
    if not rows:
        raise ValueError(f"no registered model matches {args.filter!r}")
    if args.json:
        print(json.dumps([row.to_dict() for row in rows]))
    else:
        print(format_table(rows))
        print("\nmultiply-adds counted over Conv2d/Linear; FLOPs = 2 x multiply-adds; MAC as in ShuffleNetV2 §2 "
              "(input + output feature-map elements + weights of every conv/linear layer).")
    return 0
