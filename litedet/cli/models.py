"""`litedet models`: every registered model with params, multiply-adds and MAC."""

from __future__ import annotations

import argparse
import sys

from litedet.cli.common import add_json_option, add_progress_option, human_output, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `litedet models`."""
    add_json_option(parser, "a list (one object per model) instead of the table")
    parser.add_argument("--input", type=int, default=None, help="count at this square input size (default: 224 for backbones, the model's own for detectors)")
    parser.add_argument("--filter", default="*", help="glob over model names, e.g. 'mobilenet*' (default: all)")
    parser.add_argument("--kind", choices=("backbone", "detector"), default=None,
                        help="only backbones or only detectors (default: both)")
    add_progress_option(parser)


def run(args: argparse.Namespace) -> int:
    """Print the model table (Markdown, or JSON with ``--json``)."""
    from litedet.bench.model_table import format_table, model_table

    if args.input is not None and args.input <= 0:
        raise ValueError(f"--input must be > 0, got {args.input}")
    skipped: list[tuple[str, str]] = []
    with human_output(args.json):
        rows = model_table(args.filter, args.input, skipped, kind=args.kind)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not rows and not skipped:
        raise ValueError(f"no registered model matches {args.filter!r}; `litedet models` lists them all")
    if args.json:
        print_json([row.to_dict() for row in rows])
    else:
        print("multiply-adds of every Conv2d/Linear (FLOPs = 2 x multiply-adds); MAC as in ShuffleNetV2 §2 "
              "(input + output feature-map elements + weights of every conv/linear layer); peak activations: "
              "most bytes alive at once in an eager batch-1 forward, input included\n")
        print(format_table(rows))
    return 0
