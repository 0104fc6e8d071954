"""How much of an INT8 model's mAP drop is the calibration set? Quantize one fp32 ONNX export
with ``ort-static`` on the first N calibration images for several N (and any extra variants),
score each with ``litedet val`` and print one Markdown row per model.

A single INT8 figure on a small validation set (coco256 val: 128 images) moves by about half a
point with the calibration images alone; compare graphs or settings over several N, not one.

    python scripts/int8_spread.py --weights exports/model.onnx --data configs/data/coco256.yaml \\
        --calib ../shared/data/coco256/images/train2017 --counts 32,64,100,128 [--head-float]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def head_convs(model: Path) -> list[str]:
    """Names of the detection head's output convs (the ``/head/`` Conv nodes of a litedet export)."""
    import onnx

    return [n.name for n in onnx.load(str(model)).graph.node if n.op_type == "Conv" and n.name.startswith("/head/")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, type=Path, help="fp32 ONNX export with its sidecar (litedet export)")
    parser.add_argument("--data", required=True, help="dataset YAML to score on (its val split)")
    parser.add_argument("--calib", required=True, help="calibration images: a folder or a dataset YAML")
    parser.add_argument("--counts", default="32,64,100,128", help="calibration image counts (default 32,64,100,128)")
    parser.add_argument("--head-float", action="store_true", help="also quantize with the head's output convs kept float")
    parser.add_argument("--calibrate-method", default="minmax", help="minmax, entropy or percentile (default minmax)")
    args = parser.parse_args(argv)

    from litedet.compress.quantize import quantize_onnx_static
    from litedet.engine.evaluator import evaluate_data

    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    baseline = evaluate_data(args.weights, args.data, progress=False)
    print("| model | calibration images | mAP50-95 | mAP50 | Δ mAP50-95 (points) |\n|---|---:|---:|---:|---:|")
    print(f"| fp32 | — | {baseline.map50_95:.4f} | {baseline.map50:.4f} | — |")
    variants = [("INT8 ort-static", [])]
    if args.head_float:
        variants.append(("INT8 ort-static, head convs float", head_convs(args.weights)))
    drops: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="litedet-int8-spread-") as tmp:
        for label, exclude in variants:
            for count in counts:
                out = Path(tmp) / f"int8_{len(exclude)}_{count}.onnx"
                quantize_onnx_static(args.weights, out, args.calib, num_images=count, exclude=exclude,
                                     calibrate_method=args.calibrate_method)
                result = evaluate_data(out, args.data, progress=False)
                drop = 100 * (result.map50_95 - baseline.map50_95)
                drops.setdefault(label, []).append(drop)
                print(f"| {label} | {count} | {result.map50_95:.4f} | {result.map50:.4f} | {drop:+.2f} |", flush=True)
                out.unlink()
    for label, values in drops.items():
        print(f"{label}: drop {min(values):+.2f} to {max(values):+.2f} points, mean {statistics.mean(values):+.2f} "
              f"over {len(values)} calibration sets", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
