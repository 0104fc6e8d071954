"""Where a litedet model's end-to-end time goes: pre-processing, network and post-processing of
several engine files, timed side by side (alternating rounds) on real images.

Each round runs ``--detections`` detections (letterbox + inference + decode + NMS, the images in
turn) and then ``--network`` calls of the network alone on one pre-processed image, for every
model in turn, so a machine that drifts moves all of them alike. Pre and post are the medians
``Predictor.timings`` measures inside each detection; share = (pre + post) / the network median.
Prints one Markdown table. Compare the float and ``--uint8-input`` exports of one model:

    python scripts/prepost_side_by_side.py --threads 2 exports/model.onnx exports/model_uint8.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="engine files with their sidecars (.onnx, .xml, .param)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--detections", type=int, default=20, help="detections per model and round")
    parser.add_argument("--network", type=int, default=20, help="network-only calls per model and round")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of images (default: the first 16 of coco256 val in LITEDET_SHARED)")
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds, args.detections, args.network) < 1:
        parser.error("--threads, --rounds, --detections and --network must be >= 1")

    from litedet.bench.run import load_images
    from litedet.engine.predictor import Predictor, StageTimes
    from litedet.runtime import open_backend

    images = load_images(16, args.images)
    predictors = {path: Predictor(open_backend(path, threads=args.threads), auto=False) for path in args.models}
    inputs = {path: predictor.preprocess(images[0])[0].copy() for path, predictor in predictors.items()}
    network: dict[Path, list[float]] = {path: [] for path in predictors}
    for predictor in predictors.values():  # warm-up, then only timed detections count
        for image in images[:10]:
            predictor.predict(image)
        predictor.timings = StageTimes()
    for round_index in range(args.rounds):
        for path, predictor in predictors.items():
            for call in range(args.detections):
                predictor.predict(images[(round_index * args.detections + call) % len(images)])
            for _ in range(args.network):
                start = time.perf_counter()
                predictor.infer(inputs[path])
                network[path].append((time.perf_counter() - start) * 1e3)
    print("| model | input | pre ms | post ms | network ms | (pre + post) / network |")
    print("|---|---|---|---|---|---|")
    for path, predictor in predictors.items():
        stages = predictor.timings.medians()
        net = float(np.median(network[path]))
        kind = "uint8" if predictor.config.uint8_input else "float32"
        print(f"| {path} | {kind} | {stages['pre']:.2f} | {stages['post']:.2f} | {net:.2f} | "
              f"{100 * (stages['pre'] + stages['post']) / net:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
