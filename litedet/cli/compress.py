"""`litedet prune | quantize | distill | decompose | compress`: compression verbs.

Each verb parses its arguments into a one-step recipe (``litedet.compress.recipe``) or one library
call, so the CLI and ``litedet compress --recipe`` do exactly the same work.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from litedet.cli.common import (add_json_option, add_model_option, add_progress_option, add_run_options, human_output,
                                print_json, resolve_model, run_folder)

PROJECT = "runs/compress"


def _command() -> str:
    return "litedet " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _add_common_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """--model, the run folder, the report options, --no-progress and --json of a compression verb."""
    add_model_option(parser)
    add_run_options(parser, PROJECT, name=verb)
    parser.add_argument("-o", "--output", default=None,
                        help=f"exact output folder, used as is (default: a new run folder {PROJECT}/{verb}, {verb}2, ...)")
    _add_report_arguments(parser)
    add_json_option(parser, "the written files and the report")


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report (before/after, measured in one run)")
    group.add_argument("--val-images", help="validation images for mAP (e.g. ../shared/data/coco256/images/val2017; "
                                            "default: latency and size only)")
    group.add_argument("--val-annotations", help="their COCO instances json (with --val-images)")
    group.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "openvino"],
                       help="engine the report (and --target-latency) measures on (default onnxruntime)")
    group.add_argument("--threads", type=_count(1), default=2, help="engine threads for latency (default 2)")
    group.add_argument("--runs", type=_count(1), default=100, help="timed runs per model (default 100)")
    group.add_argument("--no-report", action="store_true", help="skip measuring (files only; default: measure)")
    group.add_argument("--device", default="cpu", help="torch device for training steps: cpu (default), cuda")
    add_progress_option(group)


def _count(least: int) -> Any:
    """An argparse type: an integer >= ``least`` (an option's own name is in argparse's message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return parse


def _add_finetune_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--data", help=f"dataset YAML for {what} (default: none)")
    parser.add_argument("--epochs", type=_count(0), default=0, help=f"{what} epochs (default 0: none)")
    parser.add_argument("--steps", type=_count(1), help=f"{what} steps instead of epochs (default: by epochs)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--lr", type=float, default=0.002, help="SGD learning rate (default 0.002)")


def _recipe_dict(args: argparse.Namespace, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": args.weights,
        "data": getattr(args, "data", None),
        "out": str(run_folder(args, args.output)),
        "device": args.device,
        "steps": steps,
        "report": {"engine": args.engine, "threads": args.threads, "runs": args.runs,
                   "val_images": args.val_images, "val_annotations": args.val_annotations, "each_step": False},
    }


def _finetune_step(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not args.epochs and not args.steps:
        return []
    return [{"finetune": {"epochs": max(args.epochs, 1), "steps": args.steps, "batch": args.batch, "lr": args.lr}}]


def _run(args: argparse.Namespace, steps: list[dict[str, Any]]) -> int:
    from litedet.compress.recipe import parse_recipe, run_recipe

    resolve_model(args.weights, args.model)  # a --model that disagrees with the sidecar is an error
    with human_output(args.json):
        recipe = parse_recipe(_recipe_dict(args, steps), source="command line")
        result = run_recipe(recipe, measure=not args.no_report, progress=not args.no_progress, command=_command())
        _print_result(result)
    if args.json:
        print_json(_result_dict(result))
    return 0


def _print_result(result: Any) -> None:
    for line in result.log:
        print(line)
    if result.model:
        print(f"torch model: {result.model}")
    if result.exported:
        print(f"exported:    {result.exported}")
    if result.report is not None:
        print()
        print(result.report.to_markdown())
        print(f"report: {result.report_paths[0]} and {result.report_paths[1]}")
    print(f"run folder: {result.out}")


def _result_dict(result: Any) -> dict[str, Any]:
    return {"out": str(result.out), "model": result.model, "exported": result.exported, "log": list(result.log),
            "report": result.report.to_dict() if result.report is not None else None}


# ----------------------------------------------------------------------------------------- prune


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help=".safetensors checkpoint with its sidecar")
    parser.add_argument("--method", default="reconstruction", choices=["reconstruction", "l1", "bn_scale", "magnitude"],
                        help="importance: reconstruction (default: least-squares cost of removing a channel, measured "
                             "on calibration images), l1 (filter norm), bn_scale (network slimming) or magnitude "
                             "(unstructured)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float, help="share of channels (weights for magnitude) to remove, in (0, 1)")
    target.add_argument("--target-latency", type=float, metavar="MS",
                        help="prune in steps until the median latency on --engine/--threads is at most MS")
    parser.add_argument("--step", type=float, default=0.1, help="with --target-latency: ratio per step (default 0.1)")
    parser.add_argument("--round-to", type=int, default=8,
                        help="keep channel counts multiples of this (default 8: CPU engines block channels; 1: off)")
    parser.add_argument("--calib", help="calibration images for BN statistics, importance and compensation: a folder "
                                        "or a dataset YAML (default: --data)")
    parser.add_argument("--calib-images", type=int, default=128, help="calibration images to use (default 128)")
    parser.add_argument("--compensate", default="lsq", choices=["lsq", "mean", "none"],
                        help="refit consumers of removed channels: lsq (least squares, default), mean, none")
    parser.add_argument("--iterations", type=int, default=3,
                        help="remove the channels in this many steps, re-measuring in between (default 3)")
    parser.add_argument("--refit", type=int, default=0, metavar="IMAGES",
                        help="after pruning, refit every 1x1 conv to the unpruned outputs on this many calibration "
                             "images (corrective least squares; default 0: off, on v5lite-s 30 %% it lowered "
                             "the output error but also mAP)")
    parser.add_argument("--global", dest="global_pruning", action="store_true",
                        help="rank channels over the whole network (at most --max-layer-ratio of one layer) "
                             "instead of --ratio of every layer")
    parser.add_argument("--max-layer-ratio", type=float, default=0.75, help="with --global: cap per layer (default 0.75)")
    parser.add_argument("--ignore", nargs="*", default=[], metavar="MODULE",
                        help="module names whose output channels are kept (e.g. neck.td3)")
    parser.add_argument("--sparsity", type=float, default=0.0,
                        help="bn_scale: L1 strength on BN gamma for a sparse-training phase first (e.g. 1e-4; needs --data)")
    parser.add_argument("--sparsity-epochs", type=int, default=1, help="epochs of sparse training (default 1)")
    _add_finetune_arguments(parser, "fine-tuning after pruning")
    parser.add_argument("--no-ema", action="store_true", help="fine-tuning: end with the last weights, not their EMA")
    parser.add_argument("--freeze-bn", action="store_true", help="fine-tuning: keep BatchNorm statistics fixed")
    parser.add_argument("--no-augment", action="store_true", help="fine-tuning: letterboxed images, no augmentation")
    _add_common_arguments(parser, "prune")


def run_prune(args: argparse.Namespace) -> int:
    steps: list[dict[str, Any]] = []
    if args.sparsity:
        if args.method != "bn_scale":
            raise ValueError("--sparsity (network slimming) goes with --method bn_scale")
        steps.append({"sparsity": {"strength": args.sparsity, "epochs": args.sparsity_epochs, "batch": args.batch, "lr": args.lr}})
    steps.append({"prune": {"method": args.method, "ratio": args.ratio, "target_latency": args.target_latency,
                            "step": args.step, "round_to": args.round_to, "calib": args.calib,
                            "calib_images": args.calib_images, "compensate": args.compensate,
                            "iterations": args.iterations, "refit": args.refit, "global_pruning": args.global_pruning,
                            "max_layer_ratio": args.max_layer_ratio, "ignore": args.ignore}})
    finetune = _finetune_step(args)
    for step in finetune:
        step["finetune"].update(ema=not args.no_ema, freeze_bn=args.freeze_bn, augment=not args.no_augment)
    return _run(args, steps + finetune)


# -------------------------------------------------------------------------------------- quantize


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="exported .onnx / OpenVINO .xml (or a .safetensors, exported first)")
    parser.add_argument("--method", default="ort-static", choices=["ort-static", "ort-dynamic", "openvino", "qat"],
                        help="ort-static: INT8 QDQ with calibration (default); ort-dynamic: data-free weight INT8; "
                             "openvino: NNCF INT8; qat: quantization-aware training of a .safetensors (needs --data)")
    parser.add_argument("--calib", help="calibration images: a folder or a dataset YAML (its train split); needed by "
                                        "the static methods (default: none)")
    parser.add_argument("--num-images", type=int, default=64, help="calibration images to use (default 64)")
    parser.add_argument("--calibrate-method", default="minmax", choices=["minmax", "entropy", "percentile"],
                        help="ort-static: how activation ranges are chosen on the calibration images (default minmax)")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default per channel)")
    parser.add_argument("--exclude", nargs="*", default=[], help="ONNX node names kept in float")
    parser.add_argument("--no-rewrite", action="store_true",
                        help="ort-static: quantize the exported graph as it is, without the exact INT8 graph rewrites "
                             "(channel shuffle -> Gather, channel padding) that let ONNX Runtime use its fast INT8 kernels")
    parser.add_argument("--accuracy-control", action="store_true",
                        help="openvino: nncf.quantize_with_accuracy_control on --val-images/--val-annotations")
    parser.add_argument("--max-drop", type=float, default=0.01, help="accuracy control: max mAP50-95 drop (default 0.01)")
    parser.add_argument("--preset", default="performance", choices=["performance", "mixed"],
                        help="openvino: NNCF preset; mixed quantizes activations asymmetrically, usually more "
                             "accurate and a little slower (default performance)")
    _add_finetune_arguments(parser, "quantization-aware training (--method qat)")
    _add_common_arguments(parser, "quantize")


