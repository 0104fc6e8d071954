"""`litedet train`: train a detector on a YOLO, COCO or VOC dataset YAML, or resume a run."""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset YAML (format: yolo | coco | voc; see configs/data/)")
    parser.add_argument("--config", help="experiment YAML with any TrainConfig keys (command-line options win)")
    parser.add_argument("--model", help="registered detector name (default v5lite-e; `litedet models`)")
    parser.add_argument("--weights", help="start from a detector checkpoint (.safetensors + .json sidecar); "
                        "a different class count re-initialises the head")
    parser.add_argument("--backbone-weights", help="start from ImageNet backbone weights (ShuffleNetV2 Megvii .pth)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--imgsz", type=int, help="training and evaluation size (multiple of 32)")
    parser.add_argument("--device", help="auto (default) | cpu | cuda")
    parser.add_argument("--workers", type=int, help="data-loading processes (default 2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"))
    parser.add_argument("--lr0", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cache", action="store_true", default=None, help="keep resized images in memory")
    parser.add_argument("--no-ema", dest="ema", action="store_false", default=None, help="train without weight EMA")
    parser.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no mixed precision on CUDA")
    parser.add_argument("--deterministic", action="store_true", default=None)
    parser.add_argument("--close-mosaic", type=int, help="switch mosaic off for the last N epochs")
    parser.add_argument("--eval-interval", type=int, help="evaluate every N epochs (and after the last)")
    parser.add_argument("--out", help="run folder (default runs/train/exp)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last.pt")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def run(args: argparse.Namespace) -> int:
    from litedet.data.datasets import load_data_config, summary_table
    from litedet.engine.config import TrainConfig
    from litedet.engine.trainer import Trainer, TrainingDivergedError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.resume:
            trainer = Trainer.from_checkpoint(args.resume, epochs=args.epochs, device=args.device, progress=args.progress)
        else:
            overrides = {
                key: getattr(args, key)
                for key in ("data", "model", "weights", "backbone_weights", "epochs", "batch", "imgsz", "device",
                            "workers", "threads", "optimizer", "lr0", "seed", "cache", "ema", "amp", "deterministic",
                            "close_mosaic", "eval_interval", "out", "progress")
            }
            if args.config:
                config = TrainConfig.load(args.config, **overrides)
            else:
                config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None}, "command line")
            if not config.data:
                raise ValueError("--data is required (a dataset YAML; see configs/data/)")
            data = load_data_config(config.data)
            train_set = data.load_split("train", config.min_box_size, progress=config.progress)
            val_set = data.load_split("val", config.min_box_size, progress=config.progress)
            print(summary_table([train_set, val_set]), flush=True)
            trainer = Trainer(config, train_set, val_set)
        result = trainer.fit()
    except TrainingDivergedError as err:
        print(f"litedet train: stopped: {err}", file=sys.stderr)
        return 1
    best = f"{result.best_map50_95:.4f} / {result.best_map50:.4f}" if result.best_map50_95 >= 0 else "n/a"
    print(f"{result.epochs_done} epochs, {result.steps} steps, {result.train_seconds:.1f} s training, "
          f"{result.images_per_second:.1f} images/s; best mAP50-95 / mAP50 {best}")
    print(f"weights: {result.best_weights or result.last_weights}; run folder: {result.out}")
    return 0
