"""Full-size parity: every export format vs torch on real COCO images.

For each input size and format, the detector is exported (static shape), both the torch model and
the engine run on the *same* letterboxed tensors, and the shared numpy decode + NMS turns both
into detections. A row passes when, on every image, the engine finds the same number of boxes with
the same classes, boxes within 1 px and scores within 1e-3 (fp32). Prints a Markdown table and
writes it (plus JSON) to ``--out``.

    python scripts/parity.py --weights runs/v5lite-s.safetensors --sizes 416 384,640
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litedet.data.transforms import preprocess  # noqa: E402
from litedet.engine.predictor import Predictor  # noqa: E402
from litedet.export.api import export_model, parse_imgsz  # noqa: E402
from litedet.runtime import open_backend, with_input_size  # noqa: E402


@dataclass
class Row:
    format: str
    size: str
    precision: str
    images: int
    raw_max_abs: float
    detections_torch: int
    detections_engine: int
    count_mismatch_images: int
    class_mismatch_images: int
    box_max_px: float
    score_max_abs: float
    passed: bool


def compare(torch_dets, engine_dets, box_tol: float, score_tol: float) -> tuple[int, int, float, float, bool]:
    """(count mismatches, class mismatches, max box delta, max score delta, all within tolerance)."""
    count_bad = class_bad = 0
    box_max = score_max = 0.0
    for ref, got in zip(torch_dets, engine_dets):
        if len(ref) != len(got):
            count_bad += 1
            continue
        if not np.array_equal(ref.class_ids, got.class_ids):
            class_bad += 1
            continue
        if len(ref):
            box_max = max(box_max, float(np.abs(ref.boxes - got.boxes).max()))
            score_max = max(score_max, float(np.abs(ref.scores - got.scores).max()))
    ok = count_bad == 0 and class_bad == 0 and box_max <= box_tol and score_max <= score_tol
    return count_bad, class_bad, box_max, score_max, ok


def main(argv: list[str] | None = None) -> int:
    shared = REPO.parent / "shared"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(REPO / "runs" / "v5lite-s.safetensors"))
    parser.add_argument("--images", default=str(shared / "data" / "coco256" / "images" / "val2017"))
    parser.add_argument("--num-images", type=int, default=32, help="first N images by file name (default 32)")
    parser.add_argument("--sizes", nargs="+", default=["416", "384,640"], help="input sizes, N or H,W")
    parser.add_argument("--formats", nargs="+", default=["onnx", "openvino", "ncnn"])
    parser.add_argument("--extra-precisions", action="store_true", help="also OpenVINO bf16 and ncnn fp16 rows (informational)")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "runs" / "parity"))
    args = parser.parse_args(argv)

    image_paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.num_images]
    if not image_paths:
        raise SystemExit(f"no images in {args.images}")
    images = [cv2.imread(str(p)) for p in image_paths]
    out = Path(args.out)
    rows: list[Row] = []
    torch_backend = open_backend(args.weights, engine="torch", threads=args.threads)
    for size_text in args.sizes:
        size = parse_imgsz(size_text, torch_backend.config.input_size)
        size_label = f"{size[0]}x{size[1]}"
        torch_backend.config = with_input_size(torch_backend.config, size)
        batches = [preprocess([image], torch_backend.config, auto=False, new_shape=size) for image in images]
        reference_predictor = Predictor(torch_backend, conf=args.conf, iou=args.iou, auto=False)
        torch_raw = [torch_backend.run(batch) for batch, _ in batches]
        torch_dets = [reference_predictor.postprocess(raw, infos, [str(p)])[0] for raw, (_, infos), p in zip(torch_raw, batches, image_paths)]
        for fmt in args.formats:
            start = time.perf_counter()
            result = export_model(args.weights, fmt, out / size_label, imgsz=size)
            print(f"exported {result.summary()}", file=sys.stderr)
            precisions = ["fp32"]
            if args.extra_precisions and fmt == "openvino":
                precisions.append("bf16")
            if args.extra_precisions and fmt == "ncnn":
                precisions.append("fp16")
            for precision in precisions:
                backend = open_backend(result.path, threads=args.threads, precision=precision)
                predictor = Predictor(backend, conf=args.conf, iou=args.iou, auto=False)
                raw_max = 0.0
                engine_dets = []
                for (batch, infos), ref_raw, path in zip(batches, torch_raw, image_paths):
                    raw = backend.run(batch)
                    raw_max = max(raw_max, max(float(np.abs(a - b).max()) for a, b in zip(raw, ref_raw)))
                    engine_dets.append(predictor.postprocess(raw, infos, [str(path)])[0])
                backend.close()
                count_bad, class_bad, box_max, score_max, ok = compare(torch_dets, engine_dets, 1.0, 1e-3)
                rows.append(Row(
                    fmt, size_label, precision, len(images), raw_max,
                    sum(len(d) for d in torch_dets), sum(len(d) for d in engine_dets),
                    count_bad, class_bad, box_max, score_max, ok if precision == "fp32" else False,
                ))
            print(f"  {fmt} {size_label}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    torch_backend.close()

    header = "| format | input (HxW) | precision | images | raw max abs diff | detections torch / engine | images with other count / classes | box max diff (px) | score max diff | parity |"
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        verdict = "pass" if r.passed else ("fail" if r.precision == "fp32" else "info")
        lines.append(
            f"| {r.format} | {r.size} | {r.precision} | {r.images} | {r.raw_max_abs:.2e} | {r.detections_torch} / {r.detections_engine} "
            f"| {r.count_mismatch_images} / {r.class_mismatch_images} | {r.box_max_px:.4f} | {r.score_max_abs:.2e} | {verdict} |"
        )
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.md").write_text(
        f"weights: {args.weights}; images: first {len(images)} of {args.images}; conf {args.conf}, iou {args.iou}; "
        f"threads {args.threads}\n\n{table}\n"
    )
    (out / "parity.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(f"wrote {out / 'parity.md'} and {out / 'parity.json'}", file=sys.stderr)
    return 0 if all(r.passed for r in rows if r.precision == "fp32") else 1


if __name__ == "__main__":
    sys.exit(main())