def run_quantize(args: argparse.Namespace) -> int:
    if args.method == "qat":
        if not args.data:
            raise ValueError("--method qat trains: pass --data data.yaml")
        qat = {"epochs": max(args.epochs, 1), "steps": args.steps, "batch": args.batch, "lr": args.lr}
        return _run(args, [{"qat": qat}])
    step = {"method": args.method, "calib": args.calib, "images": args.num_images, "per_channel": not args.per_tensor,
            "calibrate_method": args.calibrate_method, "exclude": args.exclude,
            "accuracy_control": args.accuracy_control, "max_drop": args.max_drop, "rewrite": not args.no_rewrite,
            "preset": args.preset}
    return _run(args, [{"quantize": step}])


# --------------------------------------------------------------------------------------- distill


def _parse_strategies(text: str) -> dict[str, float]:
    strategies: dict[str, float] = {}
    for item in text.split(","):
        name, _, weight = item.strip().partition("=")
        try:
            strategies[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--strategies: weight of {name!r} must be a number, got {weight!r}") from None
        if not strategies[name] > 0:
            raise ValueError(f"--strategies: weight of {name!r} must be > 0, got {weight}")
    return strategies


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="teacher .safetensors (same classes as the student)")
    parser.add_argument("--student", required=True, dest="weights", help="student .safetensors")
    parser.add_argument("--strategies", default="response=1",
                        help="name=weight list: response, fitnet, attention (e.g. response=1,attention=50; a name without =weight "
                             "weighs 1; default response=1)")
    parser.add_argument("--temperature", type=float, default=2.0, help="softening temperature T (default 2)")
    _add_finetune_arguments(parser, "distillation")
    parser.add_argument("--imgsz", type=int, help="training input size for student and teacher (default: the "
                                                  "student's; the teacher sees the same images)")
    _add_common_arguments(parser, "distill")


