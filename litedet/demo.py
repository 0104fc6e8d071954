"""`make demo` / `python -m litedet.demo`: the detector end to end on a built-in default.

With the shared folder present (``LITEDET_SHARED``, default ``../shared`` beside the repo): import
the published YOLOv5-Lite-s ncnn weights into ``runs/demo/v5lite-s.safetensors`` (once), export
them to ONNX with ``--uint8-input`` (the deployment path; ``--engine torch`` skips this), detect on
``data/video/pets2009_vtest_480x360.mp4`` with ONNX Runtime and write the annotated video (Motion-JPEG ``.avi``), ``detections.jsonl``,
``summary.json`` and ``summary.txt`` (per-stage median ms and FPS) into ``runs/demo/``. Without it,
say what to pass instead and exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEMO_VIDEO = ("data", "video", "pets2009_vtest_480x360.mp4")
DEMO_WEIGHTS = ("weights", "yolov5-lite", "v5lite-s.ncnn.param")


def shared_dir() -> Path:
    """``LITEDET_SHARED`` or ``../shared`` beside the repository (or the current folder)."""
    if os.environ.get("LITEDET_SHARED"):
        return Path(os.environ["LITEDET_SHARED"]).expanduser()
    beside_repo = Path(__file__).resolve().parents[2] / "shared"
    return beside_repo if beside_repo.is_dir() else Path.cwd().parent / "shared"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litedet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    parser.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "torch"), help="engine to run (default onnxruntime)")
    args = parser.parse_args(argv)

    shared = shared_dir()
    param, video = shared.joinpath(*DEMO_WEIGHTS), shared.joinpath(*DEMO_VIDEO)
    if not (param.is_file() and video.is_file()):
        print(f"litedet demo: the shared folder is not at {shared} (or lacks {param.name} / {video.name}).")
        print("Set LITEDET_SHARED to it, or run the detector on your own files:")
        print("  litedet import MODEL.ncnn.param --arch v5lite-s -o runs/v5lite-s.safetensors")
        print("  litedet detect --model v5lite-s --weights runs/v5lite-s.safetensors --source VIDEO_OR_IMAGES --save runs/detect")
        return 0

    from litedet.engine.predictor import detect
    from litedet.models.ncnn_import import import_ncnn_weights

    out = Path(args.out)
    weights = out / "v5lite-s.safetensors"
    if weights.is_file() and weights.with_suffix(".json").is_file():
        print(f"using {weights} (delete it to import again)")
    else:
        weights, _ = import_ncnn_weights(param, "v5lite-s", weights)
        print(f"imported {param} -> {weights}")
    if args.engine == "onnxruntime":
        from litedet.export.api import export_model

        # --uint8-input: the engine takes the letterboxed uint8 image (litedet's runtime path)
        onnx_path = out / "v5lite-s_uint8.onnx"
        if not (onnx_path.is_file() and onnx_path.stat().st_mtime >= weights.stat().st_mtime):
            result = export_model(weights, "onnx", out, model_name="v5lite-s", stem="v5lite-s_uint8", uint8_input=True)
            print(f"exported {result.summary()}")
        weights = onnx_path
    print(f"detecting on {video} with {args.engine} ...")
    report = detect(video, weights, model="v5lite-s", save_dir=out, threads=args.threads, progress=sys.stderr.isatty())
    lines = report.summary_lines()
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        print(line)
    for path in report.saved:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
