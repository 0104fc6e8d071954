"""`litedet <verb>`: each verb lives in its own module with ``add_arguments`` and ``run``.

Verb modules are imported only when their verb is used, so `litedet detect` with an exported
model never imports torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from typing import Sequence

from litedet.extras import MissingExtraError, missing_extra_message

# verb -> (module under litedet.cli, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "models": ("models", "list registered models with params, multiply-adds and MAC"),
    "import": ("import_weights", "import published weights (ncnn param/bin) into litedet safetensors"),
    "detect": ("detect", "detect objects in images, folders, videos, cameras and streams"),
    "val": ("val", "COCO mAP evaluation with pycocotools"),
    "train": ("train", "train a detector on YOLO, COCO or VOC data"),
    "export": ("export", "export to ONNX, OpenVINO or ncnn"),
    "bench": ("bench", "measure latency, throughput, memory and energy on this device"),
    "prune": ("compress", "structured or unstructured pruning"),
    "quantize": ("compress", "INT8 post-training quantization, QAT, bf16"),
    "distill": ("compress", "knowledge distillation"),
    "decompose": ("compress", "low-rank decomposition (SVD, CP)"),
    "compress": ("compress", "run a compression recipe"),
    "stream": ("stream", "spread a video stream over several workers (Ray)"),
    "split": ("split", "split a model between two devices (profile, plan, run)"),
    "tune": ("tune", "the most accurate configuration that meets a latency budget, measured here"),
}


def _load(verb: str):
    module_name, _ = VERBS[verb]
    return importlib.import_module(f"litedet.cli.{module_name}")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with ``verb`` given, only that verb's module is imported."""
    from litedet import __version__

    parser = argparse.ArgumentParser(prog="litedet", description="Lightweight object detection for edge devices.")
    parser.add_argument("--version", action="version", version=f"litedet {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (_, help_text) in VERBS.items():
        verb_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            module = _load(name)
            adder = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
            adder(verb_parser)
    return parser


def _missing_extra(verb: str, err: ModuleNotFoundError) -> int:
    """One line naming the pip extra that installs the missing module (table: ``litedet.extras``,
    read from the package's own extras); a module litedet does not depend on is a bug: re-raised."""
    message = missing_extra_message(err.name)
    if message is None or os.environ.get("LITEDET_DEBUG"):
        raise err
    print(f"litedet {verb}: {message}", file=sys.stderr)
    return 2


# OpenCV's and FFmpeg's own logs (a camera probe's warnings, a damaged frame's codec errors) would
# repeat what litedet says in one line; a value already in the environment wins (debugging).
QUIET_NATIVE_LOGS = {"OPENCV_LOG_LEVEL": "OFF", "OPENCV_FFMPEG_LOGLEVEL": "-8"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, value in QUIET_NATIVE_LOGS.items():
        os.environ.setdefault(name, value)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while a verb starts (imports, model build): no traceback
        if os.environ.get("LITEDET_DEBUG"):
            raise
        verb = next((a for a in argv if not a.startswith("-")), None)
        print(f"litedet {verb}: interrupted" if verb else "litedet: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is not None and verb not in VERBS:
        build_parser().error(f"unknown verb {verb!r}; choose one of {', '.join(VERBS)}")
    if verb is not None:
        try:
            _load(verb)
        except ModuleNotFoundError as err:
            if err.name == f"litedet.cli.{VERBS[verb][0]}":
                print(f"litedet {verb}: not available in this version", file=sys.stderr)
                return 2
            return _missing_extra(verb, err)
    try:
        parser = build_parser(verb)  # a verb's options may need its extra (defaults from torch code)
    except ModuleNotFoundError as err:
        return _missing_extra(verb or "", err)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    module = _load(args.verb)
    runner = getattr(module, f"run_{args.verb}", None) or module.run
    try:
        return int(runner(args) or 0)
    except MissingExtraError as err:  # raised with its one-line message (e.g. by litedet.runtime)
        if os.environ.get("LITEDET_DEBUG"):
            raise
        print(f"litedet {args.verb}: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        return _missing_extra(args.verb, err)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        # User errors: one clear line, no traceback from deep inside (LITEDET_DEBUG=1 shows it).
        if os.environ.get("LITEDET_DEBUG"):
            raise
        print(f"litedet {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A file the system refused (read-only file system, full disk, quota, a file where a
        # folder should be): one line naming it.
        if err.filename is None or os.environ.get("LITEDET_DEBUG"):
            raise
        reason = err.strerror or str(err)
        if err.errno in (errno.EEXIST, errno.ENOTDIR):  # making an output folder where a file is
            reason = "a file is in the way of an output folder (give -o / --out a folder path)"
        print(f"litedet {args.verb}: error: {err.filename}: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