def run_distill(args: argparse.Namespace) -> int:
    if not args.data:
        raise ValueError("distillation trains: pass --data data.yaml")
    step = {"teacher": args.teacher, "strategies": _parse_strategies(args.strategies), "temperature": args.temperature,
            "epochs": max(args.epochs, 1), "steps": args.steps, "batch": args.batch, "lr": args.lr, "imgsz": args.imgsz}
    return _run(args, [{"distill": step}])


# ------------------------------------------------------------------------------------- decompose


def add_decompose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help=".safetensors checkpoint with its sidecar")
    parser.add_argument("--method", default="svd", choices=["svd", "cp", "both"],
                        help="svd: 1x1 convs and linears (default); cp: kxk convs (tensorly parafac); both")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=float, help="rank: an integer, or a share of the full rank in (0, 1)")
    how.add_argument("--energy", type=float, help="keep this share of the squared singular values, in (0, 1]")
    parser.add_argument("--exclude", nargs="*", default=["head.*"], help="module-name globs left alone (default head.*)")
    parser.add_argument("--calib", help="calibration images for data-aware SVD (reconstruct each layer's responses): "
                                        "a folder or a dataset YAML (default: --data; neither: weight SVD)")
    parser.add_argument("--calib-images", type=int, default=128, help="calibration images to use (default 128)")
    parser.add_argument("--data-free", action="store_true", help="weight SVD even when --data/--calib are given")
    _add_finetune_arguments(parser, "fine-tuning after decomposition")
    _add_common_arguments(parser, "decompose")


def run_decompose(args: argparse.Namespace) -> int:
    step = {"method": args.method, "rank": args.rank, "energy": args.energy, "exclude": args.exclude,
            "calib": args.calib, "calib_images": args.calib_images, "data_free": args.data_free}
    return _run(args, [{"decompose": step}] + _finetune_step(args))


# -------------------------------------------------------------------------------------- compress


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (see docs/compression.md); its 'out' is the run folder")
    parser.add_argument("--no-report", action="store_true", help="skip measuring (files only; default: measure)")
    parser.add_argument("--check", action="store_true", help="only validate the recipe and its files (default: run it)")
    add_progress_option(parser)
    add_json_option(parser, "the written files and the report")


def run_compress(args: argparse.Namespace) -> int:
    from litedet.compress.recipe import check_inputs, load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    if args.check:
        check_inputs(recipe)
        message = f"{args.recipe}: {len(recipe.steps)} steps OK: {' -> '.join(name for name, _ in recipe.steps)}"
        if args.json:
            print(message, file=sys.stderr)
            print_json({"recipe": args.recipe, "steps": [name for name, _ in recipe.steps], "ok": True})
        else:
            print(message)
        return 0
    with human_output(args.json):
        result = run_recipe(recipe, measure=not args.no_report, progress=not args.no_progress, command=_command())
        _print_result(result)
    if args.json:
        print_json(_result_dict(result))
    return 0
