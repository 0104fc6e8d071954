"""`litedet train`: train a detector on a YOLO, COCO or VOC dataset YAML, or resume a run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from litedet.cli.common import (add_json_option, add_model_option, add_progress_option, add_run_options, find_run,
                                human_output, print_json, resolve_model, run_folder)

PROJECT = "runs/train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from litedet.engine.config import DEFAULT_MODEL, TrainConfig

    defaults = TrainConfig()
    parser.add_argument("--data", help="dataset YAML (format: yolo | coco | voc; see configs/data/); required "
                                       "unless --config names it or --resume")
    parser.add_argument("--config", help="experiment YAML with any TrainConfig keys (command-line options win)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help=f"registered detector (`litedet models`); default: the --weights sidecar's model, "
                             f"else {DEFAULT_MODEL}; a name that disagrees with the sidecar is an error")
    parser.add_argument("--weights", help="start from a detector checkpoint (.safetensors + .json sidecar, or an ncnn "
                        ".param); classes that are among the checkpoint's keep their head rows, other class sets "
                        "re-initialise the class outputs")
    parser.add_argument("--backbone-weights", help="start from ImageNet backbone weights (ShuffleNetV2 Megvii .pth)")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {defaults.epochs})")
    parser.add_argument("--batch", type=int, help=f"images per batch (default {defaults.batch})")
    parser.add_argument("--nbs", type=int, help=f"nominal batch size: gradients of batches are accumulated up to "
                        f"this many images per optimizer step, weight decay scaled to it (default {defaults.nbs}; "
                        f"every epoch ends with a step)")
    parser.add_argument("--imgsz", type=int, help=f"training and evaluation size, a multiple of 32 (default {defaults.imgsz})")
    parser.add_argument("--device", help=f"auto | cpu | cuda | cuda:N (default {defaults.device}: CUDA when available)")
    parser.add_argument("--workers", type=int, help=f"data-loading processes (default {defaults.workers})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), help=f"optimizer (default {defaults.optimizer})")
    parser.add_argument("--lr0", type=float, help=f"initial learning rate (default {defaults.lr0}; AdamW: try 0.001)")
    parser.add_argument("--seed", type=int, help=f"seed of shuffling, augmentation and initialisation (default {defaults.seed})")
    parser.add_argument("--cache", action="store_true", default=None, help="keep resized images in memory (default: off)")
    parser.add_argument("--no-ema", dest="ema", action="store_false", default=None,
                        help="train without weight EMA (default: EMA on, evaluated and saved)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                        help="no mixed precision on CUDA (default: AMP on CUDA)")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="torch deterministic algorithms (default: off; CPU runs are reproducible anyway)")
    parser.add_argument("--close-mosaic", type=int, help=f"switch mosaic off for the last N epochs (default {defaults.close_mosaic})")
    parser.add_argument("--eval-interval", type=int, help=f"evaluate every N epochs and after the last (default {defaults.eval_interval})")
    parser.add_argument("--save-period", metavar="N|TIME",
                        help="also write a resumable last.pt during an epoch: every N batches (e.g. 200) or every "
                             "TIME of training (e.g. 5m, 90s, 1h) (default: only at epoch ends)")
    add_run_options(parser, PROJECT)
    parser.add_argument("--out", help="exact run folder, used as is (overrides --project/--name)")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue a run from its last.pt: a run folder, its last.pt, or a run name under "
                             "--project (e.g. exp2)")
    add_progress_option(parser)
    add_json_option(parser, "the run summary")


_OPTIONS = ("data", "model", "weights", "backbone_weights", "epochs", "batch", "nbs", "imgsz", "device", "workers",
            "threads", "optimizer", "lr0", "seed", "cache", "ema", "amp", "deterministic", "close_mosaic",
            "eval_interval", "save_period")


def run(args: argparse.Namespace) -> int:
    from litedet.data.datasets import load_data_config, summary_table
    from litedet.engine.config import TrainConfig
    from litedet.engine.trainer import CheckpointWriteError, Trainer, TrainingDivergedError, check_run_folder

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    progress = False if args.no_progress else None
    with human_output(args.json):
        try:
            if args.resume:
                folder = find_run(args.resume, args.project)
                trainer = Trainer.from_checkpoint(folder, epochs=args.epochs, device=args.device, progress=progress)
            else:
                overrides = {key: getattr(args, key) for key in _OPTIONS}
                overrides["progress"] = progress
                if args.weights:
                    overrides["model"] = resolve_model(args.weights, args.model)
                if args.config:
                    config = TrainConfig.load(args.config, **overrides)
                else:
                    config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None}, "command line")
                if not config.data:
                    raise ValueError("--data is required (a dataset YAML; see configs/data/)")
                if args.out or not (args.config and "out" in _yaml_keys(args.config)):
                    config.out = str(run_folder(args, args.out))
                check_run_folder(Path(config.out))  # before the data checks and the model build
                data = load_data_config(config.data)
                train_set = data.load_split("train", config.min_box_size, progress=config.progress)
                val_set = data.load_split("val", config.min_box_size, progress=config.progress)
                print(summary_table([train_set, val_set]), flush=True)
                trainer = Trainer(config, train_set, val_set)
            result = trainer.fit()
        except TrainingDivergedError as err:
            print(f"litedet train: stopped: {err}", file=sys.stderr)
            return 1
        except CheckpointWriteError as err:
            print(f"litedet train: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # a second Ctrl-C: stop without saving more
            out = trainer.out if "trainer" in locals() else None
            hint = (f"; resume from the last checkpoint with: litedet train --resume {out}"
                    if out is not None and (out / "last.pt").is_file() else "")
            print(f"litedet train: interrupted{hint}", file=sys.stderr)
            return 130
        accumulate = f"; nbs {trainer.config.nbs}: a step per {result.accumulate} batches" if result.accumulate > 1 else ""
        best = f"{result.best_map50_95:.4f} / {result.best_map50:.4f}" if result.best_weights else "n/a"
        print(f"{result.epochs_done} epochs, {result.steps} optimizer steps ({result.batches} batches of "
              f"{trainer.config.batch}{accumulate}), {result.train_seconds:.1f} s training, "
              f"{result.images_per_second:.1f} images/s; best mAP50-95 / mAP50 {best}")
        weights = result.best_weights or result.last_weights or "none yet (no epoch finished)"
        print(f"weights: {weights}; run folder: {result.out}")
        if result.interrupted:
            print(f"interrupted: resume with: {result.resume_command}")
    if args.json:
        print_json({"out": str(result.out), "epochs": result.epochs_done, "optimizer_steps": result.steps,
                    "batches": result.batches, "best_map50_95": result.best_map50_95, "best_map50": result.best_map50,
                    "best_weights": result.best_weights, "last_weights": result.last_weights,
                    "train_seconds": result.train_seconds, "interrupted": result.interrupted,
                    "resume": result.resume_command if result.interrupted else None})
    return 130 if result.interrupted else 0


def _yaml_keys(path: str) -> set[str]:
    """Top-level keys of an experiment YAML (an ``out:`` there is used as is); errors are left to
    ``TrainConfig.load``, which reports them."""
    import yaml

    try:
        data = yaml.safe_load(open(path)) or {}
    except (OSError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()
